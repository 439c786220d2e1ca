//! The daemon's process-level promises: one instance, a private socket that
//! only its user can use, clean and quick shutdown, systemd integration.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::time::Duration;

use mcpauth_tests::{TestEnv, mode};
use nix::sys::signal::Signal;
use tokio_stream::StreamExt;

#[test]
fn second_instance_is_refused_while_the_first_keeps_serving() {
    let env = TestEnv::new();
    let _first = env.start_daemon();
    let second = env
        .command("mcpauthd")
        .output()
        .expect("run a second mcpauthd");
    assert_eq!(second.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains("another mcpauthd is already running"),
        "{stderr}"
    );
    // The first one still answers.
    env.ctl(&["--no-autostart", "status"]).ok();
}

#[test]
fn a_stale_socket_is_replaced() {
    let env = TestEnv::new();
    env.make_socket_dir(0o700);
    // A socket file nobody listens on, as a crashed daemon leaves behind.
    drop(std::os::unix::net::UnixListener::bind(env.socket()).unwrap());
    assert!(env.socket().exists());
    assert!(std::os::unix::net::UnixStream::connect(env.socket()).is_err());
    let _daemon = env.start_daemon();
    env.ctl(&["--no-autostart", "status"]).ok();
}

#[test]
fn a_file_that_is_not_a_socket_is_never_removed() {
    let env = TestEnv::new();
    env.make_socket_dir(0o700);
    std::fs::write(env.socket(), "precious").unwrap();
    let out = env.command("mcpauthd").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a socket"));
    assert_eq!(std::fs::read_to_string(env.socket()).unwrap(), "precious");
}

#[test]
fn socket_and_state_are_private() {
    let env = TestEnv::new();
    let daemon = env.start_daemon();
    env.ctl(&["add", "a", "https://a.example/mcp"]).ok();
    assert_eq!(mode(&env.socket()), 0o600);
    assert_eq!(mode(&env.socket_dir()), 0o700);
    assert_eq!(mode(&env.state_dir()), 0o700);
    assert_eq!(mode(&env.config_path()), 0o600);
    daemon.stop();
    let mut checked = 0;
    for entry in walk(&env.state_dir()) {
        let m = mode(&entry);
        assert_eq!(m & 0o077, 0, "{} has mode {m:o}", entry.display());
        checked += 1;
    }
    assert!(checked > 3, "the store has files ({checked})");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        }
        out.push(path);
    }
    out
}

#[test]
fn an_open_or_foreign_socket_directory_is_refused() {
    let env = TestEnv::new();
    env.make_socket_dir(0o755);
    let out = env.command("mcpauthd").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("mode 755") && stderr.contains("chmod 700"),
        "{stderr}"
    );

    let env = TestEnv::new();
    let elsewhere = env.root.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::set_permissions(&elsewhere, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::symlink(&elsewhere, env.socket_dir()).unwrap();
    let out = env.command("mcpauthd").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("symlink"));
}

#[test]
fn an_open_state_directory_is_tightened() {
    let env = TestEnv::new();
    std::fs::create_dir_all(env.state_dir()).unwrap();
    std::fs::set_permissions(env.state_dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let daemon = env.start_daemon();
    assert_eq!(mode(&env.state_dir()), 0o700);
    assert!(daemon.log().contains("setting it to 700"));
    env.ctl(&["add", "a", "https://a.example/mcp"]).ok();
    daemon.stop();

    // A store opened up (a restored backup, a loose umask): made private
    // again before it is opened.
    let entries = walk(&env.state_dir());
    assert!(entries.len() > 3);
    for entry in &entries {
        let open = if entry.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(entry, std::fs::Permissions::from_mode(open)).unwrap();
    }
    let daemon = env.start_daemon();
    for entry in walk(&env.state_dir()) {
        let m = mode(&entry);
        assert_eq!(m & 0o077, 0, "{} has mode {m:o}", entry.display());
    }
    assert!(
        daemon.log().contains("made them private"),
        "{}",
        daemon.log()
    );
    assert_eq!(env.ctl(&["list", "--json"]).json()[0]["name"], "a");
}

/// A store file of another user (say, left by `sudo mcpauthd`) is refused
/// with the fix, before the store is opened. Needs root to chown.
#[test]
fn a_state_file_of_another_user_is_refused() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: needs root to chown a file to another user");
        return;
    }
    let env = TestEnv::new();
    env.start_daemon().stop();
    let victim = walk(&env.state_dir())
        .into_iter()
        .find(|p| p.is_file())
        .unwrap();
    nix::unistd::chown(&victim, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    let out = env.command("mcpauthd").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("belongs to uid 65534") && stderr.contains("chown -R"),
        "{stderr}"
    );
}

/// No core dumps, not dumpable, private umask: read back from the kernel
/// and from the daemon's own report.
#[test]
fn the_daemon_cannot_dump_core_and_creates_private_files() {
    let env = TestEnv::new();
    let daemon = env.start_daemon();
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", daemon.pid())).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    let fields: Vec<&str> = core.split_whitespace().collect();
    assert_eq!(&fields[4..6], ["0", "0"], "{core}");
    let log = daemon.log();
    assert!(
        log.contains("dumpable=false")
            && log.contains("umask=077")
            && log.contains("core_limit=0/0"),
        "{log}"
    );
    daemon.stop();
}

/// CI runs as root, so it can run a client as `nobody`. The socket file and
/// its directories are opened up to everyone first: only the peer-uid check
/// stands between that client and the daemon.
#[test]
fn another_user_is_refused_by_the_peer_check() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: running a client as another uid needs root (CI runs as root)");
        return;
    }
    let env = TestEnv::new();
    let daemon = env.start_daemon();
    for dir in [
        env.root.path().to_path_buf(),
        env.runtime_dir(),
        env.socket_dir(),
    ] {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(env.socket(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let nobody = nix::unistd::User::from_name("nobody")
        .unwrap()
        .expect("a nobody user");
    let out = env
        .command("mcpauthctl")
        .args(["--no-autostart", "--socket"])
        .arg(env.socket())
        .arg("list")
        .env("HOME", "/")
        .uid(nobody.uid.as_raw())
        .gid(nobody.gid.as_raw())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "stderr: {stderr}");
    assert!(out.stdout.is_empty());
    let log = daemon.log();
    assert!(
        log.contains("refused connection from another user")
            && log.contains(&format!("peer_uid={}", nobody.uid)),
        "{log}"
    );
    // Our own user is still served.
    env.ctl(&["--no-autostart", "list"]).ok();
}

/// Opens a Watch stream and waits until it carries an event.
async fn live_watch(env: &TestEnv) -> tonic::Streaming<mcpauth_client::pb::Event> {
    let mut client = env.client().await;
    let mut stream = client.watch(None).await.unwrap();
    env.ctl(&["add", "a", "https://a.example/"]).ok();
    let first = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("an event")
        .expect("stream open")
        .unwrap();
    assert_eq!(first.server, "a");
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_an_open_watch_stream_exits_within_a_second() {
    let env = TestEnv::new();
    let mut daemon = env.start_daemon();
    let mut stream = live_watch(&env).await;

    daemon.signal(Signal::SIGTERM);
    let (status, took) = daemon
        .wait_for_exit(Duration::from_secs(5))
        .expect("exits after SIGTERM");
    assert!(status.success(), "exit status {status}");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    let log = daemon.log();
    assert!(log.contains("stopped cleanly"), "{log}");
    // The stream ended on the shutdown signal, so the graceful shutdown
    // did not have to wait for the grace period.
    assert!(
        !log.contains("still open after the grace period"),
        "the stream held up shutdown:\n{log}"
    );
    let end = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("stream ends");
    assert!(end.is_none() || end.unwrap().is_err());
    assert!(!env.socket().exists(), "socket removed on exit");
}

/// A client that stops reading (here: its runtime is blocked) cannot hold
/// the daemon up either: HTTP/2's graceful close needs the client's answer,
/// and the daemon gives up waiting after its grace period.
#[tokio::test(flavor = "current_thread")]
async fn a_frozen_client_cannot_hold_up_shutdown() {
    let env = TestEnv::new();
    let mut daemon = env.start_daemon();
    let _stream = live_watch(&env).await;

    daemon.signal(Signal::SIGTERM);
    // Blocking this thread freezes the client's connection task.
    let (status, took) = daemon
        .wait_for_exit(Duration::from_secs(5))
        .expect("exits after SIGTERM");
    assert!(status.success(), "exit status {status}");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    let log = daemon.log();
    assert!(log.contains("still open after the grace period"), "{log}");
    assert!(log.contains("stopped cleanly"), "{log}");
}

#[test]
fn systemd_socket_activation_and_readiness() {
    let env = TestEnv::new();
    env.make_socket_dir(0o700);
    let listener = std::os::unix::net::UnixListener::bind(env.socket()).unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
    // What systemd does: the socket on fd 3, LISTEN_FDS=1 and LISTEN_PID set
    // to the daemon's own pid (here via a shell that execs the daemon).
    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.env_clear();
    let template = env.command("mcpauthd");
    for (k, v) in template.get_envs() {
        if let Some(v) = v {
            cmd.env(k, v);
        }
    }
    cmd.args([
        "-c",
        "LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\"",
        mcpauth_tests::bin("mcpauthd").to_str().unwrap(),
    ]);
    unsafe {
        cmd.pre_exec(move || {
            // dup2 onto itself would keep close-on-exec set: clear it then.
            let ok = if fd == 3 {
                nix::libc::fcntl(3, nix::libc::F_SETFD, 0) >= 0
            } else {
                nix::libc::dup2(fd, 3) >= 0
            };
            if !ok {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let _daemon = env.spawn_daemon(&mut cmd).expect("activated daemon ready");
    let status = env.ctl(&["--no-autostart", "status", "--json"]).json();
    assert_eq!(status["daemon"]["socket_activated"], true);
}
