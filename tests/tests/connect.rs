//! `mcpauthctl connect`, `disconnect` and `hosts` against realistic host
//! config files, each test in its own temporary home.
//!
//! For every host: the entry written is exactly the documented shape,
//! everything else in the file survives (parsed values compared; comments
//! still there; byte for byte once our entry is removed again), the file
//! as it was is backed up (one private backup, removed by `disconnect`),
//! a second run changes nothing, `--dry-run` writes nothing, an entry of the same name that
//! mcpauthctl did not write is refused without `--replace`, and
//! `disconnect` removes only what `connect` wrote.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;

use mcpauth_tests::authserver::{AuthServer, Switches};
use mcpauth_tests::{CtlOutput, TestEnv, bin, mode};
use serde_json::{Value, json};

const LINEAR: &str = "https://mcp.linear.app/mcp";
const GITHUB: &str = "https://api.githubcopilot.com/mcp/";

#[derive(Clone, Copy)]
enum Format {
    Json,
    Jsonc,
    Toml,
}

fn parse(format: Format, text: &str) -> Value {
    match format {
        Format::Json => serde_json::from_str(text).expect("valid JSON"),
        Format::Jsonc => {
            jsonc_parser::parse_to_serde_value(text, &Default::default()).expect("valid JSONC")
        }
        Format::Toml => toml::from_str(text).expect("valid TOML"),
    }
}

/// What a host's test needs to know.
struct Case {
    host: &'static str,
    /// Relative to the test's HOME.
    path: &'static str,
    key: &'static str,
    format: Format,
    fixture: &'static str,
    /// Text that must survive every edit.
    comments: &'static [&'static str],
    /// The entry `connect` writes for (name, url, argv).
    expected: fn(&str, &[String]) -> Value,
}

fn helper_entry_claude(url: &str, argv: &[String]) -> Value {
    json!({"type": "http", "url": url, "headersHelper": argv.join(" ")})
}
fn helper_entry_codex(url: &str, argv: &[String]) -> Value {
    json!({"url": url, "http_headers_helper": argv.join(" ")})
}
fn stdio_entry(_url: &str, argv: &[String]) -> Value {
    json!({"command": argv[0], "args": argv[1..]})
}
fn stdio_entry_vscode(_url: &str, argv: &[String]) -> Value {
    json!({"type": "stdio", "command": argv[0], "args": argv[1..]})
}
fn local_entry_opencode(_url: &str, argv: &[String]) -> Value {
    json!({"type": "local", "command": argv})
}

/// The broker command `connect` writes in these tests: this build's
/// mcpauthctl, with the test daemon's socket (the test home's
/// XDG_RUNTIME_DIR is not what a filtered environment would find).
fn broker_argv(env: &TestEnv, sub: &str, name: &str) -> Vec<String> {
    vec![
        std::fs::canonicalize(bin("mcpauthctl"))
            .unwrap()
            .display()
            .to_string(),
        "--socket".into(),
        env.socket().display().to_string(),
        sub.into(),
        "--".into(),
        name.into(),
    ]
}

fn start(env: &TestEnv) -> mcpauth_tests::Daemon {
    let daemon = env.start_daemon();
    env.ctl(&["add", "linear", LINEAR]).ok();
    env.ctl(&["add", "github", GITHUB]).ok();
    daemon
}

fn fails(out: &CtlOutput, code: i32) -> String {
    assert_eq!(
        out.code(),
        code,
        "stdout: {}\nstderr: {}",
        out.stdout(),
        out.stderr()
    );
    out.stderr()
}

/// The servers object of a parsed file.
fn servers<'a>(value: &'a Value, key: &str) -> &'a serde_json::Map<String, Value> {
    value[key].as_object().expect("servers object")
}

/// `value` without the servers called `names`.
fn without(value: &Value, key: &str, names: &[&str]) -> Value {
    let mut value = value.clone();
    let servers = value[key].as_object_mut().unwrap();
    for name in names {
        servers.remove(*name);
    }
    value
}

fn exercise(case: &Case) {
    let env = TestEnv::new();
    let _daemon = start(&env);
    let path = env.home().join(case.path);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, case.fixture).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    let backup = PathBuf::from(format!("{}.mcpauth-backup", path.display()));
    let original = parse(case.format, case.fixture);
    let sub = if matches!(case.host, "claude-code" | "codex") {
        "headers"
    } else {
        "proxy"
    };
    let want_linear = (case.expected)(LINEAR, &broker_argv(&env, sub, "linear"));
    let want_github = (case.expected)(GITHUB, &broker_argv(&env, sub, "github"));
    let read = || std::fs::read_to_string(&path).unwrap();

    // --dry-run: says what it would do, writes nothing.
    let out = env.ctl(&["connect", case.host, "--dry-run"]);
    let stderr = fails(&out, 1);
    let stdout = out.stdout();
    assert!(
        stdout.contains(&format!("  added      linear ({LINEAR})")),
        "{stdout}"
    );
    assert!(
        stdout.contains("  skipped    github (an entry of that name exists that mcpauthctl did not write; --replace overwrites it)"),
        "{stdout}"
    );
    assert!(stdout.contains("dry run: nothing was written"), "{stdout}");
    assert!(stderr.contains("--replace"), "{stderr}");
    assert_eq!(read(), case.fixture);
    assert!(!backup.exists());

    // connect linear: exactly the documented entry, the rest untouched.
    let stdout = env.ctl(&["connect", case.host, "linear"]).ok();
    assert!(
        stdout.contains(&format!("  added      linear ({LINEAR})")),
        "{stdout}"
    );
    let after = parse(case.format, &read());
    assert_eq!(servers(&after, case.key)["linear"], want_linear);
    assert_eq!(without(&after, case.key, &["linear"]), original);
    for comment in case.comments {
        assert!(read().contains(comment), "{comment} is gone:\n{}", read());
    }
    // The file as it was is kept, private; the file keeps its mode.
    assert_eq!(std::fs::read_to_string(&backup).unwrap(), case.fixture);
    assert_eq!(mode(&backup), 0o600);
    assert_eq!(mode(&path), 0o640);
    assert!(
        stdout.contains(&format!(
            "the file as it was is kept in {}",
            backup.display()
        )),
        "{stdout}"
    );

    // A second run changes nothing.
    let written = read();
    let stdout = env.ctl(&["connect", case.host, "linear"]).ok();
    assert!(stdout.contains("  unchanged  linear"), "{stdout}");
    assert!(!stdout.contains("kept in"), "{stdout}");
    assert_eq!(read(), written);

    // disconnect linear gives back the original, byte for byte, and
    // removes the backup with the broker's last entry.
    let stdout = env.ctl(&["disconnect", case.host, "linear"]).ok();
    assert!(stdout.contains("  removed    linear"), "{stdout}");
    assert_eq!(read(), case.fixture);
    assert!(!backup.exists());
    assert!(
        stdout.contains(&format!("removed the backup {}", backup.display())),
        "{stdout}"
    );

    // A foreign entry of the same name is refused...
    let out = env.ctl(&["connect", case.host, "github"]);
    let stderr = fails(&out, 1);
    assert!(stderr.contains("rerun with --replace"), "{stderr}");
    assert_eq!(read(), case.fixture);
    // ...unless --replace (and --dry-run still writes nothing).
    env.ctl(&["connect", case.host, "--replace", "--dry-run"])
        .ok();
    assert_eq!(read(), case.fixture);
    let stdout = env.ctl(&["connect", case.host, "--replace"]).ok();
    assert!(
        stdout.contains(&format!(
            "  updated    github ({GITHUB}), replacing an entry mcpauthctl did not write"
        )),
        "{stdout}"
    );
    let after = parse(case.format, &read());
    assert_eq!(servers(&after, case.key)["github"], want_github);
    assert_eq!(servers(&after, case.key)["linear"], want_linear);
    assert_eq!(
        without(&after, case.key, &["linear", "github"]),
        without(&original, case.key, &["github"])
    );

    // disconnect (all): removes only what connect wrote; the local server
    // and the foreign entry of another name stay.
    let before = read();
    let stdout = env.ctl(&["disconnect", case.host, "--dry-run"]).ok();
    assert!(stdout.contains("  removed    linear"), "{stdout}");
    assert_eq!(read(), before);
    let stdout = env.ctl(&["disconnect", case.host]).ok();
    assert!(
        stdout.contains("  removed    linear") && stdout.contains("  removed    github"),
        "{stdout}"
    );
    let after = parse(case.format, &read());
    assert_eq!(after, without(&original, case.key, &["github"]));
    assert!(servers(&after, case.key).contains_key("old-notion"));
    assert!(servers(&after, case.key).contains_key("files"));
    for comment in case.comments {
        assert!(read().contains(comment), "{comment} is gone:\n{}", read());
    }
    // The backup went with the broker's entries.
    assert!(!backup.exists());
    // Nothing left to do.
    let stdout = env.ctl(&["disconnect", case.host]).ok();
    assert!(stdout.contains("nothing to disconnect"), "{stdout}");
}

/// A host's file may hold the host's own secrets, so its backup is
/// private, one per file (each write replaces it), named in connect's
/// output, and removed by disconnect with the broker's last entry.
#[test]
fn connect_keeps_one_private_backup_that_disconnect_removes() {
    let env = TestEnv::new();
    let _daemon = start(&env);
    let path = env.home().join(".cursor/mcp.json");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let fixture = r#"{"mcpServers": {"files": {"command": "fs-server", "env": {"API_KEY": "hosts-own-secret"}}}}"#;
    std::fs::write(&path, fixture).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let backup = PathBuf::from(format!("{}.mcpauth-backup", path.display()));
    // One left by an older mcpauthctl with the file's mode.
    std::fs::write(&backup, fixture).unwrap();
    std::fs::set_permissions(&backup, std::fs::Permissions::from_mode(0o644)).unwrap();
    let backups = || {
        std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .filter(|e| {
                let name = e.as_ref().unwrap().file_name();
                name.to_string_lossy() != "mcp.json"
            })
            .count()
    };

    let stdout = env.ctl(&["connect", "cursor", "linear"]).ok();
    assert!(
        stdout.contains(&format!(
            "the file as it was is kept in {} (mode 0600; `mcpauthctl disconnect cursor` removes it)",
            backup.display()
        )),
        "{stdout}"
    );
    assert_eq!(mode(&backup), 0o600);
    assert_eq!(mode(&path), 0o644, "the host's file keeps its mode");
    assert_eq!(std::fs::read_to_string(&backup).unwrap(), fixture);
    let with_linear = std::fs::read_to_string(&path).unwrap();

    // A second write replaces it: still one, the file as it was just now.
    env.ctl(&["connect", "cursor", "github"]).ok();
    assert_eq!(std::fs::read_to_string(&backup).unwrap(), with_linear);
    assert_eq!(mode(&backup), 0o600);
    assert_eq!(backups(), 1, "one backup, nothing else beside the file");

    // disconnect of one server: the broker still has an entry, the
    // backup stays; of the last: it goes, and the output says so.
    let stdout = env.ctl(&["disconnect", "cursor", "linear"]).ok();
    assert!(!stdout.contains("removed the backup"), "{stdout}");
    assert!(backup.exists());
    let stdout = env.ctl(&["disconnect", "cursor"]).ok();
    assert!(
        stdout.contains(&format!("removed the backup {}", backup.display())),
        "{stdout}"
    );
    assert!(!backup.exists());
    assert_eq!(backups(), 0);
    assert_eq!(
        parse(Format::Json, &std::fs::read_to_string(&path).unwrap()),
        parse(Format::Json, fixture)
    );
}

#[test]
fn claude_code_gets_an_http_entry_with_a_headers_helper() {
    exercise(&Case {
        host: "claude-code",
        path: ".claude.json",
        key: "mcpServers",
        format: Format::Json,
        fixture: r#"{
  "numStartups": 41,
  "theme": "dark",
  "mcpServers": {
    "files": {
      "type": "stdio",
      "command": "npx",
      "args": ["-y", "@modelcontextprotocol/server-filesystem", "/srv"],
      "env": {}
    },
    "github": {
      "type": "http",
      "url": "https://api.githubcopilot.com/mcp/"
    },
    "old-notion": {
      "type": "stdio",
      "command": "npx",
      "args": ["-y", "mcp-remote", "https://mcp.notion.com/mcp"]
    }
  },
  "projects": {
    "/home/me/src/app": {
      "allowedTools": [],
      "mcpServers": {}
    }
  },
  "userID": "0f3c"
}
"#,
        comments: &[],
        expected: helper_entry_claude,
    });
}

#[test]
fn codex_gets_a_url_and_http_headers_helper_and_keeps_its_comments() {
    exercise(&Case {
        host: "codex",
        path: ".codex/config.toml",
        key: "mcp_servers",
        format: Format::Toml,
        fixture: r#"# Codex settings, by hand
model = "gpt-5-codex"
approval_policy = "on-request"

# Local tools
[mcp_servers.files]
command = "npx"
args = ["-y", "@modelcontextprotocol/server-filesystem", "/srv"]

[mcp_servers.github]
url = "https://api.githubcopilot.com/mcp/"
bearer_token_env_var = "GH_PAT"

[mcp_servers.old-notion]
command = "npx" # until mcpauth
args = ["-y", "mcp-remote", "https://mcp.notion.com/mcp"]

[profiles.fast]
model = "o4-mini" # cheap
"#,
        comments: &[
            "# Codex settings, by hand",
            "# Local tools",
            "# until mcpauth",
            "# cheap",
        ],
        expected: helper_entry_codex,
    });
}

#[test]
fn cursor_gets_a_stdio_proxy_entry() {
    exercise(&Case {
        host: "cursor",
        path: ".cursor/mcp.json",
        key: "mcpServers",
        format: Format::Json,
        fixture: r#"{
  "mcpServers": {
    "files": {
      "command": "npx",
      "args": ["-y", "@modelcontextprotocol/server-filesystem", "/srv"]
    },
    "github": {
      "url": "https://api.githubcopilot.com/mcp/",
      "headers": { "X-Client": "cursor" }
    },
    "old-notion": {
      "command": "npx",
      "args": ["-y", "mcp-remote", "https://mcp.notion.com/mcp"]
    }
  },
  "someFutureKey": { "enabled": true }
}
"#,
        comments: &[],
        expected: stdio_entry,
    });
}

#[test]
fn vscode_gets_a_typed_stdio_entry_and_keeps_its_comments() {
    exercise(&Case {
        host: "vscode",
        path: ".config/Code/User/mcp.json",
        key: "servers",
        format: Format::Jsonc,
        fixture: r#"{
  // MCP servers for every workspace
  "inputs": [
    { "type": "promptString", "id": "pat", "description": "GitHub PAT", "password": true }
  ],
  "servers": {
    "files": {
      "type": "stdio",
      "command": "npx",
      "args": ["-y", "@modelcontextprotocol/server-filesystem", "/srv"]
    },
    /* the hosted one */
    "github": {
      "type": "http",
      "url": "https://api.githubcopilot.com/mcp/"
    },
    "old-notion": {
      "type": "stdio",
      "command": "npx",
      "args": ["-y", "mcp-remote", "https://mcp.notion.com/mcp"], // before mcpauth
    },
  },
}
"#,
        comments: &["// MCP servers for every workspace", "// before mcpauth"],
        expected: stdio_entry_vscode,
    });
}

#[test]
fn claude_desktop_gets_a_stdio_proxy_entry() {
    exercise(&Case {
        host: "claude-desktop",
        path: ".config/Claude/claude_desktop_config.json",
        key: "mcpServers",
        format: Format::Json,
        fixture: r#"{
  "globalShortcut": "Ctrl+Space",
  "mcpServers": {
    "files": {
      "command": "npx",
      "args": ["-y", "@modelcontextprotocol/server-filesystem", "/srv"]
    },
    "github": {
      "command": "docker",
      "args": ["run", "-i", "--rm", "ghcr.io/github/github-mcp-server"]
    },
    "old-notion": {
      "command": "npx",
      "args": ["-y", "mcp-remote", "https://mcp.notion.com/mcp"]
    }
  }
}
"#,
        comments: &[],
        expected: stdio_entry,
    });
}

#[test]
fn gemini_gets_a_stdio_proxy_entry_and_keeps_its_comments() {
    exercise(&Case {
        host: "gemini",
        path: ".gemini/settings.json",
        key: "mcpServers",
        format: Format::Jsonc,
        fixture: r#"{
  // my Gemini CLI settings
  "theme": "Dracula",
  "selectedAuthType": "gemini-api-key",
  "mcpServers": {
    "files": {
      "command": "npx",
      "args": ["-y", "@modelcontextprotocol/server-filesystem", "/srv"],
      "timeout": 30000
    },
    "github": {
      "httpUrl": "https://api.githubcopilot.com/mcp/",
      "headers": { "X-Client": "gemini" }
    },
    "old-notion": {
      "command": "npx",
      "args": ["-y", "mcp-remote", "https://mcp.notion.com/mcp"]
    }
  }
}
"#,
        comments: &["// my Gemini CLI settings"],
        expected: stdio_entry,
    });
}

#[test]
fn opencode_gets_a_local_entry_with_one_command_array() {
    exercise(&Case {
        host: "opencode",
        path: ".config/opencode/opencode.json",
        key: "mcp",
        format: Format::Jsonc,
        fixture: r#"{
  "$schema": "https://opencode.ai/config.json",
  "theme": "opencode",
  // servers
  "mcp": {
    "files": {
      "type": "local",
      "command": ["npx", "-y", "@modelcontextprotocol/server-filesystem", "/srv"],
      "enabled": true
    },
    "github": {
      "type": "remote",
      "url": "https://api.githubcopilot.com/mcp/"
    },
    "old-notion": {
      "type": "local",
      "command": ["npx", "-y", "mcp-remote", "https://mcp.notion.com/mcp"]
    }
  }
}
"#,
        comments: &["// servers"],
        expected: local_entry_opencode,
    });
}

/// Runs a host entry's command the way a host that filters the
/// environment does (Codex keeps HOME, PATH and little else).
fn run_filtered(env: &TestEnv, command: &str) -> std::process::Output {
    let argv: Vec<&str> = command.split_whitespace().collect();
    Command::new(argv[0])
        .args(&argv[1..])
        .env_clear()
        .env("HOME", env.home())
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_helpers_connect_writes_reach_the_daemon_with_only_home_and_path() {
    let server = AuthServer::start(Switches::default()).await;
    let env = TestEnv::new();
    let _daemon = env.start_daemon();
    env.ctl(&["add", "s", &server.mcp_url]).ok();
    env.ctl(&["login", "s"]).ok();
    let token = env.ctl(&["token", "s"]).ok().trim().to_string();
    let expected = json!({"Authorization": format!("Bearer {token}")});

    env.ctl(&["connect", "codex"]).ok();
    let config = std::fs::read_to_string(env.home().join(".codex/config.toml")).unwrap();
    let config: Value = toml::from_str(&config).unwrap();
    let helper = config["mcp_servers"]["s"]["http_headers_helper"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        helper.contains(&format!("--socket {}", env.socket().display())),
        "{helper}"
    );
    let out = run_filtered(&env, &helper);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let headers: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(headers, expected);

    env.ctl(&["connect", "claude-code"]).ok();
    let config = std::fs::read_to_string(env.home().join(".claude.json")).unwrap();
    let config: Value = serde_json::from_str(&config).unwrap();
    let out = run_filtered(
        &env,
        config["mcpServers"]["s"]["headersHelper"].as_str().unwrap(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).unwrap(),
        expected
    );
}

/// The stdio entry `connect cursor` writes, run with only HOME and PATH,
/// bridges a host's initialize to the server with the broker's token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_entry_connect_writes_works_with_only_home_and_path() {
    let auth = AuthServer::start(Switches::default()).await;
    let mcp =
        mcpauth_tests::mcpserver::McpServer::start(&auth.issuer, auth.validator(), false).await;
    let env = std::sync::Arc::new(TestEnv::new());
    let _daemon = env.start_daemon();
    env.ctl(&["add", "p", &mcp.url]).ok();
    env.ctl(&["login", "p"]).ok();
    env.ctl(&["connect", "cursor"]).ok();
    let config: Value = serde_json::from_str(
        &std::fs::read_to_string(env.home().join(".cursor/mcp.json")).unwrap(),
    )
    .unwrap();
    let entry = &config["mcpServers"]["p"];
    let mut argv = vec![entry["command"].as_str().unwrap().to_string()];
    argv.extend(
        entry["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string()),
    );
    let out = {
        let env = env.clone();
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut child = Command::new(&argv[0])
                .args(&argv[1..])
                .env_clear()
                .env("HOME", env.home())
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let mut stdin = child.stdin.take().unwrap();
            writeln!(
                stdin,
                r#"{{"jsonrpc":"2.0","id":1,"method":"initialize","params":{{"protocolVersion":"2025-06-18","capabilities":{{}},"clientInfo":{{"name":"h","version":"1"}}}}}}"#
            )
            .unwrap();
            // The host hangs up once the answer is in (or the proxy ends).
            let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
            let mut first = String::new();
            std::io::BufRead::read_line(&mut stdout, &mut first).unwrap();
            drop(stdin);
            let mut rest = String::new();
            std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
            (first + &rest, child.wait_with_output().unwrap())
        })
        .await
        .unwrap()
    };
    let (stdout, out) = out;
    let first: Value = serde_json::from_str(stdout.lines().next().unwrap_or("null")).unwrap();
    assert_eq!(
        first["result"]["protocolVersion"],
        "2025-06-18",
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(mcp.seen().iter().any(|s| s.bearer.is_some()));
}

#[test]
fn a_file_that_does_not_parse_is_left_alone_with_one_line() {
    let env = TestEnv::new();
    let _daemon = start(&env);
    let path = env.home().join(".cursor/mcp.json");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    // Strict JSON: Cursor's file allows no comments. The value must never be echoed.
    let text = "{\n  \"mcpServers\": {\n    \"x\": {\"env\": {\"K\": \"sk-do-not-print\"}} // note\n  }\n}\n";
    std::fs::write(&path, text).unwrap();
    let out = env.ctl(&["connect", "cursor"]);
    let stderr = fails(&out, 1);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("line 3") && stderr.contains("nothing was changed"),
        "{stderr}"
    );
    assert!(!stderr.contains("sk-do-not-print") && !out.stdout().contains("sk-do-not-print"));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    assert!(!path.with_file_name("mcp.json.mcpauth-backup").exists());
    // TOML too.
    let codex = env.home().join(".codex/config.toml");
    std::fs::create_dir_all(codex.parent().unwrap()).unwrap();
    std::fs::write(&codex, "model = \"o3\"\n[mcp_servers.x\nurl = 1\n").unwrap();
    let stderr = fails(&env.ctl(&["connect", "codex", "linear"]), 1);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("line 2"), "{stderr}");
}

#[test]
fn usage_errors_exit_2_and_name_what_is_known() {
    let env = TestEnv::new();
    let _daemon = start(&env);
    let stderr = fails(&env.ctl(&["connect", "claude"]), 2);
    assert!(
        stderr.contains("unknown host `claude`; known hosts: claude-code, codex, cursor, vscode, claude-desktop, gemini, opencode"),
        "{stderr}"
    );
    let stderr = fails(&env.ctl(&["disconnect", "atom"]), 2);
    assert!(stderr.contains("known hosts"), "{stderr}");
    let stderr = fails(&env.ctl(&["connect", "cursor", "nope"]), 2);
    assert!(stderr.contains("no configured server `nope`"), "{stderr}");
    assert!(!env.home().join(".cursor").exists(), "nothing was created");
}

#[test]
fn connect_creates_a_missing_file_and_disconnect_never_does() {
    let env = TestEnv::new();
    let _daemon = start(&env);
    let stdout = env.ctl(&["disconnect", "gemini"]).ok();
    assert!(
        stdout.contains("does not exist; nothing to disconnect"),
        "{stdout}"
    );
    assert!(!env.home().join(".gemini").exists());
    let stdout = env.ctl(&["connect", "gemini", "linear"]).ok();
    assert!(
        stdout.contains("(new file)") && stdout.contains("added      linear"),
        "{stdout}"
    );
    let path = env.home().join(".gemini/settings.json");
    let value: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(
        value,
        json!({"mcpServers": {"linear": stdio_entry(LINEAR, &broker_argv(&env, "proxy", "linear"))}})
    );
    assert_eq!(mode(&path), 0o600);
    // No backup of a file that did not exist.
    assert!(!path.with_file_name("settings.json.mcpauth-backup").exists());
}

#[test]
fn the_daemon_unreachable_is_exit_3() {
    let env = TestEnv::new();
    let stderr = fails(&env.ctl(&["--no-autostart", "connect", "codex"]), 3);
    assert!(stderr.contains("not running"), "{stderr}");
}

#[test]
fn connect_points_to_import_when_the_host_holds_its_own_login() {
    let env = TestEnv::new();
    let _daemon = start(&env);
    let codex = env.home().join(".codex");
    std::fs::create_dir_all(&codex).unwrap();
    std::fs::write(
        codex.join(".credentials.json"),
        r#"{"linear|9a1b2c3d4e5f6a7b": {"server_name": "linear", "access_token": "at-never-shown", "refresh_token": "rt-never-shown"}}"#,
    )
    .unwrap();
    // mcp-remote's login, used by an entry for a configured URL.
    std::fs::create_dir_all(env.home().join(".mcp-auth/mcp-remote-0.1.29")).unwrap();
    let cursor = env.home().join(".cursor/mcp.json");
    std::fs::create_dir_all(cursor.parent().unwrap()).unwrap();
    std::fs::write(
        &cursor,
        format!(r#"{{"mcpServers": {{"lin": {{"command": "npx", "args": ["-y", "mcp-remote", "{LINEAR}"]}}}}}}"#),
    )
    .unwrap();

    let stdout = env.ctl(&["connect", "codex", "linear"]).ok();
    assert!(
        stdout.contains("note: Codex holds its own login for linear in")
            && stdout.contains("run `mcpauthctl import`"),
        "{stdout}"
    );
    assert!(!stdout.contains("never-shown"), "{stdout}");
    let stdout = env.ctl(&["connect", "codex", "github"]).ok();
    assert!(!stdout.contains("holds its own login"), "{stdout}");
    let stdout = env.ctl(&["connect", "cursor", "linear"]).ok();
    assert!(
        stdout.contains(&format!(
            "note: mcp-remote holds its own login for {LINEAR}"
        )),
        "{stdout}"
    );
}

#[test]
fn hosts_lists_what_goes_through_the_broker_and_what_does_not() {
    let env = TestEnv::new();
    let _daemon = start(&env);
    // Nothing installed yet.
    let stdout = env.ctl(&["hosts"]).ok();
    assert!(stdout.starts_with("no MCP host found"), "{stdout}");
    assert_eq!(env.ctl(&["hosts", "--json"]).json(), json!([]));

    // Claude Code: github over http without the helper, a local server.
    std::fs::write(
        env.home().join(".claude.json"),
        format!(
            r#"{{"mcpServers": {{"gh": {{"type": "http", "url": "{GITHUB}"}}, "files": {{"command": "npx", "args": ["fs"]}}}}}}"#
        ),
    )
    .unwrap();
    // Codex: installed (its directory), no config yet.
    std::fs::create_dir_all(env.home().join(".codex")).unwrap();
    // Cursor: linear through the broker, an mcp-remote entry for an
    // unconfigured server.
    env.ctl(&["connect", "cursor", "linear"]).ok();
    let cursor = env.home().join(".cursor/mcp.json");
    let mut value: Value =
        serde_json::from_str(&std::fs::read_to_string(&cursor).unwrap()).unwrap();
    value["mcpServers"]["sentry"] =
        json!({"command": "npx", "args": ["-y", "mcp-remote", "https://mcp.sentry.dev/mcp"]});
    std::fs::write(&cursor, value.to_string()).unwrap();

    let hosts = env.ctl(&["hosts", "--json"]).json();
    let home = env.home().display().to_string();
    assert_eq!(
        hosts,
        json!([
            {"host": "claude-code", "title": "Claude Code", "path": format!("{home}/.claude.json"),
             "exists": true, "error": null, "wired": [], "not_wired": ["github", "linear"],
             "bypassing": [{"entry": "gh", "via": "http", "url": GITHUB, "server": "github"}],
             "other_entries": 1},
            {"host": "codex", "title": "Codex", "path": format!("{home}/.codex/config.toml"),
             "exists": false, "error": null, "wired": [], "not_wired": ["github", "linear"],
             "bypassing": [], "other_entries": 0},
            {"host": "cursor", "title": "Cursor", "path": format!("{home}/.cursor/mcp.json"),
             "exists": true, "error": null,
             "wired": [{"entry": "linear", "server": "linear", "configured": true}],
             "not_wired": ["github"],
             "bypassing": [{"entry": "sentry", "via": "mcp-remote", "url": "https://mcp.sentry.dev/mcp", "server": null}],
             "other_entries": 0},
        ])
    );
    let stdout = env.ctl(&["hosts"]).ok();
    assert!(stdout.contains("Claude Code (claude-code): "), "{stdout}");
    assert!(
        stdout.contains(&format!("  not through the broker: gh connects to {GITHUB} itself, without the broker's helper (configured in mcpauth as github)")),
        "{stdout}"
    );
    assert!(stdout.contains("  through the broker: linear"), "{stdout}");
    assert!(
        stdout.contains("  not through the broker: sentry runs mcp-remote https://mcp.sentry.dev/mcp (not configured in mcpauth: `mcpauthctl add NAME https://mcp.sentry.dev/mcp`)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("  not connected: github (`mcpauthctl connect cursor`)"),
        "{stdout}"
    );
}

/// A real host from `tests/hosts`, installed on first use.
fn real_host(name: &str) -> PathBuf {
    mcpauth_tests::real_hosts().join(name)
}

/// Waits until the MCP endpoint has seen a request carrying `token`.
async fn endpoint_saw(server: &AuthServer, token: &str, limit: std::time::Duration) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if server
            .requests(mcpauth_tests::authserver::MCP_PATH)
            .iter()
            .any(|r| r.method == "POST" && r.bearer.as_deref() == Some(token))
        {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    false
}

/// The real Codex (npm `@openai/codex`, the version in tests/hosts) reads
/// what `connect` wrote, and `codex exec` (with a model provider that does
/// not answer: it starts its MCP servers first) runs the helper in its
/// filtered environment and sends the broker's token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_codex_reads_the_entry_and_sends_the_brokers_token() {
    let codex = real_host("codex");
    let server = AuthServer::start(Switches::default()).await;
    let env = TestEnv::new();
    let _daemon = env.start_daemon();
    env.ctl(&["add", "s", &server.mcp_url]).ok();
    env.ctl(&["login", "s"]).ok();
    let token = env.ctl(&["token", "s"]).ok().trim().to_string();
    let config = env.home().join(".codex/config.toml");
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    std::fs::write(
        &config,
        "# no model answers here\nmodel = \"test\"\nmodel_provider = \"nowhere\"\n\n\
         [model_providers.nowhere]\nname = \"nowhere\"\nbase_url = \"http://127.0.0.1:9/v1\"\nwire_api = \"responses\"\n",
    )
    .unwrap();
    env.ctl(&["connect", "codex"]).ok();

    // Codex reads it back as a streamable HTTP server with a helper.
    let out = Command::new(&codex)
        .args(["mcp", "get", "s", "--json"])
        .env_clear()
        .env("HOME", env.home())
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["transport"]["type"], "streamable_http", "{got}");
    assert_eq!(got["transport"]["url"], server.mcp_url.as_str(), "{got}");
    assert!(got["transport"]["http_headers_helper"].is_string(), "{got}");

    // Codex runs the helper (with HOME and PATH, no XDG_*) and sends the
    // token to the server. It then waits for its model forever: stop it.
    let mut child = Command::new(&codex);
    child
        .args(["exec", "--skip-git-repo-check", "hello"])
        .current_dir(env.root.path())
        .env_clear()
        .env("HOME", env.home())
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("XDG_RUNTIME_DIR", env.runtime_dir())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // Its own process group: the npm wrapper starts the native binary as a
    // child, and both must go.
    std::os::unix::process::CommandExt::process_group(&mut child, 0);
    let mut child = child.spawn().unwrap();
    let saw = endpoint_saw(&server, &token, std::time::Duration::from_secs(60)).await;
    let group = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
    let _ = child.wait();
    assert!(
        saw,
        "Codex did not send the broker's token: {:?}",
        server.requests("/mcp").len()
    );
}

/// The real Claude Code (npm `@anthropic-ai/claude-code`) reads the user
/// scope entry `connect` wrote, and its health check runs the helper and
/// sends the broker's token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_claude_code_reads_the_entry_and_sends_the_brokers_token() {
    let claude = real_host("claude");
    let server = AuthServer::start(Switches::default()).await;
    let env = TestEnv::new();
    let _daemon = env.start_daemon();
    env.ctl(&["add", "s", &server.mcp_url]).ok();
    env.ctl(&["login", "s"]).ok();
    let token = env.ctl(&["token", "s"]).ok().trim().to_string();
    std::fs::write(
        env.home().join(".claude.json"),
        "{\n  \"numStartups\": 3,\n  \"mcpServers\": {}\n}\n",
    )
    .unwrap();
    env.ctl(&["connect", "claude-code"]).ok();

    let out = Command::new(&claude)
        .args(["mcp", "get", "s"])
        .current_dir(env.root.path())
        .env_clear()
        .env("HOME", env.home())
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("Scope: User config"), "{stdout}");
    assert!(
        stdout.contains(&format!("URL: {}", server.mcp_url)),
        "{stdout}"
    );
    assert!(
        endpoint_saw(&server, &token, std::time::Duration::from_secs(5)).await,
        "Claude Code did not send the broker's token:\n{stdout}"
    );
}

/// A project can name any URL beside a helper line: the real Claude Code
/// tells the helper where the headers go (`CLAUDE_CODE_MCP_SERVER_URL`),
/// and the helper refuses a URL its server's token was not issued for, so
/// the other origin never sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_claude_code_never_sends_a_token_to_another_url() {
    let claude = real_host("claude");
    let server = AuthServer::start(Switches::default()).await;
    let evil = AuthServer::start(Switches::default()).await;
    let env = TestEnv::new();
    let _daemon = env.start_daemon();
    env.ctl(&["add", "s", &server.mcp_url]).ok();
    env.ctl(&["login", "s"]).ok();
    let token = env.ctl(&["token", "s"]).ok().trim().to_string();
    let claude_json = env.home().join(".claude.json");
    std::fs::write(&claude_json, "{\n  \"mcpServers\": {}\n}\n").unwrap();
    env.ctl(&["connect", "claude-code"]).ok();
    // The broker's own helper line, beside another server's URL.
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(&claude_json).unwrap()).unwrap();
    let mut entry = config["mcpServers"]["s"].clone();
    entry["url"] = Value::String(evil.mcp_url.clone());
    config["mcpServers"]["lookalike"] = entry;
    std::fs::write(&claude_json, config.to_string()).unwrap();

    let out = Command::new(&claude)
        .args(["mcp", "get", "lookalike"])
        .current_dir(env.root.path())
        .env_clear()
        .env("HOME", env.home())
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("URL: {}", evil.mcp_url)),
        "{stdout}"
    );
    assert!(
        !endpoint_saw(&evil, &token, std::time::Duration::from_secs(3)).await,
        "the other origin received the token:\n{stdout}"
    );
    assert!(
        evil.requests(mcpauth_tests::authserver::MCP_PATH)
            .iter()
            .all(|r| r.bearer.is_none()),
        "the other origin received a bearer token"
    );
    // The helper as Claude Code ran it: exit 2, one line naming both URLs.
    let helper = env.ctl_env(
        &["headers", "s"],
        &[("CLAUDE_CODE_MCP_SERVER_URL", evil.mcp_url.as_str())],
    );
    let line = fails(&helper, 2);
    assert!(
        line.contains(&evil.mcp_url) && line.contains(&server.mcp_url),
        "{line}"
    );
    assert!(helper.stdout().is_empty() && !line.contains(&token));
}

/// The command lines connect writes put `--` before the name, so a name
/// that starts with `-` (config.toml allows one; `add` no longer does) is
/// never read as an option; entries written before, without `--`, are
/// still recognised by `hosts` and removed by `disconnect`.
#[test]
fn a_name_that_starts_with_a_dash_is_never_read_as_an_option() {
    let env = TestEnv::new();
    env.write_config(&format!(
        "[servers.\"-lin\"]\nurl = \"{LINEAR}\"\n\n[servers.github]\nurl = \"{GITHUB}\"\n"
    ));
    let _daemon = env.start_daemon();
    let out = env.ctl(&["add", "--", "-new", GITHUB]);
    let stderr = fails(&out, 2);
    assert!(stderr.contains("starts with '-'"), "{stderr}");

    // Claude Code's helper, run as the host runs it (through a shell).
    env.ctl(&["connect", "claude-code", "--", "-lin"]).ok();
    let value: Value =
        serde_json::from_str(&std::fs::read_to_string(env.home().join(".claude.json")).unwrap())
            .unwrap();
    let helper = value["mcpServers"]["-lin"]["headersHelper"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(helper.ends_with(" headers -- -lin"), "{helper}");
    let ran = Command::new("sh")
        .args(["-c", &helper])
        .env_clear()
        .env("HOME", env.home())
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&ran.stderr);
    assert_eq!(
        ran.status.code(),
        Some(4),
        "login required for -lin: {stderr}"
    );
    assert!(stderr.contains("mcpauthctl login -lin"), "{stderr}");

    // A proxy entry: the name after `--` too, and the proxy starts.
    env.ctl(&["connect", "cursor", "--", "-lin"]).ok();
    let cursor = env.home().join(".cursor/mcp.json");
    let value: Value = serde_json::from_str(&std::fs::read_to_string(&cursor).unwrap()).unwrap();
    let argv = broker_argv(&env, "proxy", "-lin");
    assert_eq!(
        value["mcpServers"]["-lin"],
        json!({"command": argv[0], "args": argv[1..]})
    );
    let ran = env
        .command("mcpauthctl")
        .args(&argv[1..])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(
        ran.status.success(),
        "the proxy ran for -lin: {}",
        String::from_utf8_lossy(&ran.stderr)
    );

    // An entry written before `--` was: still the broker's.
    let mut value = value;
    value["mcpServers"]["github"] =
        json!({"command": argv[0], "args": [&argv[1], &argv[2], "proxy", "github"]});
    std::fs::write(&cursor, value.to_string()).unwrap();
    let hosts = env.ctl(&["hosts", "--json"]).json();
    let cursor_row = hosts
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["host"] == "cursor")
        .unwrap();
    assert_eq!(
        cursor_row["wired"],
        json!([
            {"entry": "-lin", "server": "-lin", "configured": true},
            {"entry": "github", "server": "github", "configured": true},
        ]),
        "{hosts}"
    );
    let stdout = env.ctl(&["disconnect", "cursor"]).ok();
    assert!(
        stdout.contains("  removed    -lin") && stdout.contains("  removed    github"),
        "{stdout}"
    );
    let stdout = env.ctl(&["disconnect", "claude-code", "--", "-lin"]).ok();
    assert!(stdout.contains("  removed    -lin"), "{stdout}");
}

#[test]
fn an_entry_connect_wrote_before_is_updated_and_keeps_the_persons_keys() {
    let env = TestEnv::new();
    let _daemon = start(&env);
    let path = env.home().join(".cursor/mcp.json");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    // Written by an mcpauthctl installed elsewhere; the person added `env`.
    std::fs::write(
        &path,
        r#"{"mcpServers": {"linear": {"command": "/opt/old/mcpauthctl", "args": ["proxy", "linear"], "env": {"LANG": "C"}}}}"#,
    )
    .unwrap();
    let stdout = env.ctl(&["connect", "cursor", "linear"]).ok();
    assert!(
        stdout.contains(&format!("  updated    linear ({LINEAR})")),
        "{stdout}"
    );
    let value: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let argv = broker_argv(&env, "proxy", "linear");
    assert_eq!(
        value["mcpServers"]["linear"],
        json!({"command": argv[0], "args": argv[1..], "env": {"LANG": "C"}})
    );
}

#[test]
fn entries_never_start_a_daemon_that_would_use_another_state_directory() {
    let env = TestEnv::new();
    let _daemon = start(&env);
    // This shell's state is not under HOME: a helper started by Codex
    // (HOME and PATH only) would start a daemon with other state.
    let elsewhere = env.root.path().join("state-elsewhere");
    let no_manager = env.path_with_systemctl(false);
    let out = env.ctl_env(
        &["connect", "codex", "linear"],
        &[
            ("XDG_STATE_HOME", elsewhere.to_str().unwrap()),
            ("PATH", &no_manager),
        ],
    );
    let stdout = out.ok();
    // No user service manager here: no service to advise.
    assert!(
        stdout.contains("these entries never start mcpauthd: keep it running (`mcpauthctl start` after each boot; no user service manager runs here)"),
        "{stdout}"
    );
    let manager = env.path_with_systemctl(true);
    let stdout = env
        .ctl_env(
            &["connect", "codex", "linear", "--dry-run"],
            &[
                ("XDG_STATE_HOME", elsewhere.to_str().unwrap()),
                ("PATH", &manager),
            ],
        )
        .ok();
    assert!(
        stdout.contains("keep it running (`mcpauthctl service install` does)"),
        "{stdout}"
    );
    let config = std::fs::read_to_string(env.home().join(".codex/config.toml")).unwrap();
    let config: Value = toml::from_str(&config).unwrap();
    let helper = config["mcp_servers"]["linear"]["http_headers_helper"]
        .as_str()
        .unwrap();
    assert!(
        helper.ends_with(&format!(
            "--socket {} --no-autostart headers -- linear",
            env.socket().display()
        )),
        "{helper}"
    );
    // With the default state directory the flag goes away again; where no
    // user service manager runs, the entries start mcpauthd on demand.
    let stdout = env
        .ctl_env(&["connect", "codex", "linear"], &[("PATH", &no_manager)])
        .ok();
    assert!(stdout.contains("  updated    linear"), "{stdout}");
    assert!(
        stdout.contains("note: these entries start mcpauthd on demand when the host needs a token (no user service manager runs here, so there is no service to install)"),
        "{stdout}"
    );
    let stdout = env
        .ctl_env(&["connect", "codex", "linear"], &[("PATH", &manager)])
        .ok();
    assert!(!stdout.contains("on demand"), "{stdout}");
    assert!(
        !std::fs::read_to_string(env.home().join(".codex/config.toml"))
            .unwrap()
            .contains("--no-autostart")
    );
}

/// A host file `connect` created (it did not exist) is removed by
/// `disconnect`, with its backup, once nothing else is in it; no line
/// ever says an original is kept when there was none. One the host has
/// put its own things in since stays.
#[test]
fn disconnect_removes_a_file_connect_created_when_nothing_else_is_in_it() {
    let env = TestEnv::new();
    let _daemon = start(&env);
    let path = env.home().join(".cursor/mcp.json");
    let dir = path.parent().unwrap().to_path_buf();
    let beside = || {
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    };
    let stdout = env.ctl(&["connect", "cursor", "linear"]).ok();
    assert!(stdout.contains("(new file)"), "{stdout}");
    assert!(!stdout.contains("as it was"), "{stdout}");
    // A second write keeps a backup, and says the file is mcpauthctl's.
    let stdout = env.ctl(&["connect", "cursor", "github"]).ok();
    assert!(!stdout.contains("the file as it was"), "{stdout}");
    assert!(stdout.contains("mcpauthctl created this file"), "{stdout}");
    let stdout = env.ctl(&["disconnect", "cursor"]).ok();
    assert!(
        stdout.contains(&format!(
            "removed {}: mcpauthctl created it, and nothing else is in it",
            path.display()
        )),
        "{stdout}"
    );
    assert!(!stdout.contains("as it was"), "{stdout}");
    assert!(beside().is_empty(), "{:?}", beside());

    // Created again, then the host adds a server of its own: kept.
    env.ctl(&["connect", "cursor", "linear"]).ok();
    let text = std::fs::read_to_string(&path).unwrap();
    let mut doc: Value = serde_json::from_str(&text).unwrap();
    doc["mcpServers"]["files"] = json!({"command": "fs-server"});
    std::fs::write(&path, doc.to_string()).unwrap();
    let stdout = env.ctl(&["disconnect", "cursor"]).ok();
    assert!(!stdout.contains("nothing else is in it"), "{stdout}");
    let left: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(
        left,
        json!({"mcpServers": {"files": {"command": "fs-server"}}})
    );
}

/// `remove NAME` removes the host entries `connect` wrote for it (they
/// could only fail now) and says so; `--keep-host-entries` keeps them and
/// says where they are.
#[test]
fn remove_takes_the_host_entries_connect_wrote_along_unless_told_to_keep_them() {
    let env = TestEnv::new();
    let _daemon = start(&env);
    let cursor = env.home().join(".cursor/mcp.json");
    std::fs::create_dir_all(cursor.parent().unwrap()).unwrap();
    std::fs::write(
        &cursor,
        r#"{"mcpServers": {"files": {"command": "fs-server"}}}"#,
    )
    .unwrap();
    let claude = env.home().join(".claude.json");
    std::fs::write(&claude, "{\"mcpServers\": {}}\n").unwrap();
    env.ctl(&["connect", "cursor"]).ok();
    env.ctl(&["connect", "claude-code"]).ok();

    let stdout = env.ctl(&["remove", "linear"]).ok();
    for (file, title) in [(&claude, "Claude Code"), (&cursor, "Cursor")] {
        assert!(
            stdout.contains(&format!(
                "removed linear's entry from {} ({title}), which `connect` wrote",
                file.display()
            )),
            "{stdout}"
        );
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
        assert!(doc["mcpServers"].get("linear").is_none(), "{doc}");
        assert!(doc["mcpServers"].get("github").is_some(), "{doc}");
    }

    let stdout = env.ctl(&["remove", "github", "--keep-host-entries"]).ok();
    assert!(
        stdout.contains(&format!(
            "kept github's entry in {} (Cursor): it fails until you add github again, or run `mcpauthctl disconnect cursor github`",
            cursor.display()
        )),
        "{stdout}"
    );
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&cursor).unwrap()).unwrap();
    assert!(doc["mcpServers"].get("github").is_some(), "{doc}");
}

/// An entry written with `--no-autostart` (state not under HOME) whose
/// daemon is stopped: the helper says mcpauthd is not running and how to
/// start it, never "without --no-autostart", a flag the person never
/// typed.
#[test]
fn a_no_autostart_helper_whose_daemon_is_stopped_says_how_to_start_it() {
    let env = TestEnv::new();
    let daemon = start(&env);
    let elsewhere = env.root.path().join("state-elsewhere");
    env.ctl_env(
        &["connect", "codex", "linear"],
        &[("XDG_STATE_HOME", elsewhere.to_str().unwrap())],
    )
    .ok();
    let config = std::fs::read_to_string(env.home().join(".codex/config.toml")).unwrap();
    let config: Value = toml::from_str(&config).unwrap();
    let helper = config["mcp_servers"]["linear"]["http_headers_helper"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(helper.contains("--no-autostart"), "{helper}");
    drop(daemon);
    env.ctl(&["stop"]);
    let out = Command::new("sh")
        .args(["-c", &helper])
        .env_clear()
        .env("HOME", env.home())
        .env("PATH", env.path_with_systemctl(false))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("mcpauthd is not running"), "{stderr}");
    assert!(
        stderr.contains("start it with `mcpauthctl start`"),
        "{stderr}"
    );
    assert!(!stderr.contains("without --no-autostart"), "{stderr}");
}

/// An entry of Claude Code's credentials file with an empty or expired
/// token (and no refresh token) is no login: `connect` does not point to
/// it as one. A live one still is.
#[test]
fn an_empty_or_expired_claude_code_entry_is_not_called_a_login() {
    let env = TestEnv::new();
    let _daemon = start(&env);
    std::fs::write(env.home().join(".claude.json"), "{\"mcpServers\": {}}\n").unwrap();
    let dir = env.home().join(".claude");
    std::fs::create_dir_all(&dir).unwrap();
    let now = mcpauth_tests::now_ms();
    let write = |entries: Value| {
        std::fs::write(
            dir.join(".credentials.json"),
            json!({"mcpOAuth": entries}).to_string(),
        )
        .unwrap();
    };
    write(json!({
        "linear|1a2b": {"serverName": "linear", "serverUrl": LINEAR, "accessToken": "", "expiresAt": 0},
        "github|3c4d": {"serverName": "github", "serverUrl": GITHUB, "accessToken": "at-old", "expiresAt": now - 60_000},
    }));
    let stdout = env.ctl(&["connect", "claude-code"]).ok();
    assert!(!stdout.contains("holds its own login"), "{stdout}");
    write(json!({
        "linear|1a2b": {"serverName": "linear", "serverUrl": LINEAR, "accessToken": "at-live", "expiresAt": now + 3_600_000},
        "github|3c4d": {"serverName": "github", "serverUrl": GITHUB, "accessToken": "at-old", "expiresAt": now - 60_000, "refreshToken": "rt"},
    }));
    let stdout = env.ctl(&["connect", "claude-code"]).ok();
    assert!(
        stdout.contains("Claude Code holds its own login for linear")
            && stdout.contains("Claude Code holds its own login for github"),
        "{stdout}"
    );
}
