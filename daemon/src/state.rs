//! Runtime state of a server: what the daemon learned, as opposed to what
//! the user declared in `config.toml`. These are the domain records the
//! store persists; they know nothing of sled or of the wire.

use serde::{Deserialize, Serialize};

use crate::secret::Secret;

/// Everything the daemon keeps about one server, persisted per name.
///
/// Later revisions add the grant (tokens), the discovered metadata and the
/// client registration; each arrives behind `#[serde(default)]` so older
/// records stay readable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerRecord {
    /// The URL this state belongs to. State is never reused for another URL:
    /// when the configured URL changes, the record starts afresh.
    pub url: String,
    /// When the daemon first saw this server (Unix ms).
    pub added_at_ms: i64,
    /// Last successful token refresh (Unix ms).
    #[serde(default)]
    pub last_refresh_ms: Option<i64>,
    /// The last error met for this server, shown by `status`. Never holds a
    /// secret: it is built from typed errors whose messages carry none.
    #[serde(default)]
    pub last_error: Option<String>,
    /// When `last_error` happened (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error_at_ms: Option<i64>,
    /// The loopback callback port, chosen once and reused so a registered
    /// redirect URI stays valid.
    #[serde(default)]
    pub callback_port: Option<u16>,
    /// Where this server's authorization server is, as last discovered.
    /// Persisted so a refresh after a restart goes to the right endpoint.
    #[serde(default)]
    pub discovery: Option<Discovery>,
    /// Scope the server asked for beyond what the grant holds.
    #[serde(default)]
    pub step_up: Option<StepUp>,
    /// The highest grant generation this server ever had: a new grant's
    /// generation is above it, so generations only grow, across logouts.
    #[serde(default)]
    pub last_generation: u64,
    /// A challenge a client received while no token was held (a
    /// `ReportUnauthorized` without a grant, or `login --www-authenticate`):
    /// its scope is authoritative for the next login, which clears it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub challenge: Option<StoredChallenge>,
    /// The refresh form this server's AS last accepted (with or without
    /// `scope`); the spec's until one is refused.
    #[serde(default)]
    pub refresh_scope: RefreshScope,
}

/// What is kept of a challenge for the next login: its scopes, validated
/// as scope tokens and bounded. Nothing else of the header is kept (it
/// came from a server, and may carry anything).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredChallenge {
    pub scopes: Vec<String>,
    pub received_at_ms: i64,
}

impl StoredChallenge {
    /// At most this many scopes of at most [`Self::MAX_SCOPE_LEN`] bytes.
    pub const MAX_SCOPES: usize = 32;
    pub const MAX_SCOPE_LEN: usize = 128;

    /// The scopes of a challenge worth keeping: `None` when it names none
    /// that are valid scope tokens (RFC 6749 §3.3).
    pub fn from_scopes(scopes: &[String], now_ms: i64) -> Option<Self> {
        let valid = |s: &&String| {
            !s.is_empty()
                && s.len() <= Self::MAX_SCOPE_LEN
                && s.bytes()
                    .all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b))
        };
        let mut kept: Vec<String> = Vec::new();
        for scope in scopes.iter().filter(valid) {
            if kept.len() == Self::MAX_SCOPES {
                break;
            }
            if !kept.contains(scope) {
                kept.push(scope.clone());
            }
        }
        (!kept.is_empty()).then_some(Self {
            scopes: kept,
            received_at_ms: now_ms,
        })
    }
}

impl ServerRecord {
    pub fn new(url: &url::Url, now_ms: i64) -> Self {
        Self {
            url: url.to_string(),
            added_at_ms: now_ms,
            last_refresh_ms: None,
            last_error: None,
            last_error_at_ms: None,
            callback_port: None,
            discovery: None,
            step_up: None,
            last_generation: 0,
            challenge: None,
            refresh_scope: RefreshScope::Omitted,
        }
    }
}

/// Milliseconds since the Unix epoch, from the wall clock.
pub fn unix_ms_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Authorization server metadata (RFC 8414), the fields mcpauth uses.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthServerMetadata {
    /// Empty only while a document that names none is checked: one served
    /// by the MCP server's own origin takes the issuer its URL implies
    /// (`issuer_implied`), any other is refused.
    #[serde(default)]
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration_endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation_endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes_supported: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_challenge_methods_supported: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_endpoint_auth_methods_supported: Option<Vec<String>>,
    #[serde(default)]
    pub client_id_metadata_document_supported: bool,
    #[serde(default)]
    pub authorization_response_iss_parameter_supported: bool,
    /// RFC 8628: where a device login starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_authorization_endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_types_supported: Option<Vec<String>>,
    /// The grant profiles the AS takes (ID-JAG:
    /// `urn:ietf:params:oauth:grant-profile:id-jag`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_grant_profiles_supported: Option<Vec<String>>,
    /// The document named no issuer; the broker took the one its URL
    /// implies (Home Assistant). `iss` is then not expected on callbacks.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub issuer_implied: bool,
}

/// How the authorization server was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiscoverySource {
    /// Protected Resource Metadata, then AS metadata (2025-06-18 and later).
    ProtectedResource,
    /// AS metadata at the server's origin (2025-03-26).
    LegacyMetadata,
    /// The default `/authorize`, `/token`, `/register` (2025-03-26).
    LegacyDefaults,
}

/// The result of discovery for one server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Discovery {
    /// The resource indicator (RFC 8707) sent on every request.
    pub resource: String,
    pub issuer: String,
    pub metadata: AuthServerMetadata,
    /// `scopes_supported` of the protected resource metadata.
    #[serde(default)]
    pub resource_scopes: Vec<String>,
    pub source: DiscoverySource,
    pub discovered_at_ms: i64,
    /// The per-server settings in force with this issuer (config.toml,
    /// else the built-in defaults); refreshed from the config in force
    /// before each use.
    #[serde(default)]
    pub settings: SettingsInForce,
}

impl Discovery {
    /// The `resource` (RFC 8707) to send, if any: none for an identity
    /// provider's own login (empty), nor with `send_resource = false`.
    pub fn resource_to_send(&self) -> Option<&str> {
        (!self.resource.is_empty() && self.settings.send_resource).then_some(self.resource.as_str())
    }
}

/// `ServerSettings` resolved for one issuer: what the engine does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingsInForce {
    pub assume_pkce_s256: bool,
    pub send_resource: bool,
    pub allow_missing_iss: bool,
    /// Extra authorization-request parameters, none reserved.
    pub authorization_params: Vec<(String, String)>,
    /// The settings that are a built-in default for the issuer.
    pub from_builtin: Vec<String>,
}

impl Default for SettingsInForce {
    /// The spec's behaviour.
    fn default() -> Self {
        Self {
            assume_pkce_s256: false,
            send_resource: true,
            allow_missing_iss: false,
            authorization_params: Vec::new(),
            from_builtin: Vec::new(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegistrationKind {
    /// `client_id` (and secret) from config.toml.
    Configured,
    /// A Client ID Metadata Document URL used as the client id.
    MetadataDocument,
    /// Dynamic Client Registration (RFC 7591).
    Dynamic,
}

/// How the client authenticates at the token endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuthMethod {
    None,
    ClientSecretBasic,
    ClientSecretPost,
}

/// A client registration, bound to the issuer that made it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    pub issuer: String,
    pub client_id: String,
    #[serde(default)]
    pub client_secret: Option<Secret>,
    pub auth_method: ClientAuthMethod,
    pub redirect_uri: String,
    pub kind: RegistrationKind,
    pub registered_at_ms: i64,
    /// The scopes a dynamic registration was made for (RFC 7591 `scope`,
    /// as the AS answered or, if it did not say, as sent). Some ASes
    /// refuse any later authorization for a scope the client was not
    /// registered with. `None`: not known (a configured client, or a
    /// registration made before the broker sent `scope`).
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
}

impl Registration {
    /// Whether this registration is known to cover `scopes`.
    pub fn covers(&self, scopes: &[String]) -> bool {
        self.scopes
            .as_ref()
            .is_some_and(|held| scopes.iter().all(|s| held.contains(s)))
    }
}

/// Tokens held for a server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The issuer that issued these tokens; a refresh token is only ever
    /// sent back to it.
    pub issuer: String,
    pub client_id: String,
    pub resource: String,
    pub access_token: Secret,
    pub token_type: String,
    #[serde(default)]
    pub refresh_token: Option<Secret>,
    /// Absolute expiry (Unix ms); `None` when the server did not say.
    #[serde(default)]
    pub expires_at_ms: Option<i64>,
    #[serde(default)]
    pub scopes: Vec<String>,
    pub obtained_at_ms: i64,
    /// Grows with every new access token for this server.
    pub generation: u64,
    /// The server URL these tokens were installed for (the record's URL
    /// at install): clients check it before a token leaves for a URL.
    /// Empty only in grants stored before it was kept; the store fills it
    /// from the server's record when it reads one of those.
    #[serde(default)]
    pub server_url: String,
    /// Whose tokens these are, when the authorization server says: the ID
    /// token's `email` or `preferred_username`, or the access token's
    /// `sub` when it is a JWT. Not a secret; never guessed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
}

/// A login waiting for the browser (or a pasted redirect).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingFlow {
    pub state: Secret,
    pub verifier: Secret,
    pub issuer: String,
    pub client_id: String,
    pub redirect_uri: String,
    pub scopes: Vec<String>,
    pub authorization_url: String,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
}

/// Whether a refresh request carries `scope` (the granted scopes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefreshScope {
    /// The spec's form: the refresh keeps the granted scope.
    #[default]
    Omitted,
    /// `scope` = the granted scopes.
    Sent,
}

impl RefreshScope {
    pub fn other(self) -> Self {
        match self {
            RefreshScope::Omitted => RefreshScope::Sent,
            RefreshScope::Sent => RefreshScope::Omitted,
        }
    }
}

/// A pending request for more scope (403 `insufficient_scope`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepUp {
    /// The union of the scopes held and the scopes challenged.
    pub scopes: Vec<String>,
    /// When step-up authorizations started (Unix ms), newest last.
    pub attempts: Vec<i64>,
}

/// What the broker holds for one identity provider (`enterprise`): its
/// metadata, and the ID token of the last login there. One per identity
/// provider, shared by every server that names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityRecord {
    pub issuer: String,
    pub metadata: AuthServerMetadata,
    #[serde(default)]
    pub id_token: Option<Secret>,
    /// The ID token's `exp` (Unix ms), when it has one.
    #[serde(default)]
    pub id_token_expires_at_ms: Option<i64>,
    pub logged_in_at_ms: i64,
}
