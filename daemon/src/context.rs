//! What every part of the broker shares: the config in force, the store,
//! the per-server locks, the outbound HTTP client, the clock and the
//! events. Built once at start (`Broker::start`) and handed to each part
//! as an `Arc<Context>`; it holds no part, so no part reaches another
//! through it.
//!
//! Locks here:
//! - `config` (`std::sync::RwLock`): swapped whole by the config editor
//!   (`config_edit.rs`) under its edits lock; readers clone the `Arc` and
//!   let go at once (never held across an await).
//! - `locks` (`ServerLocks`): one async lock per server, the only way to a
//!   `ServerGuard`; held across I/O (discovery, token requests, the
//!   store's flushed writes) by whoever writes that server's state.
//! - `idp_locks` (`IdpLocks`): one async lock per identity provider,
//!   taken after a server's, never before.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::broadcast;
use tracing::warn;

use crate::clock::{Clock, SystemClock};
use crate::config::{Config, GrantKind, ServerName};
use crate::error::{BrokerError, closest};
use crate::locks::{IdpLocks, ServerGuard, ServerLocks};
use crate::oauth::http::HttpClient;
use crate::shutdown::Shutdown;
use crate::state::{Discovery, ServerRecord};
use crate::store::Store;

/// Where the daemon keeps things, resolved once at start.
#[derive(Clone, Debug)]
pub struct Paths {
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub config: PathBuf,
}

/// How long the loopback callback waits for the browser.
pub const CALLBACK_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// Tunables of the broker; the defaults are the documented behaviour.
#[derive(Clone)]
pub struct BrokerOptions {
    /// How long the loopback callback waits for the browser.
    pub callback_timeout: Duration,
    /// The whole-request timeout of every outbound HTTP request.
    pub http_timeout: Duration,
    /// Wall-clock time (tests inject one that follows tokio's clock).
    pub clock: Arc<dyn Clock>,
}

impl Default for BrokerOptions {
    fn default() -> Self {
        Self {
            callback_timeout: CALLBACK_TIMEOUT,
            http_timeout: crate::oauth::http::REQUEST_TIMEOUT,
            clock: Arc::new(SystemClock),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventKind {
    ServerAdded {
        url: String,
    },
    ServerRemoved,
    ServerChanged {
        url: String,
    },
    ConfigRejected {
        error: String,
    },
    /// `config.toml` is valid again after a rejection.
    ConfigAccepted,
    LoginStarted,
    TokenIssued {
        generation: u64,
        expires_at_ms: Option<i64>,
    },
    LoginRequired {
        reason: String,
    },
    StepUpRequired {
        scopes: Vec<String>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub at_ms: i64,
    /// `None` for daemon-wide events.
    pub server: Option<ServerName>,
    pub kind: EventKind,
}

impl EventKind {
    /// A server was added, removed or changed: whatever watches files
    /// named in its config looks again.
    pub fn changes_servers(&self) -> bool {
        matches!(
            self,
            EventKind::ServerAdded { .. }
                | EventKind::ServerChanged { .. }
                | EventKind::ServerRemoved
        )
    }
}

/// How many events a slow `Watch` client may lag before it is told so.
const EVENT_BUFFER: usize = 256;

pub struct Context {
    pub paths: Paths,
    pub store: Store,
    pub http: HttpClient,
    pub options: BrokerOptions,
    /// Per-server locks: every write of a server's state holds its guard.
    pub locks: ServerLocks,
    /// The identity providers' locks (`enterprise`): after a server's.
    pub idp_locks: IdpLocks,
    shutdown: Shutdown,
    config: RwLock<Arc<Config>>,
    events: broadcast::Sender<Event>,
}

impl Context {
    pub fn new(paths: Paths, store: Store, shutdown: Shutdown, options: BrokerOptions) -> Self {
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        Self {
            paths,
            store,
            http: HttpClient::with_timeout(options.http_timeout),
            options,
            locks: ServerLocks::default(),
            idp_locks: IdpLocks::default(),
            shutdown,
            config: RwLock::new(Arc::new(Config::default())),
            events,
        }
    }

    pub fn now_ms(&self) -> i64 {
        self.options.clock.now_ms()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }

    /// The config in force.
    pub fn config(&self) -> Arc<Config> {
        self.config.read().unwrap().clone()
    }

    /// Puts `config` in force (the config editor, under its edits lock).
    pub(crate) fn set_config(&self, config: Config) {
        *self.config.write().unwrap() = Arc::new(config);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    pub(crate) fn publish(&self, server: Option<ServerName>, kind: EventKind) {
        // No receiver is not an error: nobody is watching.
        let _ = self.events.send(Event {
            at_ms: self.now_ms(),
            server,
            kind,
        });
    }

    /// `name` parsed, if it is a configured server.
    pub(crate) fn configured(&self, name: &str) -> Result<ServerName, BrokerError> {
        let name = ServerName::parse(name)?;
        if !self.config().servers.contains_key(&name) {
            return Err(self.not_found(&name));
        }
        Ok(name)
    }

    /// "No server named …", with the configured name it most likely meant.
    pub(crate) fn not_found(&self, name: &ServerName) -> BrokerError {
        let config = self.config();
        let names: Vec<&str> = config.servers.keys().map(ServerName::as_str).collect();
        BrokerError::NotFound(
            name.to_string(),
            closest(name.as_str(), &names),
            self.paths.config.clone(),
        )
    }

    /// Whether `name` is configured with a grant that needs no person.
    pub(crate) fn unattended(&self, name: &ServerName) -> Option<GrantKind> {
        self.config()
            .servers
            .get(name)
            .map(|s| s.grant)
            .filter(|g| g.unattended())
    }

    /// `discovery` with the settings in force now: config.toml (as it is
    /// now) and the built-in defaults for its issuer.
    pub(crate) fn settings_now(&self, name: &ServerName, mut discovery: Discovery) -> Discovery {
        if let Some(server) = self.config().servers.get(name) {
            discovery.settings = server.settings.in_force(&discovery.issuer);
        }
        discovery
    }

    /// Changes a server's record (if the server still has one) and flushes.
    pub(crate) async fn update_record(
        &self,
        guard: &ServerGuard,
        change: impl FnOnce(&mut ServerRecord),
    ) -> Result<(), BrokerError> {
        if let Some(mut record) = self.store.server(guard.name())? {
            change(&mut record);
            self.store.put_server(guard, &record).await?;
        }
        Ok(())
    }

    /// Remembers the last error of a server for `status`.
    pub(crate) async fn record_error(&self, guard: &ServerGuard, message: &str) {
        let message = message.to_string();
        let now = self.now_ms();
        if let Err(e) = self
            .update_record(guard, |r| {
                r.last_error = Some(message);
                r.last_error_at_ms = Some(now);
            })
            .await
        {
            warn!(server = %guard.name(), error = %e, "cannot record the error");
        }
    }

    /// Why `name` holds no tokens, for a "login required": the error
    /// that cost the grant and how long ago, else that none are held.
    pub(crate) fn why_no_tokens(&self, name: &ServerName) -> String {
        let record = self.store.server(name).ok().flatten();
        match record.and_then(|r| Some((r.last_error?, r.last_error_at_ms))) {
            Some((error, Some(at))) => {
                format!("{error}, {} ago", ago(self.now_ms() - at))
            }
            Some((error, None)) => error,
            None => "no tokens are held".into(),
        }
    }

    /// "Login required" for `name`, saying why no tokens are held.
    pub(crate) fn login_required(&self, name: &ServerName) -> BrokerError {
        BrokerError::login_required(name, self.why_no_tokens(name))
    }
}

/// A past duration in words: "6s", "3m", "2h", "4d".
fn ago(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86_399 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}
