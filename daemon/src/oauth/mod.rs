//! The OAuth engine: MCP authorization (2025-03-26 fallbacks through
//! 2026-07-28) on reqwest. It discovers authorization servers, registers
//! clients, builds authorization requests, validates callbacks, and
//! exchanges and refreshes tokens.
//!
//! It is stateless and knows nothing of gRPC or of the store: callers pass
//! in what was persisted (discovery, registration, grant) and persist what
//! comes back. Every URL it is given or discovers passes `url_policy`.
//!
//! - `challenge`: `WWW-Authenticate` parsing.
//! - `http`: the HTTP client (timeouts, 1 MiB cap, redirect rules).
//! - `discovery`: PRM (RFC 9728) and AS metadata (RFC 8414 / OIDC).
//! - `doctor`: discovery and registration walked step by step, for
//!   `mcpauthctl doctor`, with the fix for each problem.
//! - `registration`: configured client, CIMD, or DCR (RFC 7591).
//! - `flow`: PKCE authorization requests and callback validation (RFC 9207).
//! - `token`: code exchange, refresh, revocation (RFC 6749, 7009, 8707),
//!   and client authentication (`ClientAuth`).
//! - `grants`: client credentials, JWT bearer (RFC 7523), device
//!   authorization (RFC 8628).
//! - `jwt`: client assertions (`private_key_jwt`) and the checks of a
//!   forwarded assertion (expiry, audience) before it is sent.
//! - `pkce`: verifier, challenge, state, token fingerprints.

/// The `WWW-Authenticate` grammar, shared with the clients (the proxy
/// reads the challenges it meets with the same parser).
pub use mcpauth_proto::challenge;
pub mod credentials;
pub mod discovery;
pub mod doctor;
pub mod flow;
pub mod grants;
pub mod http;
pub mod jwt;
pub mod pkce;
pub mod registration;
pub mod token;

use crate::url_policy::UrlError;

/// Everything that can go wrong talking OAuth. No variant carries a token,
/// a secret, a code or a verifier; strings from servers are bounded and
/// stripped of control characters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OAuthError {
    #[error("{what} {url} is not acceptable: {source}")]
    InsecureUrl {
        what: &'static str,
        url: String,
        #[source]
        source: UrlError,
    },
    #[error("cannot reach {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{url} answered HTTP {status}{}", status_hint(*status))]
    Status {
        url: String,
        status: u16,
        retry_after_secs: Option<u64>,
    },
    #[error("{url} answered with a redirect to {location}, which is not followed here")]
    Redirect { url: String, location: String },
    #[error("{url} sent more than {limit} bytes")]
    TooLarge { url: String, limit: usize },
    #[error("{url} did not send JSON ({content_type})")]
    NotJson { url: String, content_type: String },
    #[error("{url} sent an invalid document: {reason}")]
    BadDocument { url: String, reason: String },
    #[error("the server answered without asking for authorization; it needs no login")]
    NotProtected,
    #[error(
        "the protected resource metadata names resource {found:?}, which is not this server ({expected}); refusing to continue"
    )]
    ResourceMismatch { expected: String, found: String },
    #[error("the protected resource metadata lists no authorization server")]
    NoAuthorizationServer,
    #[error("no authorization server metadata found for {issuer}")]
    NoMetadata { issuer: String },
    #[error(
        "the authorization server metadata says issuer {found:?}, but it was fetched for {expected:?}; refusing it (only if you trust this server, set auth_server_metadata_url = \"{metadata_url}\" for it in config.toml)"
    )]
    IssuerMismatch {
        expected: String,
        found: String,
        /// The document that named `found`.
        metadata_url: String,
    },
    #[error(
        "the identity provider's metadata says issuer {found:?}, not {configured:?}; if that is your identity provider, set issuer = {found:?} in its [identity_providers] section of config.toml, exactly as the metadata names it"
    )]
    IdpIssuerMismatch { configured: String, found: String },
    #[error(
        "the authorization server {issuer} {}; refusing to use it{}",
        if *unlisted { "lists no PKCE methods (no code_challenge_methods_supported)" } else { "does not support PKCE with S256" },
        if *unlisted { " (only if you trust this server, set assume_pkce_s256 = true for it in config.toml: S256 is still used)" } else { "" }
    )]
    PkceUnsupported {
        issuer: String,
        /// The metadata lists no methods at all (Entra, Cognito), rather
        /// than methods without S256.
        unlisted: bool,
    },
    #[error(
        "{issuer} offers no way for mcpauthd to register: set client_id or client_metadata_url in config.toml"
    )]
    RegistrationUnavailable { issuer: String },
    #[error("client registration at {issuer} failed: {error}{}", description.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    RegistrationRejected {
        issuer: String,
        error: String,
        description: Option<String>,
    },
    #[error("cannot read the client secret file {path}: {reason}")]
    SecretFile { path: String, reason: String },
    /// A credential file that is not safe to use: one line naming it, its
    /// mode or kind, and the fix (`fsutil::read_credential`).
    #[error("{0}")]
    UnsafeFile(String),
    #[error("the token endpoint refused: {error}{}", description.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Token {
        error: String,
        description: Option<String>,
        retry_after_secs: Option<u64>,
        /// The HTTP status it came with (Slack answers errors with 200).
        status: u16,
    },
    /// A 4xx without an OAuth error: a refusal, not an outage. `message`
    /// is what the body said (`message`, `error_code`, ...), sanitised.
    #[error("{url} refused with HTTP {status}{}", message.as_deref().map(|m| format!(" ({m})")).unwrap_or_default())]
    Refused {
        url: String,
        status: u16,
        message: Option<String>,
    },
    #[error("unsupported token type {0:?} (only Bearer is supported)")]
    UnsupportedTokenType(String),
    #[error("cannot use the client key file {path}: {reason}")]
    KeyFile { path: String, reason: String },
    #[error("the assertion in {path} was not sent: {reason}")]
    Assertion {
        path: String,
        reason: jwt::AssertionError,
    },
    #[error("cannot read the assertion file {path}: {reason}")]
    AssertionFile { path: String, reason: String },
    #[error(
        "{issuer} offers no device login (no device_authorization_endpoint); log in with a browser, or paste the redirect address"
    )]
    DeviceUnsupported { issuer: String },
    #[error(
        "{issuer} does not list the {grant} grant in grant_types_supported; refusing to ask it for one"
    )]
    GrantUnsupported { issuer: String, grant: &'static str },
    #[error(
        "{issuer} does not list the ID-JAG grant profile (urn:ietf:params:oauth:grant-profile:id-jag in authorization_grant_profiles_supported); refusing to send it one"
    )]
    IdJagUnsupported { issuer: String },
    #[error("the ID-JAG from the identity provider {idp} was not sent: {reason}")]
    IdJagRefused {
        idp: String,
        reason: jwt::AssertionError,
    },
}

impl OAuthError {
    /// The OAuth error code from the token endpoint, if that is what this is.
    pub fn token_error(&self) -> Option<&str> {
        match self {
            OAuthError::Token { error, .. } => Some(error),
            _ => None,
        }
    }

    /// Whether trying again later may help: network trouble (refused,
    /// timed out), 5xx and 429, `temporarily_unavailable`, and answers
    /// that are not an OAuth answer at all (an error page, a redirect, a
    /// body cut off, not JSON, too large): the server, or something in
    /// front of it, is in trouble, and says nothing about the grant.
    ///
    /// A 4xx (but 429) is never an outage: the server understood and
    /// refused ([`OAuthError::Refused`], or an OAuth error).
    pub fn is_transient(&self) -> bool {
        let outage = |status: u16| status >= 500 || status == 429;
        match self {
            OAuthError::Unreachable { .. }
            | OAuthError::Redirect { .. }
            | OAuthError::TooLarge { .. }
            | OAuthError::NotJson { .. }
            | OAuthError::BadDocument { .. } => true,
            OAuthError::Status { status, .. } => !(400..500).contains(status) || outage(*status),
            OAuthError::Token { error, status, .. } => {
                error == "temporarily_unavailable" || outage(*status)
            }
            _ => false,
        }
    }

    /// What a token endpoint's failure says about the grant and the
    /// client: an outage, the grant gone, the client unknown, or none of
    /// these. Only outages are retried.
    pub fn token_failure(&self) -> TokenFailure {
        if self.is_transient() {
            return TokenFailure::Outage;
        }
        match self {
            OAuthError::Token { error, .. } => match error.as_str() {
                // `unauthorized_client`: the client may not use this grant
                // (any more); the grant is as good as gone, the client is
                // not unknown.
                "invalid_grant" | "unauthorized_client" => TokenFailure::GrantGone,
                "invalid_client" => TokenFailure::ClientUnknown,
                _ => TokenFailure::Other,
            },
            OAuthError::Refused {
                message: Some(m), ..
            } => {
                let m = m.to_ascii_lowercase();
                let about_client = m.contains("client");
                let gone = [
                    "unrecognized",
                    "unrecognised",
                    "unknown",
                    "not found",
                    "not_found",
                    "invalid",
                    "no such",
                    "does not exist",
                    "revoked",
                    "expired",
                ]
                .iter()
                .any(|w| m.contains(w));
                let about_grant = ["refresh", "grant"].iter().any(|w| m.contains(w));
                match (about_client, about_grant, gone) {
                    (_, true, true) => TokenFailure::GrantGone,
                    (true, false, true) => TokenFailure::ClientUnknown,
                    _ => TokenFailure::Other,
                }
            }
            _ => TokenFailure::Other,
        }
    }

    /// How long the server asked us to wait (`Retry-After`), if it did.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            OAuthError::Status {
                retry_after_secs, ..
            }
            | OAuthError::Token {
                retry_after_secs, ..
            } => *retry_after_secs,
            _ => None,
        }
    }
}

/// What a failed token request means (see [`OAuthError::token_failure`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenFailure {
    /// Network trouble, 5xx, 429, or an answer that is no answer: retried
    /// with backoff, nothing changes.
    Outage,
    /// `invalid_grant`, `unauthorized_client`, or a refusal naming the
    /// refresh token or grant (Supabase's `refresh_token_not_found`):
    /// login required.
    GrantGone,
    /// `invalid_client`, or a refusal naming the client (Supabase's
    /// `422 Unrecognized client_id`): login required, and a registration
    /// the broker made is dropped.
    ClientUnknown,
    /// Another refusal.
    Other,
}

/// Makes a server-provided string safe to show: bounded, single-line, and
/// without any of the given secrets (a buggy server may echo them).
pub fn sanitize(text: &str, secrets: &[&str]) -> String {
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(300)
        .collect();
    for secret in secrets.iter().filter(|s| s.len() >= 4) {
        out = out.replace(secret, "[redacted]");
    }
    out.trim().to_string()
}

/// The canonical form of a server URL for the `resource` parameter
/// (RFC 8707): scheme and host lowercased (the url crate does that), no
/// fragment, and no trailing slash on an empty path.
pub fn canonical_resource(url: &url::Url) -> String {
    let mut url = url.clone();
    url.set_fragment(None);
    let s = url.to_string();
    if url.path() == "/" && url.query().is_none() {
        s.trim_end_matches('/').to_string()
    } else {
        s
    }
}

/// The next step after an HTTP error status, for the message.
fn status_hint(status: u16) -> &'static str {
    match status {
        500..=599 => " (the server is failing; it is retried later, or check the server's status)",
        404 | 405 => " (check the server's URL in config.toml)",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_resources() {
        let c = |s: &str| canonical_resource(&url::Url::parse(s).unwrap());
        assert_eq!(c("HTTPS://MCP.Example.com/"), "https://mcp.example.com");
        assert_eq!(
            c("https://mcp.example.com/mcp"),
            "https://mcp.example.com/mcp"
        );
        assert_eq!(
            c("https://mcp.example.com/mcp/"),
            "https://mcp.example.com/mcp/"
        );
        assert_eq!(
            c("https://mcp.example.com:8443/x#frag"),
            "https://mcp.example.com:8443/x"
        );
    }

    #[test]
    fn sanitize_bounds_and_redacts() {
        let s = sanitize("bad token abcd1234efgh\nsecond line", &["abcd1234efgh"]);
        assert_eq!(s, "bad token [redacted] second line");
        assert_eq!(sanitize(&"x".repeat(1000), &[]).len(), 300);
    }
}
