//! The one answer to a server that refuses the broker's token, for every
//! request of both transports and for the GET stream: a 401 is reported
//! to the broker (once for all the requests that met it) and the request
//! sent again, once, with the replacement; a 403 `insufficient_scope` is
//! reported as a step-up, which a person must grant. What cannot be
//! recovered ends the request with what to do (`Proxy::refused`).

use serde_json::Value;

use super::tokens::TokenError;
use super::{LOGIN_REQUIRED, Proxy};

/// What to do about a 401 or 403.
pub(super) enum Recovery {
    /// Send the request again with this token.
    Retry(String),
    /// The refusal stands.
    Refused(Refusal),
    /// Not about the token (a 403 for another reason): the status is
    /// the caller's to handle, as any other.
    NotAuth,
}

/// Why a request the server refused cannot go on.
#[derive(Debug, thiserror::Error)]
pub(super) enum Refusal {
    /// The broker had no replacement: why.
    #[error(transparent)]
    NoToken(TokenError),
    /// The server rejects the replacement too.
    #[error("HTTP 401")]
    StillRejected,
    /// The server wants more scope; the broker recorded the step-up. The
    /// line that says which login grants it.
    #[error("{0}")]
    StepUp(String),
}

impl Proxy {
    /// The server answered `status` (401 or 403, with the challenge
    /// `www`) to a request sent with `token`. `retried`: whether this
    /// request was already sent again with a replacement (it is, once).
    pub(super) async fn recover(
        &self,
        token: &str,
        status: u16,
        www: &str,
        retried: &mut bool,
    ) -> Recovery {
        match status {
            401 if !*retried => {
                *retried = true;
                match self.tokens.rejected(token, 401, www).await {
                    Ok(token) => Recovery::Retry(token),
                    Err(e) => Recovery::Refused(Refusal::NoToken(e)),
                }
            }
            401 => Recovery::Refused(Refusal::StillRejected),
            403 if insufficient_scope(www) => {
                // Recorded as a step-up by the broker; a person decides.
                let text = match self.tokens.rejected(token, 403, www).await {
                    Err(TokenError::Person(m)) => m,
                    _ => format!(
                        "mcpauth: {} needs more access; run `mcpauthctl login {}`",
                        self.name, self.name
                    ),
                };
                Recovery::Refused(Refusal::StepUp(text))
            }
            _ => Recovery::NotAuth,
        }
    }

    /// Answers `message` (and says on stderr) why the server's refusal
    /// stands.
    pub(super) async fn refused(&self, message: &Value, refusal: Refusal) {
        match refusal {
            Refusal::NoToken(e) => self.fail_token(message, e).await,
            Refusal::StillRejected => {
                let text = format!(
                    "{} rejects the broker's token even after a refresh; check the server's configuration, or run `mcpauthctl login {}`",
                    self.shown(),
                    self.name
                );
                self.fail(message, LOGIN_REQUIRED, &text).await;
            }
            Refusal::StepUp(text) => self.fail(message, LOGIN_REQUIRED, &text).await,
        }
    }
}

/// Whether a 403's challenge asks for more scope (RFC 6750
/// `error="insufficient_scope"`), read with the parser the daemon uses
/// (`mcpauth_proto::challenge`): a scope or description that merely
/// mentions the words is not a step-up.
fn insufficient_scope(www: &str) -> bool {
    mcpauth_proto::challenge::bearer([www])
        .is_some_and(|b| b.error.as_deref() == Some("insufficient_scope"))
}

#[cfg(test)]
mod tests {
    use super::insufficient_scope;

    #[test]
    fn only_a_challenge_for_more_scope_is_a_step_up() {
        assert!(insufficient_scope(
            r#"Bearer error="insufficient_scope", scope="mcp:admin""#
        ));
        assert!(!insufficient_scope(r#"Bearer error="invalid_token""#));
        assert!(!insufficient_scope(
            r#"Bearer error="invalid_token", error_description="not insufficient_scope""#
        ));
        assert!(!insufficient_scope(""));
    }
}
