//! Adopting the logins other tools hold (`mcpauthctl import` and `adopt`).
//!
//! The CLI finds what each tool knows (its server list, where it keeps its
//! tokens, which entry belongs to which URL) and sends that here as
//! [`ImportItem`]s: names, URLs, paths and keys, never a secret. The daemon
//! reads the tool's token store itself, so no token or client secret ever
//! crosses the socket inwards, and adopts each grant through the one
//! install path (`install.rs`). Per item, in this order:
//!
//! 1. the tool's entry is read and parsed; a malformed or partial one
//!    changes nothing, not even `config.toml`;
//! 2. the server is found by URL in `config.toml` or added there (a name
//!    taken by another URL gets `NAME-TOOL`, then a number);
//! 3. the authorization server is discovered for the URL, and the grant is
//!    bound to it: an issuer (or token endpoint) the tool recorded must be
//!    the discovered one, or nothing is adopted;
//! 4. under the server's lock, a grant the broker already holds wins
//!    unless the tool's expires later; the tool's client registration is
//!    stored for the issuer (a refresh needs the client the refresh token
//!    was issued to) and the grant is installed.
//!
//! With `dry_run`, steps 2 and 4 write nothing; the verdicts are what a
//! real run would do. The tool's own files are never changed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;
use tracing::{info, warn};
use url::Url;

use crate::config::{Config, GrantKind, InvalidInput, NewServer, ServerName};
use crate::config_edit::ConfigEditor;
use crate::context::Context;
use crate::error::BrokerError;
use crate::install::{GrantSource, Installer, NewGrant};
use crate::secret::Secret;
use crate::state::{ClientAuthMethod, Discovery, Registration, RegistrationKind};
use crate::store::StoreError;

/// Token stores larger than this are not read (Claude Code's
/// `.credentials.json` holds every login it has; a few KiB each).
const MAX_STORE: u64 = 4 * 1024 * 1024;

/// A tool whose logins can be adopted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tool {
    Codex,
    ClaudeCode,
    McpRemote,
    Hermes,
}

impl Tool {
    pub fn parse(id: &str) -> Option<Self> {
        Some(match id {
            "codex" => Tool::Codex,
            "claude-code" => Tool::ClaudeCode,
            "mcp-remote" => Tool::McpRemote,
            "hermes" => Tool::Hermes,
            _ => return None,
        })
    }

    pub fn id(self) -> &'static str {
        match self {
            Tool::Codex => "codex",
            Tool::ClaudeCode => "claude-code",
            Tool::McpRemote => "mcp-remote",
            Tool::Hermes => "hermes",
        }
    }
}

/// One server a tool knows, and where its login is (if anywhere).
#[derive(Clone, Debug)]
pub struct ImportItem {
    pub tool: Tool,
    /// The tool's name for the server.
    pub name: String,
    pub url: String,
    /// The tool's token store; `None` when it holds no login for the URL.
    pub store: Option<PathBuf>,
    /// The entry in `store` (Codex, Claude Code: `NAME|HASH`); `None` for a
    /// file of its own (mcp-remote, Hermes).
    pub key: Option<String>,
    /// The client registration file (mcp-remote, Hermes).
    pub client_info: Option<PathBuf>,
    /// The login, if any, is in the OS keyring (Codex's default store).
    pub keyring: bool,
}

/// What happened to one item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The grant is the broker's now (or would be, in a dry run).
    Adopted,
    /// The broker already holds this grant or a newer one.
    Current(String),
    /// No usable login to adopt: a person must log in.
    LoginNeeded(String),
    /// Not adopted, and why.
    Skipped(String),
}

#[derive(Clone, Debug)]
pub struct ImportOutcome {
    pub tool: Tool,
    pub tool_name: String,
    /// The broker's name for the server (empty when none was chosen).
    pub server: String,
    pub url: String,
    /// The server entry was added to `config.toml` (or would be).
    pub added: bool,
    /// Why `server` differs from `tool_name`, when it does.
    pub renamed: Option<String>,
    pub verdict: Verdict,
}

/// A login as a tool recorded it.
#[derive(Debug)]
pub struct ToolGrant {
    pub access_token: Secret,
    pub refresh_token: Option<Secret>,
    pub expires_at_ms: Option<i64>,
    pub scopes: Vec<String>,
    pub issuer: Option<String>,
    pub token_endpoint: Option<String>,
    /// The URL the tool recorded the login for, if it did.
    pub server_url: Option<String>,
    pub client: Option<ToolClient>,
}

/// The client registration a tool's grant belongs to.
#[derive(Debug)]
pub struct ToolClient {
    pub client_id: String,
    pub client_secret: Option<Secret>,
    pub auth_method: Option<ClientAuthMethod>,
    pub redirect_uri: String,
}

/// A file read for import: its bytes and modification time (Unix ms).
pub struct ReadFile {
    pub bytes: Vec<u8>,
    pub mtime_ms: i64,
}

fn read_file(path: &Path) -> Result<Option<ReadFile>, String> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    if !meta.is_file() {
        return Err(format!("{} is not a file", path.display()));
    }
    if meta.len() > MAX_STORE {
        return Err(format!("{} is larger than 4 MiB", path.display()));
    }
    let mtime_ms = meta
        .modified()
        .ok()
        .and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as i64);
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(Some(ReadFile { bytes, mtime_ms }))
}

/// Parse errors name a line and column, never the text (it holds tokens).
fn json(file: &ReadFile, path: &Path) -> Result<Value, String> {
    serde_json::from_slice(&file.bytes).map_err(|e| {
        format!(
            "{} is not JSON (line {}, column {}); nothing was changed",
            path.display(),
            e.line(),
            e.column()
        )
    })
}

fn partial(path: &Path, what: &str) -> String {
    format!(
        "{} is partial or malformed: {what}; nothing was changed",
        path.display()
    )
}

fn str_field(v: &Value, key: &str) -> Option<String> {
    v.get(key)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

fn required(v: &Value, key: &str, path: &Path) -> Result<String, String> {
    str_field(v, key).ok_or_else(|| partial(path, &format!("`{key}` is missing")))
}

/// A number as milliseconds; `None` when absent, an error when not a time.
fn number(v: &Value, key: &str, path: &Path) -> Result<Option<f64>, String> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(n) => n
            .as_f64()
            .filter(|n| n.is_finite() && *n >= 0.0)
            .map(Some)
            .ok_or_else(|| partial(path, &format!("`{key}` is not a number"))),
    }
}

fn scope_list(v: &Value, key: &str) -> Vec<String> {
    match v.get(key) {
        Some(Value::String(s)) => s.split_whitespace().map(str::to_string).collect(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .flat_map(str::split_whitespace)
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

fn auth_method(v: &Value) -> Option<ClientAuthMethod> {
    match v
        .get("token_endpoint_auth_method")
        .and_then(Value::as_str)?
    {
        "none" => Some(ClientAuthMethod::None),
        "client_secret_basic" => Some(ClientAuthMethod::ClientSecretBasic),
        "client_secret_post" => Some(ClientAuthMethod::ClientSecretPost),
        _ => None,
    }
}

/// An RFC 7591 client information file (mcp-remote's `_client_info.json`,
/// Hermes' `.client.json`).
fn client_info_file(path: &Path) -> Result<Option<ToolClient>, String> {
    let Some(file) = read_file(path)? else {
        return Ok(None);
    };
    let v = json(&file, path)?;
    Ok(Some(ToolClient {
        client_id: required(&v, "client_id", path)?,
        client_secret: str_field(&v, "client_secret").map(Secret::new),
        auth_method: auth_method(&v),
        redirect_uri: v
            .get("redirect_uris")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
    }))
}

/// An OAuth token response as mcp-remote and Hermes keep it: `expires_at`
/// (`ms_per_unit` milliseconds per unit) when present, else the file's
/// time plus `expires_in`.
fn token_response(
    v: &Value,
    file: &ReadFile,
    path: &Path,
    ms_per_unit: f64,
) -> Result<ToolGrant, String> {
    if let Some(t) = str_field(v, "token_type")
        && !t.eq_ignore_ascii_case("bearer")
    {
        return Err(partial(path, "only Bearer tokens can be adopted"));
    }
    let expires_at_ms = match (
        number(v, "expires_at", path)?,
        number(v, "expires_in", path)?,
    ) {
        (Some(at), _) => Some((at * ms_per_unit) as i64),
        (None, Some(secs)) => Some(file.mtime_ms.saturating_add((secs * 1000.0) as i64)),
        (None, None) => None,
    };
    Ok(ToolGrant {
        access_token: Secret::new(required(v, "access_token", path)?),
        refresh_token: str_field(v, "refresh_token").map(Secret::new),
        expires_at_ms,
        scopes: scope_list(v, "scope"),
        issuer: str_field(v, "issuer").or_else(|| str_field(v, "hermes_issuer")),
        token_endpoint: str_field(v, "token_endpoint"),
        server_url: None,
        client: None,
    })
}

/// Reads the login `item` points at: `Ok(None)` when the tool holds none.
pub fn read_grant(item: &ImportItem) -> Result<Option<ToolGrant>, String> {
    let Some(path) = &item.store else {
        return Ok(None);
    };
    let Some(file) = read_file(path)? else {
        return Ok(None);
    };
    let v = json(&file, path)?;
    let mut grant = match item.tool {
        Tool::Codex => {
            let Some(key) = &item.key else {
                return Ok(None);
            };
            let Some(e) = v.as_object().and_then(|o| o.get(key)) else {
                return Ok(None);
            };
            let client_id = required(e, "client_id", path)?;
            ToolGrant {
                access_token: Secret::new(required(e, "access_token", path)?),
                refresh_token: str_field(e, "refresh_token").map(Secret::new),
                expires_at_ms: number(e, "expires_at", path)?.map(|ms| ms as i64),
                scopes: scope_list(e, "scopes"),
                issuer: str_field(e, "issuer"),
                token_endpoint: None,
                server_url: str_field(e, "server_url"),
                client: Some(ToolClient {
                    client_id,
                    client_secret: None,
                    auth_method: None,
                    redirect_uri: String::new(),
                }),
            }
        }
        Tool::ClaudeCode => {
            let Some(key) = &item.key else {
                return Ok(None);
            };
            let Some(e) = v.get("mcpOAuth").and_then(|o| o.get(key)) else {
                return Ok(None);
            };
            // Claude Code keeps an entry before it has a token (the client
            // registration and discovery state): no login to adopt yet.
            let Some(access_token) = str_field(e, "accessToken") else {
                return Ok(None);
            };
            let metadata = e
                .get("discoveryState")
                .and_then(|d| d.get("authorizationServerMetadata"));
            let secret = str_field(e, "clientSecret").or_else(|| {
                v.get("mcpOAuthClientConfig")
                    .and_then(|c| c.get(key))
                    .and_then(|c| str_field(c, "clientSecret"))
            });
            ToolGrant {
                access_token: Secret::new(access_token),
                refresh_token: str_field(e, "refreshToken").map(Secret::new),
                expires_at_ms: number(e, "expiresAt", path)?.map(|ms| ms as i64),
                scopes: scope_list(e, "scope"),
                issuer: str_field(e, "issuer")
                    .or_else(|| metadata.and_then(|m| str_field(m, "issuer"))),
                token_endpoint: metadata.and_then(|m| str_field(m, "token_endpoint")),
                server_url: str_field(e, "serverUrl"),
                client: Some(ToolClient {
                    client_id: required(e, "clientId", path)?,
                    client_secret: secret.map(Secret::new),
                    auth_method: None,
                    redirect_uri: str_field(e, "redirectUri").unwrap_or_default(),
                }),
            }
        }
        // mcp-remote writes `expires_at` in ms (0.1.46 and later), Hermes
        // in seconds.
        Tool::McpRemote => token_response(&v, &file, path, 1.0)?,
        Tool::Hermes => {
            let mut g = token_response(&v, &file, path, 1000.0)?;
            if g.client.is_none()
                && let Some(id) = str_field(&v, "client_id")
            {
                g.client = Some(ToolClient {
                    client_id: id,
                    client_secret: None,
                    auth_method: None,
                    redirect_uri: String::new(),
                });
            }
            g
        }
    };
    if let Some(info) = &item.client_info
        && let Some(client) = client_info_file(info)?
    {
        grant.client = Some(client);
    }
    Ok(Some(grant))
}

/// Codex's login for `item` among its keyring entries. Each value is the
/// JSON Codex stores there (`StoredOAuthTokens`): `server_name`, `url`,
/// `client_id`, `token_response` as the authorization server sent it, and
/// `expires_at` in Unix ms. `Ok(None)` when none is for the item's URL.
fn codex_keyring_grant(
    entries: &[crate::keyring::Entry],
    item: &ImportItem,
    now_ms: i64,
) -> Result<Option<ToolGrant>, String> {
    let place = Path::new("the OS keyring entry (Codex MCP Credentials)");
    let parsed: Vec<(&crate::keyring::Entry, Value)> = entries
        .iter()
        .filter_map(|e| e.json().map(|v| (e, v)))
        .collect();
    let url_of = |v: &Value| str_field(v, "url").or_else(|| str_field(v, "server_url"));
    let for_url = || {
        parsed
            .iter()
            .filter(|(_, v)| url_of(v).is_some_and(|u| same_url(&u, &item.url)))
    };
    let named = |(e, v): &&(&crate::keyring::Entry, Value)| {
        str_field(v, "server_name").as_deref() == Some(item.name.as_str())
            || e.username.split('|').next() == Some(item.name.as_str())
    };
    let Some((_, v)) = for_url().find(named).or_else(|| for_url().next()) else {
        return Ok(None);
    };
    // The token response nested (keyring), or flat (as in the file store).
    let tokens = v.get("token_response").unwrap_or(v);
    let issued = ReadFile {
        bytes: Vec::new(),
        mtime_ms: now_ms,
    };
    let mut grant = token_response(tokens, &issued, place, 1.0)?;
    if let Some(at) = number(v, "expires_at", place)? {
        grant.expires_at_ms = Some(at as i64);
    }
    if grant.scopes.is_empty() {
        grant.scopes = scope_list(v, "scopes");
    }
    grant.issuer = grant.issuer.or_else(|| str_field(v, "issuer"));
    grant.server_url = url_of(v);
    grant.client = Some(ToolClient {
        client_id: required(v, "client_id", place)?,
        client_secret: None,
        auth_method: None,
        redirect_uri: String::new(),
    });
    Ok(Some(grant))
}

/// `name` made a valid server name: other characters become `-`.
fn sanitize(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    s.truncate(48);
    let s = s.trim_matches(|c| c == '-' || c == '.').to_string();
    if s.is_empty() { "server".into() } else { s }
}

/// For each item whose login is a file of its own (no entry key), another
/// URL that an item names the same file for, if any: such a file belongs
/// to no server.
fn shared_files(items: &[ImportItem]) -> Vec<Option<String>> {
    items
        .iter()
        .map(|item| {
            let store = item.store.as_ref().filter(|_| item.key.is_none())?;
            items
                .iter()
                .filter(|o| o.key.is_none() && o.store.as_ref() == Some(store))
                .find(|o| !same_url(&o.url, &item.url))
                .map(|o| o.url.clone())
        })
        .collect()
}

/// Two URLs are the same server: parsed, without a trailing slash.
pub fn same_url(a: &str, b: &str) -> bool {
    let normalize = |u: &str| {
        url::Url::parse(u.trim())
            .map(|u| u.to_string())
            .unwrap_or_else(|_| u.trim().to_string())
            .trim_end_matches('/')
            .to_string()
    };
    normalize(a) == normalize(b)
}

/// The importer holds no lock of its own: it edits `config.toml` through
/// the config editor and installs under the server's `ServerGuard`.
pub struct Importer {
    ctx: Arc<Context>,
    editor: Arc<ConfigEditor>,
    installer: Arc<Installer>,
}

impl Importer {
    pub fn new(ctx: Arc<Context>, editor: Arc<ConfigEditor>, installer: Arc<Installer>) -> Self {
        Self {
            ctx,
            editor,
            installer,
        }
    }

    /// Imports every item in order; see the module doc.
    pub async fn import(
        &self,
        items: Vec<ImportItem>,
        dry_run: bool,
    ) -> Result<Vec<ImportOutcome>, BrokerError> {
        let mut outcomes = Vec::new();
        // Names a dry run would have added, so later items see them.
        let mut planned: Vec<(String, String)> = Vec::new();
        // The keyring is searched once for every item that looks there.
        let keyring = if items.iter().any(|i| i.keyring) {
            Some(crate::keyring::entries(crate::keyring::CODEX_SERVICE).await)
        } else {
            None
        };
        let shared = shared_files(&items);
        for (i, item) in items.into_iter().enumerate() {
            let outcome = match &shared[i] {
                // A file of its own that other items name for another URL:
                // whose login it is cannot be told, so it is nobody's.
                Some(other) => ImportOutcome {
                    tool: item.tool,
                    tool_name: item.name.clone(),
                    server: String::new(),
                    url: item.url.clone(),
                    added: false,
                    renamed: None,
                    verdict: Verdict::Skipped(format!(
                        "its login file {} is named for {other} too, so whose login it holds cannot be told; nothing was changed",
                        item.store.as_deref().unwrap_or(Path::new("")).display()
                    )),
                },
                None => {
                    self.import_one(&item, dry_run, &mut planned, keyring.as_ref())
                        .await?
                }
            };
            match &outcome.verdict {
                Verdict::Skipped(why) | Verdict::LoginNeeded(why) => {
                    info!(tool = item.tool.id(), server = %outcome.server, reason = %why, "import: not adopted");
                }
                Verdict::Adopted | Verdict::Current(_) => {}
            }
            outcomes.push(outcome);
        }
        Ok(outcomes)
    }

    async fn import_one(
        &self,
        item: &ImportItem,
        dry_run: bool,
        planned: &mut Vec<(String, String)>,
        keyring: Option<&Result<Vec<crate::keyring::Entry>, crate::keyring::KeyringError>>,
    ) -> Result<ImportOutcome, BrokerError> {
        let mut out = ImportOutcome {
            tool: item.tool,
            tool_name: item.name.clone(),
            server: String::new(),
            url: item.url.clone(),
            added: false,
            renamed: None,
            verdict: Verdict::Adopted,
        };
        match self
            .import_steps(item, dry_run, planned, keyring, &mut out)
            .await
        {
            Ok(()) => Ok(out),
            Err(Stop::Skip(why)) => {
                out.verdict = Verdict::Skipped(why);
                Ok(out)
            }
            Err(Stop::Failed(e)) => Err(e),
        }
    }

    /// The steps of the module doc for one item; each fills in `out`.
    async fn import_steps(
        &self,
        item: &ImportItem,
        dry_run: bool,
        planned: &mut Vec<(String, String)>,
        keyring: Option<&Result<Vec<crate::keyring::Entry>, crate::keyring::KeyringError>>,
        out: &mut ImportOutcome,
    ) -> Result<(), Stop> {
        let url = crate::url_policy::parse_secure_url(item.url.trim())
            .map_err(|e| Stop::Skip(e.to_string()))?;
        // 1. The tool's login, read before anything changes.
        let login = self.read_login(item, keyring).await?;

        // 2. The server: the one with this URL, or a new name for it.
        let config = self.ctx.config();
        let target = find_server(&config, item, planned, out)?;
        let now = self.ctx.now_ms();
        let grant = self.usable_grant(item, &target, login, now, out);

        // 3. Bound to the URL's own authorization server, before anything
        // is written: a refused grant adds no server either.
        let bound = match grant {
            Some(grant) => Some(self.bind(&config, &url, &target, grant, now).await?),
            None => None,
        };
        if target.new {
            self.add_server(item, &target, dry_run, planned).await?;
            out.added = true;
        }
        let Some(bound) = bound else {
            return Ok(());
        };

        // 4. Newer wins, under the server's lock.
        if dry_run {
            if !target.new
                && let Some(held) = self.ctx.store().grant(&target.server_name)?
                && let Some(v) = held_verdict(&held, &bound.grant)
            {
                out.verdict = v;
            }
            return Ok(());
        }
        self.adopt(item, &target, &url, bound, now, out).await
    }

    /// Step 1: the tool's login for `item`, from the OS keyring entries
    /// when the tool keeps it there, else from its file. A login the tool
    /// recorded for another URL is refused.
    async fn read_login(
        &self,
        item: &ImportItem,
        keyring: Option<&Result<Vec<crate::keyring::Entry>, crate::keyring::KeyringError>>,
    ) -> Result<ToolLogin, Stop> {
        let mut keyring_trouble = None;
        let grant = match keyring.filter(|_| item.keyring) {
            Some(Ok(entries)) => {
                codex_keyring_grant(entries, item, self.ctx.now_ms()).map_err(Stop::Skip)?
            }
            Some(Err(e)) => {
                keyring_trouble = Some(e.to_string());
                None
            }
            None => {
                let item = item.clone();
                match tokio::task::spawn_blocking(move || read_grant(&item)).await {
                    Ok(Ok(g)) => g,
                    Ok(Err(why)) => return Err(Stop::Skip(why)),
                    Err(e) => return Err(Stop::Failed(BrokerError::Internal(e.to_string()))),
                }
            }
        };
        if let Some(recorded) = grant.as_ref().and_then(|g| g.server_url.as_deref())
            && !same_url(recorded, &item.url)
        {
            return Err(Stop::Skip(format!(
                "the {} entry is for another URL ({recorded}); nothing was changed",
                item.tool.id()
            )));
        }
        Ok(ToolLogin {
            grant,
            keyring_trouble,
        })
    }

    /// The tool's grant, if it is one to adopt. If not (none, or expired
    /// without a refresh token), the verdict says a login is needed, or
    /// that none is: a login the broker already holds (usable:
    /// refreshable, or not expired) needs none, the tool having none is
    /// no reason to ask.
    fn usable_grant(
        &self,
        item: &ImportItem,
        target: &Target,
        login: ToolLogin,
        now: i64,
        out: &mut ImportOutcome,
    ) -> Option<ToolGrant> {
        let broker_holds = !target.new
            && self
                .ctx
                .store()
                .grant(&target.server_name)
                .ok()
                .flatten()
                .is_some_and(|g| {
                    g.refresh_token.is_some() || g.expires_at_ms.is_none_or(|at| at > now)
                });
        let no_login = |why: String| {
            if broker_holds {
                Verdict::Current(format!("the broker already holds a login for it ({why})"))
            } else {
                Verdict::LoginNeeded(why)
            }
        };
        match login.grant {
            Some(g) if g.expires_at_ms.is_some_and(|at| at <= now) && g.refresh_token.is_none() => {
                out.verdict = no_login(format!(
                    "the {} token has expired and there is no refresh token",
                    item.tool.id()
                ));
                None
            }
            Some(g) => Some(g),
            None => {
                out.verdict = no_login(match &login.keyring_trouble {
                    Some(why) => format!(
                        "{} keeps its logins in the OS keyring, which cannot be read: {why}. Log in through the broker, or set mcp_oauth_credentials_store = \"file\" in {}'s config.toml, run `{} mcp login {}` once, and import again",
                        item.tool.id(),
                        item.tool.id(),
                        item.tool.id(),
                        item.name
                    ),
                    None => format!("{} holds no login for it", item.tool.id()),
                });
                None
            }
        }
    }

    /// Step 3: `grant` bound to the authorization server of `url` (the
    /// one held for the server, else discovered now). An issuer or a
    /// token endpoint the tool recorded must be that one's.
    async fn bind(
        &self,
        config: &Config,
        url: &Url,
        target: &Target,
        grant: ToolGrant,
        now: i64,
    ) -> Result<BoundGrant, Stop> {
        let held = self
            .ctx
            .store()
            .server(&target.server_name)?
            .filter(|r| !target.new && same_url(&r.url, url.as_str()))
            .and_then(|r| r.discovery);
        let found = match held {
            Some(d) => d,
            None => match self
                .ctx
                .http
                .discover(
                    url,
                    now,
                    true,
                    &config
                        .servers
                        .get(&target.server_name)
                        .map(|c| c.settings.clone())
                        .unwrap_or_default(),
                )
                .await
            {
                Ok(found) => found.discovery,
                Err(e) => {
                    return Err(Stop::Skip(format!(
                        "its authorization server cannot be discovered: {e}"
                    )));
                }
            },
        };
        if let Some(issuer) = &grant.issuer
            && issuer.trim_end_matches('/') != found.issuer.trim_end_matches('/')
        {
            return Err(Stop::Skip(format!(
                "the grant was issued by {issuer}, but the server's authorization server is {}",
                found.issuer
            )));
        }
        if let Some(endpoint) = &grant.token_endpoint
            && endpoint != &found.metadata.token_endpoint
        {
            return Err(Stop::Skip(format!(
                "the grant's token endpoint {endpoint} is not that of the server's authorization server ({})",
                found.metadata.token_endpoint
            )));
        }
        Ok(BoundGrant {
            grant,
            discovery: found,
        })
    }

    /// Adds the new server to `config.toml` (in a dry run, only to the
    /// names later items see).
    async fn add_server(
        &self,
        item: &ImportItem,
        target: &Target,
        dry_run: bool,
        planned: &mut Vec<(String, String)>,
    ) -> Result<(), Stop> {
        if !dry_run {
            self.editor
                .add(NewServer {
                    name: target.name.clone(),
                    url: item.url.trim().to_string(),
                    client_id: None,
                    client_secret_file: None,
                    scopes: Vec::new(),
                    callback_port: None,
                    client_metadata_url: None,
                    login_hint: None,
                })
                .await?;
        }
        planned.push((target.name.clone(), item.url.clone()));
        Ok(())
    }

    /// Step 4, under the server's lock: the grant the broker holds wins
    /// unless the tool's expires later; else the tool's client is stored
    /// for the issuer and the grant installed.
    async fn adopt(
        &self,
        item: &ImportItem,
        target: &Target,
        url: &Url,
        bound: BoundGrant,
        now: i64,
        out: &mut ImportOutcome,
    ) -> Result<(), Stop> {
        let name = &target.name;
        let BoundGrant { grant, discovery } = bound;
        let guard = self.ctx.locks.lock(&target.server_name).await;
        let Some(mut record) = self.ctx.store().server(&target.server_name)? else {
            return Err(Stop::Skip("the server was removed meanwhile".into()));
        };
        if !same_url(&record.url, url.as_str()) {
            return Err(Stop::Skip("the server's URL changed meanwhile".into()));
        }
        if let Some(held) = self.ctx.store().grant(&target.server_name)?
            && let Some(v) = held_verdict(&held, &grant)
        {
            out.verdict = v;
            return Ok(());
        }
        if record.discovery.as_ref().map(|d| &d.issuer) != Some(&discovery.issuer) {
            record.discovery = Some(discovery.clone());
            self.ctx.store().put_server(&guard, &record).await?;
        }
        // The refresh token belongs to the tool's client: keep it only
        // when that client is known, and store the client for the issuer.
        let refresh_token = match &grant.client {
            Some(client) => {
                let registration = tool_registration(client, &discovery.issuer, now);
                self.ctx
                    .store()
                    .put_registration(&guard, &registration)
                    .await?;
                grant.refresh_token
            }
            None => None,
        };
        let new = NewGrant {
            account: None,
            issuer: discovery.issuer.clone(),
            client_id: grant
                .client
                .as_ref()
                .map(|c| c.client_id.clone())
                .unwrap_or_default(),
            resource: discovery.resource.clone(),
            access_token: grant.access_token,
            token_type: "Bearer".into(),
            refresh_token,
            expires_at_ms: grant.expires_at_ms,
            scopes: grant.scopes,
        };
        match self
            .installer
            .install_grant(&guard, new, GrantSource::Import, |_| {})
            .await
        {
            Ok(g) => {
                info!(server = %name, tool = item.tool.id(), generation = g.generation, "grant adopted");
                Ok(())
            }
            Err(BrokerError::Superseded { reason, .. }) => {
                warn!(server = %name, tool = item.tool.id(), %reason, "import: not adopted");
                Err(Stop::Skip(reason))
            }
            Err(e) => Err(Stop::Failed(e)),
        }
    }
}

/// Why an item's import ends early: it is skipped (and why), or the
/// broker failed.
enum Stop {
    Skip(String),
    Failed(BrokerError),
}

impl From<BrokerError> for Stop {
    fn from(e: BrokerError) -> Self {
        Stop::Failed(e)
    }
}

impl From<StoreError> for Stop {
    fn from(e: StoreError) -> Self {
        Stop::Failed(e.into())
    }
}

impl From<InvalidInput> for Stop {
    fn from(e: InvalidInput) -> Self {
        Stop::Failed(e.into())
    }
}

/// The tool's login for an item, as step 1 read it.
struct ToolLogin {
    grant: Option<ToolGrant>,
    /// Why the OS keyring, where the tool keeps its logins, cannot be
    /// read.
    keyring_trouble: Option<String>,
}

/// The server an item's login goes to (step 2).
struct Target {
    /// The broker's name for it.
    name: String,
    server_name: ServerName,
    /// Not in `config.toml` yet: added after step 3.
    new: bool,
}

/// A tool's grant bound to the server's authorization server (step 3).
struct BoundGrant {
    grant: ToolGrant,
    discovery: Discovery,
}

/// Step 2: the server with the item's URL (configured, or planned by a
/// dry run), else a new name for it; `out` gets the name, and why it
/// differs from the tool's. Two entries with the URL hold two accounts:
/// the tool's login goes to the one of its own name, or to neither. A
/// server that gets its tokens without a login takes none.
fn find_server(
    config: &Config,
    item: &ImportItem,
    planned: &[(String, String)],
    out: &mut ImportOutcome,
) -> Result<Target, Stop> {
    let same: Vec<String> = config
        .servers
        .iter()
        .filter(|(_, s)| same_url(s.url.as_str(), &item.url))
        .map(|(n, _)| n.to_string())
        .collect();
    if same.len() > 1 && !same.contains(&item.name) {
        return Err(Stop::Skip(format!(
            "{} have this URL, each with its own login, and none is named {:?}: log in to the one it belongs to",
            same.join(" and "),
            item.name
        )));
    }
    let existing = same
        .iter()
        .find(|n| **n == item.name)
        .or(same.first())
        .cloned()
        .or_else(|| {
            planned
                .iter()
                .find(|(_, u)| same_url(u, &item.url))
                .map(|(n, _)| n.clone())
        });
    let (name, new) = match existing {
        Some(name) => (name, false),
        None => {
            let (name, renamed) = new_name(config, item, planned);
            out.renamed = renamed;
            (name, true)
        }
    };
    out.server = name.clone();
    let server_name = ServerName::parse(&name)?;
    if let Some(cfg) = config.servers.get(&server_name)
        && cfg.grant != GrantKind::AuthorizationCode
    {
        return Err(Stop::Skip(
            "it gets its tokens without a login (grant in config.toml)".into(),
        ));
    }
    Ok(Target {
        name,
        server_name,
        new,
    })
}

/// A name for a new server: the tool's, made valid; if another server has
/// it, `NAME-TOOL`, then a number. With why it differs from the tool's.
fn new_name(
    config: &Config,
    item: &ImportItem,
    planned: &[(String, String)],
) -> (String, Option<String>) {
    let taken = |n: &str| {
        config.servers.keys().any(|k| k.as_str() == n) || planned.iter().any(|(p, _)| p == n)
    };
    let wanted = sanitize(&item.name);
    let mut name = wanted.clone();
    let mut renamed = None;
    if taken(&name) {
        name = format!("{wanted}-{}", item.tool.id());
        let mut n = 2;
        while taken(&name) {
            name = format!("{wanted}-{}-{n}", item.tool.id());
            n += 1;
        }
        renamed = Some(format!("`{wanted}` is another server"));
    } else if wanted != item.name {
        renamed = Some(format!("`{}` is not a valid name", item.name));
    }
    (name, renamed)
}

/// The registration of the tool's client, stored for `issuer` so that
/// its refresh token can be used.
fn tool_registration(client: &ToolClient, issuer: &str, now: i64) -> Registration {
    Registration {
        issuer: issuer.to_string(),
        client_id: client.client_id.clone(),
        client_secret: client.client_secret.clone(),
        auth_method: client
            .auth_method
            .unwrap_or(if client.client_secret.is_some() {
                ClientAuthMethod::ClientSecretBasic
            } else {
                ClientAuthMethod::None
            }),
        redirect_uri: client.redirect_uri.clone(),
        kind: RegistrationKind::Dynamic,
        registered_at_ms: now,
        // What the tool registered with is not known.
        scopes: None,
    }
}

/// The verdict when the broker already holds `held`: `None` when the
/// tool's grant is newer and should be adopted.
fn held_verdict(held: &crate::state::Grant, tool: &ToolGrant) -> Option<Verdict> {
    if held.access_token.same_as(&tool.access_token) {
        return Some(Verdict::Current("the broker holds this very grant".into()));
    }
    let newer = match (tool.expires_at_ms, held.expires_at_ms) {
        (Some(t), Some(h)) => t > h,
        (Some(_), None) => true,
        (None, _) => false,
    };
    (!newer).then(|| Verdict::Current("the broker holds a newer grant".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn item(tool: Tool, store: Option<PathBuf>, key: Option<&str>) -> ImportItem {
        ImportItem {
            tool,
            name: "n".into(),
            url: "https://mcp.example/mcp".into(),
            store,
            key: key.map(str::to_string),
            client_info: None,
            keyring: false,
        }
    }

    #[test]
    fn a_file_of_its_own_named_for_two_urls_is_nobodys() {
        let file = Some(PathBuf::from("/h/.hermes/mcp-tokens/a_b.json"));
        let at = |url: &str, store: Option<PathBuf>, key: Option<&str>| ImportItem {
            url: url.into(),
            ..item(Tool::Hermes, store, key)
        };
        let items = [
            at("https://one.example/mcp", file.clone(), None),
            at("https://two.example/mcp", file.clone(), None),
            // The same URL again (two host entries): the same login.
            at("https://three.example/mcp", Some("/m/x.json".into()), None),
            at("https://three.example/mcp/", Some("/m/x.json".into()), None),
            // Entries of one shared file are told apart by their key.
            at(
                "https://four.example/mcp",
                Some("/c.json".into()),
                Some("a|1"),
            ),
            at(
                "https://five.example/mcp",
                Some("/c.json".into()),
                Some("b|2"),
            ),
        ];
        assert_eq!(
            shared_files(&items),
            [
                Some("https://two.example/mcp".into()),
                Some("https://one.example/mcp".into()),
                None,
                None,
                None,
                None
            ]
        );
    }

    #[test]
    fn codex_keyring_entries_are_matched_by_url_and_read_nested() {
        let entry = |username: &str, json: serde_json::Value| crate::keyring::Entry {
            username: username.into(),
            value: Secret::new(json.to_string()),
        };
        let entries = [
            entry(
                "other|0123456789abcdef",
                serde_json::json!({"server_name": "other", "url": "https://elsewhere.example/mcp",
                    "client_id": "c0", "token_response": {"access_token": "at-other", "token_type": "bearer"}}),
            ),
            entry(
                "n|fedcba9876543210",
                serde_json::json!({"server_name": "n", "url": "https://mcp.example/mcp",
                    "client_id": "c1", "expires_at": 1_900_000_000_000u64,
                    "token_response": {"access_token": "at-1", "token_type": "bearer",
                        "expires_in": 3599, "refresh_token": "rt-1", "scope": "read write"}}),
            ),
            entry("broken|1", serde_json::json!("not an object")),
        ];
        let mut wanted = item(Tool::Codex, None, None);
        wanted.keyring = true;
        let g = codex_keyring_grant(&entries, &wanted, 1_000)
            .unwrap()
            .unwrap();
        assert_eq!(g.access_token.expose(), "at-1");
        assert_eq!(g.refresh_token.as_ref().unwrap().expose(), "rt-1");
        assert_eq!(g.expires_at_ms, Some(1_900_000_000_000));
        assert_eq!(g.scopes, ["read", "write"]);
        assert_eq!(g.client.unwrap().client_id, "c1");
        assert_eq!(g.server_url.as_deref(), Some("https://mcp.example/mcp"));
        // No entry for the URL: no login, not an error.
        wanted.url = "https://third.example/mcp".into();
        assert!(
            codex_keyring_grant(&entries, &wanted, 1_000)
                .unwrap()
                .is_none()
        );
        // An entry for the URL without a client: refused, never quoted.
        let partial = [entry(
            "n|1",
            serde_json::json!({"url": "https://third.example/mcp",
                "token_response": {"access_token": "at-secret-value"}}),
        )];
        let why = codex_keyring_grant(&partial, &wanted, 1_000).unwrap_err();
        assert!(why.contains("client_id"), "{why}");
        assert!(!why.contains("at-secret-value"), "{why}");
    }

    #[test]
    fn codex_entries_are_read_with_their_client() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            ".credentials.json",
            r#"{"n|9a70b85417749d5c":{"server_name":"n","server_url":"https://mcp.example/mcp","client_id":"c1","access_token":"at","expires_at":1700000000000,"refresh_token":"rt","scopes":["a","b"]}}"#,
        );
        let g = read_grant(&item(
            Tool::Codex,
            Some(p.clone()),
            Some("n|9a70b85417749d5c"),
        ))
        .unwrap()
        .unwrap();
        assert!(g.access_token == Secret::new("at"));
        assert!(g.refresh_token == Some(Secret::new("rt")));
        assert_eq!(g.expires_at_ms, Some(1_700_000_000_000));
        assert_eq!(g.scopes, ["a", "b"]);
        assert_eq!(g.client.unwrap().client_id, "c1");
        assert!(
            read_grant(&item(Tool::Codex, Some(p), Some("other|x")))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn claude_code_entries_take_the_issuer_and_secret_they_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            ".credentials.json",
            r#"{"mcpOAuth":{"n|k":{"serverName":"n","serverUrl":"https://mcp.example/mcp","clientId":"c","accessToken":"at","expiresAt":5,"refreshToken":"rt","scope":"x y","discoveryState":{"authorizationServerMetadata":{"issuer":"https://as","token_endpoint":"https://as/token"}}}},"mcpOAuthClientConfig":{"n|k":{"clientSecret":"cs"}}}"#,
        );
        let g = read_grant(&item(Tool::ClaudeCode, Some(p), Some("n|k")))
            .unwrap()
            .unwrap();
        assert_eq!(g.issuer.as_deref(), Some("https://as"));
        assert_eq!(g.token_endpoint.as_deref(), Some("https://as/token"));
        assert_eq!(g.scopes, ["x", "y"]);
        assert!(g.client.unwrap().client_secret == Some(Secret::new("cs")));
    }

    #[test]
    fn mcp_remote_without_expires_at_counts_from_the_file_time() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "h_tokens.json",
            r#"{"access_token":"at","token_type":"Bearer","expires_in":3600,"refresh_token":"rt"}"#,
        );
        let info = write(
            dir.path(),
            "h_client_info.json",
            r#"{"client_id":"c","redirect_uris":["http://localhost:3334/oauth/callback"],"token_endpoint_auth_method":"none"}"#,
        );
        let mut it = item(Tool::McpRemote, Some(p.clone()), None);
        it.client_info = Some(info);
        let g = read_grant(&it).unwrap().unwrap();
        let mtime = std::fs::metadata(&p)
            .unwrap()
            .modified()
            .unwrap()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        assert_eq!(g.expires_at_ms, Some(mtime + 3_600_000));
        let c = g.client.unwrap();
        assert_eq!(c.auth_method, Some(ClientAuthMethod::None));
        assert_eq!(c.redirect_uri, "http://localhost:3334/oauth/callback");
    }

    #[test]
    fn hermes_expires_at_is_in_seconds() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "n.json",
            r#"{"access_token":"at","token_type":"bearer","expires_at":1700000000.5,"hermes_issuer":"https://as"}"#,
        );
        let g = read_grant(&item(Tool::Hermes, Some(p), None))
            .unwrap()
            .unwrap();
        assert_eq!(g.expires_at_ms, Some(1_700_000_000_500));
        assert_eq!(g.issuer.as_deref(), Some("https://as"));
    }

    #[test]
    fn malformed_or_partial_files_are_refused_without_quoting_them() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            (Tool::McpRemote, "{\"access_token\": \"sekrit-at\"", None),
            (Tool::McpRemote, "{\"refresh_token\": \"sekrit-rt\"}", None),
            (
                Tool::McpRemote,
                "{\"access_token\": \"sekrit-at\", \"expires_in\": \"soon\"}",
                None,
            ),
            (
                Tool::Codex,
                "{\"n|k\": {\"access_token\": \"sekrit-at\"}}",
                Some("n|k"),
            ),
            (
                Tool::McpRemote,
                "{\"access_token\": \"sekrit-at\", \"token_type\": \"DPoP\"}",
                None,
            ),
        ];
        for (tool, text, key) in cases {
            let p = write(dir.path(), "f.json", text);
            let e = read_grant(&item(tool, Some(p), key)).unwrap_err();
            assert!(e.contains("nothing was changed"), "{e}");
            assert!(!e.contains("sekrit"), "{e}");
        }
    }

    #[test]
    fn names_are_made_valid() {
        assert_eq!(sanitize("my server/1"), "my-server-1");
        assert_eq!(sanitize("@@"), "server");
        assert_eq!(sanitize("ok_name.v2"), "ok_name.v2");
    }

    #[test]
    fn a_held_grant_wins_unless_the_tool_s_expires_later() {
        let held = crate::state::Grant {
            account: None,
            issuer: "https://as".into(),
            client_id: "c".into(),
            resource: "r".into(),
            access_token: Secret::new("held"),
            token_type: "Bearer".into(),
            refresh_token: None,
            expires_at_ms: Some(1000),
            scopes: vec![],
            obtained_at_ms: 0,
            generation: 1,
            server_url: String::new(),
        };
        let tool = |at: &str, exp: Option<i64>| ToolGrant {
            access_token: Secret::new(at),
            refresh_token: None,
            expires_at_ms: exp,
            scopes: vec![],
            issuer: None,
            token_endpoint: None,
            server_url: None,
            client: None,
        };
        assert!(matches!(
            held_verdict(&held, &tool("held", Some(5000))),
            Some(Verdict::Current(_))
        ));
        assert!(matches!(
            held_verdict(&held, &tool("old", Some(999))),
            Some(Verdict::Current(_))
        ));
        assert!(matches!(
            held_verdict(&held, &tool("old", None)),
            Some(Verdict::Current(_))
        ));
        assert_eq!(held_verdict(&held, &tool("new", Some(1001))), None);
    }
}
