//! `Failure`: how a command ends when it fails. One line on stderr
//! (`mcpauthctl: MESSAGE`, then `; NEXT STEP` when there is one) and the
//! documented exit code (`mcpauth_client::exit`): 1 failure, 2 usage or
//! invalid input, 3 daemon unreachable, 4 login or consent required.
//!
//! The next step is kept apart from the message so that it is said once,
//! whoever supplies it: today the client library's hint for an error
//! (`ClientError::hint`); later one the daemon names.

use std::fmt;

use mcpauth_client::{ClientError, exit};

/// The one thing a person can do about a failure, e.g. "run `mcpauthctl
/// login s`", rendered after the message as "; run `mcpauthctl login s`".
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct NextStep(String);

impl NextStep {
    pub(crate) fn new(text: impl Into<String>) -> Self {
        Self(text.into())
    }
}

impl fmt::Display for NextStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A failure to report: what went wrong, the exit code, and maybe the
/// next step.
#[derive(Debug)]
pub(crate) struct Failure {
    message: String,
    code: u8,
    next: Option<NextStep>,
}

impl Failure {
    fn with_code(code: u8, message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            code,
            next: None,
        }
    }

    /// Exit 1: the command could not do what was asked.
    pub(crate) fn failed(message: impl Into<String>) -> Self {
        Self::with_code(exit::FAILURE, message)
    }

    /// Exit 2: the command line or an input is wrong.
    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Self::with_code(exit::USAGE, message)
    }

    /// Exit 3: the daemon cannot be reached (or went away).
    pub(crate) fn unreachable(message: impl Into<String>) -> Self {
        Self::with_code(exit::UNREACHABLE, message)
    }

    /// Exit 4: a person must log in or consent first.
    pub(crate) fn login_required(message: impl Into<String>) -> Self {
        Self::with_code(exit::LOGIN_REQUIRED, message)
    }

    /// Attaches the next step (replacing one there was).
    pub(crate) fn then(mut self, next: NextStep) -> Self {
        self.next = Some(next);
        self
    }

    /// The exit code.
    pub(crate) fn code(&self) -> u8 {
        self.code
    }
}

/// The line after `mcpauthctl: `. A next step the message already says
/// is not said again.
impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        match &self.next {
            Some(next) if !self.message.contains(&next.0) => write!(f, "; {next}"),
            _ => Ok(()),
        }
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        let failure = Self::with_code(e.exit_code(), e.to_string());
        match e.hint() {
            Some(hint) => failure.then(NextStep::new(hint)),
            None => failure,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_step_follows_the_message_once() {
        let f = Failure::login_required("login required for s")
            .then(NextStep::new("run `mcpauthctl login s`"));
        assert_eq!(
            f.to_string(),
            "login required for s; run `mcpauthctl login s`"
        );
        assert_eq!(f.code(), exit::LOGIN_REQUIRED);
        let said = Failure::login_required("login required: run `mcpauthctl login s`")
            .then(NextStep::new("run `mcpauthctl login s`"));
        assert_eq!(said.to_string(), "login required: run `mcpauthctl login s`");
        assert_eq!(Failure::usage("bad").to_string(), "bad");
    }

    #[test]
    fn a_client_error_keeps_its_exit_code_and_hint() {
        let e = ClientError::NotRunning {
            socket: "/tmp/s".into(),
        };
        let hint = e.hint().unwrap();
        let f = Failure::from(e);
        assert_eq!(f.code(), exit::UNREACHABLE);
        assert_eq!(
            f.to_string(),
            format!("mcpauthd is not running (nothing listens on /tmp/s); {hint}")
        );
    }
}
