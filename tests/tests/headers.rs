//! Headers that recover: a fake host that follows Claude Code's contract
//! (run the helper, connect; on a 401, rerun the helper and retry once)
//! against servers that stop accepting a token the broker still holds.

use std::sync::Arc;

use mcpauth_tests::TestEnv;
use mcpauth_tests::authserver::{AuthServer, Switches};
use mcpauth_tests::mcpserver::McpServer;

/// One connect as Claude Code does it; returns the final HTTP status.
async fn host_connect(env: &Arc<TestEnv>, url: &str) -> u16 {
    let client = reqwest::Client::new();
    let mut last = 0;
    for attempt in 0..2 {
        // Off the runtime's threads: the AS answering the daemon's check
        // runs on them.
        let helper_env = env.clone();
        let out = tokio::task::spawn_blocking(move || helper_env.ctl(&["headers", "s"]))
            .await
            .unwrap();
        if out.code() != 0 {
            return 0;
        }
        let headers = out.json();
        let authorization = headers["Authorization"].as_str().unwrap().to_string();
        let status = client
            .post(url)
            .header("authorization", authorization)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"fake-host","version":"1"}}}"#)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        last = status;
        if status != 401 || attempt == 1 {
            break;
        }
    }
    last
}

/// The daemon's token checks that reached the server.
fn checks(auth: &AuthServer) -> usize {
    auth.seen()
        .iter()
        .filter(|s| s.path.ends_with("/mcp") && s.json["method"] == "ping")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_token_heals_on_the_hosts_rerun() {
    let auth = AuthServer::start(Switches::default()).await;
    let env = Arc::new(TestEnv::new());
    let _d = env.start_daemon();
    env.ctl(&["add", "s", &auth.mcp_url]).ok();
    env.ctl(&["login", "s"]).ok();

    // Ordinary connects cost nothing: no check, no refresh.
    assert_eq!(host_connect(&env, &auth.mcp_url).await, 200);
    assert_eq!(checks(&auth), 0, "a first handout is not checked");
    assert!(auth.token_requests("refresh_token").is_empty());

    // The server stops accepting the token (revoked, keys rotated); the
    // broker's clock still says it is valid. The host reruns the helper
    // after its 401, and the rerun gets a working token.
    auth.reject_current_access_tokens();
    assert_eq!(host_connect(&env, &auth.mcp_url).await, 200);
    assert_eq!(auth.token_requests("refresh_token").len(), 1);
    assert_eq!(checks(&auth), 1);

    assert!(!auth.reuse_detected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_hosts_rerunning_at_once_cause_one_refresh() {
    let auth = AuthServer::start(Switches::default()).await;
    let env = Arc::new(TestEnv::new());
    let _d = env.start_daemon();
    env.ctl(&["add", "s", &auth.mcp_url]).ok();
    env.ctl(&["login", "s"]).ok();
    assert_eq!(host_connect(&env, &auth.mcp_url).await, 200);

    // Twenty hosts hit the same rejection at once: one refresh.
    auth.reject_current_access_tokens();
    let mut hosts = Vec::new();
    for _ in 0..20 {
        let env = env.clone();
        let url = auth.mcp_url.clone();
        hosts.push(tokio::spawn(async move { host_connect(&env, &url).await }));
    }
    let mut statuses = Vec::new();
    for host in hosts {
        statuses.push(host.await.unwrap());
    }
    assert!(
        statuses.iter().all(|s| *s == 200),
        "{statuses:?}\n{}",
        env.all_daemon_logs()
            .lines()
            .filter(|l| l.contains("server=s") || l.contains("refresh"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(
        auth.token_requests("refresh_token").len(),
        1,
        "one refresh for the twenty"
    );
    assert!(checks(&auth) <= 3, "checks are shared: {}", checks(&auth));
    assert!(!auth.reuse_detected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_rejects_every_token_costs_a_bounded_number_of_refreshes() {
    let auth = AuthServer::start(Switches::default()).await;
    // A server whose token check always fails (misconfigured audience).
    let mcp = McpServer::start(&auth.issuer, Arc::new(|_: &str| false), false).await;
    let env = Arc::new(TestEnv::new());
    let _d = env.start_daemon();
    env.ctl(&["add", "s", &mcp.url]).ok();
    env.ctl(&["login", "s"]).ok();
    let mut outcomes = Vec::new();
    for _ in 0..8 {
        outcomes.push(host_connect(&env, &mcp.url).await);
    }
    assert!(outcomes.iter().all(|s| *s != 200), "{outcomes:?}");
    let refreshes = auth.token_requests("refresh_token").len();
    assert!(
        refreshes <= 1,
        "{refreshes} refreshes for 8 connects to a server that rejects everything"
    );
    // The helper says why it failed, in one line.
    let out = env.ctl(&["headers", "s"]);
    if out.code() != 0 {
        assert_eq!(out.stderr().trim().lines().count(), 1, "{}", out.stderr());
    }
}
