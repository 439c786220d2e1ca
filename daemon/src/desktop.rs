//! Telling the person when a program is stuck on them: the `Notices`
//! part.
//!
//! When a program asks for a token and the answer is "login required" or
//! "step-up required", and nobody is running `mcpauthctl login` for that
//! server, the daemon sends one desktop notification per server per
//! episode (an episode ends when a new grant is installed, or the server is
//! removed): freedesktop notifications on Linux (`notify-send`, else
//! `gdbus`), the notification centre on macOS (`osascript`). Where none of
//! these is reachable, the program's own error is the only signal.
//!
//! `MCP_BROKER_NOTIFIER` names a program to run instead (arguments: title,
//! body), which the tests use as their sink; `notifications = false` in
//! `config.toml` turns it off. The text names the server and the command
//! to run, never a token. Nothing is run through a shell.
//!
//! Lock: `sent` (`std::sync::Mutex`), the servers notified about in the
//! current episode; held only to change the set.

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use tracing::{debug, info};

use crate::config::ServerName;
use crate::context::Context;

pub struct Notices {
    ctx: Arc<Context>,
    /// The servers notified about in the current episode.
    sent: Mutex<HashSet<ServerName>>,
}

impl Notices {
    pub fn new(ctx: Arc<Context>) -> Self {
        Self {
            ctx,
            sent: Mutex::default(),
        }
    }

    /// A program needs `name`'s login (or more scope): tell the person,
    /// once per episode. (The caller knows whether a login is under way:
    /// then nobody is told.)
    pub(crate) fn person_needed(&self, name: &ServerName, step_up: bool) {
        if !self.ctx.config().notifications {
            return;
        }
        if !self.sent.lock().unwrap().insert(name.clone()) {
            return;
        }
        let title = if step_up {
            format!("mcpauth: {name} needs more access")
        } else {
            format!("mcpauth: log in to {name}")
        };
        let body = format!(
            "A program asked for a token for {name}, and a person must approve it. Run: {cli} login {name}",
            cli = mcpauth_proto::CLI
        );
        info!(server = %name, step_up, "notifying the person: a login is needed");
        tokio::task::spawn_blocking(move || {
            if let Err(e) = send(&title, &body) {
                debug!(error = %e, "no notification service reachable");
            }
        });
    }

    /// A new grant (or the server's removal) ends the episode.
    pub(crate) fn person_no_longer_needed(&self, name: &ServerName) {
        self.sent.lock().unwrap().remove(name);
    }
}

/// Runs the first notifier that works.
fn send(title: &str, body: &str) -> Result<(), String> {
    let mut tried = Vec::new();
    for mut cmd in candidates(title, body) {
        let shown = format!("{:?}", cmd.get_program());
        match cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
        {
            Ok(status) if status.success() => return Ok(()),
            Ok(status) => tried.push(format!("{shown}: {status}")),
            Err(e) => tried.push(format!("{shown}: {e}")),
        }
    }
    Err(tried.join("; "))
}

fn candidates(title: &str, body: &str) -> Vec<Command> {
    if let Some(program) = std::env::var_os(mcpauth_proto::env::NOTIFIER) {
        let mut cmd = Command::new(program);
        cmd.args([title, body]);
        return vec![cmd];
    }
    if cfg!(target_os = "macos") {
        // AppleScript string literals: the text has no quotes or
        // backslashes of its own (server names cannot), but escape anyway.
        let quote = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
        let mut cmd = Command::new("osascript");
        cmd.args([
            "-e",
            &format!(
                "display notification {} with title {}",
                quote(body),
                quote(title)
            ),
        ]);
        return vec![cmd];
    }
    let mut notify_send = Command::new("notify-send");
    notify_send.args(["--app-name=mcpauth", title, body]);
    let mut gdbus = Command::new("gdbus");
    gdbus.args([
        "call",
        "--session",
        "--dest",
        "org.freedesktop.Notifications",
        "--object-path",
        "/org/freedesktop/Notifications",
        "--method",
        "org.freedesktop.Notifications.Notify",
        "mcpauth",
        "0",
        "",
        title,
        body,
        "[]",
        "{}",
        "-1",
    ]);
    vec![notify_send, gdbus]
}
