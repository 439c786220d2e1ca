//! `mcpauthctl import` and `adopt`: the logins Codex, Claude Code,
//! mcp-remote and Hermes hold become the broker's, with no login, and the
//! hosts' entries are handed over to the broker.
//!
//! The fixtures are the tools' own formats (see `cli/src/import.rs` for
//! where each was checked), holding grants the test authorization server
//! honours as if the tool had logged in (`AuthServer::mint_grant`), with
//! rotating refresh tokens.

use std::path::Path;
use std::sync::Arc;

use mcpauth_tests::authserver::{AuthServer, Switches};
use mcpauth_tests::{CtlOutput, TestEnv, leaked, now_ms};
use md5::{Digest, Md5};
use serde_json::json;

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// `mcpauthctl ARGS` off the async workers, so the in-process servers
/// keep answering.
async fn ctl(env: &Arc<TestEnv>, args: &[&str]) -> CtlOutput {
    let env = env.clone();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        env.ctl(&args.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .unwrap()
}

/// A tool's login at `server`: its client, and a grant for it.
struct Minted {
    client: String,
    access: String,
    refresh: String,
}

fn mint(server: &AuthServer, client: &str) -> Minted {
    server.add_client(client, None, "none");
    let (access, refresh) = server.mint_grant(client, Some("mcp:read"));
    Minted {
        client: client.into(),
        access,
        refresh,
    }
}

fn codex_files(env: &TestEnv, name: &str, url: &str, issuer: &str, m: &Minted, expires_at: i64) {
    let home = env.home();
    write(
        &home.join(".codex/config.toml"),
        &format!(
            "mcp_oauth_credentials_store = \"file\"\n\n[mcp_servers.{name}]\nurl = \"{url}\"\nstartup_timeout_sec = 20\n"
        ),
    );
    write(
        &home.join(".codex/.credentials.json"),
        &json!({
            format!("{name}|9a70b85417749d5c"): {
                "server_name": name,
                "server_url": url,
                "issuer": issuer,
                "client_id": m.client,
                "access_token": m.access,
                "expires_at": expires_at,
                "refresh_token": m.refresh,
                "scopes": ["mcp:read"],
            }
        })
        .to_string(),
    );
}

fn claude_files(env: &TestEnv, name: &str, url: &str, server: &AuthServer, m: &Minted) {
    let home = env.home();
    write(
        &home.join(".claude.json"),
        &json!({"numStartups": 3, "mcpServers": {name: {"type": "http", "url": url}}}).to_string(),
    );
    write(
        &home.join(".claude/.credentials.json"),
        &json!({
            "claudeAiOauth": {"accessToken": "not-ours"},
            "mcpOAuth": {
                format!("{name}|0123456789abcdef"): {
                    "serverName": name,
                    "serverUrl": url,
                    "clientId": m.client,
                    "accessToken": m.access,
                    "refreshToken": m.refresh,
                    "expiresAt": now_ms() + 3_600_000,
                    "scope": "mcp:read",
                    "discoveryState": {
                        "authorizationServerMetadata": {
                            "issuer": server.issuer,
                            "token_endpoint": format!("{}/token", server.issuer),
                        }
                    }
                }
            }
        })
        .to_string(),
    );
}

fn md5_hex(text: &str) -> String {
    Md5::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// mcp-remote 0.1.43's files (no `expires_at`: the file's time counts),
/// and a Cursor entry that runs it.
fn mcp_remote_files(env: &TestEnv, name: &str, url: &str, m: &Minted) {
    let home = env.home();
    write(
        &home.join(".cursor/mcp.json"),
        &serde_json::to_string_pretty(&json!({"mcpServers": {
            name: {"command": "npx", "args": ["-y", "mcp-remote", url], "env": {"NODE_OPTIONS": "--no-warnings"}},
            "local": {"command": "my-local-server"},
        }}))
        .unwrap(),
    );
    let dir = home.join(".mcp-auth/mcp-remote-0.1.43");
    let hash = md5_hex(url);
    write(
        &dir.join(format!("{hash}_tokens.json")),
        &json!({"access_token": m.access, "token_type": "Bearer", "expires_in": 3600, "refresh_token": m.refresh, "scope": "mcp:read"}).to_string(),
    );
    write(
        &dir.join(format!("{hash}_client_info.json")),
        &json!({"client_id": m.client, "redirect_uris": ["http://localhost:3334/oauth/callback"], "token_endpoint_auth_method": "none", "client_name": "MCP CLI Proxy"}).to_string(),
    );
}

fn hermes_files(env: &TestEnv, name: &str, url: &str, issuer: &str, m: &Minted) {
    let home = env.home();
    write(
        &home.join(".hermes/config.yaml"),
        &format!(
            "model: x\nmcp_servers:\n  {name}:\n    url: {url}\n    auth: oauth\n    enabled: true\n"
        ),
    );
    write(
        &home.join(format!(".hermes/mcp-tokens/{name}.json")),
        &json!({"access_token": m.access, "token_type": "Bearer", "expires_in": 3600, "scope": "mcp:read", "refresh_token": m.refresh, "expires_at": (now_ms() as f64) / 1000.0 + 3600.0, "hermes_issuer": issuer}).to_string(),
    );
    write(
        &home.join(format!(".hermes/mcp-tokens/{name}.client.json")),
        &json!({"client_id": m.client, "redirect_uris": ["http://127.0.0.1:27890/callback"], "token_endpoint_auth_method": "none"}).to_string(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tool_s_login_is_adopted_and_its_refresh_token_rotates_once() {
    let env = Arc::new(TestEnv::new());
    let servers = [
        AuthServer::start(Switches::default()).await,
        AuthServer::start(Switches::default()).await,
        AuthServer::start(Switches::default()).await,
        AuthServer::start(Switches::default()).await,
    ];
    let names = ["cx", "cc", "mr", "hm"];
    let minted: Vec<Minted> = servers
        .iter()
        .zip([
            "codex-client",
            "claude-client",
            "mcp-remote-client",
            "hermes-client",
        ])
        .map(|(s, c)| mint(s, c))
        .collect();
    codex_files(
        &env,
        "cx",
        &servers[0].mcp_url,
        &servers[0].issuer,
        &minted[0],
        now_ms() + 3_600_000,
    );
    claude_files(&env, "cc", &servers[1].mcp_url, &servers[1], &minted[1]);
    mcp_remote_files(&env, "mr", &servers[2].mcp_url, &minted[2]);
    hermes_files(
        &env,
        "hm",
        &servers[3].mcp_url,
        &servers[3].issuer,
        &minted[3],
    );
    let _d = env.start_daemon();

    // A dry run first: it says what would happen and writes nothing.
    let dry = ctl(&env, &["import", "--dry-run"]).await.ok();
    assert_eq!(dry.matches("would adopt").count(), 4, "{dry}");
    assert!(!env.config_path().exists(), "{dry}");
    assert_eq!(ctl(&env, &["token", "cx"]).await.code(), 2);

    let out = ctl(&env, &["import"]).await.ok();
    for name in names {
        assert!(
            out.lines()
                .any(|l| l.contains("adopted") && l.contains(name) && l.contains("added")),
            "{name}: {out}"
        );
    }
    let config = std::fs::read_to_string(env.config_path()).unwrap();
    for (name, server) in names.iter().zip(&servers) {
        assert!(config.contains(&format!("[servers.{name}]")), "{config}");
        assert!(config.contains(&server.mcp_url), "{config}");
    }
    for ((name, server), m) in names.iter().zip(&servers).zip(&minted) {
        // `token` works at once: the tool's own access token, no login.
        let token = ctl(&env, &["token", name]).await.ok();
        assert_eq!(token.trim(), m.access, "{name}");
        assert!(server.requests("/authorize").is_empty(), "{name}");
        assert!(server.requests("/register").is_empty(), "{name}");
        // A forced refresh uses the adopted refresh token with the tool's
        // client, once; the next uses the rotated one: no reuse.
        for _ in 0..2 {
            ctl(&env, &["refresh", name]).await.ok();
        }
        let refreshes = server.token_requests("refresh_token");
        assert_eq!(refreshes.len(), 2, "{name}");
        assert_eq!(refreshes[0].form["refresh_token"], m.refresh, "{name}");
        assert_ne!(refreshes[1].form["refresh_token"], m.refresh, "{name}");
        assert_eq!(refreshes[0].form["client_id"], m.client, "{name}");
        assert!(!server.reuse_detected(), "{name}");
        let now = ctl(&env, &["token", name]).await.ok();
        assert!(server.is_valid_access_token(now.trim()), "{name}");
    }
    // Importing again: the broker's grants are newer.
    let again = ctl(&env, &["import", "--json"]).await.json();
    let verdicts: Vec<&str> = again["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["verdict"].as_str().unwrap())
        .collect();
    assert_eq!(verdicts, ["current"; 4], "{again}");
    // No secret in any output or log.
    let secrets: Vec<String> = minted
        .iter()
        .flat_map(|m| [m.access.clone(), m.refresh.clone()])
        .collect();
    let seen = format!("{dry}{out}{again}{}", env.all_daemon_logs());
    assert_eq!(leaked(&seen, &secrets), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_for_another_server_older_grants_broken_files_and_name_clashes_are_refused() {
    let env = Arc::new(TestEnv::new());
    let server = AuthServer::start(Switches::default()).await;
    let other = AuthServer::start(Switches::default()).await;
    let _d = env.start_daemon();

    // Issued by another authorization server: refused, nothing added.
    let m = mint(&server, "codex-client");
    codex_files(
        &env,
        "cx",
        &server.mcp_url,
        &other.issuer,
        &m,
        now_ms() + 3_600_000,
    );
    let out = ctl(&env, &["import", "codex"]).await;
    assert_eq!(out.code(), 1, "{}", out.stderr());
    assert!(
        out.stdout().contains("skipped") && out.stdout().contains("issued by"),
        "{}",
        out.stdout()
    );
    assert!(!env.config_path().exists());

    // A malformed Hermes file: one clear line, nothing changed, no secret.
    hermes_files(&env, "hm", &server.mcp_url, &server.issuer, &m);
    let file = env.home().join(".hermes/mcp-tokens/hm.json");
    let text = std::fs::read_to_string(&file).unwrap();
    write(&file, &text[..text.len() / 2]);
    let out = ctl(&env, &["import", "hermes"]).await;
    assert_eq!(out.code(), 1);
    assert!(
        out.stdout().contains("not JSON (line 1"),
        "{}",
        out.stdout()
    );
    assert_eq!(leaked(&out.stdout(), std::slice::from_ref(&m.access)), None);
    assert!(!env.config_path().exists());
    std::fs::remove_dir_all(env.home().join(".hermes")).unwrap();

    // A name taken by another URL: a clear new name, said so.
    ctl(&env, &["add", "cx", &other.mcp_url]).await.ok();
    codex_files(
        &env,
        "cx",
        &server.mcp_url,
        &server.issuer,
        &m,
        now_ms() + 3_600_000,
    );
    let out = ctl(&env, &["import", "codex"]).await.ok();
    assert!(
        out.contains("adopted") && out.contains("cx-codex") && out.contains("cx was taken"),
        "{out}"
    );
    assert_eq!(
        ctl(&env, &["token", "cx-codex"]).await.ok().trim(),
        m.access
    );
    assert_eq!(
        ctl(&env, &["token", "cx"]).await.code(),
        4,
        "cx is untouched"
    );

    // Older than the grant held: the broker's stays.
    ctl(&env, &["login", "cx"]).await.ok();
    let held = ctl(&env, &["token", "cx"]).await.ok();
    let old = mint(&other, "codex-client-2");
    codex_files(
        &env,
        "cx",
        &other.mcp_url,
        &other.issuer,
        &old,
        now_ms() + 60_000,
    );
    let out = ctl(&env, &["import", "codex"]).await.ok();
    assert!(out.contains("current") && out.contains("newer"), "{out}");
    assert_eq!(ctl(&env, &["token", "cx"]).await.ok(), held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adopt_hands_mcp_remote_and_codex_entries_over_and_keeps_everything_else() {
    let env = Arc::new(TestEnv::new());
    let a = AuthServer::start(Switches::default()).await;
    let b = AuthServer::start(Switches::default()).await;
    let ma = mint(&a, "mcp-remote-client");
    let mb = mint(&b, "codex-client");
    mcp_remote_files(&env, "mr", &a.mcp_url, &ma);
    // Claude Desktop runs mcp-remote for the same server, with other keys.
    let desktop = env.config_home().join("Claude/claude_desktop_config.json");
    write(
        &desktop,
        &serde_json::to_string_pretty(&json!({
            "globalShortcut": "Ctrl+Space",
            "mcpServers": {"remote": {"command": "npx", "args": ["mcp-remote@0.1.43", a.mcp_url, "3334"], "env": {"X": "1"}}}
        }))
        .unwrap(),
    );
    codex_files(&env, "cx", &b.mcp_url, &b.issuer, &mb, now_ms() + 3_600_000);
    let _d = env.start_daemon();

    let dry = ctl(&env, &["adopt", "mcp-remote", "--dry-run"]).await.ok();
    assert!(dry.contains("would adopt"), "{dry}");
    let cursor = env.home().join(".cursor/mcp.json");
    let before = std::fs::read_to_string(&cursor).unwrap();

    let out = ctl(&env, &["adopt", "mcp-remote"]).await.ok();
    assert!(
        out.contains("adopted") && out.contains("no longer used"),
        "{out}"
    );
    let cursor_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cursor).unwrap()).unwrap();
    let entry = &cursor_json["mcpServers"]["mr"];
    assert!(
        entry["command"].as_str().unwrap().ends_with("mcpauthctl"),
        "{entry}"
    );
    let args: Vec<&str> = entry["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args[args.len() - 3..], ["proxy", "--", "mr"], "{entry}");
    assert_eq!(entry["env"]["NODE_OPTIONS"], "--no-warnings", "kept");
    assert_eq!(
        cursor_json["mcpServers"]["local"]["command"], "my-local-server",
        "other entries kept"
    );
    assert!(
        std::fs::read_to_string(cursor.with_file_name("mcp.json.mcpauth-backup")).unwrap()
            == before
    );
    let desktop_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&desktop).unwrap()).unwrap();
    let remote = &desktop_json["mcpServers"]["remote"];
    assert_eq!(remote["args"].as_array().unwrap().last().unwrap(), "mr");
    assert_eq!(remote["env"]["X"], "1");
    assert_eq!(desktop_json["globalShortcut"], "Ctrl+Space");
    assert_eq!(ctl(&env, &["token", "mr"]).await.ok().trim(), ma.access);

    // Codex: its remote entry now runs the broker's headers helper, its
    // other keys stay.
    ctl(&env, &["adopt", "codex"]).await.ok();
    let codex = std::fs::read_to_string(env.home().join(".codex/config.toml")).unwrap();
    assert!(codex.contains("http_headers_helper"), "{codex}");
    assert!(codex.contains("headers -- cx"), "{codex}");
    assert!(codex.contains("startup_timeout_sec = 20"), "{codex}");
    assert!(codex.contains("mcp_oauth_credentials_store"), "{codex}");
    assert_eq!(ctl(&env, &["token", "cx"]).await.ok().trim(), mb.access);
    // The tool's own token files are left in place.
    assert!(env.home().join(".codex/.credentials.json").exists());
}

/// `codex mcp login NAME` with the real Codex (npm, tests/hosts), its
/// `$BROWSER` the test browser, which follows the redirects; `bus` is the
/// session bus of its OS keyring, if any. Asserts that it succeeded.
async fn codex_login(env: &Arc<TestEnv>, name: &str, bus: Option<&str>) {
    let codex = mcpauth_tests::real_hosts().join("codex");
    let env = env.clone();
    let name = name.to_string();
    let bus = bus.map(str::to_string);
    let login = tokio::task::spawn_blocking(move || {
        let mut cmd = std::process::Command::new(&codex);
        cmd.args(["mcp", "login", &name])
            .env_clear()
            .env("HOME", env.home())
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("BROWSER", mcpauth_tests::own_bin!("test-browser"))
            .env("TEST_BROWSER_LOG", env.root.path().join("browser.log"))
            .stdin(std::process::Stdio::null());
        if let Some(bus) = bus {
            cmd.env("DBUS_SESSION_BUS_ADDRESS", bus);
        }
        cmd.output().unwrap()
    })
    .await
    .unwrap();
    assert!(
        login.status.success(),
        "codex mcp login: {}{}",
        String::from_utf8_lossy(&login.stdout),
        String::from_utf8_lossy(&login.stderr)
    );
}

/// The real Codex (npm, tests/hosts) logs in to a server by itself, with
/// its file store and a `$BROWSER` that follows redirects, and writes
/// `~/.codex/.credentials.json`; that login is adopted as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_the_real_codex_made_is_adopted() {
    let env = Arc::new(TestEnv::new());
    let server = AuthServer::start(Switches::default()).await;
    write(
        &env.home().join(".codex/config.toml"),
        &format!(
            "mcp_oauth_credentials_store = \"file\"\n\n[mcp_servers.s]\nurl = \"{}\"\n",
            server.mcp_url
        ),
    );
    codex_login(&env, "s", None).await;
    let store: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(env.home().join(".codex/.credentials.json")).unwrap(),
    )
    .unwrap();
    let (key, entry) = store.as_object().unwrap().iter().next().unwrap();
    assert!(key.starts_with("s|"), "{key}");
    let access = entry["access_token"].as_str().unwrap().to_string();
    let refresh = entry["refresh_token"].as_str().unwrap().to_string();
    let client = entry["client_id"].as_str().unwrap().to_string();
    let authorizations = server.requests("/authorize").len();
    assert_eq!(authorizations, 1, "Codex logged in once");

    let _d = env.start_daemon();
    let out = ctl(&env, &["import", "codex"]).await.ok();
    assert!(out.contains("adopted") && out.contains(" s "), "{out}");
    assert_eq!(ctl(&env, &["token", "s"]).await.ok().trim(), access);
    ctl(&env, &["refresh", "s"]).await.ok();
    let refreshes = server.token_requests("refresh_token");
    assert_eq!(refreshes.len(), 1);
    assert_eq!(refreshes[0].form["refresh_token"], refresh);
    assert_eq!(refreshes[0].form["client_id"], client);
    assert!(!server.reuse_detected());
    assert_eq!(
        server.requests("/authorize").len(),
        authorizations,
        "no login"
    );
    let secrets = [access, refresh];
    assert_eq!(
        leaked(&format!("{out}{}", env.all_daemon_logs()), &secrets),
        None
    );
}

/// The real Codex with its default store logs in and keeps the login in
/// the OS keyring: GNOME Keyring's Secret Service on a private session
/// bus. The daemon reads it there, on the same bus, and adopts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_the_real_codex_kept_in_the_os_keyring_is_adopted() {
    let env = Arc::new(TestEnv::new());
    let keyring = mcpauth_tests::SecretService::start(&env);
    let server = AuthServer::start(Switches::default()).await;
    write(
        &env.home().join(".codex/config.toml"),
        &format!("[mcp_servers.s]\nurl = \"{}\"\n", server.mcp_url),
    );
    codex_login(&env, "s", Some(&keyring.address)).await;
    assert!(
        !env.home().join(".codex/.credentials.json").exists(),
        "Codex kept the login in the keyring, not in its file"
    );
    let access = server.issued_access_tokens().last().cloned().unwrap();
    let client = server.requests("/authorize")[0].query["client_id"].clone();

    let mut daemon = env.command("mcpauthd");
    daemon.env("DBUS_SESSION_BUS_ADDRESS", &keyring.address);
    let _d = env.spawn_daemon(&mut daemon).unwrap();
    let out = ctl(&env, &["import", "codex"]).await.ok();
    assert!(out.contains("adopted") && out.contains(" s "), "{out}");
    assert_eq!(ctl(&env, &["token", "s"]).await.ok().trim(), access);
    ctl(&env, &["refresh", "s"]).await.ok();
    let refreshes = server.token_requests("refresh_token");
    assert_eq!(refreshes.len(), 1, "the keyring's refresh token, used once");
    assert_eq!(refreshes[0].form["client_id"], client);
    assert!(!server.reuse_detected());
    assert_eq!(server.requests("/authorize").len(), 1, "no login of ours");
    let secrets = server.secrets();
    assert_eq!(
        leaked(&format!("{out}{}", env.all_daemon_logs()), &secrets),
        None
    );
}

/// Where no Secret Service answers, Codex's keyring logins cannot be read:
/// the line says so, and how to switch Codex to its file store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_secret_service_the_line_says_how_to_switch_codex_to_its_file() {
    let env = Arc::new(TestEnv::new());
    let server = AuthServer::start(Switches::default()).await;
    write(
        &env.home().join(".codex/config.toml"),
        &format!("[mcp_servers.s]\nurl = \"{}\"\n", server.mcp_url),
    );
    let _d = env.start_daemon();
    let out = ctl(&env, &["import", "codex"]).await;
    let text = format!("{}{}", out.stdout(), out.stderr());
    assert!(text.contains("needs login"), "{text}");
    assert!(text.contains("OS keyring, which cannot be read"), "{text}");
    assert!(
        text.contains("mcp_oauth_credentials_store = \"file\""),
        "{text}"
    );
    assert!(server.requests("/token").is_empty());
}

/// The real mcp-remote (npm, tests/hosts) logs in to an MCP server with
/// its own client (`mcp-remote-client URL` connects, lists the tools and
/// exits; its browser is `$BROWSER` through xdg-open) and leaves its
/// files in `~/.mcp-auth`; `adopt mcp-remote` keeps that login and turns
/// the Cursor entry that ran mcp-remote into the broker's proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_the_real_mcp_remote_made_is_adopted() {
    let bin = mcpauth_tests::real_hosts();
    let env = Arc::new(TestEnv::new());
    let auth = AuthServer::start(Switches::default()).await;
    let mcp =
        mcpauth_tests::mcpserver::McpServer::start(&auth.issuer, auth.validator(), false).await;
    let login = {
        let env = env.clone();
        let url = mcp.url.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(bin.join("mcp-remote-client"))
                .arg(&url)
                .env_clear()
                .env("HOME", env.home())
                .env(
                    "PATH",
                    format!(
                        "{}:{}",
                        bin.display(),
                        std::env::var("PATH").unwrap_or_default()
                    ),
                )
                .env("BROWSER", mcpauth_tests::own_bin!("test-browser"))
                .env("TEST_BROWSER_LOG", env.root.path().join("browser.log"))
                .stdin(std::process::Stdio::null())
                .output()
                .unwrap()
        })
        .await
        .unwrap()
    };
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&login.stdout),
        String::from_utf8_lossy(&login.stderr)
    );
    assert!(login.status.success(), "mcp-remote-client: {said}");
    let tokens: Vec<_> = walk(&env.home().join(".mcp-auth"))
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with("_tokens.json"))
        .collect();
    assert_eq!(tokens.len(), 1, "{said}");
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&tokens[0]).unwrap()).unwrap();
    let access = file["access_token"].as_str().unwrap().to_string();
    let refresh = file["refresh_token"].as_str().unwrap().to_string();
    let authorizations = auth.requests("/authorize").len();

    let cursor = env.home().join(".cursor/mcp.json");
    write(
        &cursor,
        &json!({"mcpServers": {"remote": {"command": "npx", "args": ["-y", "mcp-remote@0.15.1", mcp.url]}}})
            .to_string(),
    );
    let _d = env.start_daemon();
    let out = ctl(&env, &["adopt", "mcp-remote"]).await.ok();
    assert!(out.contains("adopted       remote"), "{out}");
    assert_eq!(ctl(&env, &["token", "remote"]).await.ok().trim(), access);
    ctl(&env, &["refresh", "remote"]).await.ok();
    let refreshes = auth.token_requests("refresh_token");
    assert_eq!(refreshes.len(), 1);
    assert_eq!(refreshes[0].form["refresh_token"], refresh);
    assert!(!auth.reuse_detected());
    assert_eq!(
        auth.requests("/authorize").len(),
        authorizations,
        "no login"
    );
    let entry: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cursor).unwrap()).unwrap();
    assert_eq!(
        entry["mcpServers"]["remote"]["args"]
            .as_array()
            .unwrap()
            .last()
            .unwrap(),
        "remote"
    );
    let secrets = [access, refresh];
    assert_eq!(
        leaked(&format!("{out}{}", env.all_daemon_logs()), &secrets),
        None
    );
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(walk(&path));
        } else {
            found.push(path);
        }
    }
    found
}

/// Hermes names a server's login file after the server, but not one to
/// one: `a b` and `a_b` both use `a_b.json`. Such a file is imported for
/// neither (it would otherwise be bound to whichever server's
/// authorization server was asked, and its token sent to a server it was
/// not issued for); a name whose file is its own still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hermes_file_two_server_names_share_is_imported_for_neither() {
    let env = Arc::new(TestEnv::new());
    let spaced = AuthServer::start(Switches::default()).await;
    let underscored = AuthServer::start(Switches::default()).await;
    let solo = AuthServer::start(Switches::default()).await;
    let home = env.home();
    write(
        &home.join(".hermes/config.yaml"),
        &format!(
            "mcp_servers:\n  \"a b\":\n    url: {}\n  a_b:\n    url: {}\n  \"my server\":\n    url: {}\n",
            spaced.mcp_url, underscored.mcp_url, solo.mcp_url
        ),
    );
    // The shared file holds a_b's login, and names no issuer.
    let shared = mint(&underscored, "hermes-client");
    let mine = mint(&solo, "hermes-solo");
    for (file, m) in [("a_b", &shared), ("my_server", &mine)] {
        write(
            &home.join(format!(".hermes/mcp-tokens/{file}.json")),
            &json!({"access_token": m.access, "token_type": "Bearer", "refresh_token": m.refresh, "expires_at": (now_ms() as f64) / 1000.0 + 3600.0}).to_string(),
        );
        write(
            &home.join(format!(".hermes/mcp-tokens/{file}.client.json")),
            &json!({"client_id": m.client, "redirect_uris": ["http://127.0.0.1:27890/callback"], "token_endpoint_auth_method": "none"}).to_string(),
        );
    }
    let _d = env.start_daemon();

    let out = ctl(&env, &["import", "hermes"]).await;
    let text = format!("{}{}", out.stdout(), out.stderr());
    let shared_file = home.join(".hermes/mcp-tokens/a_b.json");
    assert!(
        text.contains(&format!(
            "{} would be the login of `a b` and `a_b` alike",
            shared_file.display()
        )),
        "{text}"
    );
    // Neither server got the shared login; nothing went to their ASes.
    let config = std::fs::read_to_string(env.config_path()).unwrap_or_default();
    assert!(!config.contains(&spaced.mcp_url), "{config}");
    assert!(!config.contains(&underscored.mcp_url), "{config}");
    for server in [&spaced, &underscored] {
        assert!(server.requests("/token").is_empty());
    }
    // `my server` (my_server.json, its own) is adopted, bound to its own
    // authorization server.
    assert!(
        text.lines()
            .any(|l| l.contains("adopted") && l.contains("my-server")),
        "{text}"
    );
    assert_eq!(
        ctl(&env, &["token", "my-server"]).await.ok().trim(),
        mine.access
    );
    ctl(&env, &["refresh", "my-server"]).await.ok();
    assert_eq!(
        solo.token_requests("refresh_token")[0].form["refresh_token"],
        mine.refresh
    );
    let secrets = [
        shared.access.clone(),
        shared.refresh.clone(),
        mine.access.clone(),
        mine.refresh.clone(),
    ];
    assert_eq!(
        leaked(&format!("{text}{}", env.all_daemon_logs()), &secrets),
        None
    );
}

/// Two entries with one URL hold two accounts: a tool's login for that URL
/// goes to the entry of the tool's own name for it, and, when none has
/// that name, to neither (which account it is for is not the broker's to
/// guess).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_for_a_url_two_entries_share_goes_to_its_namesake_or_to_neither() {
    let env = Arc::new(TestEnv::new());
    let server = AuthServer::start(Switches::default()).await;
    env.write_config(&format!(
        "[servers.work]\nurl = \"{0}\"\n[servers.home]\nurl = \"{0}\"\n",
        server.mcp_url
    ));
    let m = mint(&server, "hermes-client");
    hermes_files(&env, "other", &server.mcp_url, &server.issuer, &m);
    let _d = env.start_daemon();
    let out = ctl(&env, &["import", "hermes"]).await;
    assert_eq!(out.code(), 1, "{}", out.stdout());
    assert!(
        out.stdout().contains(
            "home and work have this URL, each with its own login, and none is named \"other\""
        ),
        "{}",
        out.stdout()
    );
    for name in ["work", "home"] {
        assert_eq!(ctl(&env, &["token", name]).await.code(), 4);
    }

    // Named like one of them: that one, and only that one.
    std::fs::remove_dir_all(env.home().join(".hermes")).unwrap();
    hermes_files(&env, "home", &server.mcp_url, &server.issuer, &m);
    ctl(&env, &["import", "hermes"]).await.ok();
    assert_eq!(ctl(&env, &["token", "home"]).await.ok().trim(), m.access);
    assert_eq!(ctl(&env, &["token", "work"]).await.code(), 4);
}

/// `import --dry-run` does not ask for a login to a server the broker
/// already holds one for, whatever the tool holds (nothing, here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_asks_no_login_for_a_server_the_broker_holds() {
    let env = Arc::new(TestEnv::new());
    let server = AuthServer::start(Switches::default()).await;
    let _d = env.start_daemon();
    ctl(&env, &["add", "hm", &server.mcp_url]).await.ok();
    ctl(&env, &["login", "hm"]).await.ok();
    write(
        &env.home().join(".hermes/config.yaml"),
        &format!(
            "model: x\nmcp_servers:\n  hm:\n    url: {}\n    auth: oauth\n",
            server.mcp_url
        ),
    );
    for args in [
        &["import", "--dry-run"][..],
        &["import", "hermes", "--dry-run"][..],
    ] {
        let out = ctl(&env, args).await;
        let stdout = out.stdout();
        assert!(!stdout.contains("needs login"), "{stdout}");
        assert!(!stdout.contains("mcpauthctl login hm"), "{stdout}");
        assert!(
            stdout.contains("the broker already holds a login for it"),
            "{stdout}"
        );
    }
}
