//! Crash consistency: SIGKILL at random moments while clients keep the
//! daemon rotating refresh tokens, then restart, again and again.
//!
//! After every restart:
//! - the store opens (the daemon becomes ready) and the server needs no
//!   login;
//! - the token it serves is the newest token any client was given before
//!   the kill, or newer: an acknowledged token is never lost;
//! - across the whole run the authorization server never sees a rotated
//!   refresh token come back after its successor was used, which is what
//!   losing a stored rotation would look like (and what gets real grants
//!   revoked).
//!
//! One window no client can close: the AS has rotated the refresh token and
//! answered, and the process dies before the answer is stored. The test
//! AS therefore runs with the grace most real servers offer (the previous
//! refresh token stays usable while its successor is unused), and the test
//! reports how many kills landed in that window.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use mcpauth_tests::TestEnv;
use mcpauth_tests::authserver::{AuthServer, Switches, issue_order};
use nix::sys::signal::Signal;
use rand::Rng;

/// Kills per run; `MCP_BROKER_CRASH_KILLS` runs more locally.
fn kills() -> usize {
    std::env::var("MCP_BROKER_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
}

const CLIENTS: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_rotating_refreshes_never_loses_a_token_or_a_rotation() {
    let server = AuthServer::start(Switches {
        rotate: true,
        reuse_grace: true,
        expires_in: Some(3600),
        // Widens the time a request is in flight at the AS.
        token_delay_ms: 1,
        ..Default::default()
    })
    .await;
    let env = TestEnv::new();
    let mut daemon = env.start_daemon();
    env.ctl(&["add", "s", &server.mcp_url]).ok();
    env.ctl(&["login", "s"]).ok();

    let newest_acknowledged = Arc::new(AtomicU64::new(0));
    let acknowledged = Arc::new(AtomicU64::new(0));
    let mut killed_in_flight = 0;
    let total = kills();
    for round in 0..total {
        // The store opened and nothing needs a login.
        let mut check = env.client().await;
        let current = match check.get_token("s", Some(0)).await {
            Ok(reply) => reply.access_token,
            Err(e) => panic!(
                "round {round}: no token after restart: {e}\n{}",
                daemon.log()
            ),
        };
        let order = issue_order(&current).unwrap();
        let newest = newest_acknowledged.load(Ordering::SeqCst);
        assert!(
            order >= newest,
            "round {round}: the daemon serves token #{order}, but token #{newest} had been handed out before the kill"
        );
        assert!(
            server.is_valid_access_token(&current),
            "round {round}: the token served is not live at the AS"
        );

        // Clients refresh as fast as they can (a forced refresh, then the
        // token it stored).
        let mut tasks = Vec::new();
        for _ in 0..CLIENTS {
            let mut client = env.client().await;
            let newest = newest_acknowledged.clone();
            let count = acknowledged.clone();
            tasks.push(tokio::spawn(async move {
                while client.refresh("s").await.is_ok() {
                    let Ok(reply) = client.get_token("s", Some(0)).await else {
                        break;
                    };
                    newest.fetch_max(issue_order(&reply.access_token).unwrap(), Ordering::SeqCst);
                    count.fetch_add(1, Ordering::SeqCst);
                }
            }));
        }
        let pause = rand::rng().random_range(0..40);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        if server.token_requests_in_flight() > 0 {
            killed_in_flight += 1;
        }
        daemon.signal(Signal::SIGKILL);
        daemon
            .wait_for_exit(Duration::from_secs(10))
            .expect("SIGKILL ends the daemon");
        for task in tasks {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("clients notice the daemon is gone")
                .unwrap();
        }
        daemon = env.start_daemon();
    }

    // A last look: a forced refresh works, so the stored refresh token is
    // the live one.
    let mut client = env.client().await;
    client
        .refresh("s")
        .await
        .expect("refresh after the last kill");
    let grace = server.grace_reuses();
    let refreshes = server.token_requests("refresh_token").len();
    println!(
        "crash consistency: {total} SIGKILLs, {killed_in_flight} with a token request in flight at the AS; \
         {refreshes} refresh requests, {} tokens acknowledged to clients; \
         {grace} kills fell between the AS's answer and the store's flush (recovered by the AS's reuse grace); \
         0 tokens lost, 0 logins needed",
        acknowledged.load(Ordering::SeqCst)
    );
    assert!(
        !server.reuse_detected(),
        "a rotated refresh token came back after its successor was used: a stored rotation was lost"
    );
    // The kills must really have landed during refreshes, or this test
    // proves nothing.
    assert!(
        killed_in_flight >= total / 10,
        "only {killed_in_flight} of {total} kills landed during a token request"
    );
    assert!(acknowledged.load(Ordering::SeqCst) >= total as u64);
    daemon.stop();
    // Hundreds of interrupted refreshes later, no log line holds a secret.
    let logs = env.all_daemon_logs();
    let secrets = server.secrets();
    assert!(secrets.len() > total);
    assert!(!logs.is_empty());
    if let Some(secret) = mcpauth_tests::leaked(&logs, &secrets) {
        panic!("a secret reached a log: {secret}");
    }
}
