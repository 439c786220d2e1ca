//! Starting the daemon on demand.
//!
//! When nothing listens on the socket, the CLI starts `mcpauthd` detached
//! (its own session, no terminal, output appended to `mcpauthd.log` in the
//! state directory) and waits until it is ready. Readiness uses systemd's
//! protocol: the CLI binds a datagram socket, passes it as `NOTIFY_SOCKET`,
//! and waits for `READY=1`, which the daemon sends once it serves. An
//! autostart lock beside the socket makes concurrent CLIs start one daemon.
//!
//! A daemon installed as a systemd or launchd service is never started by
//! hand: the CLI says how to start the service instead.

use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mcpauth_proto::paths;
use nix::fcntl::{Flock, FlockArg};
use tokio::net::UnixDatagram;

use crate::{Client, ClientError};

/// How long a starting daemon gets to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the systemd user units and the launchd agent are installed.
pub fn service_files() -> Vec<(&'static str, PathBuf)> {
    let config_home = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| paths::home_dir().map(|h| h.join(".config")))
        .unwrap_or_else(|| PathBuf::from("/"));
    let home = paths::home_dir().unwrap_or_else(|| PathBuf::from("/"));
    vec![
        ("systemd", config_home.join("systemd/user/mcpauthd.socket")),
        ("systemd", config_home.join("systemd/user/mcpauthd.service")),
        (
            "launchd",
            home.join(format!("Library/LaunchAgents/{LAUNCHD_LABEL}.plist")),
        ),
    ]
}

/// The launchd label of the agent.
pub const LAUNCHD_LABEL: &str = "dev.mcpauth.mcpauthd";

/// The service manager that owns the default socket, if one is installed.
pub fn service_manager(socket: &Path) -> Option<&'static str> {
    if socket != paths::default_socket_dir().join(paths::SOCKET_FILE) {
        return None;
    }
    service_files()
        .into_iter()
        .find(|(_, file)| file.exists())
        .map(|(manager, _)| manager)
}

/// The daemon binary: `$MCP_BROKER_DAEMON`, else `mcpauthd` beside this
/// executable, else `mcpauthd` on `PATH`.
pub fn daemon_binary() -> PathBuf {
    if let Some(path) = std::env::var_os(mcpauth_proto::env::DAEMON_BIN) {
        return PathBuf::from(path);
    }
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        let sibling = dir.join("mcpauthd");
        if sibling.is_file() {
            return sibling;
        }
    }
    PathBuf::from("mcpauthd")
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

async fn lock_autostart(dir: &Path) -> Result<Flock<std::fs::File>, ClientError> {
    let path = dir.join("autostart.lock");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(&path)
        .map_err(|e| ClientError::Autostart(format!("cannot open {}: {e}", path.display())))?;
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(lock),
            Err((f, nix::errno::Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                file = f;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err((_, errno)) => {
                return Err(ClientError::Autostart(format!(
                    "cannot take {}: {errno}",
                    path.display()
                )));
            }
        }
    }
}

/// Waits until the daemon of `socket` has exited: it holds the instance
/// lock (`mcpauthd.lock` beside the socket) until its process is gone, and
/// its store with it. Returns whether it exited within `timeout`.
pub async fn wait_for_exit(socket: &Path, timeout: Duration) -> bool {
    let Some(dir) = socket.parent() else {
        return true;
    };
    let path = dir.join(mcpauth_proto::paths::LOCK_FILE);
    let deadline = Instant::now() + timeout;
    loop {
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
            .open(&path)
        {
            Ok(f) => f,
            // No lock file: no daemon ever ran here.
            Err(_) => return true,
        };
        match Flock::lock(file, FlockArg::LockSharedNonblock) {
            // Free: nobody holds it (ours goes away with the file handle).
            Ok(_) => return true,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(_) => return false,
        }
    }
}

/// Whether a user service manager runs here (a systemd user manager on
/// its bus, or launchd's GUI domain on macOS): where one does not,
/// `mcpauthctl service install` cannot help.
pub fn user_manager_runs() -> bool {
    manager_reachable(if cfg!(target_os = "macos") {
        "launchd"
    } else {
        "systemd"
    })
    .is_ok()
}

/// Whether `manager` ("systemd" or "launchd") can be reached from here:
/// `Err` says why not.
pub fn manager_reachable(manager: &str) -> Result<(), String> {
    let (program, args): (&str, Vec<String>) = if manager == "launchd" {
        (
            "launchctl",
            vec!["print".into(), format!("gui/{}", nix::unistd::getuid())],
        )
    } else {
        (
            "systemctl",
            vec!["--user".into(), "show-environment".into()],
        )
    };
    let shown = format!("{program} {}", args.join(" "));
    match Command::new(program)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
    {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let first = stderr.lines().next().unwrap_or("").trim();
            let first: String = first.chars().take(200).collect();
            Err(if manager == "launchd" {
                format!("launchd's GUI domain is not reachable (`{shown}` failed: {first})")
            } else {
                format!("no systemd user manager is reachable (`{shown}` failed: {first})")
            })
        }
        Err(e) => Err(format!("`{shown}` could not run: {e}")),
    }
}

/// Starts mcpauthd for `socket` and waits until it serves.
pub async fn start_daemon(socket: &Path) -> Result<(), ClientError> {
    if let Some(manager) = service_manager(socket) {
        if let Err(reason) = manager_reachable(manager) {
            return Err(ClientError::ServiceUnusable { manager, reason });
        }
        return Err(ClientError::Managed {
            manager,
            start: if manager == "systemd" {
                "systemctl --user start mcpauthd.socket"
            } else {
                "launchctl kickstart gui/$(id -u)/dev.mcpauth.mcpauthd"
            },
        });
    }
    let dir = socket.parent().unwrap_or(Path::new("/"));
    create_private_dir(dir)
        .map_err(|e| ClientError::Autostart(format!("cannot create {}: {e}", dir.display())))?;
    let _lock = lock_autostart(dir).await?;
    // Another CLI may have started it while we waited for the lock.
    if Client::connect(socket).await.is_ok() {
        return Ok(());
    }

    let state_dir = paths::state_dir();
    create_private_dir(&state_dir).map_err(|e| {
        ClientError::Autostart(format!("cannot create {}: {e}", state_dir.display()))
    })?;
    let log_path = state_dir.join(paths::DAEMON_LOG_FILE);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&log_path)
        .map_err(|e| ClientError::Autostart(format!("cannot open {}: {e}", log_path.display())))?;
    let log_err = log
        .try_clone()
        .map_err(|e| ClientError::Autostart(e.to_string()))?;

    let notify_path = dir.join(format!("autostart.{}.notify", std::process::id()));
    let _ = std::fs::remove_file(&notify_path);
    let notify = UnixDatagram::bind(&notify_path).map_err(|e| {
        ClientError::Autostart(format!("cannot bind {}: {e}", notify_path.display()))
    })?;
    let _cleanup = RemoveOnDrop(notify_path.clone());

    let binary = daemon_binary();
    let mut command = Command::new(&binary);
    command
        .arg("--socket")
        .arg(socket)
        .env("NOTIFY_SOCKET", &notify_path)
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err);
    // SAFETY: setsid is async-signal-safe; it detaches the daemon from our
    // terminal and process group so Ctrl-C on the CLI does not reach it.
    unsafe {
        command.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .map_err(|e| ClientError::Autostart(format!("cannot run {}: {e}", binary.display())))?;

    let deadline = Instant::now() + READY_TIMEOUT;
    let mut buf = [0u8; 512];
    loop {
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(25), notify.recv(&mut buf)).await
            && String::from_utf8_lossy(&buf[..n])
                .lines()
                .any(|l| l == "READY=1")
        {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            let tail =
                last_error_line(&log_path).unwrap_or_else(|| format!("it exited with {status}"));
            return Err(ClientError::Autostart(format!(
                "{tail} (log: {})",
                log_path.display()
            )));
        }
        if Instant::now() > deadline {
            return Err(ClientError::Autostart(format!(
                "it did not become ready within {}s (log: {})",
                READY_TIMEOUT.as_secs(),
                log_path.display()
            )));
        }
    }
}

/// The daemon's own error line, if the log ends with one.
fn last_error_line(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .rev()
        .take(20)
        .find(|l| l.starts_with("mcpauthd: error: "))
        .map(|l| l.trim_start_matches("mcpauthd: error: ").to_string())
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
