//! The `--json` shapes: a documented, stable interface (README, "JSON
//! output"). Fields are only ever added, never renamed or removed. Times
//! are Unix milliseconds; absent values are `null`.

use mcpauth_client::pb;
use serde::Serialize;

use super::state_name;

#[derive(Serialize)]
pub struct ServerJson {
    pub name: String,
    pub url: String,
    /// `login_required`, `login_pending`, `authorized`, `refresh_failing`,
    /// `step_up_required`, `on_demand` (no token yet, none needs a
    /// person), or `unknown`.
    pub state: &'static str,
    /// How tokens are obtained: `authorization_code`, `client_credentials`,
    /// `workload` or `enterprise`.
    pub grant: String,
    /// For `enterprise`: the identity provider it uses.
    pub identity_provider: Option<String>,
    /// The client id in effect (configured, registered, ...).
    pub client_id: Option<String>,
    /// `configured`, `registered`, `metadata_document`, `imported`, or null.
    pub client_id_source: Option<String>,
    pub has_client_secret: bool,
    pub scopes: Vec<String>,
    /// The callback port in effect (configured, or chosen at first login).
    pub callback_port: Option<u32>,
    /// `configured`, `chosen`, or null.
    pub callback_port_source: Option<String>,
    pub client_metadata_url: Option<String>,
    pub token_expires_at_unix_ms: Option<i64>,
    pub last_refresh_unix_ms: Option<i64>,
    pub last_error: Option<String>,
    pub added_at_unix_ms: Option<i64>,
    /// Scopes of the grant held (empty without tokens).
    pub granted_scopes: Vec<String>,
    /// A person's login is held without a refresh token: a login is
    /// needed again once it expires.
    pub no_refresh_token: bool,
    /// Whose tokens the grant holds, when the authorization server said.
    pub account: Option<String>,
    /// The configured `login_hint`, or null.
    pub login_hint: Option<String>,
    /// The proactive refresh: `idle`, `scheduled`, `retrying`, `stopped`.
    pub refresh_state: String,
    pub next_refresh_unix_ms: Option<i64>,
    pub refresh_attempt: Option<u32>,
}

#[derive(Serialize)]
pub struct DaemonJson {
    pub version: String,
    pub protocol: u32,
    pub pid: u32,
    pub uptime_ms: u64,
    pub socket: String,
    pub state_dir: String,
    pub config_path: String,
    pub socket_activated: bool,
    /// Where the key sealing the stored secrets is.
    pub store_key: StoreKeyJson,
}

#[derive(Serialize)]
pub struct StoreKeyJson {
    /// `keyring`, `file` or `locked`.
    pub source: String,
    /// The key file, or why the key is not at hand.
    pub detail: Option<String>,
}

#[derive(Serialize)]
pub struct ConfigJson {
    pub ok: bool,
    pub error: Option<String>,
    pub loaded_at_unix_ms: Option<i64>,
    pub error_at_unix_ms: Option<i64>,
}

#[derive(Serialize)]
pub struct StatusJson {
    pub daemon: DaemonJson,
    pub config: ConfigJson,
    pub servers: Vec<ServerJson>,
}

#[derive(Serialize)]
pub struct EventJson {
    pub at_unix_ms: i64,
    pub server: Option<String>,
    /// `server_added`, `server_removed`, `server_changed`, `config_rejected`,
    /// `config_accepted`, `login_started`, `token_issued`, `login_required`,
    /// `step_up_required`.
    pub event: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `doctor NAME --json`: `{"server", "ok", "steps": [{"step", "found",
/// "ok", "fix"}]}` (`fix` null when there is none).
pub fn doctor_json(name: &str, reply: &pb::DoctorReply) -> String {
    let steps: Vec<serde_json::Value> = reply
        .steps
        .iter()
        .map(|s| {
            serde_json::json!({
                "step": s.step,
                "found": s.found,
                "ok": s.ok,
                "fix": if s.fix.is_empty() { None } else { Some(super::text::doctor_fix(s)) },
            })
        })
        .collect();
    serde_json::json!({
        "server": name,
        "ok": reply.steps.iter().all(|s| s.ok),
        "steps": steps,
    })
    .to_string()
}

/// `logout --json`.
#[derive(Serialize)]
pub struct LogoutJson {
    pub server: String,
    pub held: bool,
    pub revoked: bool,
    pub access_token: Option<RevocationJson>,
    pub refresh_token: Option<RevocationJson>,
    pub access_token_expires_at: Option<i64>,
    pub forgot_client: bool,
}

#[derive(Serialize)]
pub struct RevocationJson {
    pub outcome: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl LogoutJson {
    pub fn new(server: &str, reply: &pb::LogoutReply, forgot_client: bool) -> Self {
        let token = |r: &pb::TokenRevocation| RevocationJson {
            outcome: r.outcome.clone(),
            detail: some(r.detail.clone()),
        };
        LogoutJson {
            server: server.into(),
            held: reply.held,
            revoked: reply.revoked,
            access_token: reply.access_token_revocation.as_ref().map(token),
            refresh_token: reply.refresh_token_revocation.as_ref().map(token),
            access_token_expires_at: some(reply.access_token_expires_at_unix_ms),
            forgot_client,
        }
    }
}

fn some<T: PartialEq + Default>(v: T) -> Option<T> {
    (v != T::default()).then_some(v)
}

impl From<pb::Server> for ServerJson {
    fn from(s: pb::Server) -> Self {
        ServerJson {
            state: state_name(s.state),
            grant: if s.grant.is_empty() {
                "authorization_code".into()
            } else {
                s.grant.clone()
            },
            identity_provider: some(s.identity_provider.clone()),
            name: s.name,
            url: s.url,
            client_id: some(s.client_id),
            client_id_source: some(s.client_id_source),
            has_client_secret: s.has_client_secret,
            scopes: s.scopes,
            callback_port: some(s.callback_port),
            callback_port_source: some(s.callback_port_source),
            client_metadata_url: some(s.client_metadata_url),
            token_expires_at_unix_ms: some(s.token_expires_at_unix_ms),
            last_refresh_unix_ms: some(s.last_refresh_unix_ms),
            last_error: some(s.last_error),
            added_at_unix_ms: some(s.added_at_unix_ms),
            granted_scopes: s.granted_scopes,
            no_refresh_token: s.no_refresh_token,
            account: some(s.account),
            login_hint: some(s.login_hint),
            refresh_state: if s.refresh_state.is_empty() {
                "idle".into()
            } else {
                s.refresh_state
            },
            next_refresh_unix_ms: some(s.next_refresh_unix_ms),
            refresh_attempt: some(s.refresh_attempt),
        }
    }
}

impl From<pb::StatusReply> for StatusJson {
    fn from(s: pb::StatusReply) -> Self {
        let config = s.config.unwrap_or_default();
        StatusJson {
            daemon: DaemonJson {
                version: s.version,
                protocol: s.protocol,
                pid: s.pid,
                uptime_ms: s.uptime_ms,
                socket: s.socket_path,
                state_dir: s.state_dir,
                config_path: s.config_path,
                socket_activated: s.socket_activated,
                store_key: StoreKeyJson {
                    source: s.store_key,
                    detail: some(s.store_key_detail),
                },
            },
            config: ConfigJson {
                ok: config.error.is_empty(),
                error: some(config.error),
                loaded_at_unix_ms: some(config.loaded_at_unix_ms),
                error_at_unix_ms: some(config.error_at_unix_ms),
            },
            servers: s.servers.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<pb::Event> for EventJson {
    fn from(e: pb::Event) -> Self {
        use pb::event::Kind;
        let (event, url, error) = match e.kind {
            Some(Kind::ServerAdded(a)) => ("server_added", Some(a.url), None),
            Some(Kind::ServerRemoved(_)) => ("server_removed", None, None),
            Some(Kind::ServerChanged(c)) => ("server_changed", Some(c.url), None),
            Some(Kind::ConfigRejected(r)) => ("config_rejected", None, Some(r.error)),
            Some(Kind::ConfigAccepted(_)) => ("config_accepted", None, None),
            Some(Kind::LoginStarted(_)) => ("login_started", None, None),
            Some(Kind::TokenIssued(_)) => ("token_issued", None, None),
            Some(Kind::LoginRequired(r)) => ("login_required", None, Some(r.reason)),
            Some(Kind::StepUpRequired(r)) => ("step_up_required", None, Some(r.scopes.join(" "))),
            None => ("unknown", None, None),
        };
        EventJson {
            at_unix_ms: e.at_unix_ms,
            server: some(e.server),
            event,
            url,
            error,
        }
    }
}

/// `mcpauthctl import --json`.
#[derive(Serialize)]
pub struct ImportJson {
    pub results: Vec<ImportResultJson>,
    pub notes: Vec<String>,
}

#[derive(Serialize)]
pub struct ImportResultJson {
    pub tool: String,
    pub tool_name: String,
    pub server: Option<String>,
    pub url: String,
    /// adopted, current, login_needed or skipped.
    pub verdict: &'static str,
    pub reason: Option<String>,
    pub added: bool,
    pub renamed: Option<String>,
}

pub fn import_json(results: &[pb::ImportResult], notes: &[String]) -> ImportJson {
    let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
    ImportJson {
        results: results
            .iter()
            .map(|r| ImportResultJson {
                tool: r.tool.clone(),
                tool_name: r.tool_name.clone(),
                server: some(&r.server),
                url: r.url.clone(),
                verdict: match pb::ImportVerdict::try_from(r.verdict) {
                    Ok(pb::ImportVerdict::Adopted) => "adopted",
                    Ok(pb::ImportVerdict::Current) => "current",
                    Ok(pb::ImportVerdict::LoginNeeded) => "login_needed",
                    _ => "skipped",
                },
                reason: some(&r.reason),
                added: r.added,
                renamed: some(&r.renamed),
            })
            .collect(),
        notes: notes.to_vec(),
    }
}

/// One host as `hosts` shows it.
#[derive(Serialize)]
pub struct HostSurvey {
    pub host: &'static str,
    pub title: &'static str,
    pub path: String,
    pub exists: bool,
    /// Why the file could not be read, if it could not.
    pub error: Option<String>,
    /// Entries that go through the broker.
    pub wired: Vec<Wired>,
    /// Configured servers with no entry that goes through the broker.
    pub not_wired: Vec<String>,
    /// Entries that reach a remote server without the broker.
    pub bypassing: Vec<Bypass>,
    /// Every other entry (local servers).
    pub other_entries: usize,
}

#[derive(Serialize)]
pub struct Wired {
    pub entry: String,
    pub server: String,
    /// Whether `server` is configured in the broker.
    pub configured: bool,
}

#[derive(Serialize)]
pub struct Bypass {
    pub entry: String,
    /// `mcp-remote` (a stdio bridge with its own login) or `http` (the
    /// host's own OAuth client, or static headers).
    pub via: &'static str,
    pub url: String,
    /// The configured server with that URL, if any.
    pub server: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_json_uses_null_for_absent_values() {
        let json = serde_json::to_value(ServerJson::from(pb::Server {
            name: "a".into(),
            url: "https://a".into(),
            state: pb::AuthState::LoginRequired.into(),
            ..Default::default()
        }))
        .unwrap();
        assert_eq!(json["state"], "login_required");
        assert!(json["client_id"].is_null());
        assert!(json["callback_port"].is_null());
        assert_eq!(json["scopes"], serde_json::json!([]));
    }
}
