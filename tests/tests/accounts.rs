//! Several accounts on one server: two entries with the same URL, each
//! with its own registration, grant and refresher, and a login that lets
//! the person choose the account.

use std::process::Command;

use mcpauth_tests::TestEnv;
use mcpauth_tests::authserver::{AuthServer, Switches};

const ANN: &str = "ann@example.com";
const BOB: &str = "bob@example.com";

async fn two_accounts() -> AuthServer {
    AuthServer::start(Switches {
        accounts: vec![ANN.into(), BOB.into()],
        ..Switches::default()
    })
    .await
}

fn entry(name: &str, url: &str, extra: &str) -> String {
    format!("[servers.{name}]\nurl = \"{url}\"\nscopes = [\"openid\", \"mcp:read\"]\n{extra}\n")
}

/// Two entries, one URL: each login asks the authorization server to let
/// the person choose (`prompt=select_account`), so the second entry does
/// not silently get the browser session's account; each entry's token is
/// its own account's, `show` and `status` name the accounts, and a helper
/// given only the URL refuses to pick one of the two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_entries_on_one_url_hold_two_accounts_kept_apart() {
    let server = two_accounts().await;
    let env = TestEnv::new();
    env.write_config(&format!(
        "{}{}",
        entry("work", &server.mcp_url, ""),
        entry("home", &server.mcp_url, "")
    ));
    let _daemon = env.start_daemon();
    env.ctl(&["login", "work"]).ok();
    env.ctl(&["login", "home"]).ok();

    let opened = env.browser_log();
    assert_eq!(opened.len(), 2, "{opened:?}");
    for url in &opened {
        assert!(url.contains("prompt=select_account"), "{url}");
    }
    let work = env.ctl(&["token", "work"]).ok().trim().to_string();
    let home = env.ctl(&["token", "home"]).ok().trim().to_string();
    assert_ne!(work, home);
    assert_eq!(server.account_of(&work).as_deref(), Some(ANN));
    assert_eq!(server.account_of(&home).as_deref(), Some(BOB));
    // Each entry has its own client registration.
    let registrations = server.requests("/register");
    assert_eq!(registrations.len(), 2, "one registration per entry");

    let show = env.ctl(&["show", "work"]).ok();
    assert!(show.contains(&format!("account         {ANN}")), "{show}");
    let show = env.ctl(&["show", "home"]).ok();
    assert!(show.contains(&format!("account         {BOB}")), "{show}");
    let status = env.ctl(&["status"]).ok();
    assert!(status.contains(&format!("authorized as {ANN}")), "{status}");
    assert!(status.contains(&format!("authorized as {BOB}")), "{status}");
    let json = env.ctl(&["show", "home", "--json"]).json();
    assert_eq!(json["account"], BOB, "{json}");

    // A refresh keeps whose the grant is.
    env.ctl(&["refresh", "home"]).ok();
    let show = env.ctl(&["show", "home"]).ok();
    assert!(show.contains(&format!("account         {BOB}")), "{show}");

    // The headers helper given only the URL must not pick one of them.
    let out = env.ctl_env(
        &["headers"],
        &[("CLAUDE_CODE_MCP_SERVER_URL", server.mcp_url.as_str())],
    );
    assert_eq!(out.code(), 2, "{}", out.stderr());
    let err = out.stderr();
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!(
            "home and work have the same URL {}, each with its own login: pass NAME",
            server.mcp_url
        )),
        "{err}"
    );
    // Named, each gets its own account's token.
    let out = env.ctl(&["headers", "--", "home"]).json();
    let bearer = out["Authorization"].as_str().unwrap();
    let token = bearer.strip_prefix("Bearer ").unwrap();
    assert_eq!(server.account_of(token).as_deref(), Some(BOB));
}

/// `login_hint` in an entry's section asks for that account (and then no
/// `prompt` is added); a server no other entry shares the URL of gets
/// neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_hint_picks_the_account_and_a_lone_server_is_not_asked() {
    let server = two_accounts().await;
    let env = TestEnv::new();
    let _daemon = env.start_daemon();
    // `add --login-hint` writes the setting.
    env.ctl(&[
        "add",
        "solo",
        &server.mcp_url,
        "--scope",
        "openid",
        "--login-hint",
        BOB,
    ])
    .ok();
    let config = std::fs::read_to_string(env.config_path()).unwrap();
    assert!(
        config.contains(&format!("login_hint = \"{BOB}\"")),
        "{config}"
    );
    env.ctl(&["login", "solo"]).ok();
    let opened = env.browser_log();
    assert!(
        opened[0].contains("login_hint=bob%40example.com"),
        "{opened:?}"
    );
    assert!(!opened[0].contains("prompt="), "{opened:?}");
    let token = env.ctl(&["token", "solo"]).ok().trim().to_string();
    assert_eq!(server.account_of(&token).as_deref(), Some(BOB));
    let show = env.ctl(&["show", "solo"]).ok();
    assert!(show.contains(&format!("login hint      {BOB}")), "{show}");
    assert!(show.contains(&format!("account         {BOB}")), "{show}");

    // Without a hint and alone on its URL: the session's account, no
    // prompt.
    let env2 = TestEnv::new();
    env2.write_config(&entry("alone", &server.mcp_url, ""));
    let _daemon2 = env2.start_daemon();
    env2.ctl(&["login", "alone"]).ok();
    let opened = env2.browser_log();
    assert!(!opened[0].contains("prompt="), "{opened:?}");
    assert!(!opened[0].contains("login_hint="), "{opened:?}");
}

/// `connect claude-code` writes both entries, and the real Claude Code
/// lists both and health-checks each with its own account's token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_claude_code_keeps_two_accounts_of_one_server_apart() {
    let claude = mcpauth_tests::real_hosts().join("claude");
    let server = two_accounts().await;
    let env = TestEnv::new();
    env.write_config(&format!(
        "{}{}",
        entry("work", &server.mcp_url, ""),
        entry("home", &server.mcp_url, "")
    ));
    let _daemon = env.start_daemon();
    env.ctl(&["login", "work"]).ok();
    env.ctl(&["login", "home"]).ok();
    let work = env.ctl(&["token", "work"]).ok().trim().to_string();
    let home = env.ctl(&["token", "home"]).ok().trim().to_string();
    std::fs::write(
        env.home().join(".claude.json"),
        "{\n  \"mcpServers\": {}\n}\n",
    )
    .unwrap();
    let out = env.ctl(&["connect", "claude-code"]).ok();
    assert!(
        out.contains("added") && out.contains("work") && out.contains("home"),
        "{out}"
    );

    let out = Command::new(&claude)
        .args(["mcp", "list"])
        .current_dir(env.root.path())
        .env_clear()
        .env("HOME", env.home())
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    for name in ["work", "home"] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(&format!("{name}: {}", server.mcp_url))),
            "{stdout}"
        );
    }
    // Each entry's health check carried its own account's token.
    let bearers: Vec<String> = server
        .requests(mcpauth_tests::authserver::MCP_PATH)
        .into_iter()
        .filter_map(|r| r.bearer)
        .collect();
    assert!(bearers.contains(&work), "{stdout}");
    assert!(bearers.contains(&home), "{stdout}");
}
