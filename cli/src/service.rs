//! `mcpauthctl service install|uninstall`: the systemd user units or the
//! launchd agent, from the templates in `systemd/` and `launchd/`, with the
//! real binary path filled in.

use std::path::{Path, PathBuf};
use std::process::Command;

use mcpauth_client::autostart::{LAUNCHD_LABEL, daemon_binary, service_files};
use mcpauth_proto::paths;

const SYSTEMD_SOCKET: &str = include_str!("../../systemd/mcpauthd.socket");
const SYSTEMD_SERVICE: &str = include_str!("../../systemd/mcpauthd.service");
const LAUNCHD_PLIST: &str = include_str!("../../launchd/dev.mcpauth.mcpauthd.plist");

/// Files to write: (path, contents).
pub fn rendered(daemon: &Path) -> Vec<(PathBuf, String)> {
    let daemon = daemon.display().to_string();
    let files = service_files();
    if cfg!(target_os = "macos") {
        let log = paths::state_dir().join(paths::DAEMON_LOG_FILE);
        let socket = paths::default_socket_dir().join(paths::SOCKET_FILE);
        let plist = LAUNCHD_PLIST
            .replace("@MCPAUTHD@", &xml_escape(&daemon))
            .replace("@SOCKET@", &xml_escape(&socket.display().to_string()))
            .replace("@LOG@", &xml_escape(&log.display().to_string()));
        vec![(files[2].1.clone(), plist)]
    } else {
        vec![
            (files[0].1.clone(), SYSTEMD_SOCKET.to_string()),
            (
                files[1].1.clone(),
                SYSTEMD_SERVICE.replace("@MCPAUTHD@", &systemd_escape(&daemon)),
            ),
        ]
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Quotes a path for ExecStart= when it contains spaces or specials.
fn systemd_escape(s: &str) -> String {
    let s = s.replace('%', "%%");
    if s.contains(|c: char| c.is_whitespace() || c == '"' || c == '\\') {
        format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
    } else {
        s
    }
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let shown = format!("{program} {}", args.join(" "));
    // The manager's own reason goes into the one error line, instead of
    // reaching the terminal as a second, unexplained one.
    match Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
    {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let reason = stderr
                .lines()
                .map(str::trim)
                .rfind(|line| !line.is_empty())
                .map(|line| format!(": {}", line.chars().take(200).collect::<String>()))
                .unwrap_or_default();
            Err(format!("`{shown}` failed ({}){reason}", out.status))
        }
        Err(e) => Err(format!("`{shown}` could not run: {e}")),
    }
}

fn uid() -> String {
    nix::unistd::getuid().to_string()
}

/// Checks that the service manager can be reached (a systemd user
/// manager on its bus; launchd's GUI domain on macOS), before anything is
/// changed: installing units for a manager that is not there would leave
/// the daemon unable to start at all.
pub fn preflight() -> Result<(), String> {
    mcpauth_client::autostart::manager_reachable(if cfg!(target_os = "macos") {
        "launchd"
    } else {
        "systemd"
    })
    .map_err(|reason| {
        format!(
            "{reason}; nothing was changed. Without a service, mcpauthctl starts mcpauthd on demand, which needs no install"
        )
    })
}

/// Writes the unit files; with `activate`, enables and starts them. If a
/// step fails, the files are put back as they were before.
pub fn install(activate: bool) -> Result<Vec<String>, String> {
    let daemon = daemon_binary();
    let daemon = std::fs::canonicalize(&daemon).map_err(|e| {
        format!(
            "cannot find mcpauthd ({}): {e}; install it next to mcpauthctl or set {}",
            daemon.display(),
            mcpauth_proto::env::DAEMON_BIN
        )
    })?;
    let files = rendered(&daemon);
    // What was there before, to put back on failure.
    let before: Vec<(PathBuf, Option<Vec<u8>>)> = files
        .iter()
        .map(|(path, _)| (path.clone(), std::fs::read(path).ok()))
        .collect();
    let rollback = |error: String| -> String {
        for (path, old) in &before {
            let _ = match old {
                Some(bytes) => std::fs::write(path, bytes),
                None => std::fs::remove_file(path),
            };
        }
        if activate && !cfg!(target_os = "macos") {
            let _ = run_quiet("systemctl", &["--user", "daemon-reload"]);
        }
        format!("{error}; the unit files were put back as they were")
    };
    let mut notes = Vec::new();
    for (path, contents) in files {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| rollback(format!("cannot create {}: {e}", dir.display())))?;
        }
        std::fs::write(&path, contents)
            .map_err(|e| rollback(format!("cannot write {}: {e}", path.display())))?;
        notes.push(format!("wrote {}", path.display()));
    }
    if !activate {
        notes.push(next_step_install());
        return Ok(notes);
    }
    let activated = if cfg!(target_os = "macos") {
        let plist = &service_files()[2].1;
        let plist = plist.display().to_string();
        run(
            "launchctl",
            &["bootstrap", &format!("gui/{}", uid()), &plist],
        )
    } else {
        run("systemctl", &["--user", "daemon-reload"]).and_then(|()| {
            run(
                "systemctl",
                &["--user", "enable", "--now", "mcpauthd.socket"],
            )
        })
    };
    activated.map_err(rollback)?;
    notes.push("enabled and started".into());
    Ok(notes)
}

/// Runs a command with its output discarded.
fn run_quiet(program: &str, args: &[&str]) -> Result<(), String> {
    match Command::new(program)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
    {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(format!("{status}")),
        Err(e) => Err(e.to_string()),
    }
}

fn next_step_install() -> String {
    if cfg!(target_os = "macos") {
        format!(
            "activate it with: launchctl bootstrap gui/$(id -u) ~/Library/LaunchAgents/{LAUNCHD_LABEL}.plist"
        )
    } else {
        "activate it with: systemctl --user daemon-reload && systemctl --user enable --now mcpauthd.socket".into()
    }
}

/// Stops and removes the unit files.
pub fn uninstall(deactivate: bool) -> Result<Vec<String>, String> {
    let mut notes = Vec::new();
    // Nothing installed: nothing to stop, and no service manager to ask
    // (which, in a container, would only answer "Failed to connect to
    // bus").
    if !service_files().iter().any(|(_, path)| path.exists()) {
        let ours = if cfg!(target_os = "macos") {
            "launchd"
        } else {
            "systemd"
        };
        let dir = service_files()
            .into_iter()
            .find(|(manager, _)| *manager == ours)
            .and_then(|(_, p)| p.parent().map(Path::to_path_buf))
            .unwrap_or_default();
        notes.push(format!(
            "no mcpauthd service is installed (nothing in {}); nothing to uninstall: mcpauthctl starts mcpauthd on demand",
            dir.display()
        ));
        return Ok(notes);
    }
    if deactivate {
        let result = if cfg!(target_os = "macos") {
            run(
                "launchctl",
                &["bootout", &format!("gui/{}/{LAUNCHD_LABEL}", uid())],
            )
        } else {
            run(
                "systemctl",
                &[
                    "--user",
                    "disable",
                    "--now",
                    "mcpauthd.socket",
                    "mcpauthd.service",
                ],
            )
        };
        if let Err(e) = result {
            notes.push(format!("warning: {e}"));
        }
    }
    for (_, path) in service_files() {
        match std::fs::remove_file(&path) {
            Ok(()) => notes.push(format!("removed {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot remove {}: {e}", path.display())),
        }
    }
    if deactivate && !cfg!(target_os = "macos") {
        let _ = run("systemctl", &["--user", "daemon-reload"]);
    }
    Ok(notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_get_the_binary_path() {
        let files = rendered(Path::new("/opt/my tools/mcpauthd"));
        assert!(!files.is_empty());
        for (_, contents) in &files {
            assert!(!contents.contains("@MCPAUTHD@"), "{contents}");
            assert!(contents.contains("/opt/my tools/mcpauthd") || !contents.contains("ExecStart"));
        }
        if !cfg!(target_os = "macos") {
            assert!(
                files[1]
                    .1
                    .contains("ExecStart=\"/opt/my tools/mcpauthd\" --socket")
            );
            assert!(files[1].1.contains("Type=notify"));
            assert!(files[0].1.contains("SocketMode=0600"));
        }
    }

    #[test]
    fn systemd_escaping() {
        assert_eq!(systemd_escape("/usr/bin/mcpauthd"), "/usr/bin/mcpauthd");
        assert_eq!(systemd_escape("/a%b"), "/a%%b");
        assert_eq!(systemd_escape("/a b"), "\"/a b\"");
    }
}
