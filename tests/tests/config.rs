//! The server registry: validation, config.toml as the source of truth,
//! live edits, persistence.

use std::time::Duration;

use mcpauth_client::pb;
use mcpauth_tests::{TestEnv, next_event};

#[tokio::test]
async fn invalid_names_and_urls_are_refused_with_invalid_argument() {
    let env = TestEnv::new();
    let _daemon = env.start_daemon();
    let long = "x".repeat(65);
    let cases: &[(&str, &str, &str)] = &[
        ("../x", "https://a.example/", "'/' is not allowed"),
        ("", "https://a.example/", "empty"),
        (&long, "https://a.example/", "longer than 64"),
        ("ok", "http://example.com/mcp", "only allowed for loopback"),
        ("ok", "https://example.com/mcp#frag", "fragment"),
        ("ok", "https://me:pw@example.com/mcp", "user name"),
        ("ok", "ftp://example.com/", "scheme"),
    ];
    let mut client = env.client().await;
    for (name, url, why) in cases {
        let err = client
            .add_server(pb::AddServerRequest {
                name: name.to_string(),
                url: url.to_string(),
                ..Default::default()
            })
            .await
            .expect_err("refused");
        match &err {
            mcpauth_client::ClientError::Rpc { code, message, .. } => {
                assert_eq!(
                    *code,
                    tonic::Code::InvalidArgument,
                    "{name} {url}: {message}"
                );
                assert!(message.contains(why), "{name} {url}: {message}");
            }
            other => panic!("{name} {url}: {other}"),
        }
        // The CLI turns it into one line and exit code 2.
        let out = env.ctl(&["add", name, url]);
        assert_eq!(out.code(), 2, "{name} {url}: {}", out.stderr());
        assert_eq!(out.stderr().trim().lines().count(), 1, "{}", out.stderr());
    }
    // Loopback http is fine.
    env.ctl(&["add", "local", "http://127.0.0.1:8080/mcp"]).ok();
    env.ctl(&["add", "local6", "http://[::1]:8080/mcp"]).ok();
    assert!(
        !std::fs::read_to_string(env.config_path())
            .unwrap()
            .contains("ftp")
    );
    let list = env.ctl(&["list", "--json"]).json();
    assert_eq!(list.as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn add_show_remove_round_trip_through_the_config_file() {
    let env = TestEnv::new();
    env.write_config(
        "# my MCP servers\n\n# the tracker\n[servers.linear]  # work\nurl = \"https://mcp.linear.app/mcp\"\n",
    );
    let _daemon = env.start_daemon();
    env.ctl(&[
        "add",
        "gh",
        "https://api.githubcopilot.com/mcp/",
        "--scope",
        "repo",
        "--scope",
        "read:org",
        "--callback-port",
        "33418",
        "--client-id",
        "Iv1.abc",
    ])
    .ok();
    let text = std::fs::read_to_string(env.config_path()).unwrap();
    assert!(
        text.starts_with("# my MCP servers\n\n# the tracker\n[servers.linear]  # work\n"),
        "{text}"
    );
    assert!(text.contains("[servers.gh]"), "{text}");

    let gh = env.ctl(&["show", "gh", "--json"]).json();
    assert_eq!(gh["url"], "https://api.githubcopilot.com/mcp/");
    assert_eq!(gh["scopes"], serde_json::json!(["repo", "read:org"]));
    assert_eq!(gh["callback_port"], 33418);
    assert_eq!(gh["client_id"], "Iv1.abc");
    assert_eq!(gh["state"], "login_required");
    assert!(gh["added_at_unix_ms"].as_i64().unwrap() > 0);

    let dup = env.ctl(&["add", "gh", "https://x.example/"]);
    assert_eq!(dup.code(), 2);
    assert!(dup.stderr().contains("already exists"));

    env.ctl(&["remove", "linear"]).ok();
    let text = std::fs::read_to_string(env.config_path()).unwrap();
    assert!(
        text.starts_with("# my MCP servers\n"),
        "preamble kept: {text}"
    );
    assert!(!text.contains("linear"), "{text}");
    let missing = env.ctl(&["show", "linear"]);
    assert_eq!(missing.code(), 2);
    assert!(
        missing.stderr().contains("mcpauthctl list"),
        "{}",
        missing.stderr()
    );
    assert_eq!(env.ctl(&["remove", "linear"]).code(), 2);
}

#[tokio::test]
async fn config_edits_apply_live_and_a_broken_edit_keeps_the_last_good_config() {
    let env = TestEnv::new();
    let daemon = env.start_daemon();
    let mut client = env.client().await;
    let mut events = client.watch(None).await.unwrap();

    env.write_config("[servers.a]\nurl = \"https://a.example/mcp\"\n");
    let added = next_event(&mut events, |e| e.server == "a").await;
    assert!(matches!(added.kind, Some(pb::event::Kind::ServerAdded(_))));

    // A broken edit: reported, and `a` stays.
    env.write_config("[servers.a]\nurl = \"https://a.example/mcp\"\n[servers.b\n");
    let rejected = next_event(&mut events, |e| {
        matches!(e.kind, Some(pb::event::Kind::ConfigRejected(_)))
    })
    .await;
    let Some(pb::event::Kind::ConfigRejected(r)) = rejected.kind else {
        unreachable!()
    };
    assert!(r.error.contains("line 3"), "{}", r.error);
    let status = env.ctl(&["status", "--json"]).json();
    assert_eq!(status["config"]["ok"], false);
    assert!(
        status["config"]["error"]
            .as_str()
            .unwrap()
            .contains("line 3")
    );
    assert_eq!(status["servers"][0]["name"], "a");
    assert!(env.ctl(&["status"]).ok().contains("REJECTED EDIT"));
    assert!(daemon.log().contains("config edit rejected"));

    // An edit the CLI would make on top of a broken file is refused too.
    let out = env.ctl(&["add", "c", "https://c.example/"]);
    assert_eq!(out.code(), 1, "{}", out.stderr());
    assert!(
        out.stderr().contains("fix the file first"),
        "{}",
        out.stderr()
    );

    // The broken file survives a restart: the last good config stays.
    daemon.stop();
    let daemon = env.start_daemon();
    let status = env.ctl(&["status", "--json"]).json();
    assert_eq!(status["config"]["ok"], false);
    assert_eq!(status["servers"][0]["name"], "a");

    // Fixing it clears the error and applies the change.
    let mut client = env.client().await;
    let mut events = client.watch(None).await.unwrap();
    env.write_config("[servers.b]\nurl = \"https://b.example/mcp\"\n");
    next_event(&mut events, |e| {
        e.server == "b" && matches!(e.kind, Some(pb::event::Kind::ServerAdded(_)))
    })
    .await;
    let status = env.ctl(&["status", "--json"]).json();
    assert_eq!(status["config"]["ok"], true);
    let names: Vec<_> = status["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["b"]);
    drop(daemon);
}

#[tokio::test]
async fn a_deleted_config_file_removes_nothing() {
    let env = TestEnv::new();
    let _daemon = env.start_daemon();
    let mut client = env.client().await;
    let mut events = client.watch(None).await.unwrap();
    env.ctl(&["add", "a", "https://a.example/"]).ok();
    std::fs::remove_file(env.config_path()).unwrap();
    next_event(&mut events, |e| {
        matches!(e.kind, Some(pb::event::Kind::ConfigRejected(_)))
    })
    .await;
    let list = env.ctl(&["list", "--json"]).json();
    assert_eq!(list[0]["name"], "a");
}

#[test]
fn servers_and_their_state_persist_across_a_restart() {
    let env = TestEnv::new();
    let daemon = env.start_daemon();
    env.ctl(&["add", "a", "https://a.example/mcp"]).ok();
    let before = env.ctl(&["show", "a", "--json"]).json();
    daemon.stop();

    let daemon = env.start_daemon();
    let after = env.ctl(&["show", "a", "--json"]).json();
    assert_eq!(before["added_at_unix_ms"], after["added_at_unix_ms"]);
    assert_eq!(after["url"], "https://a.example/mcp");
    daemon.stop();

    // The offline export is versioned JSON.
    let out = env.command("mcpauthd").arg("export").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let export: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(export["schema_version"], 1);
    assert_eq!(export["servers"]["a"]["v"], 1);
    assert_eq!(export["servers"]["a"]["url"], "https://a.example/mcp");
}

#[test]
fn removing_a_server_deletes_its_state() {
    let env = TestEnv::new();
    let daemon = env.start_daemon();
    env.ctl(&["add", "a", "https://a.example/"]).ok();
    env.ctl(&["add", "b", "https://b.example/"]).ok();
    // Export is refused while the daemon holds the store.
    let busy = env.command("mcpauthd").arg("export").output().unwrap();
    assert_eq!(busy.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&busy.stderr).contains("mcpauthctl stop"));
    env.ctl(&["remove", "a"]).ok();
    daemon.stop();
    let out = env.command("mcpauthd").arg("export").output().unwrap();
    let export: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(export["servers"]["a"].is_null(), "{export}");
    assert!(export["servers"]["b"].is_object(), "{export}");
}

#[test]
fn a_changed_url_starts_the_server_afresh() {
    let env = TestEnv::new();
    env.write_config("[servers.a]\nurl = \"https://a.example/\"\n");
    let daemon = env.start_daemon();
    let before = env.ctl(&["show", "a", "--json"]).json();
    daemon.stop();
    std::thread::sleep(Duration::from_millis(5));
    env.write_config("[servers.a]\nurl = \"https://other.example/\"\n");
    let _daemon = env.start_daemon();
    let after = env.ctl(&["show", "a", "--json"]).json();
    assert_eq!(after["url"], "https://other.example/");
    assert_ne!(before["added_at_unix_ms"], after["added_at_unix_ms"]);
}

/// Whoever can write config.toml decides where tokens go: a file others
/// can change is refused (the last good config stays), and so is an edit
/// through the daemon on top of it.
#[tokio::test]
async fn a_config_others_can_change_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let env = TestEnv::new();
    env.write_config("[servers.a]\nurl = \"https://a.example/mcp\"\n");
    let daemon = env.start_daemon();
    assert_eq!(
        env.ctl(&["list", "--json"])
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    daemon.stop();

    env.write_config("[servers.evil]\nurl = \"https://evil.example/mcp\"\n");
    std::fs::set_permissions(env.config_path(), std::fs::Permissions::from_mode(0o666)).unwrap();
    let daemon = env.start_daemon();
    let status = env.ctl(&["status", "--json"]).json();
    assert_eq!(status["config"]["ok"], false);
    let error = status["config"]["error"].as_str().unwrap();
    assert!(
        error.contains("can be changed by others (mode 666)") && error.contains("chmod go-w"),
        "{error}"
    );
    let names: Vec<_> = status["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["a"], "the last good config stays in force");
    let out = env.ctl(&["add", "b", "https://b.example/mcp"]);
    assert_eq!(out.code(), 1, "{}", out.stderr());
    assert_eq!(mode_of(&env), 0o666, "the daemon did not write over it");

    // Made private again, the file is used.
    std::fs::set_permissions(env.config_path(), std::fs::Permissions::from_mode(0o600)).unwrap();
    daemon.stop();
    let _daemon = env.start_daemon();
    let status = env.ctl(&["status", "--json"]).json();
    assert_eq!(status["config"]["ok"], true);
    assert_eq!(status["servers"][0]["name"], "evil");
}

fn mode_of(env: &TestEnv) -> u32 {
    mcpauth_tests::mode(&env.config_path())
}
