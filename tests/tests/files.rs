//! Token files: export for tools that read them, import from tools that
//! write them, no loop between the two. And `watch` seeing new tokens.

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use mcpauth_tests::authserver::{AuthServer, Switches};
use mcpauth_tests::{TestEnv, mode};

fn write_atomically(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn until(limit: Duration, mut check: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if check() {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_writes_a_private_hermes_file_without_the_refresh_token() {
    let server = AuthServer::start(Switches::default()).await;
    let env = TestEnv::new();
    let file = env.root.path().join("hermes/mcp-tokens/s.json");
    env.write_config(&format!(
        "[servers.s]\nurl = \"{}\"\nexport = {{ path = \"{}\", format = \"hermes\" }}\n",
        server.mcp_url,
        file.display()
    ));
    let _d = env.start_daemon();
    env.ctl(&["login", "s"]).ok();
    let token = env.ctl(&["token", "s"]).ok().trim().to_string();
    let read = || {
        serde_json::from_str::<serde_json::Value>(
            &std::fs::read_to_string(&file).unwrap_or_default(),
        )
        .ok()
    };
    until(Duration::from_secs(5), || {
        read().is_some_and(|j| j["access_token"] == token.as_str())
    })
    .await
    .expect("exported");
    let json = read().unwrap();
    assert_eq!(mode(&file), 0o600);
    assert_eq!(json["token_type"], "Bearer");
    assert!(json["expires_in"].as_i64().unwrap() > 3000);
    assert!(json["expires_at"].as_i64().unwrap() > 1_700_000_000);
    assert_eq!(json["scope"], "mcp:read mcp:write");
    assert!(
        json.get("refresh_token").is_none(),
        "no refresh token by default"
    );
    // Every new token is written.
    env.ctl(&["refresh", "s"]).ok();
    let new = env.ctl(&["token", "s"]).ok().trim().to_string();
    assert_ne!(new, token);
    until(Duration::from_secs(5), || {
        read().is_some_and(|j| j["access_token"] == new.as_str())
    })
    .await
    .expect("re-exported after the refresh");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newer_tokens_written_by_another_tool_are_adopted_and_others_are_not() {
    let server = AuthServer::start(Switches::default()).await;
    let env = TestEnv::new();
    let file = env.root.path().join("other-tool/s.json");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    env.write_config(&format!(
        "[servers.s]\nurl = \"{}\"\nimport = {{ path = \"{}\", format = \"generic\" }}\n",
        server.mcp_url,
        file.display()
    ));
    let daemon = env.start_daemon();
    env.ctl(&["login", "s"]).ok();
    let held = env.ctl(&["token", "s"]).ok().trim().to_string();
    let expires_s = |delta: i64| mcpauth_tests::now_ms() / 1000 + delta;
    let current = || {
        env.ctl(&["token", "s", "--min-ttl", "0"])
            .ok()
            .trim()
            .to_string()
    };

    // Each file is looked at before the next replaces it.
    let looked_at = |what: &'static str| {
        let daemon = &daemon;
        async move {
            until(Duration::from_secs(5), || daemon.log().contains(what))
                .await
                .unwrap_or_else(|| panic!("no {what:?} in:\n{}", daemon.log()));
        }
    };
    // Older than what the broker holds (expires sooner): ignored.
    write_atomically(
        &file,
        &format!(
            r#"{{"access_token":"older","expires_at":{}}}"#,
            expires_s(60)
        ),
    );
    looked_at("not newer than the token held").await;
    // Malformed: ignored.
    write_atomically(&file, r#"{"access_token": "partial"#);
    looked_at("malformed or partial").await;
    // Another issuer: ignored.
    write_atomically(
        &file,
        &format!(
            r#"{{"access_token":"foreign","expires_at":{},"issuer":"https://elsewhere.example"}}"#,
            expires_s(7200)
        ),
    );
    let all_seen = || {
        let log = daemon.log();
        log.contains("not newer than the token held")
            && log.contains("malformed or partial")
            && log.contains("another issuer")
    };
    until(Duration::from_secs(5), all_seen)
        .await
        .unwrap_or_else(|| panic!("each file was looked at and refused:\n{}", daemon.log()));
    assert_eq!(current(), held);

    // Newer, same issuer: adopted.
    write_atomically(
        &file,
        &format!(
            r#"{{"access_token":"from-the-other-tool","expires_at":{},"issuer":"{}"}}"#,
            expires_s(7200),
            server.issuer
        ),
    );
    let took = until(Duration::from_secs(5), || {
        current() == "from-the-other-tool"
    })
    .await
    .expect("the newer token is adopted");
    eprintln!("import pickup observed after {took:?} (includes one mcpauthctl run per poll)");
    // The log line follows the store write.
    until(Duration::from_secs(5), || {
        daemon.log().contains("token adopted from file")
    })
    .await
    .expect("the adoption is logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exporting_and_importing_one_file_does_not_loop() {
    let server = AuthServer::start(Switches::default()).await;
    let env = TestEnv::new();
    let file = env.root.path().join("shared/s.json");
    // t imports a file beside it: a write there, after the export, is
    // looked at after the export's (one watch, its events in order, s
    // before t in one batch), so it tells when the export was looked at.
    let beside = env.root.path().join("shared/t.json");
    env.write_config(&format!(
        "[servers.s]\nurl = \"{url}\"\nimport = {{ path = \"{f}\", format = \"hermes\" }}\nexport = {{ path = \"{f}\", format = \"hermes\" }}\n\
         [servers.t]\nurl = \"https://t.example/mcp\"\nimport = {{ path = \"{b}\", format = \"hermes\" }}\n",
        url = server.mcp_url,
        f = file.display(),
        b = beside.display()
    ));
    let daemon = env.start_daemon();
    env.ctl(&["login", "s"]).ok();
    env.ctl(&["refresh", "s"]).ok();
    let token = env.ctl(&["token", "s"]).ok().trim().to_string();
    until(Duration::from_secs(5), || {
        std::fs::read_to_string(&file).is_ok_and(|t| t.contains(&token))
    })
    .await
    .expect("exported");
    write_atomically(&beside, "{");
    until(Duration::from_secs(5), || {
        daemon.log().contains("malformed or partial")
    })
    .await
    .expect("the file beside it was looked at");
    // The export was seen and recognised as the broker's own (without
    // the check it would be read back, found to hold the same token, and
    // skipped without a word).
    assert!(
        daemon
            .log()
            .contains("token file is the broker's own export; not read back"),
        "own writes are recognised:\n{}",
        daemon.log()
    );
    assert!(
        !daemon.log().contains("token adopted from file"),
        "own writes are not imported"
    );
    assert_eq!(env.ctl(&["token", "s"]).ok().trim(), token);
    assert_eq!(server.token_requests("refresh_token").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_prints_new_tokens_as_json_lines() {
    let server = AuthServer::start(Switches::default()).await;
    let env = TestEnv::new();
    let _d = env.start_daemon();
    env.ctl(&["add", "s", &server.mcp_url]).ok();
    env.ctl(&["login", "s"]).ok();
    let mut watch = env.command("mcpauthctl");
    watch
        .args(["watch", "s", "--json"])
        .stdout(std::process::Stdio::piped());
    let mut child = watch.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // The watch is listening some time after it starts: refresh until it
    // prints (its first line is then about a refresh).
    let deadline = Instant::now() + Duration::from_secs(20);
    let line = loop {
        env.ctl(&["refresh", "s"]).ok();
        if let Ok(line) = lines.recv_timeout(Duration::from_millis(500)) {
            break line;
        }
        assert!(Instant::now() < deadline, "watch printed nothing");
    };
    child.kill().unwrap();
    let _ = child.wait();
    let event: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(event["event"], "token_issued", "{line}");
    assert_eq!(event["server"], "s");
    let token = env.ctl(&["token", "s"]).ok().trim().to_string();
    assert!(!line.contains(&token), "events never carry tokens");
    for issued in server.issued_access_tokens() {
        assert!(!line.contains(&issued), "events never carry tokens");
    }
}
