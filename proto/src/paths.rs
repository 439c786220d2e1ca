//! Default locations, shared by the daemon and its clients.
//!
//! | what   | default                                                          |
//! |--------|------------------------------------------------------------------|
//! | socket | `$XDG_RUNTIME_DIR/mcpauth/mcpauthd.sock`, else `$TMPDIR/mcpauth-$UID/mcpauthd.sock` |
//! | state  | `$XDG_STATE_HOME/mcpauth`, else `~/.local/state/mcpauth` (macOS: `~/Library/Application Support/mcpauth`) |
//! | config | `$XDG_CONFIG_HOME/mcpauth/config.toml`, else `~/.config/mcpauth/config.toml` |
//!
//! Each can be overridden by a flag or by the variables in [`crate::env`].
//! Relative XDG values are ignored, as the XDG spec requires.

use std::env;
use std::path::PathBuf;

/// File name of the daemon's socket inside the socket directory.
pub const SOCKET_FILE: &str = "mcpauthd.sock";
/// File name of the daemon's instance lock inside the socket directory.
pub const LOCK_FILE: &str = "mcpauthd.lock";
/// File name of the config inside the config directory.
pub const CONFIG_FILE: &str = "config.toml";
/// File the CLI sends the output of a daemon it started to (state dir).
pub const DAEMON_LOG_FILE: &str = "mcpauthd.log";

fn absolute_var(name: &str) -> Option<PathBuf> {
    let value = env::var_os(name)?;
    let path = PathBuf::from(value);
    path.is_absolute().then_some(path)
}

/// The user's home directory (`$HOME`, else the password database).
pub fn home_dir() -> Option<PathBuf> {
    if let Some(home) = absolute_var("HOME") {
        return Some(home);
    }
    nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.dir)
}

/// The directory holding the socket and the instance lock.
pub fn default_socket_dir() -> PathBuf {
    if let Some(runtime) = absolute_var("XDG_RUNTIME_DIR") {
        return runtime.join("mcpauth");
    }
    let tmp = absolute_var("TMPDIR").unwrap_or_else(|| PathBuf::from("/tmp"));
    tmp.join(format!("mcpauth-{}", nix::unistd::getuid()))
}

/// The socket path: `$MCP_BROKER_SOCKET`, else the default.
pub fn socket_path() -> PathBuf {
    absolute_var(crate::env::SOCKET).unwrap_or_else(|| default_socket_dir().join(SOCKET_FILE))
}

/// The state directory: `$MCP_BROKER_STATE_DIR`, else the default.
pub fn state_dir() -> PathBuf {
    if let Some(dir) = absolute_var(crate::env::STATE_DIR) {
        return dir;
    }
    if let Some(state) = absolute_var("XDG_STATE_HOME") {
        return state.join("mcpauth");
    }
    let home = home_dir().unwrap_or_else(|| PathBuf::from("/"));
    if cfg!(target_os = "macos") {
        home.join("Library/Application Support/mcpauth")
    } else {
        home.join(".local/state/mcpauth")
    }
}

/// The config directory (`$XDG_CONFIG_HOME/mcpauth` or `~/.config/mcpauth`).
pub fn config_dir() -> PathBuf {
    if let Some(config) = absolute_var("XDG_CONFIG_HOME") {
        return config.join("mcpauth");
    }
    home_dir()
        .unwrap_or_else(|| PathBuf::from("/"))
        .join(".config/mcpauth")
}

/// The config file: `$MCP_BROKER_CONFIG`, else the default.
pub fn config_path() -> PathBuf {
    absolute_var(crate::env::CONFIG).unwrap_or_else(|| config_dir().join(CONFIG_FILE))
}
