//! Tokens over SSH, as with ssh-agent forwarding: a real OpenSSH server
//! (on 127.0.0.1 only, with keys generated here) and client forward the
//! broker's socket onto the "remote" user's default socket path with
//! `ssh -R`, and `mcpauthctl` there gets tokens, shows the status, writes
//! host entries that use it, and logs in through it.
//!
//! OpenSSH comes from Debian's packages (`tests/ssh/install.sh`, run here
//! on first use and by `.ci/run`). sshd needs root (CI runs as root);
//! elsewhere the test says why it was skipped.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mcpauth_tests::authserver::{AuthServer, Switches};
use mcpauth_tests::{TestEnv, wait_until};

const SSHD: &str = "/usr/sbin/sshd";

/// Kills the process (sshd, ssh) when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Why sshd cannot run here, if it cannot.
fn sshd_unavailable() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("sshd needs root (CI runs the tests as root)".into());
    }
    if !Path::new(SSHD).exists() {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("ssh/install.sh");
        let ok = Command::new(&script).status().is_ok_and(|s| s.success());
        if !ok || !Path::new(SSHD).exists() {
            return Some(format!("{} could not install OpenSSH", script.display()));
        }
    }
    None
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A private sshd on 127.0.0.1, and the key that may log in to it.
struct Sshd {
    _process: Killed,
    port: u16,
    client_key: PathBuf,
}

fn start_sshd(dir: &Path) -> Sshd {
    let keygen = |file: &Path| {
        run(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(file));
    };
    let host_key = dir.join("host_key");
    let client_key = dir.join("client_key");
    keygen(&host_key);
    keygen(&client_key);
    let authorized = dir.join("authorized_keys");
    std::fs::copy(client_key.with_extension("pub"), &authorized).unwrap();
    std::fs::set_permissions(&authorized, std::fs::Permissions::from_mode(0o600)).unwrap();
    // The privilege separation directory sshd insists on.
    std::fs::create_dir_all("/run/sshd").unwrap();
    let port = free_port();
    let config = dir.join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "ListenAddress 127.0.0.1\nPort {port}\nHostKey {}\nAuthorizedKeysFile {}\n\
             PidFile none\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nPubkeyAuthentication yes\n\
             PermitRootLogin prohibit-password\nAllowStreamLocalForwarding yes\n\
             StreamLocalBindUnlink yes\nAllowTcpForwarding remote\nX11Forwarding no\n\
             LogLevel ERROR\n",
            host_key.display(),
            authorized.display()
        ),
    )
    .unwrap();
    let process = Killed(
        Command::new(SSHD)
            .args(["-D", "-f"])
            .arg(&config)
            .arg("-E")
            .arg(dir.join("sshd.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    wait_until(Duration::from_secs(10), "sshd to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    Sshd {
        _process: process,
        port,
        client_key,
    }
}

/// `ssh -R REMOTE:LOCAL`, held open like a person's session.
fn forward(sshd: &Sshd, remote: &Path, local: &Path) -> Killed {
    let user = nix::unistd::User::from_uid(nix::unistd::getuid())
        .unwrap()
        .unwrap()
        .name;
    Killed(
        Command::new("ssh")
            .args(["-N", "-F", "/dev/null", "-i"])
            .arg(&sshd.client_key)
            .args([
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "ExitOnForwardFailure=yes",
                "-o",
                "ConnectTimeout=10",
                "-o",
                "LogLevel=ERROR",
                "-p",
            ])
            .arg(sshd.port.to_string())
            .arg("-R")
            .arg(format!("{}:{}", remote.display(), local.display()))
            .arg(format!("{user}@127.0.0.1"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_brokers_socket_forwarded_over_ssh_serves_the_remote() {
    if let Some(why) = sshd_unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    let server = AuthServer::start(Switches::default()).await;
    let laptop = TestEnv::new();
    let _daemon = laptop.start_daemon();
    laptop.ctl(&["add", "s", &server.mcp_url]).ok();
    laptop.ctl(&["login", "s"]).ok();
    laptop.ctl(&["add", "later", &server.mcp_url]).ok();
    let token = laptop.ctl(&["token", "s"]).ok().trim().to_string();

    // The remote: another home, whose socket directory exists (0700), as
    // the README says to make it.
    let remote = TestEnv::new();
    remote.make_socket_dir(0o700);
    let keys = tempfile::tempdir().unwrap();
    let sshd = start_sshd(keys.path());
    let _ssh = forward(&sshd, &remote.socket(), &laptop.socket());
    let start = Instant::now();
    while !remote.socket().exists() {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "no forwarded socket; sshd's log:\n{}",
            std::fs::read_to_string(keys.path().join("sshd.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // With --socket, and on the default path (nothing to pass); never
    // starting a daemon of its own there.
    let forwarded = remote.socket().display().to_string();
    let got = remote
        .ctl(&["--socket", &forwarded, "--no-autostart", "token", "s"])
        .ok();
    assert_eq!(got.trim(), token);
    let got = remote.ctl(&["--no-autostart", "token", "s"]).ok();
    assert_eq!(got.trim(), token);
    let status = remote.ctl(&["--no-autostart", "status"]).ok();
    assert!(
        status.contains("s ") && status.contains("authorized"),
        "{status}"
    );
    assert!(!remote.state_dir().join("mcpauthd.log").exists());

    // `connect` there writes entries that use it: the helper, run as the
    // host runs it (HOME and PATH only... and the runtime directory a
    // login session has), gets the token through the forward.
    std::fs::write(remote.home().join(".claude.json"), "{}\n").unwrap();
    remote.ctl(&["connect", "claude-code", "s"]).ok();
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(remote.home().join(".claude.json")).unwrap())
            .unwrap();
    let helper = written["mcpServers"]["s"]["headersHelper"]
        .as_str()
        .unwrap()
        .to_string();
    let out = Command::new("sh")
        .args(["-c", &helper])
        .env_clear()
        .env("HOME", remote.home())
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("XDG_RUNTIME_DIR", remote.runtime_dir())
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&token),
        "{helper}: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A login from the remote: the daemon (on the laptop) gives the URL
    // and listens for the callback on the laptop's loopback, so the
    // laptop's browser completes it; the remote CLI sees it done.
    let mut login = remote
        .command("mcpauthctl")
        .args(["--no-autostart", "login", "later", "--no-browser"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The URL the remote printed, read off its stderr by a thread (so the
    // wait is bounded).
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stderr = login.stderr.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut printed = Vec::new();
    let url = loop {
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) if line.starts_with("http") => break line,
            Ok(line) => printed.push(line),
            Err(e) => panic!("no login URL ({e}): {printed:?}"),
        }
    };
    // It knows the daemon (and its callback) are on the other side: no
    // `ssh -L` tunnel to a port on this machine.
    while !printed.iter().any(|l| l.contains("paste below")) {
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) => printed.push(line),
            Err(e) => panic!("no paste prompt ({e}): {printed:?}"),
        }
    }
    let said = printed.join("\n");
    assert!(
        said.contains("mcpauthd runs on another machine (its socket is forwarded here): open the URL in a browser on that machine"),
        "{said}"
    );
    assert!(!said.contains("ssh -N -L"), "{said}");
    run(Command::new(mcpauth_tests::own_bin!("test-browser"))
        .arg(&url)
        .env("TEST_BROWSER_LOG", laptop.root.path().join("browser.log")));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = login.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the remote login did not end"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success());
    let later = remote.ctl(&["--no-autostart", "token", "later"]).ok();
    assert!(server.is_valid_access_token(later.trim()));
}
