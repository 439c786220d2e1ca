//! `config.toml`: the declarative list of servers.
//!
//! The file is the single source of truth for *which* servers exist; the
//! store only holds their runtime state. The daemon parses it at start,
//! re-parses it on every change (see `watcher`), and edits it for
//! `mcpauthctl add/remove` with `toml_edit`, which keeps the user's comments
//! and layout.
//!
//! ```toml
//! [servers.linear]
//! url = "https://mcp.linear.app/mcp"
//! scopes = ["read", "write"]        # optional
//! client_id = "abc"                 # optional: pre-registered client
//! client_secret_file = "~/.secrets/linear"  # or client_secret = "..."
//! callback_port = 33418             # optional: fixed loopback port
//! login_hint = "me@example.com"     # optional: the account to sign in
//! client_metadata_url = "https://example.com/client.json"  # optional (CIMD)
//!
//! [servers.ci-tools]
//! url = "https://tools.example.com/mcp"
//! grant = "client_credentials"      # no person involved
//! client_id = "svc-ci"
//! client_secret_file = "~/.secrets/svc-ci"
//! # or: client_key_file = "~/.secrets/svc-ci.pem", client_key_alg = "ES256"
//!
//! [servers.k8s-tools]
//! url = "https://tools.internal/mcp"
//! grant = "workload"                # JWT bearer with a workload token
//! assertion_file = "/var/run/secrets/tokens/mcp"
//! ```
//!
//! Servers that bend the spec get one setting each, only for a server
//! the person trusts (see [`ServerSettings`]):
//!
//! ```toml
//! [servers.entra-app]
//! url = "https://tools.example.com/mcp"
//! assume_pkce_s256 = true           # no code_challenge_methods_supported
//! send_resource = false             # RFC 8707 `resource` refused
//! auth_server_metadata_url = "https://as.example.com/.well-known/oauth-authorization-server"
//! authorization_params = { access_type = "offline", prompt = "consent" }
//! allow_missing_iss = true          # `iss` promised, not sent
//! ```
//!
//! `grant` is `authorization_code` (the default: a person logs in, in a
//! browser or with a device code), `client_credentials`, `workload`, or
//! `enterprise` (with `identity_provider = "corp"` naming an
//! `[identity_providers.corp]` section: `issuer`, `client_id`, optional
//! `client_secret_file` and `id_token_file`).
//!
//! Parse errors never quote the file: a malformed line may hold a secret.

use std::collections::BTreeMap;
use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use url::Url;

use crate::secret::Secret;
use crate::url_policy::{UrlError, parse_secure_url};

/// A validated server name: `[A-Za-z0-9._-]{1,64}`, and not `.` or `..`
/// (names become keys and file names).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServerName(String);

impl ServerName {
    pub fn parse(name: &str) -> Result<Self, InvalidInput> {
        let bad = |reason: &str| InvalidInput::Name {
            name: truncate_for_message(name),
            reason: reason.to_string(),
        };
        if name.is_empty() {
            return Err(bad("it is empty"));
        }
        if name.len() > 64 {
            return Err(bad("it is longer than 64 characters"));
        }
        if let Some(c) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(bad(&format!(
                "{c:?} is not allowed (use letters, digits, '.', '_' and '-')"
            )));
        }
        if name == "." || name == ".." {
            return Err(bad("'.' and '..' are reserved"));
        }
        Ok(Self(name.to_string()))
    }

    /// A name for a server being added: also not starting with `-`, which
    /// a command line would read as an option. (Such a name already in
    /// config.toml still loads; the command lines `connect` writes put
    /// `--` before it.)
    pub fn parse_new(name: &str) -> Result<Self, InvalidInput> {
        if name.starts_with('-') {
            return Err(InvalidInput::Name {
                name: truncate_for_message(name),
                reason: "it starts with '-', which command lines read as an option".into(),
            });
        }
        Self::parse(name)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ServerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ServerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// Names in messages are cut short: they are user input of any length.
fn truncate_for_message(s: &str) -> String {
    if s.chars().count() <= 70 {
        s.to_string()
    } else {
        format!("{}...", s.chars().take(67).collect::<String>())
    }
}

/// Input the daemon refuses, with a reason a person can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidInput {
    #[error("invalid server name {name:?}: {reason}")]
    Name { name: String, reason: String },
    #[error("invalid URL for server {server}: {source}")]
    Url {
        server: String,
        #[source]
        source: UrlError,
    },
    #[error("invalid {field} for server {server}: {reason}")]
    Field {
        server: String,
        field: &'static str,
        reason: String,
    },
}

/// How the client secret of a pre-registered client is supplied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientSecret {
    Inline(Secret),
    File(PathBuf),
}

/// The JSON layout of a token file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenFileFormat {
    /// What Hermes keeps in `mcp-tokens/<name>.json`.
    Hermes,
    /// `access_token`, `expires_at` (epoch seconds), optional
    /// `refresh_token`, `scope`, `token_type`, `issuer`, `client_id`.
    Generic,
}

/// `import = { path, format }`: a file another tool writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenImport {
    pub path: PathBuf,
    pub format: TokenFileFormat,
}

/// `export = { path, format, refresh_token = false }`: a file the broker
/// writes for tools that read tokens from files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenExport {
    pub path: PathBuf,
    pub format: TokenFileFormat,
    /// Include the refresh token (off by default, so the reader cannot
    /// start its own refresh race).
    pub refresh_token: bool,
}

/// How a server's tokens are obtained (`grant = ...`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantKind {
    /// A person logs in (browser, pasted redirect, or device code).
    #[default]
    AuthorizationCode,
    /// The client's own credentials (RFC 6749 §4.4); no person.
    ClientCredentials,
    /// JWT bearer (RFC 7523) with a workload identity token from a file;
    /// no person.
    Workload,
    /// Enterprise-managed authorization (ID-JAG): one OIDC login at the
    /// identity provider, then per server a token exchange there and a
    /// JWT bearer grant at the server's AS, with no person while the ID
    /// token is valid.
    Enterprise,
}

impl GrantKind {
    pub fn as_str(self) -> &'static str {
        match self {
            GrantKind::AuthorizationCode => "authorization_code",
            GrantKind::ClientCredentials => "client_credentials",
            GrantKind::Workload => "workload",
            GrantKind::Enterprise => "enterprise",
        }
    }

    /// Whether tokens are obtained on first use and obtained again before
    /// they expire (no refresh token), through `Unattended::renew`. For
    /// `enterprise` that holds while the identity provider's ID token is
    /// valid; a person logs in there when it is not.
    pub fn unattended(self) -> bool {
        !matches!(self, GrantKind::AuthorizationCode)
    }

    /// Whether `mcpauthctl login` has anything to do for such a server.
    pub fn has_login(self) -> bool {
        matches!(self, GrantKind::AuthorizationCode | GrantKind::Enterprise)
    }
}

/// The signature algorithms of `client_key_alg` (private_key_jwt).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub enum KeyAlgorithm {
    /// ECDSA with P-256 and SHA-256.
    #[default]
    ES256,
}

impl KeyAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyAlgorithm::ES256 => "ES256",
        }
    }
}

/// `client_key_file` and `client_key_alg`: the private key a client
/// authenticates with (`private_key_jwt`, RFC 7523 §2.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientKey {
    pub path: PathBuf,
    pub alg: KeyAlgorithm,
}

/// One `[servers.NAME]` section, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// How tokens are obtained; `authorization_code` by default.
    pub grant: GrantKind,
    /// A private key for `private_key_jwt` client authentication.
    pub client_key: Option<ClientKey>,
    /// `workload`: the file the platform keeps the workload JWT in.
    pub assertion_file: Option<PathBuf>,
    /// `enterprise`: the `[identity_providers.NAME]` to log in at.
    pub identity_provider: Option<ServerName>,
    pub url: Url,
    pub client_id: Option<String>,
    pub client_secret: Option<ClientSecret>,
    pub scopes: Vec<String>,
    pub callback_port: Option<u16>,
    /// `login_hint` sent with a browser login (OpenID Connect), so the
    /// authorization server signs in that account: for a server another
    /// entry shares the URL of, it picks this entry's account.
    pub login_hint: Option<String>,
    pub client_metadata_url: Option<Url>,
    pub import: Option<TokenImport>,
    pub export: Option<TokenExport>,
    /// The settings for an authorization server that bends the spec.
    pub settings: ServerSettings,
}

/// The parameters of an authorization request that
/// `authorization_params` may not set: the broker's own.
pub const RESERVED_AUTHORIZATION_PARAMS: &[&str] = &[
    "response_type",
    "client_id",
    "redirect_uri",
    "state",
    "code_challenge",
    "code_challenge_method",
    "resource",
    "scope",
];

/// One setting per behaviour of an authorization server that bends the
/// spec in a way that is not safe to tolerate for everyone: set only for
/// a server the person trusts. `None`: not in config.toml, so the
/// built-in default for the issuer (if any, see [`builtin_defaults`])
/// or the spec's behaviour applies. A setting in config.toml always wins.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerSettings {
    /// The AS publishes no `code_challenge_methods_supported` (Entra,
    /// Cognito): S256 is used anyway.
    pub assume_pkce_s256: Option<bool>,
    /// `false`: RFC 8707 `resource` is left out of authorization and
    /// token requests (Entra, AADSTS9010010).
    pub send_resource: Option<bool>,
    /// This AS metadata document is used, bound to the issuer it names
    /// (Slack, Atlassian: metadata at one host naming another issuer).
    pub auth_server_metadata_url: Option<Url>,
    /// Extra authorization-request parameters (Google's
    /// `access_type=offline`, Auth0's `audience`); never one of
    /// [`RESERVED_AUTHORIZATION_PARAMS`].
    pub authorization_params: Option<BTreeMap<String, String>>,
    /// The AS promises `iss` on redirects but sends none (Cloudflare's
    /// workers-oauth-provider): accepted without; compared when present.
    pub allow_missing_iss: Option<bool>,
}

/// The built-in defaults for an issuer, by exact issuer (Google) or
/// issuer prefix (Microsoft Entra), as the README documents them.
pub fn builtin_defaults(issuer: &str) -> ServerSettings {
    if issuer == "https://accounts.google.com" {
        let params = [("access_type", "offline"), ("prompt", "consent")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        return ServerSettings {
            authorization_params: Some(params),
            ..Default::default()
        };
    }
    if issuer.starts_with("https://login.microsoftonline.com/") {
        return ServerSettings {
            assume_pkce_s256: Some(true),
            send_resource: Some(false),
            ..Default::default()
        };
    }
    ServerSettings::default()
}

impl ServerSettings {
    /// What is in force with the AS `issuer`: each setting from
    /// config.toml, else the built-in default, else the spec.
    pub fn in_force(&self, issuer: &str) -> crate::state::SettingsInForce {
        let builtin = builtin_defaults(issuer);
        let mut from_builtin = Vec::new();
        let mut pick = |name: &'static str,
                        ours: Option<bool>,
                        theirs: Option<bool>,
                        spec: bool| match (ours, theirs) {
            (Some(v), _) => v,
            (None, Some(v)) => {
                from_builtin.push(name.to_string());
                v
            }
            (None, None) => spec,
        };
        let assume_pkce_s256 = pick(
            "assume_pkce_s256",
            self.assume_pkce_s256,
            builtin.assume_pkce_s256,
            false,
        );
        let send_resource = pick(
            "send_resource",
            self.send_resource,
            builtin.send_resource,
            true,
        );
        let allow_missing_iss = pick(
            "allow_missing_iss",
            self.allow_missing_iss,
            builtin.allow_missing_iss,
            false,
        );
        let authorization_params = match (&self.authorization_params, builtin.authorization_params)
        {
            (Some(p), _) => p.clone(),
            (None, Some(p)) => {
                from_builtin.push("authorization_params".to_string());
                p
            }
            (None, None) => BTreeMap::new(),
        };
        crate::state::SettingsInForce {
            assume_pkce_s256,
            send_resource,
            allow_missing_iss,
            authorization_params: authorization_params.into_iter().collect(),
            from_builtin,
        }
    }
}

/// How the daemon reaches servers: top-level `proxy` and `ca_file`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Network {
    /// An HTTP(S) proxy for every outbound request (hosts in `NO_PROXY`
    /// excepted). A `Secret`: its URL may hold a password.
    pub proxy: Option<Secret>,
    /// PEM certificates of authorities to trust besides the system's
    /// (an intercepting corporate proxy's).
    pub ca_file: Option<PathBuf>,
}

/// The whole file, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// `proxy` and `ca_file`.
    pub network: Network,
    pub servers: BTreeMap<ServerName, ServerConfig>,
    /// `[identity_providers.NAME]`, for `grant = "enterprise"`. Names
    /// follow the server name rules.
    pub identity_providers: BTreeMap<ServerName, IdentityProvider>,
    /// `notifications = false` turns off the desktop notification sent
    /// when a program needs a login that nobody is doing.
    pub notifications: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            servers: BTreeMap::new(),
            identity_providers: BTreeMap::new(),
            notifications: true,
            network: Network::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path} {reason}; refusing to use it (run: {fix})")]
    Unsafe {
        path: PathBuf,
        reason: String,
        fix: String,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: line {line}, column {column}: {message}")]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: {source}")]
    Invalid {
        path: PathBuf,
        #[source]
        source: InvalidInput,
    },
}

/// One `[identity_providers.NAME]` section, validated: the enterprise
/// IdP the broker logs in at with OpenID Connect (authorization code and
/// PKCE), and exchanges the ID token at for ID-JAGs (RFC 8693).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityProvider {
    /// As written (validated as a URL): the IdP's metadata must name this
    /// exact string.
    pub issuer: String,
    /// The broker's client at the IdP.
    pub client_id: String,
    pub client_secret: Option<ClientSecret>,
    /// An ID token obtained elsewhere (an SSO agent), used instead of a
    /// login of the broker's own; watched.
    pub id_token_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdentityProvider {
    issuer: String,
    client_id: String,
    client_secret: Option<String>,
    client_secret_file: Option<PathBuf>,
    id_token_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    servers: BTreeMap<String, RawServer>,
    #[serde(default)]
    identity_providers: BTreeMap<String, RawIdentityProvider>,
    notifications: Option<bool>,
    proxy: Option<String>,
    ca_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    url: String,
    #[serde(default)]
    grant: GrantKind,
    client_key_file: Option<PathBuf>,
    client_key_alg: Option<KeyAlgorithm>,
    assertion_file: Option<PathBuf>,
    identity_provider: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    client_secret_file: Option<PathBuf>,
    #[serde(default)]
    scopes: Vec<String>,
    callback_port: Option<u16>,
    login_hint: Option<String>,
    client_metadata_url: Option<String>,
    import: Option<RawImport>,
    export: Option<RawExport>,
    assume_pkce_s256: Option<bool>,
    send_resource: Option<bool>,
    auth_server_metadata_url: Option<String>,
    authorization_params: Option<BTreeMap<String, String>>,
    allow_missing_iss: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawImport {
    path: PathBuf,
    format: TokenFileFormat,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExport {
    path: PathBuf,
    format: TokenFileFormat,
    #[serde(default)]
    refresh_token: bool,
}

/// A parser's message, made to say what it means where it is terse: a
/// duplicate key names the key, and a table given twice (two
/// `[servers.demo]`) the server. Only names are quoted, never a value.
fn syntax_message(message: &str, span: Option<std::ops::Range<usize>>, text: &str) -> String {
    let message = message.trim();
    let Some(span) = span.filter(|_| message.starts_with("duplicate key")) else {
        return message.to_string();
    };
    let start = span.start.min(text.len());
    if !text.is_char_boundary(start) {
        return message.to_string();
    }
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("").trim();
    let name = |s: &str| truncate_for_message(s.trim().trim_matches('"'));
    if let Some(header) = line.strip_prefix('[') {
        let table = header
            .trim_start_matches('[')
            .split(']')
            .next()
            .unwrap_or("");
        let table = table.trim();
        if let Some(server) = table
            .strip_prefix("servers.")
            .filter(|s| ServerName::parse(s.trim().trim_matches('"')).is_ok())
        {
            return format!(
                "the server {:?} is defined twice (a second [servers.{}] table); keep one",
                name(server),
                name(server)
            );
        }
        if table
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-\"".contains(&b))
        {
            return format!("the table [{}] is defined twice; keep one", name(table));
        }
        return message.to_string();
    }
    let key: String = text[start..]
        .chars()
        .take_while(|c| c.is_alphanumeric() || "_-.\"".contains(*c))
        .collect();
    // Only a key this file knows is named: any other text there might be
    // a secret pasted in the wrong place.
    const KNOWN: &[&str] = &[
        "url",
        "grant",
        "client_key_file",
        "client_key_alg",
        "assertion_file",
        "identity_provider",
        "client_id",
        "client_secret",
        "client_secret_file",
        "scopes",
        "callback_port",
        "login_hint",
        "client_metadata_url",
        "import",
        "export",
        "path",
        "format",
        "refresh_token",
        "notifications",
        "issuer",
        "id_token_file",
    ];
    if !KNOWN.contains(&key.as_str()) {
        return message.to_string();
    }
    format!("{message}: {key} is set twice")
}

/// Line and column (1-based) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Expands a leading `~/` against the home directory.
fn expand_home(path: PathBuf) -> PathBuf {
    match path.strip_prefix("~") {
        Ok(rest) => mcpauth_proto::paths::home_dir()
            .map(|home| home.join(rest))
            .unwrap_or(path),
        Err(_) => path,
    }
}

impl Config {
    /// Parses the text of `config.toml`. `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let (line, column) = e
                .span()
                .map_or((0, 0), |span| line_column(text, span.start));
            ConfigError::Syntax {
                path: path.to_path_buf(),
                line,
                column,
                // `message()` is the error alone; `Display` would quote the
                // offending line, which may hold a client secret.
                message: syntax_message(e.message(), e.span(), text),
            }
        })?;
        let invalid = |source| ConfigError::Invalid {
            path: path.to_path_buf(),
            source,
        };
        let mut identity_providers = BTreeMap::new();
        for (name, raw) in raw.identity_providers {
            let name = ServerName::parse(&name).map_err(invalid)?;
            let idp = validate_identity_provider(&name, raw).map_err(invalid)?;
            identity_providers.insert(name, idp);
        }
        let mut servers = BTreeMap::new();
        for (name, raw) in raw.servers {
            let name = ServerName::parse(&name).map_err(invalid)?;
            let server = validate_server(&name, raw).map_err(invalid)?;
            if let Some(idp) = &server.identity_provider
                && !identity_providers.contains_key(idp)
            {
                return Err(invalid(InvalidInput::Field {
                    server: name.to_string(),
                    field: "identity_provider",
                    reason: format!("no [identity_providers.{idp}] section"),
                }));
            }
            servers.insert(name, server);
        }
        let network = validate_network(raw.proxy, raw.ca_file).map_err(invalid)?;
        Ok(Self {
            servers,
            identity_providers,
            notifications: raw.notifications.unwrap_or(true),
            network,
        })
    }

    /// Reads and parses the file. A missing file is `Ok(None)`.
    pub fn load(path: &Path) -> Result<Option<(Self, String)>, ConfigError> {
        match read_checked(path)? {
            Some(text) => Ok(Some((Self::parse(&text, path)?, text))),
            None => Ok(None),
        }
    }
}

/// Reads `config.toml` if it exists and only we (or root) can change it:
/// whoever can write it decides where our tokens go. It may be a symlink
/// (dotfile managers); what is checked is the file it leads to, through
/// the open descriptor. `Ok(None)` when there is no file.
pub fn read_checked(path: &Path) -> Result<Option<String>, ConfigError> {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let read_err = |source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_err(e)),
    };
    let meta = file.metadata().map_err(read_err)?;
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me && meta.uid() != 0 {
        return Err(ConfigError::Unsafe {
            path: path.to_path_buf(),
            reason: format!("belongs to uid {}, not to you (uid {me})", meta.uid()),
            fix: format!("chown {me} {}", path.display()),
        });
    }
    if meta.mode() & 0o022 != 0 {
        return Err(ConfigError::Unsafe {
            path: path.to_path_buf(),
            reason: format!("can be changed by others (mode {:o})", meta.mode() & 0o7777),
            fix: format!("chmod go-w {}", path.display()),
        });
    }
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(read_err)?;
    Ok(Some(text))
}

impl Config {}

/// `proxy`: an http or https URL (a user and password are allowed: the
/// value is kept as a secret and never shown); `ca_file`: an absolute
/// path (or `~/`).
fn validate_network(
    proxy: Option<String>,
    ca_file: Option<PathBuf>,
) -> Result<Network, InvalidInput> {
    let field = |field: &'static str, reason: &str| InvalidInput::Field {
        server: "the top level".into(),
        field,
        reason: reason.to_string(),
    };
    let proxy = match proxy {
        None => None,
        Some(p) => {
            let url =
                Url::parse(&p).map_err(|_| field("proxy", "it is not a URL (http://host:port)"))?;
            if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                return Err(field(
                    "proxy",
                    "it must be an http:// or https:// URL with a host",
                ));
            }
            Some(Secret::new(p))
        }
    };
    let ca_file = match ca_file.map(expand_home) {
        Some(p) if !p.is_absolute() => {
            return Err(field(
                "ca_file",
                "it must be an absolute path (or start with ~/)",
            ));
        }
        other => other,
    };
    Ok(Network { proxy, ca_file })
}

fn validate_identity_provider(
    name: &ServerName,
    raw: RawIdentityProvider,
) -> Result<IdentityProvider, InvalidInput> {
    let field = |field: &'static str, reason: &str| InvalidInput::Field {
        server: format!("identity provider {name}"),
        field,
        reason: reason.to_string(),
    };
    parse_secure_url(&raw.issuer).map_err(|e| field("issuer", &e.to_string()))?;
    let issuer = raw.issuer;
    if raw.client_id.is_empty() {
        return Err(field("client_id", "it is empty"));
    }
    let client_secret = client_secret(raw.client_secret, raw.client_secret_file)
        .map_err(|reason| field("client_secret", reason))?;
    let id_token_file = match raw.id_token_file.map(expand_home) {
        Some(p) if !p.is_absolute() => {
            return Err(field(
                "id_token_file",
                "it must be an absolute path (or start with ~/)",
            ));
        }
        other => other,
    };
    Ok(IdentityProvider {
        issuer,
        client_id: raw.client_id,
        client_secret,
        id_token_file,
    })
}

/// The error for `field` of server `name`.
fn field_error(name: &ServerName, field: &'static str, reason: &str) -> InvalidInput {
    InvalidInput::Field {
        server: name.to_string(),
        field,
        reason: reason.to_string(),
    }
}

/// A `[servers.NAME]` section, checked setting by setting in a fixed
/// order: the first problem is the error.
fn validate_server(name: &ServerName, raw: RawServer) -> Result<ServerConfig, InvalidInput> {
    let field = |field: &'static str, reason: &str| field_error(name, field, reason);
    let url = parse_secure_url(&raw.url).map_err(|source| InvalidInput::Url {
        server: name.to_string(),
        source,
    })?;
    let client_secret = client_secret(raw.client_secret, raw.client_secret_file)
        .map_err(|reason| field("client_secret", reason))?;
    let client_id = raw.client_id.filter(|id| !id.is_empty());
    if client_secret.is_some() && client_id.is_none() {
        return Err(field("client_secret", "a client secret needs a client_id"));
    }
    validate_scopes(name, &raw.scopes)?;
    let login_hint = validate_login_hint(name, raw.login_hint)?;
    if raw.callback_port == Some(0) {
        return Err(field(
            "callback_port",
            "0 is not a port; leave it out to let the daemon choose",
        ));
    }
    let client_metadata_url = validate_client_metadata_url(name, raw.client_metadata_url)?;
    let import = raw.import.map(|i| validate_import(name, i)).transpose()?;
    let export = raw.export.map(|e| validate_export(name, e)).transpose()?;
    let client_key = validate_client_key(name, raw.client_key_file, raw.client_key_alg)?;
    if client_key.is_some() {
        if client_secret.is_some() {
            return Err(field(
                "client_key_file",
                "set a client secret or a client key, not both",
            ));
        }
        if client_id.is_none() {
            return Err(field("client_key_file", "a client key needs a client_id"));
        }
    }
    let assertion_file = raw
        .assertion_file
        .map(|p| absolute_file(name, "assertion_file", p))
        .transpose()?;
    let has = GrantInputs {
        client_id: client_id.is_some(),
        client_secret: client_secret.is_some(),
        client_key: client_key.is_some(),
        assertion_file: assertion_file.is_some(),
        identity_provider: raw.identity_provider.is_some(),
    };
    check_grant(name, raw.grant, &has)?;
    let identity_provider = server_identity_provider(name, raw.grant, raw.identity_provider)?;
    if assertion_file.is_some() && raw.grant != GrantKind::Workload {
        return Err(field(
            "assertion_file",
            "assertion_file is used by grant = \"workload\"",
        ));
    }
    let settings = ServerSettings {
        assume_pkce_s256: raw.assume_pkce_s256,
        send_resource: raw.send_resource,
        auth_server_metadata_url: validate_auth_server_metadata_url(
            name,
            raw.auth_server_metadata_url,
        )?,
        authorization_params: validate_authorization_params(name, raw.authorization_params)?,
        allow_missing_iss: raw.allow_missing_iss,
    };
    Ok(ServerConfig {
        settings,
        grant: raw.grant,
        client_key,
        assertion_file,
        identity_provider,
        url,
        client_id,
        client_secret,
        scopes: raw.scopes,
        callback_port: raw.callback_port,
        login_hint,
        client_metadata_url,
        import,
        export,
    })
}

/// `client_secret` or `client_secret_file`, not both; `Err` is the
/// reason, for the `client_secret` field.
fn client_secret(
    secret: Option<String>,
    file: Option<PathBuf>,
) -> Result<Option<ClientSecret>, &'static str> {
    match (secret, file) {
        (Some(_), Some(_)) => Err("set client_secret or client_secret_file, not both"),
        (Some(s), None) if s.is_empty() => Err("it is empty"),
        (Some(s), None) => Ok(Some(ClientSecret::Inline(Secret::new(s)))),
        (None, Some(p)) => Ok(Some(ClientSecret::File(expand_home(p)))),
        (None, None) => Ok(None),
    }
}

/// Each scope a valid scope token (RFC 6749 §3.3).
fn validate_scopes(name: &ServerName, scopes: &[String]) -> Result<(), InvalidInput> {
    for scope in scopes {
        // RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
        let ok = !scope.is_empty()
            && scope
                .bytes()
                .all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b));
        if !ok {
            return Err(field_error(
                name,
                "scopes",
                &format!(
                    "{:?} is not a valid scope token",
                    truncate_for_message(scope)
                ),
            ));
        }
    }
    Ok(())
}

/// `login_hint`: one line, not empty, at most 256 bytes; kept trimmed.
fn validate_login_hint(
    name: &ServerName,
    login_hint: Option<String>,
) -> Result<Option<String>, InvalidInput> {
    match login_hint {
        None => Ok(None),
        Some(h) if h.trim().is_empty() => Err(field_error(name, "login_hint", "it is empty")),
        Some(h) if h.len() > 256 || h.chars().any(char::is_control) => Err(field_error(
            name,
            "login_hint",
            "it must be one line of at most 256 bytes (an email or user name)",
        )),
        Some(h) => Ok(Some(h.trim().to_string())),
    }
}

/// `client_metadata_url`: a secure https URL with a path.
fn validate_client_metadata_url(
    name: &ServerName,
    raw: Option<String>,
) -> Result<Option<Url>, InvalidInput> {
    let Some(u) = raw else {
        return Ok(None);
    };
    let field = |reason: &str| field_error(name, "client_metadata_url", reason);
    let url = parse_secure_url(&u).map_err(|e| field(&e.to_string()))?;
    if url.scheme() != "https" || url.path() == "/" || url.path().is_empty() {
        return Err(field(
            "a client ID metadata document URL must be https with a path",
        ));
    }
    Ok(Some(url))
}

/// A file setting: an absolute path (or `~/`).
fn absolute_file(
    name: &ServerName,
    field: &'static str,
    path: PathBuf,
) -> Result<PathBuf, InvalidInput> {
    let path = expand_home(path);
    if path.is_absolute() {
        Ok(path)
    } else {
        Err(InvalidInput::Field {
            server: name.to_string(),
            field,
            reason: format!(
                "{} must be an absolute path (or start with ~/)",
                path.display()
            ),
        })
    }
}

/// A server's `import`: its path absolute (or `~/`).
fn validate_import(name: &ServerName, raw: RawImport) -> Result<TokenImport, InvalidInput> {
    Ok(TokenImport {
        path: absolute_file(name, "import", raw.path)?,
        format: raw.format,
    })
}

/// A server's `export`: its path absolute (or `~/`).
fn validate_export(name: &ServerName, raw: RawExport) -> Result<TokenExport, InvalidInput> {
    Ok(TokenExport {
        path: absolute_file(name, "export", raw.path)?,
        format: raw.format,
        refresh_token: raw.refresh_token,
    })
}

/// `client_key_file`, with `client_key_alg` only beside it.
fn validate_client_key(
    name: &ServerName,
    file: Option<PathBuf>,
    alg: Option<KeyAlgorithm>,
) -> Result<Option<ClientKey>, InvalidInput> {
    match (file, alg) {
        (Some(path), alg) => Ok(Some(ClientKey {
            path: absolute_file(name, "client_key_file", path)?,
            alg: alg.unwrap_or_default(),
        })),
        (None, Some(_)) => Err(field_error(
            name,
            "client_key_alg",
            "client_key_alg needs a client_key_file",
        )),
        (None, None) => Ok(None),
    }
}

/// Which of the settings a grant needs are set.
struct GrantInputs {
    client_id: bool,
    client_secret: bool,
    client_key: bool,
    assertion_file: bool,
    identity_provider: bool,
}

/// What `grant` needs is set (and a client key is not used by the
/// authorization code grant).
fn check_grant(name: &ServerName, grant: GrantKind, has: &GrantInputs) -> Result<(), InvalidInput> {
    let field = |field: &'static str, reason: &str| field_error(name, field, reason);
    match grant {
        GrantKind::AuthorizationCode => {
            if has.client_key {
                return Err(field(
                    "client_key_file",
                    "a client key is used by grant = \"client_credentials\", \"workload\" or \"enterprise\"",
                ));
            }
        }
        GrantKind::ClientCredentials => {
            if !has.client_id || (!has.client_secret && !has.client_key) {
                return Err(field(
                    "grant",
                    "client_credentials needs a client_id and its client_secret_file (or client_secret, or client_key_file)",
                ));
            }
        }
        GrantKind::Enterprise => {
            if !has.identity_provider || !has.client_id {
                return Err(field(
                    "grant",
                    "enterprise needs identity_provider (an [identity_providers.NAME] section) and the client_id registered at the server's authorization server",
                ));
            }
        }
        GrantKind::Workload => {
            if !has.assertion_file {
                return Err(field(
                    "grant",
                    "workload needs assertion_file: the file the platform writes the workload token to",
                ));
            }
        }
    }
    Ok(())
}

/// A server's `identity_provider`: only with grant = "enterprise".
fn server_identity_provider(
    name: &ServerName,
    grant: GrantKind,
    identity_provider: Option<String>,
) -> Result<Option<ServerName>, InvalidInput> {
    match identity_provider {
        None => Ok(None),
        Some(_) if grant != GrantKind::Enterprise => Err(field_error(
            name,
            "identity_provider",
            "identity_provider is used by grant = \"enterprise\"",
        )),
        Some(idp) => Ok(Some(ServerName::parse(&idp)?)),
    }
}

/// `auth_server_metadata_url`: a secure URL.
fn validate_auth_server_metadata_url(
    name: &ServerName,
    raw: Option<String>,
) -> Result<Option<Url>, InvalidInput> {
    raw.map(|u| {
        parse_secure_url(&u)
            .map_err(|e| field_error(name, "auth_server_metadata_url", &e.to_string()))
    })
    .transpose()
}

/// `authorization_params`: no parameter mcpauthd sets itself, no empty
/// name.
fn validate_authorization_params(
    name: &ServerName,
    params: Option<BTreeMap<String, String>>,
) -> Result<Option<BTreeMap<String, String>>, InvalidInput> {
    if let Some(params) = &params {
        if let Some(reserved) = params
            .keys()
            .find(|k| RESERVED_AUTHORIZATION_PARAMS.contains(&k.as_str()))
        {
            return Err(field_error(
                name,
                "authorization_params",
                &format!(
                    "{:?} is set by mcpauthd itself (use scopes = [...] for scope)",
                    truncate_for_message(reserved)
                ),
            ));
        }
        if params.keys().any(|k| k.is_empty()) {
            return Err(field_error(
                name,
                "authorization_params",
                "a parameter name is empty",
            ));
        }
    }
    Ok(params)
}

/// What `mcpauthctl add` asks for.
#[derive(Clone, Debug, Default)]
pub struct NewServer {
    pub name: String,
    pub url: String,
    pub client_id: Option<String>,
    pub client_secret_file: Option<PathBuf>,
    pub scopes: Vec<String>,
    pub callback_port: Option<u16>,
    pub client_metadata_url: Option<String>,
    pub login_hint: Option<String>,
}

const NEW_FILE_HEADER: &str = "\
# mcpauth configuration: the servers mcpauthd brokers tokens for.
# Edits apply live. Reference: https://github.com/mcpauth/mcpauth#configuration
";

/// Edits of `config.toml` that keep everything else in the file as it was.
pub struct ConfigDocument {
    doc: toml_edit::DocumentMut,
    /// A new file starts with a short header comment.
    header: bool,
}

impl ConfigDocument {
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        // Validate the whole file first: never write on top of a broken file.
        Config::parse(text, path)?;
        let doc = text.parse::<toml_edit::DocumentMut>().map_err(|e| {
            let (line, column) = e
                .span()
                .map_or((0, 0), |span| line_column(text, span.start));
            ConfigError::Syntax {
                path: path.to_path_buf(),
                line,
                column,
                message: syntax_message(e.message(), e.span(), text),
            }
        })?;
        Ok(Self { doc, header: false })
    }

    pub fn new_file() -> Self {
        Self {
            doc: toml_edit::DocumentMut::new(),
            header: true,
        }
    }

    pub fn contains(&self, name: &ServerName) -> bool {
        self.doc
            .get("servers")
            .and_then(|s| s.as_table_like())
            .is_some_and(|t| t.contains_key(name.as_str()))
    }

    /// Adds a `[servers.NAME]` table. The caller checks for duplicates.
    pub fn add(&mut self, name: &ServerName, server: &NewServer) {
        use toml_edit::{Array, Item, Table, value};
        let servers = self
            .doc
            .entry("servers")
            .or_insert_with(|| {
                let mut t = Table::new();
                t.set_implicit(true);
                Item::Table(t)
            })
            .as_table_mut()
            .expect("servers is a table (validated)");
        let mut table = Table::new();
        table.insert("url", value(server.url.trim()));
        if let Some(id) = &server.client_id {
            table.insert("client_id", value(id.as_str()));
        }
        if let Some(file) = &server.client_secret_file {
            table.insert("client_secret_file", value(file.to_string_lossy().as_ref()));
        }
        if !server.scopes.is_empty() {
            let scopes: Array = server.scopes.iter().map(String::as_str).collect();
            table.insert("scopes", value(scopes));
        }
        if let Some(port) = server.callback_port {
            table.insert("callback_port", value(i64::from(port)));
        }
        if let Some(url) = &server.client_metadata_url {
            table.insert("client_metadata_url", value(url.as_str()));
        }
        if let Some(hint) = &server.login_hint {
            table.insert("login_hint", value(hint.as_str()));
        }
        servers.insert(name.as_str(), Item::Table(table));
    }

    /// Removes `[servers.NAME]` and the comments directly above it.
    /// Comments separated from the table by a blank line belong to the file
    /// (a preamble, a note on the next section) and stay.
    pub fn remove(&mut self, name: &ServerName) -> bool {
        let Some(servers) = self.doc.get_mut("servers").and_then(|s| s.as_table_mut()) else {
            return false;
        };
        let Some(removed) = servers.remove(name.as_str()) else {
            return false;
        };
        let Some(table) = removed.as_table() else {
            return true;
        };
        let prefix = table
            .decor()
            .prefix()
            .and_then(|p| p.as_str())
            .unwrap_or("");
        let kept = prefix.rfind("\n\n").map_or("", |i| &prefix[..i + 2]);
        if kept.trim().is_empty() {
            return true;
        }
        let position = table.position();
        let next = servers
            .iter_mut()
            .filter_map(|(_, item)| item.as_table_mut())
            .filter(|t| t.position() > position)
            .min_by_key(|t| t.position());
        match next {
            Some(next) => {
                let old = next
                    .decor()
                    .prefix()
                    .and_then(|p| p.as_str())
                    .unwrap_or("")
                    .to_string();
                next.decor_mut().set_prefix(format!("{kept}{old}"));
            }
            None => {
                let old = self.doc.trailing().as_str().unwrap_or("").to_string();
                self.doc.set_trailing(format!("{kept}{old}"));
            }
        }
        true
    }

    pub fn to_text(&self) -> String {
        if self.header {
            format!("{NEW_FILE_HEADER}\n{}", self.doc)
        } else {
            self.doc.to_string()
        }
    }
}

/// Writes `text` to `path` atomically. An existing file keeps its
/// permission bits; a new one is 0600 (it may hold a client secret).
pub fn write_atomically(path: &Path, text: &str) -> Result<(), ConfigError> {
    let mode = std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o600);
    crate::fsutil::write_atomically(path, text.as_bytes(), mode).map_err(|source| {
        ConfigError::Write {
            path: path.to_path_buf(),
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_defined_twice_is_named_and_a_repeated_key_too() {
        let text = "[servers.demo]\nurl = \"https://a.example/mcp\"\n\n[servers.demo]\nurl = \"https://b.example/mcp\"\n";
        let e = Config::parse(text, Path::new("/c.toml"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "/c.toml: line 4, column 10: the server \"demo\" is defined twice (a second [servers.demo] table); keep one"
        );
        let text = "[servers.demo]\nurl = \"https://a.example/mcp\"\nclient_id = \"c\"\nclient_secret = \"s3cr3t-one\"\nclient_secret = \"s3cr3t-two\"\n";
        let e = Config::parse(text, Path::new("/c.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("client_secret is set twice"), "{e}");
        assert!(!e.contains("s3cr3t"), "{e}");
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("config.toml"))
    }

    #[test]
    fn names_follow_the_documented_alphabet() {
        for ok in ["linear", "a", "A.b_c-9", &"x".repeat(64)] {
            assert!(ServerName::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "../x",
            &"x".repeat(65),
            "a b",
            "a/b",
            ".",
            "..",
            "é",
            "a\0b",
        ] {
            assert!(ServerName::parse(bad).is_err(), "{bad:?} should be refused");
        }
        // A name that reads as an option loads, but is not added anew.
        assert!(ServerName::parse("-x").is_ok());
        let refused = ServerName::parse_new("-x").unwrap_err().to_string();
        assert!(refused.contains("starts with '-'"), "{refused}");
        assert!(ServerName::parse_new("x-").is_ok());
    }

    #[test]
    fn parses_every_field() {
        let with_files = parse(
            r#"
            [servers.h]
            url = "https://h.example/mcp"
            import = { path = "/tmp/in.json", format = "hermes" }
            export = { path = "/tmp/out.json", format = "generic", refresh_token = true }
            "#,
        )
        .unwrap();
        let h = &with_files.servers[&ServerName::parse("h").unwrap()];
        assert_eq!(h.import.as_ref().unwrap().format, TokenFileFormat::Hermes);
        assert!(h.export.as_ref().unwrap().refresh_token);
        assert!(parse("[servers.h]\nurl = \"https://h.example\"\nexport = { path = \"rel.json\", format = \"hermes\" }").is_err());
        assert!(parse("[servers.h]\nurl = \"https://h.example\"\nexport = { path = \"/a\", format = \"xml\" }").is_err());
        let cfg = parse(
            r#"
            [servers.linear]
            url = "https://mcp.linear.app/mcp"
            client_id = "abc"
            client_secret = "s3cr3t"
            scopes = ["read", "write"]
            callback_port = 33418
            client_metadata_url = "https://example.com/client.json"

            [servers.local]
            url = "http://127.0.0.1:8080/mcp"
            "#,
        )
        .unwrap();
        let linear = &cfg.servers[&ServerName::parse("linear").unwrap()];
        assert_eq!(linear.url.as_str(), "https://mcp.linear.app/mcp");
        assert_eq!(linear.client_id.as_deref(), Some("abc"));
        assert_eq!(
            linear.client_secret,
            Some(ClientSecret::Inline(Secret::new("s3cr3t")))
        );
        assert_eq!(linear.scopes, ["read", "write"]);
        assert_eq!(linear.callback_port, Some(33418));
        assert_eq!(cfg.servers.len(), 2);
        assert!(parse("").unwrap().servers.is_empty());
    }

    #[test]
    fn settings_for_servers_that_bend_the_spec() {
        let cfg = parse(
            r#"
            [servers.g]
            url = "https://g.example/mcp"
            assume_pkce_s256 = true
            send_resource = false
            auth_server_metadata_url = "https://slack.example/.well-known/oauth-authorization-server"
            authorization_params = { audience = "https://api.example", access_type = "online" }
            allow_missing_iss = true

            [servers.plain]
            url = "https://p.example/mcp"
            "#,
        )
        .unwrap();
        let g = &cfg.servers[&ServerName::parse("g").unwrap()].settings;
        let f = g.in_force("https://accounts.google.com");
        assert!(f.assume_pkce_s256 && !f.send_resource && f.allow_missing_iss);
        // config.toml wins over the built-in default, as a whole.
        assert_eq!(
            f.authorization_params,
            [
                ("access_type".to_string(), "online".to_string()),
                ("audience".to_string(), "https://api.example".to_string())
            ]
        );
        assert!(f.from_builtin.is_empty());
        let plain = &cfg.servers[&ServerName::parse("plain").unwrap()].settings;
        let spec = plain.in_force("https://as.example");
        assert!(!spec.assume_pkce_s256 && spec.send_resource && !spec.allow_missing_iss);
        assert!(spec.authorization_params.is_empty() && spec.from_builtin.is_empty());
        let google = plain.in_force("https://accounts.google.com");
        assert_eq!(google.authorization_params.len(), 2);
        assert_eq!(google.from_builtin, ["authorization_params"]);
        // Exact issuer only.
        assert!(
            plain
                .in_force("https://accounts.google.com/")
                .authorization_params
                .is_empty()
        );
        let entra = plain.in_force("https://login.microsoftonline.com/tenant-1/v2.0");
        assert!(entra.assume_pkce_s256 && !entra.send_resource);
        assert_eq!(entra.from_builtin, ["assume_pkce_s256", "send_resource"]);
        for reserved in [
            "state",
            "redirect_uri",
            "scope",
            "resource",
            "code_challenge",
        ] {
            let e = parse(&format!(
                "[servers.x]\nurl = \"https://x.example\"\nauthorization_params = {{ {reserved} = \"v\" }}"
            ))
            .unwrap_err()
            .to_string();
            assert!(e.contains("authorization_params"), "{e}");
        }
        assert!(parse("[servers.x]\nurl = \"https://x.example\"\nauth_server_metadata_url = \"http://evil.example/m\"").is_err());
    }

    #[test]
    fn proxy_and_ca_file_at_the_top_level() {
        let cfg = parse(
            "proxy = \"http://me:hunter22@proxy.corp:3128\"\nca_file = \"/etc/corp/ca.pem\"\n",
        )
        .unwrap();
        assert_eq!(
            cfg.network.proxy.as_ref().map(Secret::expose),
            Some("http://me:hunter22@proxy.corp:3128")
        );
        assert_eq!(
            cfg.network.ca_file.as_deref(),
            Some(Path::new("/etc/corp/ca.pem"))
        );
        assert!(!format!("{cfg:?}").contains("hunter22"));
        for bad in [
            "proxy = \"proxy.corp:3128\"",
            "proxy = \"ftp://proxy.corp\"",
            "ca_file = \"relative.pem\"",
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(!e.contains("hunter22"), "{e}");
            assert!(e.contains("proxy") || e.contains("ca_file"), "{e}");
        }
        let e = parse("proxy = \"http://me:hunter22@\"")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("hunter22"), "{e}");
    }

    #[test]
    fn refuses_bad_servers_with_a_reason() {
        let cases = [
            ("[servers.x]\nurl = \"http://example.com\"", "loopback"),
            ("[servers.x]\nurl = \"https://e.com/#f\"", "fragment"),
            ("[servers.x]\nurl = \"https://u:p@e.com/\"", "user name"),
            ("[servers.\"a/b\"]\nurl = \"https://e.com\"", "not allowed"),
            (
                "[servers.x]\nurl = \"https://e.com\"\ncolor = 1",
                "unknown field",
            ),
            (
                "[servers.x]\nurl = \"https://e.com\"\nclient_id=\"a\"\nclient_secret=\"b\"\nclient_secret_file=\"c\"",
                "not both",
            ),
            (
                "[servers.x]\nurl = \"https://e.com\"\nclient_secret=\"b\"",
                "needs a client_id",
            ),
            (
                "[servers.x]\nurl = \"https://e.com\"\nscopes=[\"a b\"]",
                "scope",
            ),
            (
                "[servers.x]\nurl = \"https://e.com\"\ncallback_port=0",
                "port",
            ),
        ];
        for (text, expected) in cases {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(expected), "{text:?}: {err}");
        }
    }

    #[test]
    fn grants_and_their_keys() {
        let cfg = parse(
            r#"
            [servers.plain]
            url = "https://a.example/mcp"

            [servers.ci]
            url = "https://tools.example.com/mcp"
            grant = "client_credentials"
            client_id = "svc-ci"
            client_secret_file = "/s/svc-ci"

            [servers.jwt]
            url = "https://tools.example.com/mcp"
            grant = "client_credentials"
            client_id = "svc-ci"
            client_key_file = "/s/svc-ci.pem"
            client_key_alg = "ES256"

            [servers.k8s]
            url = "https://tools.internal/mcp"
            grant = "workload"
            assertion_file = "/var/run/secrets/tokens/mcp"

            [servers.wiki]
            url = "https://wiki.corp.example/mcp"
            grant = "enterprise"
            identity_provider = "corp"
            client_id = "wiki-client"

            [identity_providers.corp]
            issuer = "https://login.corp.example"
            client_id = "mcpauth-desktop"
            id_token_file = "/run/sso/id_token"
            "#,
        )
        .unwrap();
        let get = |n: &str| &cfg.servers[&ServerName::parse(n).unwrap()];
        assert_eq!(get("plain").grant, GrantKind::AuthorizationCode);
        assert!(!get("plain").grant.unattended());
        assert_eq!(get("ci").grant, GrantKind::ClientCredentials);
        assert!(get("ci").grant.unattended());
        assert_eq!(
            get("jwt").client_key,
            Some(ClientKey {
                path: "/s/svc-ci.pem".into(),
                alg: KeyAlgorithm::ES256
            })
        );
        assert_eq!(get("wiki").grant, GrantKind::Enterprise);
        assert!(get("wiki").grant.unattended() && get("wiki").grant.has_login());
        let corp = &cfg.identity_providers[&ServerName::parse("corp").unwrap()];
        assert_eq!(corp.issuer, "https://login.corp.example");
        assert_eq!(
            corp.id_token_file.as_deref(),
            Some(Path::new("/run/sso/id_token"))
        );
        assert_eq!(get("k8s").grant, GrantKind::Workload);
        assert_eq!(
            get("k8s").assertion_file.as_deref(),
            Some(Path::new("/var/run/secrets/tokens/mcp"))
        );
    }

    #[test]
    fn refuses_grants_without_their_keys() {
        let u = "url = \"https://e.com\"\n";
        let cases = [
            (format!("{u}grant = \"password\""), "unknown variant"),
            (
                format!("{u}grant = \"client_credentials\""),
                "needs a client_id",
            ),
            (
                format!("{u}grant = \"client_credentials\"\nclient_id = \"a\""),
                "needs a client_id and its client_secret_file",
            ),
            (format!("{u}grant = \"workload\""), "needs assertion_file"),
            (
                format!("{u}assertion_file = \"/x\""),
                "used by grant = \"workload\"",
            ),
            (
                format!("{u}grant = \"workload\"\nassertion_file = \"rel\""),
                "absolute path",
            ),
            (
                format!("{u}client_id = \"a\"\nclient_key_file = \"/k\""),
                "used by grant",
            ),
            (
                format!(
                    "{u}grant = \"client_credentials\"\nclient_id = \"a\"\nclient_secret = \"s\"\nclient_key_file = \"/k\""
                ),
                "not both",
            ),
            (
                format!(
                    "{u}grant = \"client_credentials\"\nclient_id = \"a\"\nclient_key_file = \"/k\"\nclient_key_alg = \"RS256\""
                ),
                "unknown variant",
            ),
            (
                format!("{u}client_key_alg = \"ES256\""),
                "needs a client_key_file",
            ),
            (
                format!("{u}grant = \"enterprise\"\nclient_id = \"a\""),
                "enterprise needs identity_provider",
            ),
            (
                format!(
                    "{u}grant = \"enterprise\"\nclient_id = \"a\"\nidentity_provider = \"corp\""
                ),
                "no [identity_providers.corp] section",
            ),
            (
                format!("{u}identity_provider = \"corp\""),
                "used by grant = \"enterprise\"",
            ),
        ];
        for (body, expected) in cases {
            let text = format!("[servers.x]\n{body}");
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains(expected), "{text:?}: {err}");
        }
    }

    #[test]
    fn syntax_errors_locate_the_problem_without_quoting_secrets() {
        let text = "[servers.x]\nurl = \"https://e.com\"\nclient_id = \"a\"\nclient_secret = \"hunter2-secret\n";
        let err = parse(text).unwrap_err();
        let shown = err.to_string();
        assert!(
            matches!(err, ConfigError::Syntax { line: 4, .. }),
            "{shown}"
        );
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!format!("{err:?}").contains("hunter2"));
    }

    #[test]
    fn debug_output_redacts_inline_secrets() {
        let cfg = parse(
            "[servers.x]\nurl = \"https://e.com\"\nclient_id = \"a\"\nclient_secret = \"hunter2-secret\"",
        )
        .unwrap();
        assert!(!format!("{cfg:?}").contains("hunter2"));
    }

    #[test]
    fn edits_keep_comments_and_layout() {
        let text = "# my servers\n\n[servers.a]   # first\nurl = \"https://a.example\" # A\n\n# keep me\n[servers.b]\nurl = \"https://b.example\"\n";
        let mut doc = ConfigDocument::parse(text, Path::new("c")).unwrap();
        let c = ServerName::parse("c").unwrap();
        assert!(!doc.contains(&c));
        doc.add(
            &c,
            &NewServer {
                name: "c".into(),
                url: "https://c.example/mcp".into(),
                scopes: vec!["read".into()],
                callback_port: Some(4000),
                ..Default::default()
            },
        );
        let out = doc.to_text();
        assert!(out.starts_with(text), "existing text unchanged:\n{out}");
        let cfg = parse(&out).unwrap();
        assert_eq!(cfg.servers[&c].scopes, ["read"]);
        assert_eq!(cfg.servers[&c].callback_port, Some(4000));

        let mut doc = ConfigDocument::parse(&out, Path::new("c")).unwrap();
        assert!(doc.remove(&ServerName::parse("a").unwrap()));
        assert!(!doc.remove(&ServerName::parse("zzz").unwrap()));
        let out = doc.to_text();
        assert!(out.contains("# my servers"), "{out}");
        assert!(out.contains("# keep me"), "{out}");
        assert!(!out.contains("a.example"), "{out}");
        assert_eq!(parse(&out).unwrap().servers.len(), 2);
    }

    #[test]
    fn new_file_gets_a_header_and_parses() {
        let mut doc = ConfigDocument::new_file();
        let name = ServerName::parse("x").unwrap();
        doc.add(
            &name,
            &NewServer {
                url: "https://x.example".into(),
                ..Default::default()
            },
        );
        let text = doc.to_text();
        assert!(text.starts_with("# mcpauth configuration"));
        assert!(text.contains("[servers.x]"), "{text}");
        assert!(parse(&text).unwrap().servers.contains_key(&name));
    }

    #[test]
    fn atomic_write_keeps_mode_and_creates_private_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        write_atomically(&path, "a = 1\n").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        write_atomically(&path, "a = 2\n").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a = 2\n");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
