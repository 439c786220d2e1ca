//! The broker's errors, and the next step each one leaves a person.
//!
//! A [`BrokerError`] says what went wrong in the daemon's words; what to
//! do about it travels beside it as a [`NextStep`], data that every
//! client (the CLI, the proxy, a desktop notification) words as its own
//! command line. No daemon message names a CLI command.
//!
//! `BrokerError` is `Clone`: a refresh shared by many callers gives each
//! of them the same error (sources that are not `Clone` are shared
//! behind an `Arc`).

use std::path::PathBuf;
use std::sync::Arc;

use crate::config::{ConfigError, InvalidInput};
pub use crate::next_step::NextStep;
use crate::oauth::OAuthError;
use crate::oauth::flow::CallbackError;
use crate::store::StoreError;

#[derive(Clone, Debug, thiserror::Error)]
pub enum BrokerError {
    /// A name no server has; with the configured name it most likely
    /// meant, if one is close.
    /// The config file is named, so a client that reached another daemon
    /// than it meant can tell.
    #[error("no server named {0:?} in {config}{hint}", config = .2.display(), hint = did_you_mean(.1))]
    NotFound(String, Option<String>, PathBuf),
    /// A name too like one already taken (they differ only in case).
    #[error(
        "a server named {existing:?} already exists, and {name:?} differs from it only in case; choose a name that tells them apart"
    )]
    NameTooAlike { name: String, existing: String },
    #[error("a server named {0:?} already exists")]
    AlreadyExists(String),
    #[error(transparent)]
    Invalid(#[from] InvalidInput),
    #[error("config.toml cannot be edited: {0}; fix the file first")]
    ConfigBroken(Arc<ConfigError>),
    #[error(transparent)]
    Config(Arc<ConfigError>),
    #[error(transparent)]
    Store(Arc<StoreError>),
    #[error(transparent)]
    OAuth(#[from] OAuthError),
    #[error(
        "cannot listen for the login callback on 127.0.0.1:{port}: {reason}; free the port or set another callback_port in config.toml"
    )]
    CallbackPort { port: u16, reason: String },
    #[error("no login is pending for {0:?}")]
    NoLoginPending(String),
    #[error(transparent)]
    Callback(CallbackError),
    /// No tokens until a person logs in: to the server, or (`idp`) at
    /// the identity provider it uses.
    #[error("login required for {server}: {reason}")]
    LoginRequired {
        server: String,
        reason: String,
        idp: Option<String>,
    },
    #[error("the authorization server is unavailable ({reason}); retry after {retry_after_secs}s")]
    Unavailable {
        reason: String,
        retry_after_secs: u64,
    },
    /// The report guard holds refreshes back: the MCP server rejects the
    /// tokens a report just produced.
    #[error("{reason}")]
    ServerRejecting {
        server: String,
        reason: String,
        retry_after_secs: u64,
    },
    #[error("internal error: {0}")]
    Internal(String),
    #[error("step-up required for {server}: the server needs scope {}", scopes.join(" "))]
    StepUpRequired { server: String, scopes: Vec<String> },
    #[error(
        "{server} asked for more scope again after {attempts} authorizations in the last 10 minutes; not asking again now (check the server's scope configuration)"
    )]
    StepUpExhausted { server: String, attempts: usize },
    #[error("the new tokens for {server} were discarded: {reason}; try again")]
    Superseded { server: String, reason: String },
    #[error("{server} uses grant = \"{grant}\": its tokens come without a login")]
    NoLoginNeeded { server: String, grant: &'static str },
}

impl BrokerError {
    /// "Login required" for `server`, because of `reason`.
    pub fn login_required(server: impl ToString, reason: impl ToString) -> Self {
        BrokerError::LoginRequired {
            server: server.to_string(),
            reason: reason.to_string(),
            idp: None,
        }
    }

    /// What a person can do about this error, if anything.
    pub fn next_step(&self) -> Option<NextStep> {
        let server = |s: &String| s.clone();
        match self {
            BrokerError::AlreadyExists(name) => Some(NextStep::ShowOrRemove {
                server: name.clone(),
            }),
            BrokerError::NoLoginPending(name) => Some(NextStep::Login {
                server: name.clone(),
            }),
            BrokerError::LoginRequired { idp: Some(idp), .. } => {
                Some(NextStep::LoginAtIdp { idp: idp.clone() })
            }
            BrokerError::LoginRequired { server: s, .. }
            | BrokerError::StepUpRequired { server: s, .. } => {
                Some(NextStep::Login { server: server(s) })
            }
            BrokerError::NoLoginNeeded { server: s, .. } => {
                Some(NextStep::GetToken { server: server(s) })
            }
            BrokerError::OAuth(OAuthError::RegistrationUnavailable { .. }) => {
                Some(NextStep::SetClientId { server: None })
            }
            _ => None,
        }
    }

    /// The store's key is not at hand.
    pub fn is_locked(&self) -> bool {
        matches!(self, BrokerError::Store(e) if matches!(**e, StoreError::KeyMissing(_)))
    }
}

impl From<StoreError> for BrokerError {
    fn from(e: StoreError) -> Self {
        BrokerError::Store(Arc::new(e))
    }
}

impl BrokerError {
    /// An error in `config.toml` as it is.
    pub fn config(e: ConfigError) -> Self {
        BrokerError::Config(Arc::new(e))
    }

    /// `config.toml` cannot be edited until a person fixes it.
    pub fn config_broken(e: ConfigError) -> Self {
        BrokerError::ConfigBroken(Arc::new(e))
    }
}

fn did_you_mean(suggestion: &Option<String>) -> String {
    suggestion
        .as_ref()
        .map(|s| format!("; did you mean {s:?}?"))
        .unwrap_or_default()
}

/// The configured name `name` most likely meant: the same but for case,
/// else one at most two edits away (for names longer than two), else
/// none.
pub(crate) fn closest(name: &str, names: &[&str]) -> Option<String> {
    if let Some(same) = names.iter().find(|n| n.eq_ignore_ascii_case(name)) {
        return Some(same.to_string());
    }
    let distance = |a: &str, b: &str| {
        let b: Vec<char> = b.chars().collect();
        let mut row: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut previous = row[0];
            row[0] = i + 1;
            for (j, cb) in b.iter().enumerate() {
                let here = row[j + 1];
                row[j + 1] = (previous + usize::from(ca != *cb))
                    .min(row[j] + 1)
                    .min(here + 1);
                previous = here;
            }
        }
        row[b.len()]
    };
    names
        .iter()
        .filter(|_| name.len() > 2)
        .map(|n| {
            (
                distance(&name.to_ascii_lowercase(), &n.to_ascii_lowercase()),
                n,
            )
        })
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, n)| n.to_string())
}
