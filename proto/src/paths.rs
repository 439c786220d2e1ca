//! Default locations, shared by the daemon and its clients.
//!
//! | what   | default                                                          |
//! |--------|------------------------------------------------------------------|
//! | socket | `$XDG_RUNTIME_DIR/mcpauth/mcpauthd.sock`, else `/run/user/$UID/mcpauth/mcpauthd.sock` if `/run/user/$UID` exists, else `$TMPDIR/mcpauth-$UID/mcpauthd.sock` |
//! | state  | `$XDG_STATE_HOME/mcpauth`, else `~/.local/state/mcpauth` (macOS: `~/Library/Application Support/mcpauth`) |
//! | config | `$XDG_CONFIG_HOME/mcpauth/config.toml`, else `~/.config/mcpauth/config.toml` |
//!
//! Each can be overridden by a flag or by the variables in [`crate::env`].
//! Relative XDG values are ignored, as the XDG spec requires.

use std::env;
use std::path::{Path, PathBuf};

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

/// Where systemd (`pam_systemd`) puts a user's runtime directory, the
/// value `XDG_RUNTIME_DIR` has in a login session.
pub fn systemd_runtime_dir(uid: u32) -> PathBuf {
    PathBuf::from(format!("/run/user/{uid}"))
}

/// The directory holding the socket and the instance lock.
pub fn default_socket_dir() -> PathBuf {
    socket_dir_from(
        absolute_var("XDG_RUNTIME_DIR"),
        absolute_var("TMPDIR"),
        nix::unistd::getuid().as_raw(),
        Path::is_dir,
    )
}

/// The socket directory, from its inputs: `$XDG_RUNTIME_DIR/mcpauth`;
/// else `/run/user/$UID/mcpauth` when that runtime directory exists
/// (`runtime_dir_exists` is the probe); else `$TMPDIR/mcpauth-$UID`
/// (`/tmp` when unset).
///
/// The middle step exists for programs started with a filtered
/// environment: MCP hosts run their helpers and stdio servers with little
/// more than `HOME` and `PATH` (Codex drops every `XDG_*`), and they must
/// still find the daemon that the person's login session started. The
/// daemon computes its own default the same way, so both agree.
pub fn socket_dir_from(
    xdg_runtime_dir: Option<PathBuf>,
    tmpdir: Option<PathBuf>,
    uid: u32,
    runtime_dir_exists: impl Fn(&Path) -> bool,
) -> PathBuf {
    if let Some(runtime) = xdg_runtime_dir {
        return runtime.join("mcpauth");
    }
    let systemd = systemd_runtime_dir(uid);
    if runtime_dir_exists(&systemd) {
        return systemd.join("mcpauth");
    }
    tmpdir
        .unwrap_or_else(|| PathBuf::from("/tmp"))
        .join(format!("mcpauth-{uid}"))
}

/// The socket a process of this user finds with only `HOME` and `PATH` in
/// its environment (no `XDG_RUNTIME_DIR`, `TMPDIR` or
/// `$MCP_BROKER_SOCKET`): what a helper started by an MCP host that
/// filters the environment uses, unless it is given `--socket`.
pub fn home_only_socket_path() -> PathBuf {
    socket_dir_from(None, None, nix::unistd::getuid().as_raw(), Path::is_dir).join(SOCKET_FILE)
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
    home_only_state_dir()
}

/// The state directory a process with only `HOME` in its environment uses
/// (a daemon started by a helper that an MCP host runs).
pub fn home_only_state_dir() -> PathBuf {
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

/// The config file a process with only `HOME` in its environment uses.
pub fn home_only_config_path() -> PathBuf {
    home_dir()
        .unwrap_or_else(|| PathBuf::from("/"))
        .join(".config/mcpauth")
        .join(CONFIG_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_socket_directory_prefers_xdg_then_the_systemd_runtime_dir_then_tmpdir() {
        let exists = |p: &Path| p == Path::new("/run/user/1000");
        let nothing = |_: &Path| false;
        // XDG_RUNTIME_DIR wins whatever exists.
        assert_eq!(
            socket_dir_from(Some("/xdg".into()), Some("/t".into()), 1000, exists),
            PathBuf::from("/xdg/mcpauth")
        );
        // Without it, the systemd runtime directory when it exists...
        assert_eq!(
            socket_dir_from(None, Some("/t".into()), 1000, exists),
            PathBuf::from("/run/user/1000/mcpauth")
        );
        // ...of this uid only.
        assert_eq!(
            socket_dir_from(None, Some("/t".into()), 1001, exists),
            PathBuf::from("/t/mcpauth-1001")
        );
        // Else TMPDIR, else /tmp.
        assert_eq!(
            socket_dir_from(None, Some("/t".into()), 1000, nothing),
            PathBuf::from("/t/mcpauth-1000")
        );
        assert_eq!(
            socket_dir_from(None, None, 1000, nothing),
            PathBuf::from("/tmp/mcpauth-1000")
        );
    }

    #[test]
    fn a_filtered_environment_finds_the_login_sessions_socket() {
        // A login session: XDG_RUNTIME_DIR=/run/user/1000. A helper started
        // by Codex has no XDG_* at all; both land on the same directory.
        let exists = |p: &Path| p == Path::new("/run/user/1000");
        let session = socket_dir_from(Some("/run/user/1000".into()), None, 1000, exists);
        let helper = socket_dir_from(None, None, 1000, exists);
        assert_eq!(session, helper);
    }
}
