//! What `mcpauthctl` prints: the human tables and the `--json` shapes.
//!
//! The JSON shapes are a documented, stable interface (README, "JSON
//! output"): fields are only ever added, never renamed or removed. Times
//! are Unix milliseconds; absent values are `null`.

use mcpauth_client::pb;
use serde::Serialize;

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

/// What `logout` says: what became of each token at the server, in one
/// line. The tokens are deleted here in every case.
pub fn logout_line(name: &str, reply: &pb::LogoutReply, now_ms: i64) -> String {
    if !reply.held {
        return format!("{name} was not logged in; no tokens to delete");
    }
    let until = |kind: &str| match (kind, reply.access_token_expires_at_unix_ms) {
        ("access", at) if at > now_ms => format!("until {}", clock(at, now_ms)),
        ("access", at) if at > 0 => "no longer (it has expired)".to_string(),
        _ => "until it expires there".to_string(),
    };
    fn outcome(r: &pb::TokenRevocation) -> (&str, &str) {
        (r.outcome.as_str(), r.detail.as_str())
    }
    let access = reply.access_token_revocation.as_ref().map(outcome);
    let refresh = reply.refresh_token_revocation.as_ref().map(outcome);
    let one = |kind: &str, (what, detail): (&str, &str)| match what {
        "revoked" => format!("the {kind} token is revoked at the server"),
        "unsupported" => format!(
            "the {kind} token stays valid there {} (the server cannot revoke it)",
            until(kind)
        ),
        "refused" => format!(
            "the server refused to revoke the {kind} token ({detail}); it stays valid there {}",
            until(kind)
        ),
        "failed" => format!(
            "revoking the {kind} token failed ({detail}); it stays valid there {}",
            until(kind)
        ),
        _ => format!(
            "the server offers no revocation, so the {kind} token stays valid there {}",
            until(kind)
        ),
    };
    let said = match (access, refresh) {
        (Some(a), Some(r)) if a == r => match a.0 {
            "revoked" => "the access and refresh tokens are revoked at the server".to_string(),
            "refused" | "failed" => format!(
                "{} ({}); the tokens are deleted here but stay valid at the server, the access token {}",
                if a.0 == "refused" {
                    "the server refused revocation"
                } else {
                    "revocation failed"
                },
                a.1,
                until("access")
            ),
            "unsupported" => format!(
                "the server cannot revoke these tokens; they are deleted here but stay valid there, the access token {}",
                until("access")
            ),
            _ => format!(
                "the server offers no revocation; the tokens are deleted here but stay valid there, the access token {}",
                until("access")
            ),
        },
        (a, r) => r
            .map(|r| one("refresh", r))
            .into_iter()
            .chain(a.map(|a| one("access", a)))
            .collect::<Vec<_>>()
            .join("; "),
    };
    format!("logged out of {name}: {said}")
}

/// A time later today as `HH:MM`, else as the whole local time.
/// `doctor NAME`: one line per step, `ok` or `!!`, and the fix under a
/// problem.
pub fn doctor_text(name: &str, reply: &pb::DoctorReply) -> String {
    let mut lines = vec![format!(
        "doctor {name}: discovery and registration, step by step (nothing is changed)"
    )];
    for s in &reply.steps {
        lines.push(format!(
            "{} {}: {}",
            if s.ok { "ok" } else { "!!" },
            s.step,
            s.found
        ));
        if !s.ok && !s.fix.is_empty() {
            lines.push(format!("   fix: {}", doctor_fix(s)));
        }
    }
    lines.join("\n")
}

/// A doctor step's fix, with the command it names in our words.
fn doctor_fix(step: &pb::DoctorStep) -> String {
    let command = step
        .next_step
        .as_ref()
        .map(mcpauth_client::next_step_words)
        .unwrap_or_default();
    format!("{}{command}", step.fix)
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
                "fix": if s.fix.is_empty() { None } else { Some(doctor_fix(s)) },
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

/// What renews a login held without a refresh token: nothing.
pub fn renew_none(expires_at_ms: i64, now_ms: i64) -> String {
    match expires_at_ms {
        0 => "log in again when it expires".into(),
        at => format!("log in again before {}", clock(at, now_ms)),
    }
}

/// A time of day (`HH:MM`), with the date unless it is today.
pub fn clock(at_ms: i64, now_ms: i64) -> String {
    let at = local_time(at_ms);
    if at.get(..10) == local_time(now_ms).get(..10) {
        at[11..16].to_string()
    } else {
        at[..16].to_string()
    }
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

/// The line `status` says of the stored secrets.
pub fn store_key_line(source: &str, detail: &str) -> String {
    match source {
        "keyring" => "secrets: sealed, with a key in the OS keyring".into(),
        "file" => format!(
            "secrets: sealed, with a key in {detail} (no OS keyring here: whoever can read that file and the state can read the tokens)"
        ),
        "locked" => format!("secrets: LOCKED: {detail}"),
        _ => "secrets: (this mcpauthd does not say)".into(),
    }
}

/// `unix_ms` as local time, `YYYY-MM-DD HH:MM:SS`.
pub fn local_time(unix_ms: i64) -> String {
    let secs = (unix_ms / 1000) as nix::libc::time_t;
    // SAFETY: localtime_r fills the `tm` we own from the time we pass.
    let mut tm: nix::libc::tm = unsafe { std::mem::zeroed() };
    let ok = !unsafe { nix::libc::localtime_r(&secs, &mut tm) }.is_null();
    if !ok {
        return format!("@{}", unix_ms / 1000);
    }
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

fn some<T: PartialEq + Default>(v: T) -> Option<T> {
    (v != T::default()).then_some(v)
}

pub fn state_name(state: i32) -> &'static str {
    match pb::AuthState::try_from(state) {
        Ok(pb::AuthState::LoginRequired) => "login_required",
        Ok(pb::AuthState::LoginPending) => "login_pending",
        Ok(pb::AuthState::Authorized) => "authorized",
        Ok(pb::AuthState::RefreshFailing) => "refresh_failing",
        Ok(pb::AuthState::StepUpRequired) => "step_up_required",
        Ok(pb::AuthState::OnDemand) => "on_demand",
        Ok(pb::AuthState::Locked) => "locked",
        _ => "unknown",
    }
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

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// "in 5m", "in 6s", "3h ago", "just now" (under a second).
pub fn relative(at_ms: i64, now_ms: i64) -> String {
    let delta = (at_ms - now_ms) / 1000;
    let span = delta.unsigned_abs();
    let amount = match span {
        0 => return "just now".into(),
        1..=59 => format!("{span}s"),
        60..=3599 => format!("{}m", span / 60),
        3600..=86_399 => format!("{}h", span / 3600),
        _ => format!("{}d", span / 86_400),
    };
    if delta > 0 {
        format!("in {amount}")
    } else {
        format!("{amount} ago")
    }
}

pub fn duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{}h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// Renders rows as left-aligned columns separated by two spaces.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        out.trim_end().to_string()
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        out.push('\n');
        out.push_str(&line(row.clone()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_times_read_naturally() {
        assert_eq!(relative(1_000_000 + 300_000, 1_000_000), "in 5m");
        assert_eq!(relative(1_000_000 - 3 * 3_600_000, 1_000_000), "3h ago");
        assert_eq!(relative(1_000_000, 1_000_400), "just now");
        assert_eq!(relative(1_000_000 + 6_000, 1_000_000), "in 6s");
        assert_eq!(relative(1_000_000, 1_001_000), "1s ago");
        assert_eq!(relative(1_000_000 + 2 * 86_400_000, 1_000_000), "in 2d");
    }

    #[test]
    fn tables_align() {
        let t = table(
            &["NAME", "URL"],
            &[
                vec!["a".into(), "https://x".into()],
                vec!["long-name".into(), "u".into()],
            ],
        );
        assert_eq!(t, "NAME       URL\na          https://x\nlong-name  u");
    }

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
