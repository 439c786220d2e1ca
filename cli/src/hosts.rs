//! The MCP hosts: where each keeps its user-level list of servers, the
//! entry `mcpauthctl connect` writes there, and how the broker's entries
//! are told apart from everyone else's.
//!
//! One small struct per host. Each says where its file is, how it is
//! written (JSON, JSON with comments, TOML), under which key the servers
//! are, and what an entry that goes through the broker looks like: a
//! headers helper (`mcpauthctl headers NAME`) for the hosts that support
//! one, otherwise a stdio server (`mcpauthctl proxy NAME`).
//!
//! What was checked, and how (December 2025 unless said otherwise):
//!
//! | host | file | how it was checked |
//! |---|---|---|
//! | Claude Code | `~/.claude.json` (`$CLAUDE_CONFIG_DIR/.claude.json`), key `mcpServers` | run: `claude mcp add-json -s user` (2.1.328) writes exactly `{"type": "http", "url", "headersHelper"}` there, and into `$CLAUDE_CONFIG_DIR` when set; `claude mcp get` reads ours back |
//! | Codex | `$CODEX_HOME/config.toml` (`~/.codex/config.toml`), tables `[mcp_servers.NAME]` | run: `codex mcp get NAME --json` (0.169.0) reads `url` + `http_headers_helper` (a command string) back as a `streamable_http` transport |
//! | Cursor | `~/.cursor/mcp.json`, key `mcpServers`, `{"command", "args"}` | Cursor's MCP docs (global file, no XDG) |
//! | VS Code | user profile `mcp.json` (`$XDG_CONFIG_HOME/Code/User`, macOS `~/Library/Application Support/Code/User`), key `servers`, `{"type": "stdio", "command", "args"}`; JSON with comments | VS Code's "MCP configuration reference" |
//! | Claude Desktop | `claude_desktop_config.json` in `$XDG_CONFIG_HOME/Claude` (macOS `~/Library/Application Support/Claude`), key `mcpServers` | Anthropic's and community setup guides (there is no official Linux build; Electron's `appData` is `$XDG_CONFIG_HOME`) |
//! | Gemini CLI | `~/.gemini/settings.json` (`$GEMINI_CLI_HOME/.gemini` when set), key `mcpServers`; comments allowed | Gemini CLI's configuration docs and source (`settings.ts` strips comments; `homedir()` honours `GEMINI_CLI_HOME`) |
//! | opencode | `$XDG_CONFIG_HOME/opencode/opencode.json` (also on macOS), key `mcp`, `{"type": "local", "command": [cmd, args…]}`; JSON with comments | opencode's config and MCP docs; its `global` module uses `xdg-basedir` |
//!
//! The JSON files are edited through a concrete syntax tree
//! (`hostfile.rs`), so comments, order and formatting outside the entry
//! survive. Files that only the host itself writes (Claude Code, Cursor,
//! Claude Desktop) are read as strict JSON: a file the host could not
//! read either is not touched.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

/// How a host's file is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Strict JSON.
    Json,
    /// JSON with comments and trailing commas.
    Jsonc,
    Toml,
}

/// How a host reaches the broker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// An http entry whose headers helper is `mcpauthctl headers NAME`.
    HeadersHelper,
    /// A stdio entry running `mcpauthctl proxy NAME`.
    Proxy,
}

impl Via {
    pub fn subcommand(self) -> &'static str {
        match self {
            Via::HeadersHelper => "headers",
            Via::Proxy => "proxy",
        }
    }
}

/// The variables the hosts themselves read to find their files; a value,
/// so tests can inject them.
#[derive(Clone, Debug)]
pub struct HostEnv {
    pub home: PathBuf,
    pub xdg_config_home: Option<PathBuf>,
    pub codex_home: Option<PathBuf>,
    pub claude_config_dir: Option<PathBuf>,
    pub gemini_cli_home: Option<PathBuf>,
    pub mcp_remote_config_dir: Option<PathBuf>,
    pub hermes_home: Option<PathBuf>,
    pub macos: bool,
}

impl HostEnv {
    pub fn from_env() -> Self {
        let var = |name: &str| {
            std::env::var_os(name)
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
        };
        Self {
            home: mcpauth_proto::paths::home_dir().unwrap_or_else(|| PathBuf::from("/")),
            xdg_config_home: var("XDG_CONFIG_HOME"),
            codex_home: var("CODEX_HOME"),
            claude_config_dir: var("CLAUDE_CONFIG_DIR"),
            gemini_cli_home: var("GEMINI_CLI_HOME"),
            mcp_remote_config_dir: var("MCP_REMOTE_CONFIG_DIR"),
            hermes_home: var("HERMES_HOME"),
            macos: cfg!(target_os = "macos"),
        }
    }

    fn xdg_config(&self) -> PathBuf {
        self.xdg_config_home
            .clone()
            .unwrap_or_else(|| self.home.join(".config"))
    }

    /// Electron's `appData`, where VS Code and Claude Desktop keep their
    /// user files.
    fn app_data(&self) -> PathBuf {
        if self.macos {
            self.home.join("Library/Application Support")
        } else {
            self.xdg_config()
        }
    }

    /// Hermes' home (`$HERMES_HOME`, else `~/.hermes`).
    pub fn hermes_dir(&self) -> PathBuf {
        self.hermes_home
            .clone()
            .unwrap_or_else(|| self.home.join(".hermes"))
    }

    pub fn claude_dir(&self) -> PathBuf {
        self.claude_config_dir
            .clone()
            .unwrap_or_else(|| self.home.join(".claude"))
    }

    pub fn codex_dir(&self) -> PathBuf {
        self.codex_home
            .clone()
            .unwrap_or_else(|| self.home.join(".codex"))
    }

    /// Where mcp-remote keeps its tokens.
    pub fn mcp_remote_dir(&self) -> PathBuf {
        self.mcp_remote_config_dir
            .clone()
            .unwrap_or_else(|| self.home.join(".mcp-auth"))
    }
}

/// A login a host holds itself: the file, and the server names in it.
/// Only names are ever read out of such a file.
pub struct OwnLogins {
    pub file: PathBuf,
    pub names: Vec<String>,
}

/// One MCP host and its user-level config file.
pub trait Host: Sync {
    /// The name on the command line (`mcpauthctl connect ID`).
    fn id(&self) -> &'static str;
    fn title(&self) -> &'static str;
    /// The user-level file that lists the host's MCP servers.
    fn path(&self, env: &HostEnv) -> PathBuf;
    /// A directory that exists once the host is installed or has run.
    fn dir(&self, env: &HostEnv) -> PathBuf {
        let path = self.path(env);
        path.parent().unwrap_or(Path::new("/")).to_path_buf()
    }
    fn format(&self) -> Format;
    /// The key of the servers object (table) at the top of the file.
    fn servers_key(&self) -> &'static str {
        "mcpServers"
    }
    fn via(&self) -> Via {
        Via::Proxy
    }
    /// The entry that reaches `url` through `command`, which is
    /// `mcpauthctl [--socket PATH] headers|proxy NAME` as argv.
    fn entry(&self, _url: &str, command: &[String]) -> Value {
        json!({"command": command[0], "args": command[1..]})
    }
    /// The command line an entry runs, as argv: its stdio server, or its
    /// headers helper.
    fn command_of(&self, entry: &Value) -> Option<Vec<String>> {
        stdio_command(entry)
    }
    /// The remote URL an entry connects to itself, if it is a remote entry.
    fn url_of(&self, entry: &Value) -> Option<String> {
        ["url", "httpUrl", "serverUrl"]
            .iter()
            .find_map(|k| entry.get(*k).and_then(Value::as_str))
            .map(str::to_string)
    }
    /// Logins the host keeps itself, by server name.
    fn own_logins(&self, _env: &HostEnv) -> Option<OwnLogins> {
        None
    }
}

/// `{"command": "x", "args": [...]}`, the stdio shape most hosts share.
fn stdio_command(entry: &Value) -> Option<Vec<String>> {
    let command = entry.get("command")?;
    // opencode: the whole command line is one array.
    if let Some(argv) = command.as_array() {
        return argv
            .iter()
            .map(|a| a.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .filter(|argv| !argv.is_empty());
    }
    let mut argv = vec![command.as_str()?.to_string()];
    if let Some(args) = entry.get("args").and_then(Value::as_array) {
        for arg in args {
            argv.push(arg.as_str()?.to_string());
        }
    }
    Some(argv)
}

/// A helper command string as argv (POSIX shell words).
fn helper_command(helper: Option<&Value>) -> Option<Vec<String>> {
    shell_words::split(helper?.as_str()?).ok()
}

/// The names in a host's own token file: the keys of `object` (`NAME|…`).
fn login_names(file: &Path, object: impl Fn(&Value) -> Option<&Value>) -> Option<OwnLogins> {
    let text = std::fs::read_to_string(file).ok()?;
    let value: Value = serde_json::from_str(&text).ok()?;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let mut names: Vec<String> = object(&value)?
        .as_object()?
        .iter()
        .filter(|(_, entry)| is_a_login(entry, now_ms))
        .filter_map(|(k, _)| k.split('|').next())
        .map(str::to_string)
        .collect();
    names.sort();
    names.dedup();
    Some(OwnLogins {
        file: file.to_path_buf(),
        names,
    })
}

/// Whether a host's token entry is a login anyone could use: a refresh
/// token, or an access token that has not expired (Claude Code's
/// `accessToken`/`refreshToken`/`expiresAt`, Codex's snake_case ones;
/// expiries in ms). An entry left empty or expired is no login.
fn is_a_login(entry: &Value, now_ms: i64) -> bool {
    let text = |keys: [&str; 2]| {
        keys.iter()
            .filter_map(|k| entry.get(*k).and_then(Value::as_str))
            .any(|v| !v.trim().is_empty())
    };
    if text(["refreshToken", "refresh_token"]) {
        return true;
    }
    let expires = ["expiresAt", "expires_at"]
        .iter()
        .find_map(|k| entry.get(*k).and_then(Value::as_i64));
    text(["accessToken", "access_token"]) && expires.is_none_or(|at| at > now_ms)
}

/// Claude Code: user-scope servers in `~/.claude.json`, with a headers
/// helper (Claude Code runs it on every connect and again after a 401).
pub struct ClaudeCode;

impl Host for ClaudeCode {
    fn id(&self) -> &'static str {
        "claude-code"
    }
    fn title(&self) -> &'static str {
        "Claude Code"
    }
    fn path(&self, env: &HostEnv) -> PathBuf {
        match &env.claude_config_dir {
            Some(dir) => dir.join(".claude.json"),
            None => env.home.join(".claude.json"),
        }
    }
    fn dir(&self, env: &HostEnv) -> PathBuf {
        env.claude_dir()
    }
    fn format(&self) -> Format {
        Format::Json
    }
    fn via(&self) -> Via {
        Via::HeadersHelper
    }
    fn entry(&self, url: &str, command: &[String]) -> Value {
        json!({"type": "http", "url": url, "headersHelper": shell_words::join(command)})
    }
    fn command_of(&self, entry: &Value) -> Option<Vec<String>> {
        stdio_command(entry).or_else(|| helper_command(entry.get("headersHelper")))
    }
    fn own_logins(&self, env: &HostEnv) -> Option<OwnLogins> {
        login_names(&env.claude_dir().join(".credentials.json"), |v| {
            v.get("mcpOAuth")
        })
    }
}

/// Codex 0.169+: `[mcp_servers.NAME]` with `url` and `http_headers_helper`.
pub struct Codex;

impl Host for Codex {
    fn id(&self) -> &'static str {
        "codex"
    }
    fn title(&self) -> &'static str {
        "Codex"
    }
    fn path(&self, env: &HostEnv) -> PathBuf {
        env.codex_dir().join("config.toml")
    }
    fn format(&self) -> Format {
        Format::Toml
    }
    fn servers_key(&self) -> &'static str {
        "mcp_servers"
    }
    fn via(&self) -> Via {
        Via::HeadersHelper
    }
    fn entry(&self, url: &str, command: &[String]) -> Value {
        json!({"url": url, "http_headers_helper": shell_words::join(command)})
    }
    fn command_of(&self, entry: &Value) -> Option<Vec<String>> {
        stdio_command(entry).or_else(|| helper_command(entry.get("http_headers_helper")))
    }
    fn own_logins(&self, env: &HostEnv) -> Option<OwnLogins> {
        // Its file store only: the OS keyring is read by `import`, in the daemon.
        login_names(&env.codex_dir().join(".credentials.json"), |v| Some(v))
    }
}

/// Cursor: the global `~/.cursor/mcp.json`.
pub struct Cursor;

impl Host for Cursor {
    fn id(&self) -> &'static str {
        "cursor"
    }
    fn title(&self) -> &'static str {
        "Cursor"
    }
    fn path(&self, env: &HostEnv) -> PathBuf {
        env.home.join(".cursor/mcp.json")
    }
    fn format(&self) -> Format {
        Format::Json
    }
}

/// VS Code: the user profile's `mcp.json` (servers under `servers`).
pub struct VsCode;

impl Host for VsCode {
    fn id(&self) -> &'static str {
        "vscode"
    }
    fn title(&self) -> &'static str {
        "VS Code"
    }
    fn path(&self, env: &HostEnv) -> PathBuf {
        env.app_data().join("Code/User/mcp.json")
    }
    fn dir(&self, env: &HostEnv) -> PathBuf {
        env.app_data().join("Code")
    }
    fn format(&self) -> Format {
        Format::Jsonc
    }
    fn servers_key(&self) -> &'static str {
        "servers"
    }
    fn entry(&self, _url: &str, command: &[String]) -> Value {
        json!({"type": "stdio", "command": command[0], "args": command[1..]})
    }
}

/// Claude Desktop: `claude_desktop_config.json`.
pub struct ClaudeDesktop;

impl Host for ClaudeDesktop {
    fn id(&self) -> &'static str {
        "claude-desktop"
    }
    fn title(&self) -> &'static str {
        "Claude Desktop"
    }
    fn path(&self, env: &HostEnv) -> PathBuf {
        env.app_data().join("Claude/claude_desktop_config.json")
    }
    fn format(&self) -> Format {
        Format::Json
    }
}

/// Gemini CLI: `~/.gemini/settings.json`.
pub struct GeminiCli;

impl Host for GeminiCli {
    fn id(&self) -> &'static str {
        "gemini"
    }
    fn title(&self) -> &'static str {
        "Gemini CLI"
    }
    fn path(&self, env: &HostEnv) -> PathBuf {
        env.gemini_cli_home
            .as_ref()
            .unwrap_or(&env.home)
            .join(".gemini/settings.json")
    }
    fn format(&self) -> Format {
        Format::Jsonc
    }
}

/// opencode: `opencode.json` in its XDG config directory (servers under
/// `mcp`, the command line as one array).
pub struct Opencode;

impl Host for Opencode {
    fn id(&self) -> &'static str {
        "opencode"
    }
    fn title(&self) -> &'static str {
        "opencode"
    }
    fn path(&self, env: &HostEnv) -> PathBuf {
        let dir = env.xdg_config().join("opencode");
        // opencode reads either name; edit the one the person has.
        let jsonc = dir.join("opencode.jsonc");
        let json = dir.join("opencode.json");
        if !json.exists() && jsonc.exists() {
            jsonc
        } else {
            json
        }
    }
    fn format(&self) -> Format {
        Format::Jsonc
    }
    fn servers_key(&self) -> &'static str {
        "mcp"
    }
    fn entry(&self, _url: &str, command: &[String]) -> Value {
        json!({"type": "local", "command": command})
    }
}

/// Every host `connect` knows, in the order `hosts` lists them.
pub static HOSTS: &[&dyn Host] = &[
    &ClaudeCode,
    &Codex,
    &Cursor,
    &VsCode,
    &ClaudeDesktop,
    &GeminiCli,
    &Opencode,
];

/// The host called `id`.
pub fn find(id: &str) -> Option<&'static dyn Host> {
    HOSTS.iter().copied().find(|h| h.id() == id)
}

/// The ids of every host, for messages.
pub fn ids() -> String {
    HOSTS.iter().map(|h| h.id()).collect::<Vec<_>>().join(", ")
}

/// Which server an argv reaches through the broker, and how:
/// `…/mcpauthctl [--socket PATH | --socket=PATH | --no-autostart]…
/// headers|proxy [--] NAME` (`connect` writes the `--`; entries written
/// before it did are recognised as well).
pub fn broker_target(argv: &[String]) -> Option<(Via, String)> {
    let (program, mut rest) = argv.split_first()?;
    if Path::new(program).file_name()? != "mcpauthctl" {
        return None;
    }
    loop {
        match rest {
            [flag, _, tail @ ..] if flag == "--socket" => rest = tail,
            [flag, tail @ ..] if flag.starts_with("--socket=") || flag == "--no-autostart" => {
                rest = tail;
            }
            _ => break,
        }
    }
    let (sub, name) = match rest {
        [sub, dashes, name] if dashes == "--" => (sub, name),
        // Without `--`, a name that looks like an option is not a name.
        [sub, name] if !name.starts_with('-') => (sub, name),
        _ => return None,
    };
    match sub.as_str() {
        "headers" => Some((Via::HeadersHelper, name.clone())),
        "proxy" => Some((Via::Proxy, name.clone())),
        _ => None,
    }
}

/// Whether `entry`, under the key `name`, is one `connect` wrote: it runs
/// `mcpauthctl headers|proxy NAME` the way this host is wired.
pub fn is_ours(host: &dyn Host, name: &str, entry: &Value) -> bool {
    host.command_of(entry)
        .and_then(|argv| broker_target(&argv))
        .is_some_and(|(via, target)| via == host.via() && target == name)
}

/// The URL an entry hands to `mcp-remote` (`npx [-y] mcp-remote URL …`).
pub fn mcp_remote_url(argv: &[String]) -> Option<String> {
    let at = argv.iter().position(|a| {
        let base = Path::new(a)
            .file_name()
            .and_then(|f| f.to_str())
            .unwrap_or(a);
        base == "mcp-remote" || base.starts_with("mcp-remote@")
    })?;
    argv[at + 1..]
        .iter()
        .find(|a| a.starts_with("https://") || a.starts_with("http://"))
        .cloned()
}

/// A URL compared loosely: parsed, without a trailing slash.
pub fn same_url(a: &str, b: &str) -> bool {
    let normalize = |u: &str| {
        url::Url::parse(u.trim())
            .map(|u| u.to_string())
            .unwrap_or_else(|_| u.trim().to_string())
            .trim_end_matches('/')
            .to_string()
    };
    normalize(a) == normalize(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    fn env() -> HostEnv {
        HostEnv {
            home: "/h".into(),
            xdg_config_home: None,
            codex_home: None,
            claude_config_dir: None,
            gemini_cli_home: None,
            mcp_remote_config_dir: None,
            hermes_home: None,
            macos: false,
        }
    }

    #[test]
    fn the_broker_is_recognised_through_its_global_flags() {
        type Case<'a> = (&'a [&'a str], Option<(Via, &'a str)>);
        let cases: &[Case] = &[
            (
                &["/usr/bin/mcpauthctl", "headers", "a"],
                Some((Via::HeadersHelper, "a")),
            ),
            (&["mcpauthctl", "proxy", "a"], Some((Via::Proxy, "a"))),
            (
                &[
                    "/x/mcpauthctl",
                    "--socket",
                    "/run/s.sock",
                    "--no-autostart",
                    "proxy",
                    "b",
                ],
                Some((Via::Proxy, "b")),
            ),
            (
                &["/x/mcpauthctl", "--socket=/s", "headers", "c"],
                Some((Via::HeadersHelper, "c")),
            ),
            // As connect writes them now: `--` before the name.
            (
                &["/x/mcpauthctl", "--socket", "/s", "headers", "--", "c"],
                Some((Via::HeadersHelper, "c")),
            ),
            (
                &["/x/mcpauthctl", "proxy", "--", "-d"],
                Some((Via::Proxy, "-d")),
            ),
            // Not ours: another program, another subcommand, extra words.
            (&["/x/mcpauthctl-old", "headers", "a"], None),
            (&["/x/mcpauthctl", "token", "a"], None),
            (&["/x/mcpauthctl", "headers", "a", "b"], None),
            (&["/x/mcpauthctl", "headers"], None),
            (&["/x/mcpauthctl", "headers", "--"], None),
            (&["/x/mcpauthctl", "proxy", "--help"], None),
            (&["/x/mcpauthctl", "proxy", "--", "a", "b"], None),
            (&["npx", "mcp-remote", "https://x"], None),
        ];
        for (words, want) in cases {
            let got = broker_target(&argv(words));
            let want = want.map(|(v, n)| (v, n.to_string()));
            assert_eq!(got, want, "{words:?}");
        }
    }

    #[test]
    fn entries_are_ours_only_for_their_own_name_and_wiring() {
        let helper = ClaudeCode.entry("https://x/mcp", &argv(&["/b/mcpauthctl", "headers", "lin"]));
        assert!(is_ours(&ClaudeCode, "lin", &helper));
        assert!(!is_ours(&ClaudeCode, "other", &helper));
        // A proxy entry in Claude Code's file is not what connect writes there.
        let proxy = Cursor.entry("https://x/mcp", &argv(&["/b/mcpauthctl", "proxy", "lin"]));
        assert!(is_ours(&Cursor, "lin", &proxy));
        assert!(!is_ours(&ClaudeCode, "lin", &proxy));
        let opencode = Opencode.entry("u", &argv(&["/b/mcpauthctl", "proxy", "lin"]));
        assert_eq!(
            opencode,
            json!({"type": "local", "command": ["/b/mcpauthctl", "proxy", "lin"]})
        );
        assert!(is_ours(&Opencode, "lin", &opencode));
    }

    #[test]
    fn a_helper_path_with_spaces_is_quoted_and_still_recognised() {
        let command = argv(&[
            "/Users/a b/bin/mcpauthctl",
            "--socket",
            "/t/x y.sock",
            "headers",
            "n",
        ]);
        let entry = Codex.entry("https://x", &command);
        assert_eq!(
            entry["http_headers_helper"],
            "'/Users/a b/bin/mcpauthctl' --socket '/t/x y.sock' headers n"
        );
        assert!(is_ours(&Codex, "n", &entry));
    }

    #[test]
    fn mcp_remote_entries_name_their_url() {
        assert_eq!(
            mcp_remote_url(&argv(&[
                "npx",
                "-y",
                "mcp-remote@0.1.29",
                "https://mcp.linear.app/sse",
                "--debug"
            ])),
            Some("https://mcp.linear.app/sse".into())
        );
        assert_eq!(
            mcp_remote_url(&argv(&["/usr/local/bin/mcp-remote", "https://a/mcp"])),
            Some("https://a/mcp".into())
        );
        assert_eq!(
            mcp_remote_url(&argv(&["npx", "server-filesystem", "/tmp"])),
            None
        );
        assert!(same_url("https://A.example/mcp/", "https://a.example/mcp"));
        assert!(!same_url(
            "https://a.example/mcp",
            "https://a.example/other"
        ));
    }

    #[test]
    fn paths_follow_each_hosts_own_variables() {
        let mut e = env();
        assert_eq!(ClaudeCode.path(&e), PathBuf::from("/h/.claude.json"));
        assert_eq!(Codex.path(&e), PathBuf::from("/h/.codex/config.toml"));
        assert_eq!(Cursor.path(&e), PathBuf::from("/h/.cursor/mcp.json"));
        assert_eq!(
            VsCode.path(&e),
            PathBuf::from("/h/.config/Code/User/mcp.json")
        );
        assert_eq!(
            ClaudeDesktop.path(&e),
            PathBuf::from("/h/.config/Claude/claude_desktop_config.json")
        );
        assert_eq!(
            GeminiCli.path(&e),
            PathBuf::from("/h/.gemini/settings.json")
        );
        assert_eq!(
            Opencode.path(&e),
            PathBuf::from("/h/.config/opencode/opencode.json")
        );
        e.xdg_config_home = Some("/x".into());
        e.codex_home = Some("/c".into());
        e.claude_config_dir = Some("/cc".into());
        e.gemini_cli_home = Some("/g".into());
        assert_eq!(ClaudeCode.path(&e), PathBuf::from("/cc/.claude.json"));
        assert_eq!(Codex.path(&e), PathBuf::from("/c/config.toml"));
        assert_eq!(VsCode.path(&e), PathBuf::from("/x/Code/User/mcp.json"));
        assert_eq!(
            ClaudeDesktop.path(&e),
            PathBuf::from("/x/Claude/claude_desktop_config.json")
        );
        assert_eq!(
            GeminiCli.path(&e),
            PathBuf::from("/g/.gemini/settings.json")
        );
        assert_eq!(
            Opencode.path(&e),
            PathBuf::from("/x/opencode/opencode.json")
        );
        // Cursor has no such variable.
        assert_eq!(Cursor.path(&e), PathBuf::from("/h/.cursor/mcp.json"));
        e.macos = true;
        assert_eq!(
            VsCode.path(&e),
            PathBuf::from("/h/Library/Application Support/Code/User/mcp.json")
        );
        assert_eq!(
            ClaudeDesktop.path(&e),
            PathBuf::from("/h/Library/Application Support/Claude/claude_desktop_config.json")
        );
    }

    #[test]
    fn host_ids_are_unique() {
        let mut ids: Vec<_> = HOSTS.iter().map(|h| h.id()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), HOSTS.len());
        assert!(find("codex").is_some());
        assert!(find("claude").is_none());
    }
}
