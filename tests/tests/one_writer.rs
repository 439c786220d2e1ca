//! One writer per server: races that would misdirect or lose tokens, each
//! driven through the real binaries against slow test authorization
//! servers.

use std::time::{Duration, Instant};

use mcpauth_tests::TestEnv;
use mcpauth_tests::authserver::{AuthServer, Switches};

fn config(name: &str, url: &str) -> String {
    format!("[servers.{name}]\nurl = \"{url}\"\n")
}

/// Waits until `show NAME --json` satisfies `done`.
fn wait_for_show(env: &TestEnv, name: &str, done: impl Fn(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = env.ctl(&["show", name, "--json"]);
        if out.code() == 0 && done(&out.json()) {
            return;
        }
        assert!(Instant::now() < deadline, "show {name}: {}", out.stdout());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A refresh is in flight at `server` (it answers after its delay).
fn wait_for_request_in_flight(server: &AuthServer) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.token_requests_in_flight() == 0 {
        assert!(Instant::now() < deadline, "no request reached the AS");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_change_during_a_refresh_never_leaves_the_old_issuers_grant() {
    let old = AuthServer::start(Switches::default()).await;
    let new = AuthServer::start(Switches::default()).await;
    let env = TestEnv::new();
    let _d = env.start_daemon();
    env.write_config(&config("s", &old.mcp_url));
    wait_for_show(&env, "s", |_| true);
    env.ctl(&["login", "s"]).ok();
    let old_token = env.ctl(&["token", "s"]).ok().trim().to_string();

    old.set(|s| s.token_delay_ms = 2000);
    let refresh = env
        .command("mcpauthctl")
        .args(["refresh", "s"])
        .spawn()
        .unwrap();
    wait_for_request_in_flight(&old);
    env.write_config(&config("s", &new.mcp_url));
    let refreshed = tokio::task::spawn_blocking(move || refresh.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    // The refresh finished under the old identity (or was discarded);
    // either way the new URL has no grant.
    wait_for_show(&env, "s", |v| v["url"] == new.mcp_url.as_str());
    let shown = env.ctl(&["show", "s", "--json"]).json();
    assert_eq!(shown["state"], "login_required", "{shown}");
    assert!(shown["token_expires_at_unix_ms"].is_null(), "{shown}");
    let token = env.ctl(&["token", "s"]);
    assert_eq!(
        token.code(),
        4,
        "no token for the new URL: {}",
        token.stdout()
    );
    assert!(!token.stdout().contains(&old_token));
    for issued in old.issued_access_tokens() {
        assert!(!token.stdout().contains(&issued));
    }
    let _ = refreshed;
    // The new server's AS was never sent anything of the old one's.
    assert!(new.token_requests("refresh_token").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removal_during_a_refresh_leaves_nothing_for_a_server_added_again() {
    let server = AuthServer::start(Switches::default()).await;
    let env = TestEnv::new();
    let _d = env.start_daemon();
    env.write_config(&config("s", &server.mcp_url));
    wait_for_show(&env, "s", |_| true);
    env.ctl(&["login", "s"]).ok();

    server.set(|s| s.token_delay_ms = 2000);
    let refresh = env
        .command("mcpauthctl")
        .args(["refresh", "s"])
        .spawn()
        .unwrap();
    wait_for_request_in_flight(&server);
    env.write_config("");
    let _ = tokio::task::spawn_blocking(move || refresh.wait_with_output())
        .await
        .unwrap();
    mcpauth_tests::wait_until(Duration::from_secs(10), "s to be removed", || {
        env.ctl(&["show", "s", "--json"]).code() == 2
    });
    // Added again with the same URL: its old state is gone, the refresh in
    // flight did not bring it back.
    server.set(|s| s.token_delay_ms = 0);
    env.write_config(&config("s", &server.mcp_url));
    wait_for_show(&env, "s", |_| true);
    let shown = env.ctl(&["show", "s", "--json"]).json();
    assert_eq!(shown["state"], "login_required", "{shown}");
    assert_eq!(env.ctl(&["token", "s"]).code(), 4);
}

#[test]
fn stop_then_any_command_works_every_time() {
    let env = TestEnv::new();
    env.ctl(&["status"]).ok();
    let mut failures = Vec::new();
    for round in 0..50 {
        let stop = env.ctl(&["stop"]);
        if stop.code() != 0 {
            failures.push(format!("round {round}: stop: {}", stop.stderr()));
        }
        // Autostarts a new daemon at once.
        let status = env.ctl(&["status"]);
        if status.code() != 0 {
            failures.push(format!("round {round}: status: {}", status.stderr()));
        }
    }
    env.ctl(&["stop"]).ok();
    assert!(
        failures.is_empty(),
        "{} failures: {failures:#?}",
        failures.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_completing_during_a_refresh_gets_its_own_generation() {
    let server = AuthServer::start(Switches::default()).await;
    let env = TestEnv::new();
    let _d = env.start_daemon();
    env.ctl(&["add", "s", &server.mcp_url]).ok();
    env.ctl(&["login", "s"]).ok();
    let mut client = env.client().await;
    let first = client.get_token("s", Some(0)).await.unwrap().generation;

    // Both the code exchange and the refresh take a second at the AS, and
    // run at the same time: the login is started first and its code
    // exchange is in flight when the (scheduled or forced) refresh starts.
    server.set(|s| s.token_delay_ms = 1000);
    let login = env
        .command("mcpauthctl")
        .args(["login", "s"])
        .spawn()
        .unwrap();
    wait_for_request_in_flight(&server);
    let refresh = env
        .command("mcpauthctl")
        .args(["refresh", "s"])
        .spawn()
        .unwrap();
    let login = tokio::task::spawn_blocking(move || login.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        login.status.success(),
        "{}",
        String::from_utf8_lossy(&login.stderr)
    );
    let refresh = tokio::task::spawn_blocking(move || refresh.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        refresh.status.success(),
        "{}",
        String::from_utf8_lossy(&refresh.stderr)
    );

    // Two new grants, two generations: neither overwrote the other.
    let reply = client.get_token("s", Some(0)).await.unwrap();
    assert_eq!(reply.generation, first + 2, "two installs after {first}");
    assert!(server.is_valid_access_token(&reply.access_token));
    assert_eq!(
        server.issued_access_tokens().len(),
        3,
        "two logins, one refresh"
    );
    assert!(!server.reuse_detected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_after_a_failed_manual_refresh_states_the_real_next_attempt() {
    let server = AuthServer::start(Switches::default()).await;
    let env = TestEnv::new();
    let _d = env.start_daemon();
    env.ctl(&["add", "s", &server.mcp_url]).ok();
    env.ctl(&["login", "s"]).ok();
    let before = env.ctl(&["show", "s", "--json"]).json();
    let planned = before["next_refresh_unix_ms"].as_i64().unwrap();

    server.set(|s| s.token_failure = Some(503));
    assert_eq!(env.ctl(&["refresh", "s"]).code(), 1);
    let after = env.ctl(&["show", "s", "--json"]).json();
    // The token is still valid for an hour: nothing retries in 5 s, the
    // plan stands, and status says so (one failure state, not two).
    assert_eq!(after["refresh_state"], "scheduled", "{after}");
    assert_eq!(
        after["next_refresh_unix_ms"].as_i64(),
        Some(planned),
        "{after}"
    );
    let error = after["last_error"].as_str().unwrap();
    assert!(error.contains("503"), "{error}");
    assert!(!error.contains("retrying in"), "{error}");
    let status = env.ctl(&["status"]).ok();
    assert!(!status.contains("retrying in 5s"), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_file_is_current_when_a_refresh_returns() {
    let server = AuthServer::start(Switches::default()).await;
    let env = TestEnv::new();
    let file = env.home().join("tokens/s.json");
    env.write_config(&format!(
        "[servers.s]\nurl = \"{}\"\nexport = {{ path = \"{}\", format = \"hermes\" }}\n",
        server.mcp_url,
        file.display()
    ));
    let _d = env.start_daemon();
    env.ctl(&["login", "s"]).ok();
    let mut client = env.client().await;
    // Many refreshes back to back, with a watcher that never reads (it
    // lags): every export happens, and before the caller hears of it.
    let _lagging = client_watch(&env).await;
    for round in 0..300 {
        client.refresh("s").await.unwrap();
        let token = client.get_token("s", Some(0)).await.unwrap().access_token;
        let text = std::fs::read_to_string(&file).unwrap();
        let exported: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(exported["access_token"], token.as_str(), "round {round}");
    }
}

async fn client_watch(env: &TestEnv) -> impl Sized {
    let mut client = env.client().await;
    client.watch(None).await.unwrap()
}
