//! Tokens for programs: `token`, `headers` (Claude Code's headersHelper),
//! rejected-token reports, and step-up.

use mcpauth_tests::authserver::{AuthServer, Switches};
use mcpauth_tests::{Daemon, TestEnv};

async fn logged_in(switches: Switches, add_args: &[&str]) -> (TestEnv, AuthServer, Daemon) {
    let server = AuthServer::start(switches).await;
    let env = TestEnv::new();
    let daemon = env.start_daemon();
    let mut args = vec!["add", "s", server.mcp_url.as_str()];
    args.extend(add_args);
    env.ctl(&args).ok();
    env.ctl(&["login", "s"]).ok();
    (env, server, daemon)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_and_headers_hand_out_the_current_token() {
    let (env, server, _d) = logged_in(Switches::default(), &[]).await;
    let token = env.ctl(&["token", "s"]).ok().trim().to_string();
    assert!(
        server.is_valid_access_token(&token),
        "a live token: {token}"
    );

    let expected = serde_json::json!({"Authorization": format!("Bearer {token}")});
    let by_name = env.ctl(&["headers", "s"]).json();
    assert_eq!(by_name, expected);
    let by_env_name = env
        .ctl_env(&["headers"], &[("CLAUDE_CODE_MCP_SERVER_NAME", "s")])
        .json();
    assert_eq!(by_env_name, expected);
    let url_with_slash = format!("{}/", server.mcp_url);
    for url in [server.mcp_url.as_str(), url_with_slash.as_str()] {
        let by_url = env
            .ctl_env(&["headers"], &[("CLAUDE_CODE_MCP_SERVER_URL", url)])
            .json();
        assert_eq!(by_url, expected, "{url}");
    }
    let unknown = env.ctl_env(
        &["headers"],
        &[(
            "CLAUDE_CODE_MCP_SERVER_URL",
            "https://elsewhere.example/mcp",
        )],
    );
    assert_eq!(unknown.code(), 2);
    // A host that sends the headers elsewhere than the server named gets
    // no token: by name, and by Claude Code's name variable alike.
    let elsewhere = "https://elsewhere.example/mcp";
    for (args, vars) in [
        (
            &["headers", "s"][..],
            vec![("CLAUDE_CODE_MCP_SERVER_URL", elsewhere)],
        ),
        (
            &["headers"][..],
            vec![
                ("CLAUDE_CODE_MCP_SERVER_NAME", "s"),
                ("CLAUDE_CODE_MCP_SERVER_URL", elsewhere),
            ],
        ),
    ] {
        let out = env.ctl_env(args, &vars);
        assert_eq!(out.code(), 2, "{args:?}: {}", out.stderr());
        assert!(out.stdout().is_empty(), "{}", out.stdout());
        let line = out.stderr();
        assert_eq!(line.trim().lines().count(), 1, "{line}");
        assert!(
            line.contains(elsewhere) && line.contains(&server.mcp_url) && !line.contains(&token),
            "{line}"
        );
    }
    // The same server's URL as the host spells it is fine.
    let spelled = server.mcp_url.replace("/mcp", "/mcp/");
    let by_name_and_url = env
        .ctl_env(
            &["headers", "s"],
            &[("CLAUDE_CODE_MCP_SERVER_URL", spelled.as_str())],
        )
        .json();
    assert_eq!(by_name_and_url, expected);
    assert_eq!(
        env.ctl(&["headers"]).code(),
        2,
        "no name and no Claude Code variables"
    );
    // Nothing was refreshed to answer these.
    assert!(server.token_requests("refresh_token").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_login_programs_get_exit_4_and_no_browser() {
    let server = AuthServer::start(Switches::default()).await;
    let env = TestEnv::new();
    let _d = env.start_daemon();
    env.ctl(&["add", "s", &server.mcp_url]).ok();
    for args in [&["token", "s"][..], &["headers", "s"]] {
        let out = env.ctl(args);
        assert_eq!(out.code(), 4, "{args:?}");
        assert!(out.stdout().is_empty());
        assert!(
            out.stderr().contains("mcpauthctl login s"),
            "{}",
            out.stderr()
        );
        assert_eq!(out.stderr().trim().lines().count(), 1);
    }
    assert!(env.browser_log().is_empty());
    assert!(server.requests("/authorize").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_tokens_are_refreshed_once_per_half_life_not_on_every_call() {
    // 3 s tokens are inside the default 60 s minimum validity: the margin
    // is capped at half the lifetime, so 5 processes making 30 calls each
    // over about 3 s cause a refresh per half-life, not one per call.
    let (env, server, _d) = logged_in(
        Switches {
            expires_in: Some(3),
            ..Default::default()
        },
        &[],
    )
    .await;
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let mut client = env.client().await;
        tasks.push(tokio::spawn(async move {
            let mut tokens = Vec::new();
            for _ in 0..30 {
                let reply = client.get_token("s", None).await.expect("a token");
                let remaining = reply.expires_at_unix_ms - mcpauth_tests::now_ms();
                tokens.push((reply.access_token, remaining));
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            tokens
        }));
    }
    let mut handed_out = Vec::new();
    for task in tasks {
        handed_out.extend(task.await.unwrap());
    }
    let elapsed_ms = started.elapsed().as_millis() as usize;
    let refreshes = server.token_requests("refresh_token").len();
    println!("150 calls over {elapsed_ms} ms with 3 s tokens: {refreshes} refreshes");
    // One per half-life (1.5 s) of the run, plus the scheduler's and some slack.
    assert!(
        refreshes <= elapsed_ms / 1500 + 3,
        "{refreshes} refreshes for 150 calls in {elapsed_ms} ms"
    );
    assert!(
        refreshes >= 1,
        "3 s tokens must be refreshed in {elapsed_ms} ms"
    );
    for (token, remaining) in handed_out {
        // Never expired, and valid for at least about half a lifetime.
        assert!(remaining > 1000, "a token with {remaining} ms left");
        assert!(server.issued_access_tokens().contains(&token));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_of_a_rejected_token_refresh_once_and_stale_reports_get_the_current_token() {
    let (env, server, _d) = logged_in(Switches::default(), &[]).await;
    let t1 = env.ctl(&["token", "s"]).ok().trim().to_string();
    let t2 = env
        .ctl(&["token", "s", "--rejected", &t1])
        .ok()
        .trim()
        .to_string();
    assert_ne!(t1, t2);
    assert!(server.is_valid_access_token(&t2));
    assert_eq!(server.token_requests("refresh_token").len(), 1);
    // Another process still holding t1 reports it: it gets t2, no request.
    let again = env
        .ctl(&["token", "s", "--rejected", &t1])
        .ok()
        .trim()
        .to_string();
    assert_eq!(again, t2);
    assert_eq!(server.token_requests("refresh_token").len(), 1);
    // The server rejects t2 too, at once: held back, not another refresh,
    // and the words name the MCP server's rejection.
    let storm = env.ctl(&["token", "s", "--rejected", &t2]);
    assert_eq!(storm.code(), 1, "{}", storm.stderr());
    assert!(
        storm.stderr().contains("s rejected the token refreshed")
            && storm.stderr().contains("refreshes again in"),
        "{}",
        storm.stderr()
    );
    assert_eq!(server.token_requests("refresh_token").len(), 1);
    // A report never carries the token itself.
    assert!(
        !server
            .seen()
            .iter()
            .any(|s| s.form.values().any(|v| v == &t1))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reports_from_many_processes_cause_one_refresh() {
    let (env, server, _d) = logged_in(Switches::default(), &[]).await;
    let t1 = env.ctl(&["token", "s"]).ok().trim().to_string();
    let children: Vec<_> = (0..12)
        .map(|_| {
            let mut cmd = env.command("mcpauthctl");
            cmd.args(["token", "s", "--rejected", &t1]);
            cmd.stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            cmd.spawn().unwrap()
        })
        .collect();
    let tokens: std::collections::BTreeSet<String> = children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        })
        .collect();
    assert_eq!(tokens.len(), 1, "everyone got the same new token");
    assert_eq!(
        server.token_requests("refresh_token").len(),
        1,
        "exactly one refresh"
    );
    assert!(!server.reuse_detected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_up_asks_for_the_union_and_is_bounded() {
    let (env, server, _d) = logged_in(Switches::default(), &["--scope", "mcp:read"]).await;
    assert_eq!(server.requests("/authorize")[0].query["scope"], "mcp:read");
    let challenge = r#"Bearer error="insufficient_scope", scope="mcp:admin""#;
    for attempt in 1..=4 {
        let token = env.ctl(&["token", "s"]).ok().trim().to_string();
        let out = env.ctl(&[
            "token",
            "s",
            "--rejected",
            &token,
            "--status",
            "403",
            "--www-authenticate",
            challenge,
        ]);
        assert_eq!(out.code(), 4, "attempt {attempt}: {}", out.stderr());
        assert!(
            out.stderr().contains("step-up required") && out.stderr().contains("mcp:admin"),
            "{}",
            out.stderr()
        );
        assert_eq!(
            env.ctl(&["show", "s", "--json"]).json()["state"],
            "step_up_required"
        );
        let login = env.ctl(&["login", "s"]);
        if attempt <= 3 {
            assert_eq!(login.code(), 0, "attempt {attempt}: {}", login.stderr());
            let authorize = server.requests("/authorize");
            assert_eq!(
                authorize.last().unwrap().query["scope"],
                "mcp:read mcp:admin",
                "the union"
            );
            assert_eq!(
                env.ctl(&["show", "s", "--json"]).json()["state"],
                "authorized"
            );
        } else {
            assert_eq!(login.code(), 1);
            assert!(
                login.stderr().contains("after 3 authorizations"),
                "{}",
                login.stderr()
            );
        }
    }
    // Step-up never refreshed anything.
    assert!(server.token_requests("refresh_token").is_empty());
    assert_eq!(
        server.requests("/authorize").len(),
        4,
        "1 login + 3 step-ups"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_refreshed_ahead_of_expiry_without_anyone_asking() {
    // 4-second tokens: the scheduler refreshes each after about 2 seconds.
    let started = std::time::Instant::now();
    let (env, server, _d) = logged_in(
        Switches {
            expires_in: Some(4),
            ..Default::default()
        },
        &[],
    )
    .await;
    let shown = env.ctl(&["show", "s", "--json"]).json();
    assert_eq!(shown["refresh_state"], "scheduled", "{shown}");
    let due = shown["next_refresh_unix_ms"].as_i64().unwrap();
    let expires = shown["token_expires_at_unix_ms"].as_i64().unwrap();
    assert!(due < expires, "planned before expiry");
    let mut waited = 0;
    while server.token_requests("refresh_token").len() < 2 && waited < 200 {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        waited += 1;
    }
    assert!(
        server.token_requests("refresh_token").len() >= 2,
        "two proactive refreshes"
    );
    // Each arrived before the previous token expired (4 s): no caller ever
    // saw an expired token, and the rotated refresh token was carried.
    assert!(started.elapsed() < std::time::Duration::from_secs(12));
    assert!(!server.reuse_detected());
    let status = env.ctl(&["status"]).ok();
    assert!(status.contains("NEXT REFRESH"), "{status}");
}

/// The reason the broker exists: many processes, many tasks each, one
/// rotating refresh token. Through the broker: exactly one refresh and one
/// new token for everyone. The negative control does the same without the
/// broker and must show the race (several refreshes, the grant revoked),
/// proving the callers really overlapped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_storm_across_processes_refreshes_once_and_the_control_shows_the_race() {
    const PROCESSES: usize = 10;
    const TASKS: usize = 8;
    let server = AuthServer::start(Switches {
        token_delay_ms: 200,
        ..Default::default()
    })
    .await;
    let env = TestEnv::new();
    let export = env.root.path().join("export.json");
    env.write_config(&format!(
        "[servers.s]\nurl = \"{}\"\nexport = {{ path = \"{}\", format = \"generic\", refresh_token = true }}\n",
        server.mcp_url,
        export.display()
    ));
    let _d = env.start_daemon();
    env.ctl(&["login", "s"]).ok();
    let rejected = env.ctl(&["token", "s"]).ok().trim().to_string();

    let start = mcpauth_tests::now_ms() + 1500;
    let socket = env.socket();
    let children: Vec<_> = (0..PROCESSES)
        .map(|_| {
            let mut cmd = env.command_of(&mcpauth_tests::own_bin!("test-client"));
            cmd.args([
                "broker",
                socket.to_str().unwrap(),
                "s",
                &rejected,
                &TASKS.to_string(),
                &start.to_string(),
            ]);
            cmd.stdout(std::process::Stdio::piped());
            cmd.spawn().unwrap()
        })
        .collect();
    let mut results = Vec::new();
    for child in children {
        let out = child.wait_with_output().unwrap();
        results.extend(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(|l| l.split('\t').next().unwrap_or_default().to_string()),
        );
    }
    assert_eq!(results.len(), PROCESSES * TASKS);
    let distinct: std::collections::BTreeSet<_> = results.iter().collect();
    assert_eq!(
        distinct.len(),
        1,
        "everyone got the same token: {distinct:?}"
    );
    let new_token = results[0].clone();
    assert!(server.is_valid_access_token(&new_token), "{new_token}");
    assert_eq!(
        server.token_requests("refresh_token").len(),
        1,
        "exactly one refresh reached the AS"
    );
    assert!(!server.reuse_detected(), "nothing was revoked");

    // Negative control: the same callers refreshing on their own.
    let mut exported: serde_json::Value = serde_json::Value::Null;
    for _ in 0..200 {
        exported = serde_json::from_str(&std::fs::read_to_string(&export).unwrap_or_default())
            .unwrap_or_default();
        if exported["access_token"] == new_token.as_str() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let refresh_token = exported["refresh_token"]
        .as_str()
        .expect("exported with the refresh token")
        .to_string();
    let client_id = exported["client_id"].as_str().unwrap().to_string();
    let token_url = format!("{}/token", server.issuer);
    let start = mcpauth_tests::now_ms() + 1500;
    let children: Vec<_> = (0..PROCESSES)
        .map(|_| {
            let mut cmd = env.command_of(&mcpauth_tests::own_bin!("test-client"));
            cmd.args([
                "direct",
                &token_url,
                &client_id,
                &refresh_token,
                &server.mcp_url,
                &TASKS.to_string(),
                &start.to_string(),
            ]);
            cmd.stdout(std::process::Stdio::piped());
            cmd.spawn().unwrap()
        })
        .collect();
    for child in children {
        child.wait_with_output().unwrap();
    }
    let direct = server.token_requests("refresh_token").len() - 1;
    assert!(direct >= 2, "the control overlapped: {direct} refreshes");
    assert!(
        server.reuse_detected(),
        "without the broker, reuse revoked the grant"
    );
    eprintln!(
        "storm: {} callers, 1 refresh through the broker; control: {direct} refreshes and a revoked grant",
        PROCESSES * TASKS
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_killed_mid_refresh_does_not_lose_the_rotated_refresh_token() {
    let server = AuthServer::start(Switches::default()).await;
    let env = TestEnv::new();
    let _d = env.start_daemon();
    env.ctl(&["add", "s", &server.mcp_url]).ok();
    env.ctl(&["login", "s"]).ok();
    let old = env.ctl(&["token", "s"]).ok().trim().to_string();
    let mut events = env.events(Some("s")).await;
    server.set(|s| s.token_delay_ms = 800);
    let mut child = env.command("mcpauthctl");
    child.args(["token", "s", "--rejected", &old]);
    let mut child = child.spawn().unwrap();
    // Kill it once its refresh is at the AS.
    for _ in 0..400 {
        if !server.token_requests("refresh_token").is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(server.token_requests("refresh_token").len(), 1);
    child.kill().unwrap();
    let _ = child.wait();
    server.set(|s| s.token_delay_ms = 0);
    // The refresh finishes without its caller: the new token is held ...
    mcpauth_tests::token_issued(&mut events, "s", 0).await;
    let new = env.ctl(&["token", "s"]).ok().trim().to_string();
    assert_ne!(new, old);
    assert!(server.is_valid_access_token(&new));
    assert_eq!(server.token_requests("refresh_token").len(), 1);
    // ... and so is the rotated refresh token: the next refresh works.
    env.ctl(&["refresh", "s"]).ok();
    assert!(!server.reuse_detected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unavailable_authorization_server_means_retry_later_and_changes_nothing() {
    let (env, server, _d) = logged_in(Switches::default(), &[]).await;
    let held = env.ctl(&["token", "s"]).ok().trim().to_string();
    server.set(|s| s.token_failure = Some(503));
    let out = env.ctl(&["refresh", "s"]);
    assert_eq!(out.code(), 1, "{}", out.stderr());
    assert!(
        out.stderr().contains("unavailable") && out.stderr().contains("retry after"),
        "{}",
        out.stderr()
    );
    // A caller that wants more validity than the token has still gets the
    // held token while it is valid: the failed refresh changed nothing.
    let token = env
        .ctl(&["token", "s", "--min-ttl", "7200"])
        .ok()
        .trim()
        .to_string();
    assert_eq!(token, held);
    let shown = env.ctl(&["show", "s", "--json"]).json();
    assert!(
        shown["last_error"].as_str().unwrap().contains("503"),
        "{shown}"
    );
    // When the AS is back, the stored refresh token still works.
    server.set(|s| s.token_failure = None);
    env.ctl(&["refresh", "s"]).ok();
    assert!(!server.reuse_detected());
}
