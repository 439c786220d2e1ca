//! The human renderings: what `status`, `list`, `show`, `logout`,
//! `doctor`, `watch`, `import` and `hosts` print for a person, the
//! one-line answers of the other commands, and the `print_*` of the
//! commands with `--json`, which choose between the two. The words are
//! checked by the end-to-end tests, which compare them exactly.

use mcpauth_client::pb;

use super::{
    EventJson, HostSurvey, LogoutJson, clock, doctor_json, duration, local_time, now_ms, out,
    print_json, print_json_line, relative, state_name, table,
};
use crate::hosts;

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

/// `logout NAME`: one line, or with `json` one JSON line.
pub fn print_logout(name: &str, reply: &pb::LogoutReply, forgot_client: bool, json: bool) {
    if json {
        print_json_line(&LogoutJson::new(name, reply, forgot_client));
        return;
    }
    let forgot = if forgot_client {
        "; the client registration is forgotten"
    } else {
        ""
    };
    out!("{}{forgot}", logout_line(name, reply, now_ms()));
}

/// `doctor NAME`, as text or JSON.
pub fn print_doctor(name: &str, reply: &pb::DoctorReply, json: bool) {
    if json {
        out!("{}", doctor_json(name, reply));
    } else {
        out!("{}", doctor_text(name, reply));
    }
}

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

/// What renews a login held without a refresh token: nothing.
pub fn renew_none(expires_at_ms: i64, now_ms: i64) -> String {
    match expires_at_ms {
        0 => "log in again when it expires".into(),
        at => format!("log in again before {}", clock(at, now_ms)),
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

/// `status`: the daemon, its config and its key, then a table of servers.
pub fn print_status(status: pb::StatusReply) {
    let now = now_ms();
    out!(
        "mcpauthd {} (protocol {}), pid {}, up {}, socket {}{}",
        status.version,
        status.protocol,
        status.pid,
        duration(status.uptime_ms),
        status.socket_path,
        if status.socket_activated {
            " (systemd)"
        } else {
            ""
        }
    );
    let config = status.config.unwrap_or_default();
    if config.error.is_empty() {
        out!("config {}: ok", status.config_path);
    } else {
        // The error names the file already when it is about its text.
        let error = config
            .error
            .strip_prefix(&format!("{}: ", status.config_path))
            .unwrap_or(&config.error);
        out!(
            "config {}: REJECTED EDIT ({}), the last good config stays in force: {error}",
            status.config_path,
            relative(config.error_at_unix_ms, now),
        );
    }
    out!(
        "{}",
        store_key_line(&status.store_key, &status.store_key_detail)
    );
    if status.servers.is_empty() {
        out!("no servers configured; add one with: mcpauthctl add NAME URL");
        return;
    }
    out!("\n{}", servers_table(status.servers, now));
}

/// The servers of `status`, one row each.
fn servers_table(servers: Vec<pb::Server>, now: i64) -> String {
    let rows: Vec<_> = servers
        .into_iter()
        .map(|s| {
            let next = next_refresh(&s, now);
            let state = match s.grant.as_str() {
                "" | "authorization_code" => state_name(s.state).replace('_', " "),
                grant => format!("{} ({grant})", state_name(s.state).replace('_', " ")),
            };
            vec![
                s.name,
                s.url,
                // Whose tokens, when the authorization server said.
                if s.account.is_empty() {
                    state
                } else {
                    format!("{state} as {}", s.account)
                },
                match s.token_expires_at_unix_ms {
                    0 => "-".into(),
                    at => relative(at, now),
                },
                match s.last_refresh_unix_ms {
                    0 => "never".into(),
                    at => relative(at, now),
                },
                next,
                if s.last_error.is_empty() {
                    "-".into()
                } else {
                    s.last_error
                },
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "URL",
            "STATE",
            "EXPIRES",
            "LAST REFRESH",
            "NEXT REFRESH",
            "LAST ERROR",
        ],
        &rows,
    )
}

/// "in 40m", "retry in 20s (attempt 2)", "stopped", "-".
fn next_refresh(s: &pb::Server, now: i64) -> String {
    if s.no_refresh_token {
        return format!("none, {}", renew_none(s.token_expires_at_unix_ms, now));
    }
    match s.refresh_state.as_str() {
        "scheduled" => relative(s.next_refresh_unix_ms, now),
        "retrying" => format!(
            "retry {} (attempt {})",
            relative(s.next_refresh_unix_ms, now),
            s.refresh_attempt
        ),
        "stopped" => "stopped".into(),
        _ => "-".into(),
    }
}

/// `show NAME`: one `key  value` line each, in a fixed order: what is
/// configured, then what the grant held is.
pub fn print_server(s: pb::Server) {
    let now = now_ms();
    let mut rows = configured_rows(&s);
    rows.extend(grant_rows(&s, now));
    for (key, value) in rows {
        out!("{key:<16}{value}");
    }
}

fn or_none(value: &str) -> String {
    if value.is_empty() {
        "-".into()
    } else {
        value.into()
    }
}

/// `show`'s rows about how the server is configured and registered.
fn configured_rows(s: &pb::Server) -> Vec<(&'static str, String)> {
    vec![
        ("name", s.name.clone()),
        ("url", s.url.clone()),
        ("state", state_name(s.state).replace('_', " ")),
        (
            "grant",
            match s.grant.as_str() {
                "" | "authorization_code" => "authorization_code (a person logs in)".into(),
                "enterprise" => format!(
                    "enterprise (one login at the identity provider {})",
                    s.identity_provider
                ),
                grant => format!("{grant} (no person involved)"),
            },
        ),
        (
            "client id",
            match (s.client_id.as_str(), s.client_id_source.as_str()) {
                ("", _) => "(registered by mcpauthd at the first login)".into(),
                (id, "registered") => format!("{id} (registered by mcpauthd)"),
                (id, "metadata_document") => format!("{id} (metadata document)"),
                (id, "imported") => format!("{id} (from an imported login)"),
                (id, _) => format!("{id} (configured)"),
            },
        ),
        (
            "client secret",
            if s.has_client_secret {
                "configured".into()
            } else {
                "-".into()
            },
        ),
        (
            "scopes",
            if s.scopes.is_empty() {
                "(from the server)".into()
            } else {
                s.scopes.join(" ")
            },
        ),
        (
            "callback port",
            match (s.callback_port, s.callback_port_source.as_str()) {
                (0, _) => "(chosen by mcpauthd at the first login, then kept)".into(),
                (port, "chosen") => format!("{port} (chosen by mcpauthd, kept)"),
                (port, _) => format!("{port} (configured)"),
            },
        ),
        ("client metadata", or_none(&s.client_metadata_url)),
    ]
}

/// `show`'s rows about the grant held and its refresh.
fn grant_rows(s: &pb::Server, now: i64) -> Vec<(&'static str, String)> {
    let at = |ms: i64, zero: &str| match ms {
        0 => zero.to_string(),
        ms => relative(ms, now),
    };
    vec![
        ("token expires", at(s.token_expires_at_unix_ms, "-")),
        ("last refresh", at(s.last_refresh_unix_ms, "never")),
        (
            if s.no_refresh_token {
                "renew"
            } else {
                "next refresh"
            },
            next_refresh(s, now),
        ),
        ("login hint", or_none(&s.login_hint)),
        (
            "account",
            if !s.account.is_empty() {
                s.account.clone()
            } else if s.token_expires_at_unix_ms == 0 && s.granted_scopes.is_empty() {
                "-".into()
            } else {
                "(the authorization server does not say)".into()
            },
        ),
        (
            "granted scopes",
            if s.granted_scopes.is_empty() {
                "-".into()
            } else {
                s.granted_scopes.join(" ")
            },
        ),
        ("last error", or_none(&s.last_error)),
        ("added", at(s.added_at_unix_ms, "-")),
    ]
}

/// `list`: a table of names, URLs and states (on stderr, the way to add
/// one when there is none).
pub fn print_list(servers: Vec<pb::Server>) {
    if servers.is_empty() {
        eprintln!("no servers configured; add one with: mcpauthctl add NAME URL");
        return;
    }
    let rows: Vec<_> = servers
        .into_iter()
        .map(|s| vec![s.name, s.url, state_name(s.state).replace('_', " ")])
        .collect();
    out!("{}", table(&["NAME", "URL", "STATE"], &rows));
}

/// `add`: what was added.
pub fn added_line(server: &pb::Server) -> String {
    format!("added {} ({})", server.name, server.url)
}

/// `add`, after the server is added: whether other entries have its URL
/// (a second account), and the next step.
pub fn print_after_add(server: &pb::Server, twins: &[String]) {
    if !twins.is_empty() {
        out!(
            "{} {} the same URL: each entry keeps its own login, so {} can hold another account (its login asks the server to let you choose the account; `login_hint` in its section names one)",
            twins.join(", "),
            if twins.len() == 1 { "has" } else { "have" },
            server.name
        );
    }
    out!("next: mcpauthctl login {}", server.name);
}

/// `refresh NAME`: the new token's expiry and generation.
pub fn refresh_line(name: &str, reply: &pb::RefreshReply) -> String {
    let expiry = match reply.token_expires_at_unix_ms {
        0 => "expiry unknown".to_string(),
        at => format!("expires {}", relative(at, now_ms())),
    };
    format!(
        "refreshed {name}: token {expiry} (generation {})",
        reply.generation
    )
}

/// One event of `watch`: a line, or with `json` a JSON line.
pub fn print_event(event: &EventJson, json: bool) {
    if json {
        print_json_line(event);
    } else {
        out!("{}", watch_line(event));
    }
}

/// One human line for an event: local time, what, which server (or
/// "config" for the daemon's config events), and details.
fn watch_line(event: &EventJson) -> String {
    // "config rejected: why", not "config rejected config: why".
    let subject = match (event.server.as_deref(), event.event) {
        (Some(server), _) => format!(" {server}"),
        (None, "config_rejected" | "config_accepted") => String::new(),
        (None, _) => " daemon".into(),
    };
    let mut line = format!(
        "{} {}{subject}",
        local_time(event.at_unix_ms),
        event.event.replace('_', " "),
    );
    if let Some(url) = &event.url {
        line.push_str(&format!(" {url}"));
    }
    if let Some(error) = &event.error {
        line.push_str(&format!(": {error}"));
    }
    line
}

/// One line of `import` per result.
pub fn import_line(r: &pb::ImportResult, dry_run: bool) -> String {
    let verdict = pb::ImportVerdict::try_from(r.verdict).unwrap_or(pb::ImportVerdict::Unspecified);
    let server = if r.server.is_empty() {
        &r.tool_name
    } else {
        &r.server
    };
    let mut line = match verdict {
        pb::ImportVerdict::Adopted if dry_run => {
            format!("  would adopt   {server} ({}) from {}", r.url, r.tool)
        }
        pb::ImportVerdict::Adopted => {
            format!("  adopted       {server} ({}) from {}", r.url, r.tool)
        }
        pb::ImportVerdict::Current => format!("  current       {server}: {}", r.reason),
        pb::ImportVerdict::LoginNeeded => format!(
            "  needs login   {server}: {}; run `mcpauthctl login {server}`",
            r.reason
        ),
        _ => format!("  skipped       {server} (from {}): {}", r.tool, r.reason),
    };
    if r.added {
        line.push_str(&format!(
            "; {} to config.toml as `{server}`",
            if dry_run { "would be added" } else { "added" }
        ));
    }
    if !r.renamed.is_empty() {
        line.push_str(&format!(" ({} was taken: {})", r.tool_name, r.renamed));
    }
    line
}

/// `import` and `adopt`: the results by tool, then the notes.
pub fn print_import(results: &[pb::ImportResult], notes: &[String], dry_run: bool) {
    let mut tool = "";
    for r in results {
        if r.tool != tool {
            tool = &r.tool;
            out!("{tool}:");
        }
        out!("{}", import_line(r, dry_run));
    }
    for note in notes {
        out!("note: {note}");
    }
    if dry_run {
        out!("dry run: nothing was written");
    }
}

/// `hosts`, as lines or JSON.
pub fn print_hosts(surveys: &[HostSurvey], json: bool) {
    if json {
        print_json(surveys);
    } else {
        for line in survey_lines(surveys) {
            out!("{line}");
        }
    }
}

/// `hosts` for a person.
pub fn survey_lines(surveys: &[HostSurvey]) -> Vec<String> {
    if surveys.is_empty() {
        return vec![format!(
            "no MCP host found on this machine (known: {})",
            hosts::ids()
        )];
    }
    let mut lines = Vec::new();
    for s in surveys {
        lines.push(format!(
            "{} ({}): {}{}",
            s.title,
            s.host,
            s.path,
            if s.exists { "" } else { " (not created yet)" }
        ));
        if let Some(error) = &s.error {
            lines.push(format!("  cannot read it: {error}"));
            continue;
        }
        if !s.wired.is_empty() {
            let wired: Vec<String> = s
                .wired
                .iter()
                .map(|w| {
                    let mut text = if w.entry == w.server {
                        w.entry.clone()
                    } else {
                        format!("{} (as {})", w.server, w.entry)
                    };
                    if !w.configured {
                        text.push_str(" [not configured in mcpauth]");
                    }
                    text
                })
                .collect();
            lines.push(format!("  through the broker: {}", wired.join(", ")));
        }
        if !s.not_wired.is_empty() {
            lines.push(format!(
                "  not connected: {} (`mcpauthctl connect {}`)",
                s.not_wired.join(", "),
                s.host
            ));
        }
        for b in &s.bypassing {
            let how = match b.via {
                "mcp-remote" => format!("runs mcp-remote {}", b.url),
                _ => format!("connects to {} itself, without the broker's helper", b.url),
            };
            let what = match &b.server {
                Some(server) => format!("configured in mcpauth as {server}"),
                None => format!("not configured in mcpauth: `mcpauthctl add NAME {}`", b.url),
            };
            lines.push(format!(
                "  not through the broker: {} {how} ({what})",
                b.entry
            ));
        }
        if s.other_entries > 0 {
            lines.push(format!("  other (local) servers: {}", s.other_entries));
        }
    }
    lines
}

/// What a login that succeeded says.
pub fn login_line(name: &str, result: &pb::LoginResult) -> String {
    let scopes = if result.scopes.is_empty() {
        "(none listed)".to_string()
    } else {
        result.scopes.join(" ")
    };
    let expiry = match result.token_expires_at_unix_ms {
        0 => "expiry unknown".to_string(),
        at => format!("token expires {}", relative(at, now_ms())),
    };
    let mut line = format!("logged in to {name}: scopes {scopes}; {expiry}");
    if result.no_refresh_token {
        line.push_str(&format!(
            "; no refresh token, so {}; some servers give one only when asked: set authorization_params (e.g. {{ access_type = \"offline\", prompt = \"consent\" }}) or add offline_access to scopes in config.toml, then log in again",
            renew_none(result.token_expires_at_unix_ms, now_ms())
        ));
    }
    line
}

/// A doctor step's fix, then the command it names, in our words.
pub(crate) fn doctor_fix(step: &pb::DoctorStep) -> String {
    match step.next_step.as_ref().map(mcpauth_client::next_step_words) {
        Some(words) if !words.is_empty() => format!("{}; {words}", step.fix),
        _ => step.fix.clone(),
    }
}
