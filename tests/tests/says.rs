//! What the broker says matches what happened at the server: logout per
//! token, the report guard naming the MCP server's rejection, `token`
//! naming why a login is needed, and a proxy session that ends quietly.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use mcpauth_tests::TestEnv;
use mcpauth_tests::authserver::{AuthServer, Switches};

async fn logged_in(switches: Switches) -> (TestEnv, AuthServer, mcpauth_tests::Daemon) {
    let server = AuthServer::start(switches).await;
    let env = TestEnv::new();
    let daemon = env.start_daemon();
    env.ctl(&["add", "s", &server.mcp_url]).ok();
    env.ctl(&["login", "s"]).ok();
    (env, server, daemon)
}

/// Logs out and returns the one line said, and the JSON of a second
/// logout run after logging in again.
async fn logout_of(switches: Switches) -> (String, serde_json::Value, AuthServer, String) {
    let (env, server, daemon) = logged_in(switches).await;
    let line = env.ctl(&["logout", "s"]).ok();
    assert_eq!(line.trim().lines().count(), 1, "{line}");
    env.ctl(&["login", "s"]).ok();
    let json = env.ctl(&["logout", "s", "--json"]).json();
    (line.trim().to_string(), json, server, daemon.log())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_says_what_the_server_did_with_each_token() {
    // Both revoked.
    let (line, json, server, _) = logout_of(Switches::default()).await;
    assert_eq!(
        line,
        "logged out of s: the access and refresh tokens are revoked at the server"
    );
    assert_eq!(json["revoked"], true, "{json}");
    assert_eq!(json["access_token"]["outcome"], "revoked", "{json}");
    assert_eq!(json["refresh_token"]["outcome"], "revoked", "{json}");
    assert!(
        server
            .issued_access_tokens()
            .iter()
            .all(|t| !server.is_valid_access_token(t))
    );

    // better-auth: the refresh token is revoked, the access token cannot be.
    let (line, json, _, _) = logout_of(Switches {
        revocation_refuses_access_tokens: true,
        ..Default::default()
    })
    .await;
    assert!(
        line.starts_with("logged out of s: the refresh token is revoked at the server; the access token stays valid there until ")
            && line.ends_with(" (the server cannot revoke it)"),
        "{line}"
    );
    assert_eq!(json["revoked"], false, "{json}");
    assert_eq!(json["access_token"]["outcome"], "unsupported", "{json}");
    assert_eq!(json["refresh_token"]["outcome"], "revoked", "{json}");

    // The MCP Python SDK: a public client must send an (empty)
    // client_secret; one retry each, and both are revoked.
    let (line, _, server, _) = logout_of(Switches {
        revocation_requires_client_secret: true,
        ..Default::default()
    })
    .await;
    assert_eq!(
        line,
        "logged out of s: the access and refresh tokens are revoked at the server"
    );
    let revokes = server.requests("/revoke");
    assert_eq!(revokes.len(), 8, "two tokens, two logouts, one retry each");
    assert!(
        revokes
            .iter()
            .step_by(2)
            .all(|r| !r.form.contains_key("client_secret"))
    );
    assert!(
        revokes
            .iter()
            .skip(1)
            .step_by(2)
            .all(|r| r.form["client_secret"].is_empty())
    );

    // Every revocation refused: said once, with the server's words, and
    // the daemon log carries them (never a token).
    let (line, json, server, log) = logout_of(Switches {
        revocation_refuses_all: true,
        ..Default::default()
    })
    .await;
    assert!(
        line.starts_with("logged out of s: the server refused revocation (invalid_request: revocation is not enabled for this client); the tokens are deleted here but stay valid at the server, the access token until "),
        "{line}"
    );
    assert_eq!(json["access_token"]["outcome"], "refused", "{json}");
    assert_eq!(
        json["refresh_token"]["detail"],
        "invalid_request: revocation is not enabled for this client",
        "{json}"
    );
    assert!(
        log.contains("revocation is not enabled for this client"),
        "{log}"
    );
    assert!(mcpauth_tests::leaked(&log, &server.secrets()).is_none());

    // No revocation endpoint at all.
    let (line, json, _, _) = logout_of(Switches {
        revocation: false,
        ..Default::default()
    })
    .await;
    assert!(
        line.starts_with("logged out of s: the server offers no revocation; the tokens are deleted here but stay valid there, the access token until "),
        "{line}"
    );
    assert_eq!(json["access_token"]["outcome"], "not_offered", "{json}");
}

/// A grant revoked right after a refresh a report caused: the next report
/// within the guard's wait is told that the MCP server rejects the fresh
/// token (and `status` shows it); the first report after it asks the AS
/// and finds the grant gone, within seconds. `token` then says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_revoked_right_after_a_refresh_is_found_within_seconds() {
    let (env, server, daemon) = logged_in(Switches::default()).await;
    let first = env.ctl(&["token", "s"]).ok().trim().to_string();
    let second = env
        .ctl(&["token", "s", "--rejected", &first, "--status", "401"])
        .ok()
        .trim()
        .to_string();
    assert_ne!(first, second);
    let started = Instant::now();
    server.revoke_all_refresh_tokens();
    server.reject_current_access_tokens();
    let held_back = env.ctl(&["token", "s", "--rejected", &second, "--status", "401"]);
    assert_eq!(held_back.code(), 1, "{}", held_back.stderr());
    let line = held_back.stderr();
    assert!(
        line.contains("s rejected the token refreshed") && !line.contains("authorization server"),
        "{line}"
    );
    let shown = env.ctl(&["show", "s", "--json"]).json();
    assert!(
        shown["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("rejected the token refreshed"),
        "{shown}"
    );
    assert!(daemon.log().contains("holding refreshes back"));
    // Reports keep coming, as a host's would: login required soon.
    let found = loop {
        let out = env.ctl(&["token", "s", "--rejected", &second, "--status", "401"]);
        if out.code() == 4 {
            break out;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{}",
            out.stderr()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        found.stderr().contains("invalid_grant"),
        "{}",
        found.stderr()
    );
    assert_eq!(server.token_requests("refresh_token").len(), 2);
    // `token` names why a login is needed, and says the next step once.
    let why = env.ctl(&["token", "s"]);
    assert_eq!(why.code(), 4);
    let line = why.stderr();
    assert!(
        line.contains("the authorization server rejected the refresh (invalid_grant), ")
            && line.contains("s ago"),
        "{line}"
    );
    assert_eq!(line.matches("mcpauthctl login s").count(), 1, "{line}");
}

/// The Python SDK's own MCP server and stdio client host: a clean session
/// ends with nothing on the proxy's stderr, and the proxy exits by itself
/// (the SDK would send SIGTERM after 2 s) as soon as its DELETE is
/// answered; the SDK's server 404s the deleted session's stream, which
/// must not be reopened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_proxy_session_under_the_python_sdk_ends_quietly() {
    let dir = mcpauth_tests::pysdk_installed();
    let mut server = std::process::Command::new(dir.join(".venv/bin/python"))
        .arg(dir.join("server.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut url = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut url)
        .unwrap();
    let env = TestEnv::new();
    let _d = env.start_daemon();
    env.ctl(&["add", "py", url.trim()]).ok();
    env.ctl(&["login", "py"]).ok();
    let stderr_file = env.root.path().join("proxy-stderr");
    // The host as a person's session starts it: only HOME and PATH.
    let out = std::process::Command::new(dir.join(".venv/bin/python"))
        .arg(dir.join("host.py"))
        .arg(mcpauth_tests::bin("mcpauthctl"))
        .args(["--socket", env.socket().to_str().unwrap(), "proxy", "py"])
        .env_clear()
        .env("HOME", env.home())
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("MCP_TEST_STDERR_FILE", &stderr_file)
        .output()
        .unwrap();
    // Logout at the SDK's revocation endpoint, which wants a client_secret
    // field even from a public client: one retry each, both revoked.
    let base = url.trim().trim_end_matches("/mcp").to_string();
    let logout = env.ctl(&["logout", "py"]).ok();
    assert_eq!(
        logout.trim(),
        "logged out of py: the access and refresh tokens are revoked at the server"
    );
    let stats: serde_json::Value = reqwest::get(format!("{base}/test/stats"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["revoke"], 4, "{stats}");
    let _ = server.kill();
    let _ = server.wait();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["text"], "echo: hi", "{report}");
    let stderr = std::fs::read_to_string(&stderr_file).unwrap();
    assert_eq!(stderr, "", "the proxy said something at a clean close");
    let close = report["close_seconds"].as_f64().unwrap();
    eprintln!("the SDK host closed the session in {close:.3}s");
    assert!(close < 1.5, "the proxy did not exit by itself: {close}s");
}
