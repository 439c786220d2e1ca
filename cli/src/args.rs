//! The command line: every command, flag and help text `mcpauthctl`
//! has, as clap definitions. `--help`, the man page and the shell
//! completions are all generated from here (`docs.rs`), so this is the
//! one place a flag's words are written. Each command's arguments are a
//! struct the command's function (`commands/`) takes whole.

use std::path::PathBuf;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use mcpauth_proto::env;

use crate::docs;

pub const EXIT_CODES: &str = "\
Exit codes:
  0  ok
  1  failure
  2  usage or invalid input
  3  daemon unreachable
  4  login or consent required";

const TOKEN_EXAMPLES: &str = "\
Examples:
  TOKEN=$(mcpauthctl token linear)
  curl -H \"Authorization: Bearer $(mcpauthctl token linear)\" https://mcp.linear.app/mcp
  # the server answered 401 with $TOKEN: report it and use the replacement
  TOKEN=$(mcpauthctl token linear --rejected \"$TOKEN\" --status 401)";

const COMPLETIONS_INSTALL: &str = "\
Install (once; a new shell picks it up):
  bash: mkdir -p ~/.local/share/bash-completion/completions
        mcpauthctl completions bash > ~/.local/share/bash-completion/completions/mcpauthctl
  zsh:  mkdir -p ~/.zfunc && mcpauthctl completions zsh > ~/.zfunc/_mcpauthctl
        (and in ~/.zshrc, before compinit: fpath=(~/.zfunc $fpath))
  fish: mkdir -p ~/.config/fish/completions
        mcpauthctl completions fish > ~/.config/fish/completions/mcpauthctl.fish";

const MAN_INSTALL: &str = "\
Install (once):
  mkdir -p ~/.local/share/man/man1
  mcpauthctl man > ~/.local/share/man/man1/mcpauthctl.1
  (man finds it when ~/.local/bin is on PATH; else: export MANPATH=\"$HOME/.local/share/man:\")";

const IMPORT_HELP: &str = "\
Where each tool keeps its logins:
  codex        $CODEX_HOME/.credentials.json (with mcp_oauth_credentials_store = \"file\")
  claude-code  ~/.claude/.credentials.json ($CLAUDE_CONFIG_DIR)
  mcp-remote   ~/.mcp-auth/mcp-remote-*/ ($MCP_REMOTE_CONFIG_DIR), matched to the URLs host configs pass it
  hermes       ~/.hermes/mcp-tokens/ ($HERMES_HOME)

Examples:
  mcpauthctl import --dry-run
  mcpauthctl import codex
  mcpauthctl adopt mcp-remote";

/// The description of every command's NAME argument.
const NAME_HELP: &str = "The server's name, as in `mcpauthctl list`";

/// Control the mcpauth broker: one OAuth login per server, shared by every
/// MCP host on this machine.
///
/// mcpauthctl talks to the daemon, mcpauthd, over a private Unix socket and
/// starts it when it is not running (not with --no-autostart, nor when a
/// systemd or launchd service is installed: see `mcpauthctl service`). The
/// servers are declared in ~/.config/mcpauth/config.toml, which `add` and
/// `remove` edit.
#[derive(Parser)]
#[command(name = "mcpauthctl", version, after_help = EXIT_CODES)]
pub struct Cli {
    /// The daemon's socket.
    #[arg(long, global = true, env = env::SOCKET, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Fail (exit 3) instead of starting the daemon when it is not running.
    #[arg(long, global = true)]
    pub no_autostart: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Show the daemon and every server's state.
    Status(StatusArgs),
    /// List the configured servers.
    List(ListArgs),
    /// Show one server.
    Show(ShowArgs),
    /// Add a server to config.toml.
    Add(AddArgs),
    /// Remove a server from config.toml and delete all of its state.
    Remove(RemoveArgs),
    /// Log in to a server in the browser (the daemon keeps the tokens).
    Login(LoginArgs),
    /// Revoke the server's tokens (when it supports revocation) and delete them.
    Logout(LogoutArgs),
    /// Walk discovery and registration step by step, without logging in.
    ///
    /// Shows the challenge, the resource metadata and its `resource`, each
    /// metadata URL tried and what answered, the issuer and endpoints, the
    /// registration, PKCE and `iss` support, the grant types, and the
    /// settings and built-in defaults in effect; for each problem, the one
    /// setting or command that fixes it. Exit 1 when there is a problem.
    Doctor(DoctorArgs),
    /// Refresh the server's token now.
    Refresh(RefreshArgs),
    /// Print the server's access token (for scripts: never opens a browser).
    ///
    /// Prints the token alone on stdout. A token that would expire within
    /// 60 s (--min-ttl) is refreshed first. Without a login it exits 4 and
    /// says which `mcpauthctl login` to run.
    #[command(after_long_help = TOKEN_EXAMPLES)]
    Token(TokenArgs),
    /// Print {"Authorization": "Bearer ..."} for Claude Code's headersHelper.
    ///
    /// Without NAME, the server comes from CLAUDE_CODE_MCP_SERVER_NAME, else
    /// from CLAUDE_CODE_MCP_SERVER_URL matched against the configured URLs.
    Headers(HeadersArgs),
    /// Run as a stdio MCP server that bridges to NAME with the broker's
    /// tokens (for hosts that start stdio servers: Cursor, VS Code, Claude
    /// Desktop, Gemini CLI, opencode). stdout carries only the protocol.
    Proxy(ProxyArgs),
    /// Print events as they happen (one line each; JSON lines with --json).
    Watch(WatchArgs),
    /// Wire the broker into an MCP host's own config file.
    ///
    /// Claude Code and Codex get an http entry whose headers helper is
    /// `mcpauthctl headers NAME`; the other hosts a stdio entry running
    /// `mcpauthctl proxy NAME`. Nothing else in the file changes, and the
    /// file as it was is kept as FILE.mcpauth-backup (mode 0600, one per
    /// file, removed by `disconnect`).
    Connect(ConnectArgs),
    /// Adopt the logins other tools hold: no browser, no new login.
    ///
    /// For each server the tool knows: the server is added to config.toml
    /// (the same URL already there is the same server; a name taken by
    /// another URL gets a new one), and its live grant (tokens, expiry,
    /// scopes and client registration) becomes the broker's, once bound to
    /// the server's own authorization server and only when newer than the
    /// grant held. The daemon reads the tools' files itself; they are
    /// never changed.
    #[command(after_long_help = IMPORT_HELP)]
    Import(ImportArgs),
    /// Import a tool's logins, then hand its entries over to the broker.
    ///
    /// codex and claude-code: import, then the host's own entries for the
    /// imported servers go through the broker's headers helper, so the
    /// host stops refreshing on its own. mcp-remote: import, then every
    /// host entry that runs `mcp-remote URL` runs `mcpauthctl proxy NAME`.
    /// Everything else in the files stays; each write keeps a backup.
    Adopt(AdoptArgs),
    /// Remove the entries `connect` wrote from an MCP host's config file.
    Disconnect(DisconnectArgs),
    /// List the MCP hosts on this machine and which servers go through the broker.
    Hosts(HostsArgs),
    /// Start the daemon in the background, if it is not running.
    Start,
    /// Stop the daemon.
    Stop,
    /// Install or remove the systemd user service / launchd agent.
    Service(ServiceArgs),
    /// Print a shell completion script on stdout (needs no daemon).
    #[command(after_long_help = COMPLETIONS_INSTALL)]
    Completions(CompletionsArgs),
    /// Print the man page (roff) on stdout (needs no daemon).
    #[command(after_long_help = MAN_INSTALL)]
    Man,
}

#[derive(Subcommand)]
pub enum ServiceAction {
    /// Write the units with this machine's mcpauthd path, enable and start them.
    Install {
        /// Only write the files.
        #[arg(long)]
        no_enable: bool,
    },
    /// Stop, disable and remove the units.
    Uninstall {
        /// Only remove the files.
        #[arg(long)]
        no_disable: bool,
    },
}

#[derive(Args)]
pub struct StatusArgs {
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct ListArgs {
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct ShowArgs {
    #[arg(help = NAME_HELP)]
    pub name: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct AddArgs {
    /// A short name: letters, digits, '.', '_' and '-' (at most 64).
    pub name: String,
    /// The MCP server URL (https, or http on a loopback host).
    pub url: String,
    /// A pre-registered OAuth client id.
    #[arg(long)]
    pub client_id: Option<String>,
    /// A file holding the pre-registered client's secret.
    #[arg(long, value_name = "PATH", requires = "client_id")]
    pub client_secret_file: Option<PathBuf>,
    /// A scope to request (repeat for several).
    #[arg(long = "scope", value_name = "SCOPE")]
    pub scopes: Vec<String>,
    /// A fixed loopback port for the OAuth callback.
    #[arg(long, value_name = "PORT")]
    pub callback_port: Option<u16>,
    /// The https URL of this client's Client ID Metadata Document.
    #[arg(long, value_name = "URL")]
    pub client_metadata_url: Option<String>,
    /// The account the browser login asks the server for (`login_hint`):
    /// for a second account on a server another entry has.
    #[arg(long, value_name = "ACCOUNT")]
    pub login_hint: Option<String>,
}

#[derive(Args)]
pub struct RemoveArgs {
    #[arg(help = NAME_HELP)]
    pub name: String,
    /// Keep the MCP host entries `connect` wrote for it (by default
    /// they are removed too: they could only fail).
    #[arg(long)]
    pub keep_host_entries: bool,
}

#[derive(Args)]
pub struct LoginArgs {
    #[arg(help = NAME_HELP, required_unless_present = "idp")]
    pub name: Option<String>,
    /// Log in at this identity provider (enterprise servers): one
    /// login serves every server that uses it.
    #[arg(long, value_name = "IDP")]
    pub idp: Option<String>,
    /// Scopes to ask for (repeat for several); default: configured,
    /// pending step-up, or what the server suggests.
    #[arg(long = "scope", value_name = "SCOPE")]
    pub scopes: Vec<String>,
    /// Do not open a browser: print the URL and read the final redirect
    /// address on stdin (for SSH sessions).
    #[arg(long)]
    pub no_browser: bool,
    /// Log in with a code entered on any device (RFC 8628), when the
    /// authorization server offers it. Chosen by itself when there is
    /// neither a browser nor a terminal here.
    #[arg(long, conflicts_with = "no_browser")]
    pub device: bool,
    /// The WWW-Authenticate header of a 401 a client met without a
    /// token: its scope is the scope this login asks for.
    #[arg(long, value_name = "HEADER")]
    pub www_authenticate: Option<String>,
}

#[derive(Args)]
pub struct LogoutArgs {
    #[arg(help = NAME_HELP)]
    pub name: String,
    /// Also forget the OAuth client registration.
    #[arg(long)]
    pub forget_client: bool,
    /// Print what became of each token as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct DoctorArgs {
    #[arg(help = NAME_HELP)]
    pub name: String,
    /// Print the steps as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct RefreshArgs {
    #[arg(help = NAME_HELP)]
    pub name: String,
}

#[derive(Args)]
pub struct TokenArgs {
    #[arg(help = NAME_HELP)]
    pub name: String,
    /// Seconds the token must still be valid for (default 60).
    #[arg(long, value_name = "SECS")]
    pub min_ttl: Option<u32>,
    /// Report this token as rejected by the server and print the
    /// replacement (only its SHA-256 is sent to the daemon).
    #[arg(long, value_name = "TOKEN")]
    pub rejected: Option<String>,
    /// The HTTP status the server answered with: 401 or 403.
    #[arg(
        long,
        value_name = "CODE",
        default_value_t = 401,
        requires = "rejected"
    )]
    pub status: u32,
    /// The WWW-Authenticate header of the rejection.
    #[arg(long, value_name = "HEADER", requires = "rejected")]
    pub www_authenticate: Option<String>,
}

#[derive(Args)]
pub struct HeadersArgs {
    /// The server's name, as in `mcpauthctl list` (default: see below).
    pub name: Option<String>,
}

#[derive(Args)]
pub struct ProxyArgs {
    /// The server's name, as in `mcpauthctl list`.
    pub name: String,
}

#[derive(Args)]
pub struct WatchArgs {
    /// Only this server's events.
    pub name: Option<String>,
    #[arg(long)]
    pub json: bool,
    /// When the daemon stops, wait for it (or start it) and go on,
    /// instead of exiting 3.
    #[arg(long)]
    pub follow: bool,
}

#[derive(Args)]
pub struct ConnectArgs {
    /// claude-code, codex, cursor, vscode, claude-desktop, gemini or opencode.
    pub host: String,
    /// The servers to connect (default: every configured server).
    pub names: Vec<String>,
    /// Print what would change, and write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Overwrite entries of the same name that mcpauthctl did not write.
    #[arg(long)]
    pub replace: bool,
}

#[derive(Args)]
pub struct ImportArgs {
    /// codex, claude-code, mcp-remote or hermes (default: every tool found).
    pub tools: Vec<String>,
    /// An MCP server URL mcp-remote logged in to that no host config names.
    #[arg(long = "url", value_name = "URL")]
    pub urls: Vec<String>,
    /// Print what would happen, and write nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct AdoptArgs {
    /// codex, claude-code or mcp-remote.
    pub tool: String,
    /// An MCP server URL mcp-remote logged in to that no host config names.
    #[arg(long = "url", value_name = "URL")]
    pub urls: Vec<String>,
    /// Print what would change, and write nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Args)]
pub struct DisconnectArgs {
    pub host: String,
    /// The servers to disconnect (default: every entry `connect` wrote).
    pub names: Vec<String>,
    /// Print what would change, and write nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Args)]
pub struct HostsArgs {
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct ServiceArgs {
    #[command(subcommand)]
    pub action: ServiceAction,
}

#[derive(Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: docs::Shell,
}

/// The command line as the man page and the completions describe it
/// (with the default config path).
pub fn command() -> clap::Command {
    Cli::command()
}

/// The command line, its `--help` naming the config file in use (which
/// `XDG_CONFIG_HOME` or `MCP_BROKER_CONFIG` may move) rather than the
/// default the man page shows.
fn cli_command() -> clap::Command {
    let command = Cli::command();
    let long = command
        .get_long_about()
        .map(ToString::to_string)
        .unwrap_or_default()
        .replace(
            "~/.config/mcpauth/config.toml",
            &mcpauth_proto::paths::config_path().display().to_string(),
        );
    command.long_about(long)
}

/// The parsed command line; exits (2, or 0 for `--help`) when it does
/// not parse.
pub fn parse() -> Cli {
    Cli::from_arg_matches(&cli_command().get_matches()).unwrap_or_else(|e| e.exit())
}
