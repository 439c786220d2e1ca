//! What a new user trips over: a service install without systemd, a login
//! on a machine without a display, network errors, `watch`, and what
//! `show` says is in use.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mcpauth_tests::TestEnv;
use mcpauth_tests::authserver::{AuthServer, Switches};

/// A directory holding a `systemctl` that logs its arguments and then
/// runs `body` (shell); returns the PATH to use and the log.
fn fake_systemctl(env: &TestEnv, dir: &str, body: &str) -> (String, PathBuf) {
    let dir = env.root.path().join(dir);
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("systemctl.log");
    let script = dir.join("systemctl");
    std::fs::write(
        &script,
        format!("#!/bin/sh\necho \"$@\" >> {}\n{body}\n", log.display()),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    (path, log)
}

/// A `systemctl` that fails the way it does where no user manager runs.
fn failing_systemctl(env: &TestEnv) -> (String, PathBuf) {
    fake_systemctl(
        env,
        "fake-bin",
        "echo 'Failed to connect to bus: No such file or directory' >&2\nexit 1",
    )
}

fn unit_files(env: &TestEnv) -> Vec<PathBuf> {
    ["mcpauthd.socket", "mcpauthd.service"]
        .iter()
        .map(|f| env.config_home().join("systemd/user").join(f))
        .collect()
}

/// A server logged in to through a daemon started on demand: the server,
/// the env, the token handed out, and the daemon's pid.
async fn logged_in_on_demand() -> (AuthServer, TestEnv, String, serde_json::Value) {
    let server = AuthServer::start(Switches::default()).await;
    let env = TestEnv::new();
    env.ctl(&["add", "s", &server.mcp_url]).ok();
    env.ctl(&["login", "s"]).ok();
    let token = env.ctl(&["token", "s"]).ok();
    let pid = env.ctl(&["status", "--json"]).json()["daemon"]["pid"].clone();
    (server, env, token, pid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_install_without_a_user_manager_changes_nothing() {
    let (_server, env, token, pid) = logged_in_on_demand().await;

    let (path, log) = failing_systemctl(&env);
    let out = env.ctl_env(&["service", "install"], &[("PATH", &path)]);
    assert_eq!(out.code(), 1, "{}", out.stderr());
    let line = out.stderr();
    assert_eq!(line.trim().lines().count(), 1, "{line}");
    assert!(line.contains("no systemd user manager"), "{line}");
    assert!(line.contains("nothing was changed"), "{line}");
    assert!(line.contains("on demand"), "{line}");
    for file in unit_files(&env) {
        assert!(!file.exists(), "{} was written", file.display());
    }
    // The daemon was left alone, and programs still get their token.
    assert_eq!(
        env.ctl(&["status", "--json"]).json()["daemon"]["pid"],
        pid,
        "the running daemon was not stopped"
    );
    assert_eq!(env.ctl(&["token", "s"]).ok(), token);
    // Only the reachability check ran: nothing was enabled or reloaded.
    let calls = std::fs::read_to_string(&log).unwrap();
    assert_eq!(calls.trim(), "--user show-environment", "{calls}");
}

/// A `systemctl` whose user manager answers but whose `enable` fails,
/// as it does when the unit is masked or the manager refuses a job.
fn systemctl_failing_at_enable(env: &TestEnv) -> (String, PathBuf) {
    fake_systemctl(
        env,
        "fake-bin-enable",
        "case \"$*\" in *enable*) echo 'Failed to enable unit: Unit file mcpauthd.socket is masked.' >&2; exit 1;; esac\nexit 0",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_install_failing_midway_puts_everything_back() {
    let (_server, env, token, pid) = logged_in_on_demand().await;

    let (path, log) = systemctl_failing_at_enable(&env);
    let out = env.ctl_env(&["service", "install"], &[("PATH", &path)]);
    assert_eq!(out.code(), 1, "{}", out.stderr());
    let line = out.stderr();
    assert_eq!(line.trim().lines().count(), 1, "{line}");
    assert!(line.contains("masked"), "the manager's reason: {line}");
    assert!(line.contains("put back"), "{line}");
    // The steps up to the failure ran, then the rollback reloaded.
    let calls = std::fs::read_to_string(&log).unwrap();
    let calls: Vec<&str> = calls.lines().collect();
    assert_eq!(
        calls,
        [
            "--user show-environment",
            "--user daemon-reload",
            "--user enable --now mcpauthd.socket",
            "--user daemon-reload",
        ],
        "{calls:?}"
    );
    for file in unit_files(&env) {
        assert!(!file.exists(), "{} was left behind", file.display());
    }
    // The autostarted daemon was stopped for the service; it runs again
    // (a new process on the same state), and programs get the same token
    // without a login.
    let status = env.ctl(&["status", "--json"]).json();
    assert_ne!(status["daemon"]["pid"], pid, "the old daemon was stopped");
    assert_eq!(status["daemon"]["socket_activated"], false, "{status}");
    assert_eq!(env.ctl(&["token", "s"]).ok(), token);
}

#[test]
fn units_that_cannot_run_point_to_uninstall() {
    let env = TestEnv::new();
    env.ctl(&["service", "install", "--no-enable"]).ok();
    assert!(unit_files(&env).iter().all(|f| f.exists()));
    let (path, _) = failing_systemctl(&env);
    let out = env.ctl_env(&["status"], &[("PATH", &path)]);
    assert_eq!(out.code(), 3, "{}", out.stderr());
    assert!(
        out.stderr().contains("mcpauthctl service uninstall"),
        "{}",
        out.stderr()
    );
    assert!(
        !out.stderr().contains("systemctl --user start"),
        "an impossible start command: {}",
        out.stderr()
    );
    // And uninstall gets out of it.
    env.ctl_env(&["service", "uninstall"], &[("PATH", &path)])
        .ok();
    env.ctl_env(&["status"], &[("PATH", &path)]).ok();
}

/// Output of a process on a pseudo-terminal, collected by a thread.
struct Pty {
    master: std::fs::File,
    seen: Arc<Mutex<String>>,
}

impl Pty {
    fn wait_for(&self, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let seen = self.seen.lock().unwrap().clone();
            if seen.contains(needle) {
                return seen;
            }
            assert!(Instant::now() < deadline, "no {needle:?} in:\n{seen}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn spawn_on_pty(cmd: &mut std::process::Command) -> (std::process::Child, Pty) {
    let pty = nix::pty::openpty(None, None).unwrap();
    let slave = std::fs::File::from(pty.slave);
    let child = cmd
        .stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave)
        .spawn()
        .unwrap();
    let master = std::fs::File::from(pty.master);
    let seen = Arc::new(Mutex::new(String::new()));
    let mut reader = master.try_clone().unwrap();
    let sink = seen.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    (child, Pty { master, seen })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_without_a_display_prompts_for_the_pasted_address() {
    let server = AuthServer::start(Switches::default()).await;
    let env = TestEnv::new();
    env.ctl(&["add", "s", &server.mcp_url]).ok();
    // No DISPLAY, no WAYLAND_DISPLAY, no $BROWSER, an xdg-open that would
    // "succeed": a server on the other end of an SSH session.
    let mut cmd = env.command("mcpauthctl");
    cmd.env_remove("BROWSER").args(["login", "s"]);
    let (mut child, pty) = spawn_on_pty(&mut cmd);
    let seen = pty.wait_for(
        "Paste the address and press Enter: ",
        Duration::from_secs(20),
    );
    assert!(seen.contains("ssh -N -L"), "{seen}");
    assert!(!seen.contains("Opened it with"), "{seen}");
    let url = seen
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("http") && l.contains("/authorize"))
        .unwrap_or_else(|| panic!("no URL in:\n{seen}"))
        .to_string();
    // The person opens it elsewhere; the browser lands on the callback
    // address, which they paste.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let response = client.get(&url).send().await.unwrap();
    let location = response.headers()["location"].to_str().unwrap().to_string();
    // Nothing was written after the prompt while we were away.
    std::thread::sleep(Duration::from_millis(300));
    let before_paste = pty.seen.lock().unwrap().clone();
    assert!(
        before_paste.ends_with("Paste the address and press Enter: "),
        "the spinner wrote into the prompt: {before_paste:?}"
    );
    let mut master = pty.master.try_clone().unwrap();
    writeln!(master, "{location}").unwrap();
    let seen = pty.wait_for("logged in to s", Duration::from_secs(20));
    let status = child.wait().unwrap();
    assert!(status.success(), "{seen}");
    assert_eq!(
        env.ctl(&["show", "s", "--json"]).json()["state"],
        "authorized"
    );
}

/// For each (name, URL, text): the server added, a login fails with exit
/// 1 and one stderr line that says `text`, never the vague "connection
/// failed".
fn logins_fail_saying(env: &TestEnv, cases: &[(&str, String, &str)]) {
    for (name, url, expected) in cases {
        env.ctl(&["add", name, url]).ok();
        let out = env.ctl(&["login", name, "--no-browser"]);
        assert_eq!(out.code(), 1, "{name}: {}", out.stderr());
        let line = out.stderr();
        assert_eq!(line.trim().lines().count(), 1, "{name}: one line: {line}");
        assert!(line.contains(expected), "{name}: {expected:?} in {line}");
        assert!(!line.contains("connection failed"), "{line}");
    }
}

/// A server that accepts and never answers, and one that answers 500:
/// a timeout and an HTTP status, each said with its next step.
#[test]
fn a_silent_server_and_a_failing_one_say_timed_out_and_the_status() {
    use std::io::{BufRead, BufReader};
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in silent.incoming() {
            held.push(conn);
        }
    });
    let failing = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let failing_port = failing.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in failing.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(&conn);
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let _ = (&conn).write_all(
                    b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
            });
        }
    });
    let env = TestEnv::new();
    let mut cmd = env.command("mcpauthd");
    cmd.args(["--http-timeout-secs", "2"]);
    let _d = env.spawn_daemon(&mut cmd).unwrap();
    let cases = [
        (
            "silent",
            format!("http://127.0.0.1:{silent_port}/mcp"),
            "timed out (no answer in time); the server may be down",
        ),
        (
            "failing",
            format!("http://127.0.0.1:{failing_port}/mcp"),
            "answered HTTP 500 (the server is failing",
        ),
    ];
    logins_fail_saying(&env, &cases);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_failures_say_what_kind_and_what_to_do() {
    let plain = AuthServer::start(Switches::default()).await;
    let env = TestEnv::new();
    let _d = env.start_daemon();
    let port = plain
        .mcp_url
        .rsplit(':')
        .next()
        .unwrap()
        .split('/')
        .next()
        .unwrap();
    let cases = [
        (
            "refused",
            "http://127.0.0.1:1/mcp".to_string(),
            "connection refused by 127.0.0.1:1",
        ),
        (
            "unresolvable",
            "https://mcp.invalid/mcp".to_string(),
            "cannot resolve the host name mcp.invalid",
        ),
        (
            "notls",
            format!("https://127.0.0.1:{port}/mcp"),
            "TLS failed: the server did not answer with TLS",
        ),
    ];
    logins_fail_saying(&env, &cases);
    // Each failed login left one line in the daemon's log, naming it.
    let log = env.all_daemon_logs();
    for (name, _, _) in &cases {
        let lines = log
            .lines()
            .filter(|l| l.contains("login failed") && l.contains(&format!("server={name}")))
            .count();
        assert_eq!(lines, 1, "{name} in:\n{log}");
    }
}

/// The TLS checks a person meets: a certificate issued for another name
/// (by an authority this machine trusts), one no trusted authority
/// signed, and an expired one. Each says which check failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_failures_say_which_check_failed() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let env = TestEnv::new();
    // An authority, trusted by the daemon through SSL_CERT_FILE.
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let bundle = env.root.path().join("trusted.pem");
    std::fs::write(&bundle, ca_cert.pem()).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    // Issued by it, but for another host.
    let other_key = KeyPair::generate().unwrap();
    let other = CertificateParams::new(vec!["other.example".to_string()])
        .unwrap()
        .signed_by(&other_key, &issuer)
        .unwrap();
    let wrong_name = mcpauth_tests::tls_listener(&other, &other_key).await;
    // For the right address by that authority, but long expired.
    let old_key = KeyPair::generate().unwrap();
    let mut old_params = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    old_params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    old_params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let old = old_params.signed_by(&old_key, &issuer).unwrap();
    let expired = mcpauth_tests::tls_listener(&old, &old_key).await;
    // For the right address, but signed by nobody the daemon trusts.
    let self_key = KeyPair::generate().unwrap();
    let mut self_params = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    // A name of its own: rcgen's default one is the authority's too.
    self_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "a self-signed server");
    let self_signed = self_params.self_signed(&self_key).unwrap();
    let unknown = mcpauth_tests::tls_listener(&self_signed, &self_key).await;

    let mut cmd = env.command("mcpauthd");
    cmd.env("SSL_CERT_FILE", &bundle);
    let _d = env.spawn_daemon(&mut cmd).unwrap();
    let cases = [
        (
            "wrongname",
            format!("https://127.0.0.1:{wrong_name}/mcp"),
            "TLS failed: the certificate is not valid for 127.0.0.1",
        ),
        (
            "selfsigned",
            format!("https://127.0.0.1:{unknown}/mcp"),
            "TLS failed: the certificate is signed by an unknown authority",
        ),
        (
            "expired",
            format!("https://127.0.0.1:{expired}/mcp"),
            "TLS failed: the certificate has expired",
        ),
    ];
    logins_fail_saying(&env, &cases);
}

/// `mcpauthctl watch ARGS`, its output collected as it comes.
struct Watching {
    child: std::process::Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Watching {
    fn start(env: &TestEnv, args: &[&str]) -> Self {
        let mut child = env
            .command("mcpauthctl")
            .arg("watch")
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let collect = |pipe: Box<dyn Read + Send>| {
            let text = Arc::new(Mutex::new(String::new()));
            let sink = text.clone();
            let reader = std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                    let mut text = sink.lock().unwrap();
                    text.push_str(&line);
                    text.push('\n');
                }
            });
            (text, reader)
        };
        let (stdout, out_reader) = collect(Box::new(child.stdout.take().unwrap()));
        let (stderr, err_reader) = collect(Box::new(child.stderr.take().unwrap()));
        Watching {
            child,
            stdout,
            stderr,
            readers: vec![out_reader, err_reader],
        }
    }

    fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Makes an event with `poke` (given a fresh number each time) until
    /// the watch prints one: it is listening from then on.
    fn listening(&self, mut poke: impl FnMut(usize)) {
        let deadline = Instant::now() + Duration::from_secs(20);
        for n in 0.. {
            poke(n);
            let asked = Instant::now();
            while asked.elapsed() < Duration::from_millis(500) {
                if !self.stdout().is_empty() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            assert!(Instant::now() < deadline, "the watch printed nothing");
        }
    }

    /// Waits until what it printed on stdout or stderr has `needle`.
    fn wait_for(&self, stderr: bool, needle: &str) {
        let text = if stderr { &self.stderr } else { &self.stdout };
        mcpauth_tests::wait_until(Duration::from_secs(20), needle, || {
            text.lock().unwrap().contains(needle)
        });
    }

    /// Its exit status and all it printed (stdout, stderr).
    fn finish(mut self) -> (std::process::ExitStatus, String, String) {
        let status = self.child.wait().unwrap();
        for reader in self.readers.drain(..) {
            reader.join().unwrap();
        }
        (status, self.stdout(), self.stderr())
    }
}

/// An event for any watch: a server added.
fn poke(env: &TestEnv, n: usize) {
    env.ctl(&[
        "add",
        &format!("poke{n}"),
        &format!("https://poke{n}.example.com/mcp"),
    ])
    .ok();
}

#[test]
fn watch_follow_waits_for_the_daemon_and_never_starts_one() {
    let env = TestEnv::new();
    env.ctl(&["status"]).ok(); // started on demand
    let mut watch = Watching::start(&env, &["--follow"]);
    watch.listening(|n| poke(&env, n));
    env.ctl(&["stop"]).ok();
    // It waits, and no daemon comes back by its doing (over 2 s, a few
    // of its attempts to reconnect).
    let stopped = Instant::now();
    watch.wait_for(true, "waiting for it to come back");
    std::thread::sleep(Duration::from_secs(2).saturating_sub(stopped.elapsed()));
    assert_eq!(env.ctl(&["--no-autostart", "status"]).code(), 3);
    assert!(watch.child.try_wait().unwrap().is_none(), "still waiting");
    // A daemon started by someone else: it reconnects.
    env.ctl(&["status"]).ok();
    watch.wait_for(true, "reconnected to mcpauthd");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(watch.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let (_, _, stderr) = watch.finish();
    assert!(stderr.contains("waiting for it to come back"), "{stderr}");
    assert!(stderr.contains("reconnected to mcpauthd"), "{stderr}");
    env.ctl(&["stop"]).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_refuses_unknown_names_and_says_when_its_stream_ends() {
    let env = TestEnv::new();
    let _ = env.start_daemon();
    env.write_config("[servers.s]\nurl = \"https://mcp.example.com/mcp\"\n");
    let started = Instant::now();
    let typo = env.ctl(&["watch", "typo"]);
    assert_eq!(typo.code(), 2, "{}", typo.stderr());
    assert!(started.elapsed() < Duration::from_secs(10));

    // Human lines: local time, "config" for config events, and a line when
    // a rejected config heals.
    let watch = Watching::start(&env, &[]);
    watch.listening(|n| poke(&env, n));
    env.write_config(
        "[servers.s]\nurl = \"https://mcp.example.com/mcp\"\n[servers.s]\nurl = \"https://two.example.com/mcp\"\n",
    );
    watch.wait_for(false, "config rejected");
    env.write_config("[servers.s]\nurl = \"https://mcp.example.com/mcp\"\n");
    watch.wait_for(false, "config accepted");
    env.ctl(&["stop"]).ok();
    let (status, stdout, stderr) = watch.finish();
    // Exit 3 with one line when the daemon stops.
    assert_eq!(status.code(), Some(3), "{stdout}\n{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("mcpauthd stopped"), "{stderr}");
    let rejected = stdout
        .lines()
        .find(|l| l.contains("config rejected"))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(rejected.contains("config rejected: "), "{rejected}");
    assert!(!rejected.contains("config rejected config"), "{rejected}");
    // A server given two tables is named.
    assert!(
        rejected.contains("the server \"s\" is defined twice (a second [servers.s] table)"),
        "{rejected}"
    );
    assert!(!rejected.contains(" - "), "{rejected}");
    let date = rejected.split(' ').next().unwrap();
    assert_eq!(date.len(), 10, "a date first: {rejected}");
    assert_eq!(date.matches('-').count(), 2, "{rejected}");
    assert!(
        stdout.lines().any(|l| l.ends_with("config accepted")),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_says_which_client_and_port_are_in_use() {
    let server = AuthServer::start(Switches::default()).await;
    let env = TestEnv::new();
    let _d = env.start_daemon();
    env.ctl(&["add", "s", &server.mcp_url]).ok();
    let before = env.ctl(&["show", "s", "--json"]).json();
    assert!(before["client_id"].is_null(), "{before}");
    assert!(before["callback_port"].is_null(), "{before}");
    env.ctl(&["login", "s"]).ok();
    let after = env.ctl(&["show", "s", "--json"]).json();
    let registered = server
        .seen()
        .iter()
        .find(|s| s.path.ends_with("/register"))
        .is_some();
    assert!(registered);
    assert!(
        after["client_id"].as_str().is_some_and(|c| !c.is_empty()),
        "{after}"
    );
    assert_eq!(after["client_id_source"], "registered", "{after}");
    assert!(
        after["callback_port"].as_u64().is_some_and(|p| p > 0),
        "{after}"
    );
    assert_eq!(after["callback_port_source"], "chosen", "{after}");
    let human = env.ctl(&["show", "s"]).ok();
    let port = after["callback_port"].as_u64().unwrap().to_string();
    assert!(human.contains(&port), "{human}");
    assert!(
        human.contains(after["client_id"].as_str().unwrap()),
        "{human}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_is_notified_once_per_episode_when_a_program_needs_a_login() {
    let server = AuthServer::start(Switches::default()).await;
    let env = TestEnv::new();
    let sink = env.root.path().join("notifications.log");
    let notifier = env.root.path().join("notifier");
    std::fs::write(
        &notifier,
        format!(
            "#!/bin/sh\nprintf '%s | %s\\n' \"$1\" \"$2\" >> {}\n",
            sink.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&notifier, std::fs::Permissions::from_mode(0o755)).unwrap();
    let notifier = notifier.display().to_string();
    let with_sink = [(mcpauth_proto::env::NOTIFIER, notifier.as_str())];
    let mut cmd = env.command("mcpauthd");
    cmd.env(mcpauth_proto::env::NOTIFIER, &notifier);
    let _d = env.spawn_daemon(&mut cmd).unwrap();
    env.ctl_env(&["add", "s", &server.mcp_url], &with_sink).ok();
    let notes = || -> Vec<String> {
        let read = || -> Vec<String> {
            std::fs::read_to_string(&sink)
                .unwrap_or_default()
                .lines()
                .map(str::to_string)
                .collect()
        };
        // The daemon decides (and logs) before it answers the request;
        // the notifier runs in the background after: wait for every
        // notification decided so far to reach the sink.
        let decided = env
            .all_daemon_logs()
            .matches("notifying the person")
            .count();
        mcpauth_tests::wait_until(Duration::from_secs(10), "the notifier to run", || {
            read().len() >= decided
        });
        read()
    };

    // Three programs ask: one notification.
    for _ in 0..3 {
        assert_eq!(env.ctl(&["token", "s"]).code(), 4);
    }
    let first = notes();
    assert_eq!(first.len(), 1, "{first:?}");
    assert!(first[0].contains("log in to s"), "{first:?}");
    assert!(first[0].contains("mcpauthctl login s"), "{first:?}");

    // A login: the episode ends; a logout and another request start a new one.
    env.ctl(&["login", "s"]).ok();
    let token = env.ctl(&["token", "s"]).ok();
    env.ctl(&["logout", "s"]).ok();
    assert_eq!(env.ctl(&["token", "s"]).code(), 4);
    let second = notes();
    assert_eq!(second.len(), 2, "{second:?}");
    for line in &second {
        assert!(
            !line.contains(token.trim()),
            "a token in a notification: {line}"
        );
    }

    // While a login is under way, nobody is pestered.
    env.ctl(&["logout", "s"]).ok();
    let mut pending = env
        .command("mcpauthctl")
        .env("TEST_BROWSER_MODE", "ignore")
        .args(["login", "s"])
        .spawn()
        .unwrap();
    mcpauth_tests::wait_until(Duration::from_secs(10), "the login to start", || {
        env.ctl(&["show", "s", "--json"]).json()["state"] == "login_pending"
    });
    assert_eq!(env.ctl(&["token", "s"]).code(), 4);
    let _ = pending.kill();
    let _ = pending.wait();
    assert_eq!(notes().len(), 2, "no notification during a login");

    // Turned off in config.toml: none.
    env.write_config(&format!(
        "notifications = false\n[servers.t]\nurl = \"{}\"\n",
        server.mcp_url
    ));
    mcpauth_tests::wait_until(Duration::from_secs(10), "the config to apply", || {
        env.ctl(&["show", "t", "--json"]).code() == 0
    });
    assert_eq!(env.ctl(&["token", "t"]).code(), 4);
    assert_eq!(notes().len(), 2, "notifications = false is honoured");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_lies_are_gone() {
    let server = AuthServer::start(Switches::default()).await;
    let env = TestEnv::new();
    let _d = env.start_daemon();
    env.ctl(&["add", "s", &server.mcp_url]).ok();
    // Logging out of what was never logged in says so.
    let out = env.ctl(&["logout", "s"]).ok();
    assert!(out.contains("s was not logged in"), "{out}");
    assert!(!out.contains("logged out of"), "{out}");

    env.ctl(&["login", "s"]).ok();
    env.ctl(&["refresh", "s"]).ok();
    let refreshed = env.ctl(&["show", "s", "--json"]).json();
    assert!(
        refreshed["last_refresh_unix_ms"].as_i64().is_some(),
        "{refreshed}"
    );
    // Logging in again is not silent, and LAST REFRESH is the new grant's.
    let again = env.ctl(&["login", "s"]);
    assert_eq!(again.code(), 0, "{}", again.stderr());
    assert!(
        again.stderr().contains("s is already logged in"),
        "{}",
        again.stderr()
    );
    let shown = env.ctl(&["show", "s", "--json"]).json();
    assert!(shown["last_refresh_unix_ms"].is_null(), "{shown}");
    let out = env.ctl(&["logout", "s"]).ok();
    assert!(out.contains("logged out of s"), "{out}");

    // A rejected config names its file once.
    env.write_config("[servers.s]\nurl = 5\n");
    let path = env.config_path().display().to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = env.ctl(&["status"]).ok();
        if let Some(line) = status.lines().find(|l| l.contains("REJECTED")) {
            assert_eq!(line.matches(&path).count(), 1, "{line}");
            break;
        }
        assert!(Instant::now() < deadline, "{status}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = env.all_daemon_logs();
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("config edit rejected"))
            .count(),
        1,
        "one log line per rejection:\n{log}"
    );
}

/// `add` says what comes next, and when another entry already has the
/// URL; a name that differs from a taken one only in case is refused; a
/// mistyped name gets the name it most likely meant.
#[test]
fn add_says_what_comes_next_and_names_are_told_apart() {
    let env = TestEnv::new();
    let _d = env.start_daemon();
    let first = env.ctl(&["add", "demo", "https://demo.example/mcp"]).ok();
    assert!(
        first.contains("added demo (https://demo.example/mcp)")
            && first.contains("next: mcpauthctl login demo")
            && !first.contains("same URL"),
        "{first}"
    );
    let second = env
        .ctl(&["add", "demo-work", "https://demo.example/mcp/"])
        .ok();
    assert!(
        second.contains("demo has the same URL")
            && second.contains("next: mcpauthctl login demo-work"),
        "{second}"
    );
    let alike = env.ctl(&["add", "Demo", "https://other.example/mcp"]);
    assert_eq!(alike.code(), 2, "{}", alike.stderr());
    assert!(
        alike.stderr().contains("differs from it only in case"),
        "{}",
        alike.stderr()
    );
    for typo in ["demp", "DEMO"] {
        let out = env.ctl(&["token", typo]);
        assert_eq!(out.code(), 2, "{}", out.stderr());
        assert!(
            out.stderr().contains(&format!(
                "no server named \"{typo}\" in {} (daemon at {}); did you mean \"demo\"?",
                env.config_path().display(),
                env.socket().display()
            )),
            "{}",
            out.stderr()
        );
    }
    let nothing_close = env.ctl(&["token", "zzzzzz"]);
    assert!(
        !nothing_close.stderr().contains("did you mean"),
        "{}",
        nothing_close.stderr()
    );
}

/// A helper or proxy that names a server the daemon it reached does not
/// know says which config and which daemon: the usual cause is another
/// daemon than the one meant (another socket, another config).
#[test]
fn an_unknown_server_names_the_config_and_the_daemon_asked() {
    let env = TestEnv::new();
    let _daemon = env.start_daemon();
    env.ctl(&["add", "demo", "https://demo.example/mcp"]).ok();
    let said = format!(
        "no server named \"nope\" in {} (daemon at {})",
        env.config_path().display(),
        env.socket().display()
    );
    for args in [
        &["headers", "--", "nope"][..],
        &["token", "nope"][..],
        &["proxy", "--", "nope"][..],
    ] {
        let out = env.ctl(args);
        assert_ne!(out.code(), 0, "{args:?}");
        assert!(out.stderr().contains(&said), "{args:?}: {}", out.stderr());
    }
}

/// The headless login proposes `--device` only where the authorization
/// server has a device endpoint: elsewhere the flag would only fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_proposes_device_codes_only_where_the_server_offers_them() {
    for offered in [false, true] {
        let mut switches = Switches::default();
        switches.grants.device = offered;
        let server = AuthServer::start(switches).await;
        let env = TestEnv::new();
        env.ctl(&["add", "s", &server.mcp_url]).ok();
        let mut child = env
            .command("mcpauthctl")
            .args(["login", "s", "--no-browser"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut seen = String::new();
        while !seen.contains("paste below the address") {
            let line = rx
                .recv_timeout(Duration::from_secs(20))
                .unwrap_or_else(|e| panic!("{e}: {seen}"));
            seen.push_str(&line);
            seen.push('\n');
        }
        // What follows the paste paragraph comes at once, if at all.
        while let Ok(line) = rx.recv_timeout(Duration::from_millis(500)) {
            seen.push_str(&line);
            seen.push('\n');
        }
        assert_eq!(seen.contains("--device"), offered, "{seen}");
        let _ = child.kill();
        let _ = child.wait();
    }
}
