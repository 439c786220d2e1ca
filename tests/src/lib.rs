//! Test harness for the end-to-end tests: every test gets its own temporary
//! `HOME` and XDG directories, and drives the real `mcpauthd` and
//! `mcpauthctl` binaries with a cleared environment (like ripgrep's
//! `tests/util.rs`), so nothing from the machine leaks in.

pub mod authserver;
pub mod grants_as;
pub mod mcpserver;

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// Path of `mcpauthd` or `mcpauthctl`, the binaries of the other workspace
/// packages. `cargo test --workspace` builds them (the daemon and CLI
/// crates have integration tests of their own, which makes cargo build
/// their binaries before any test runs). Cargo tells a test where the
/// binaries of its *own* package are (`CARGO_BIN_EXE_<name>`, see
/// [`own_bin!`]), but not those of other packages (only unstable artifact
/// dependencies would), so these are found next to the test executable.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>; a binary of
    // this crate (the benchmark) already sits in target/<profile>/.
    let mut dir = exe.parent().expect("target dir");
    if dir.ends_with("deps") {
        dir = dir.parent().expect("target dir");
    }
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing; run the tests with `cargo test --workspace`",
        path.display()
    );
    path
}

/// Path of a binary of this package (`test-browser`, `test-client`,
/// `mcpauth-bench`), as Cargo tells an integration test at build time.
#[macro_export]
macro_rules! own_bin {
    ($name:literal) => {
        ::std::path::PathBuf::from(env!(concat!("CARGO_BIN_EXE_", $name)))
    };
}

/// The test browser every command is given as `$BROWSER`. This library is
/// built before Cargo says where its package's binaries are, so it asks at
/// run time: `cargo test` sets `CARGO_BIN_EXE_test-browser` for the test
/// process too (Cargo 1.94 and later); a test executable run by hand, or
/// by an older Cargo, finds it beside the other binaries.
fn test_browser() -> PathBuf {
    std::env::var_os("CARGO_BIN_EXE_test-browser")
        .map(PathBuf::from)
        .unwrap_or_else(|| bin("test-browser"))
}

/// Polls `ready` every 20 ms until it holds; panics naming `what` once
/// `limit` has passed. For waiting on an event a test can observe.
pub fn wait_until(limit: Duration, what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ready() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// [`wait_until`] for async tests: the runtime's worker is not blocked
/// between polls (the test servers may run on it).
pub async fn wait_until_async(limit: Duration, what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ready() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The next event of a `Watch` stream that satisfies `pred` (others are
/// skipped); panics if none comes within 20 s.
pub async fn next_event(
    stream: &mut tonic::Streaming<mcpauth_client::pb::Event>,
    pred: impl Fn(&mcpauth_client::pb::Event) -> bool,
) -> mcpauth_client::pb::Event {
    use tokio_stream::StreamExt;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let event = tokio::time::timeout_at(deadline, stream.next())
            .await
            .expect("the expected event within 20 s")
            .expect("stream open")
            .expect("event");
        if pred(&event) {
            return event;
        }
    }
}

/// The generation of the next token issued for `server` (a login, a
/// refresh, a renewal) after generation `after`, from a `Watch` stream:
/// the token is held (and `token` hands it out) by then.
pub async fn token_issued(
    stream: &mut tonic::Streaming<mcpauth_client::pb::Event>,
    server: &str,
    after: u64,
) -> u64 {
    use mcpauth_client::pb::event::Kind;
    let event = next_event(stream, |e| {
        e.server == server && matches!(&e.kind, Some(Kind::TokenIssued(t)) if t.generation > after)
    })
    .await;
    match event.kind {
        Some(Kind::TokenIssued(t)) => t.generation,
        _ => unreachable!("filtered above"),
    }
}

/// A private home for one test.
pub struct TestEnv {
    pub root: tempfile::TempDir,
}

impl Default for TestEnv {
    fn default() -> Self {
        Self::new()
    }
}

impl TestEnv {
    pub fn new() -> Self {
        let root = tempfile::Builder::new()
            .prefix("mcpauth-test-")
            .tempdir()
            .expect("tempdir");
        let env = Self { root };
        for dir in [env.home(), env.runtime_dir()] {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        }
        env
    }

    pub fn home(&self) -> PathBuf {
        self.root.path().join("home")
    }
    pub fn runtime_dir(&self) -> PathBuf {
        self.root.path().join("run")
    }
    pub fn socket_dir(&self) -> PathBuf {
        self.runtime_dir().join("mcpauth")
    }
    pub fn socket(&self) -> PathBuf {
        self.socket_dir().join("mcpauthd.sock")
    }
    pub fn state_dir(&self) -> PathBuf {
        self.home().join(".local/state/mcpauth")
    }
    pub fn config_home(&self) -> PathBuf {
        self.home().join(".config")
    }
    pub fn config_path(&self) -> PathBuf {
        self.config_home().join("mcpauth/config.toml")
    }

    /// Creates the socket directory with `mode`, as a previous daemon (or
    /// an attacker) might have left it.
    pub fn make_socket_dir(&self, mode: u32) {
        std::fs::create_dir_all(self.socket_dir()).unwrap();
        std::fs::set_permissions(self.socket_dir(), std::fs::Permissions::from_mode(mode)).unwrap();
    }

    /// An MCP request to `url` with the token `token NAME` serves: what
    /// the endpoint answered.
    pub async fn authorized_call(&self, name: &str, url: &str) -> reqwest::StatusCode {
        let token = self.ctl(&["token", name]).ok().trim().to_string();
        reqwest::Client::new()
            .post(url)
            .bearer_auth(token)
            .json(&serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
            .send()
            .await
            .unwrap()
            .status()
    }

    /// A binary found by [`bin`] (`mcpauthd`, `mcpauthctl`) with a cleared
    /// environment pointing at this home.
    pub fn command(&self, binary: &str) -> Command {
        self.command_of(&bin(binary))
    }

    /// The program at `path` (e.g. [`own_bin!`]) with a cleared
    /// environment pointing at this home.
    pub fn command_of(&self, path: &Path) -> Command {
        let mut cmd = Command::new(path);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.home())
            .env("XDG_RUNTIME_DIR", self.runtime_dir())
            .env("XDG_STATE_HOME", self.home().join(".local/state"))
            .env("XDG_CONFIG_HOME", self.config_home())
            .env("TMPDIR", self.root.path())
            .env(mcpauth_proto::env::DAEMON_BIN, bin("mcpauthd"))
            .env(mcpauth_proto::env::LOG, "debug")
            .env("BROWSER", test_browser())
            .env("TEST_BROWSER_LOG", self.root.path().join("browser.log"))
            .stdin(Stdio::null());
        cmd
    }

    /// URLs the test browser was asked to open, in order.
    pub fn browser_log(&self) -> Vec<String> {
        std::fs::read_to_string(self.root.path().join("browser.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Runs `mcpauthctl ARGS` to completion with extra environment.
    pub fn ctl_env(&self, args: &[&str], env: &[(&str, &str)]) -> CtlOutput {
        let mut cmd = self.command("mcpauthctl");
        cmd.args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        CtlOutput(cmd.output().expect("run mcpauthctl"))
    }

    /// Runs `mcpauthctl ARGS` to completion.
    pub fn ctl(&self, args: &[&str]) -> CtlOutput {
        let output = self
            .command("mcpauthctl")
            .args(args)
            .output()
            .expect("run mcpauthctl");
        CtlOutput(output)
    }

    /// A `PATH` whose `systemctl` is a stand-in: a systemd user manager
    /// that answers (`reachable`), or none, as in a container ("Failed to
    /// connect to bus"), whatever runs on this machine.
    pub fn path_with_systemctl(&self, reachable: bool) -> String {
        let dir = self.root.path().join(if reachable {
            "systemd-user"
        } else {
            "no-systemd"
        });
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("systemctl");
        std::fs::write(
            &script,
            if reachable {
                "#!/bin/sh
exit 0
"
            } else {
                "#!/bin/sh
echo 'Failed to connect to bus: No medium found' >&2
exit 1
"
            },
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        format!(
            "{}:{}",
            dir.display(),
            std::env::var("PATH").unwrap_or_default()
        )
    }

    /// Writes `config.toml` the way editors do: a new file renamed over it.
    pub fn write_config(&self, text: &str) {
        let path = self.config_path();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let tmp = path.with_extension("toml.swp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    }

    /// Starts `mcpauthd` and waits until it is ready (READY=1 on its
    /// notify socket, as systemd would see it).
    pub fn start_daemon(&self) -> Daemon {
        self.spawn_daemon(&mut self.command("mcpauthd"))
            .unwrap_or_else(|log| panic!("mcpauthd did not become ready:\n{log}"))
    }

    /// Spawns the daemon from `cmd`; `Err(log)` if it exits before ready.
    pub fn spawn_daemon(&self, cmd: &mut Command) -> Result<Daemon, String> {
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let log = self.root.path().join(format!("mcpauthd-{n}.log"));
        let notify = self.root.path().join(format!("notify-{n}.sock"));
        let listener = UnixDatagram::bind(&notify).unwrap();
        listener
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let file = std::fs::File::create(&log).unwrap();
        let child = cmd
            .env("NOTIFY_SOCKET", &notify)
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("spawn mcpauthd");
        let mut daemon = Daemon { child, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut buf = [0u8; 256];
        loop {
            if let Ok(n) = listener.recv(&mut buf)
                && String::from_utf8_lossy(&buf[..n]).contains("READY=1")
            {
                return Ok(daemon);
            }
            if let Ok(Some(_)) = daemon.child.try_wait() {
                return Err(daemon.log());
            }
            if Instant::now() > deadline {
                return Err(format!("timed out; log:\n{}", daemon.log()));
            }
        }
    }

    /// The logs of every daemon this env started, concatenated.
    pub fn all_daemon_logs(&self) -> String {
        let mut logs = String::new();
        for entry in std::fs::read_dir(self.root.path()).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.starts_with("mcpauthd-") && name.ends_with(".log") {
                logs.push_str(&std::fs::read_to_string(&path).unwrap_or_default());
            }
        }
        logs
    }

    /// A client connected to this env's daemon.
    pub async fn client(&self) -> mcpauth_client::Client {
        mcpauth_client::Client::connect(&self.socket())
            .await
            .expect("connect to mcpauthd")
    }

    /// The daemon's event stream, for one server or (`None`) all: events
    /// from the moment this returns on.
    pub async fn events(
        &self,
        server: Option<&str>,
    ) -> tonic::Streaming<mcpauth_client::pb::Event> {
        self.client()
            .await
            .watch(server)
            .await
            .expect("watch the daemon's events")
    }
}

impl Drop for TestEnv {
    /// Stops a daemon a command started on demand in this home: it would
    /// otherwise outlive the test, its home deleted under it.
    fn drop(&mut self) {
        if std::os::unix::net::UnixStream::connect(self.socket()).is_ok() {
            let _ = self
                .command("mcpauthctl")
                .args(["--no-autostart", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A running daemon; killed on drop.
pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
}

impl Daemon {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), signal).unwrap();
    }

    /// Waits for the process to exit; `None` if it is still running after
    /// `limit`. Returns how long it took.
    pub fn wait_for_exit(&mut self, limit: Duration) -> Option<(ExitStatus, Duration)> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some((status, start.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    }

    /// SIGTERM and wait (at most 10 s) for a clean exit.
    pub fn stop(mut self) -> String {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let (status, _) = self
            .wait_for_exit(Duration::from_secs(10))
            .expect("daemon exits on SIGTERM");
        let log = self.log();
        assert!(status.success(), "daemon exited with {status}:\n{log}");
        log
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The result of one `mcpauthctl` run.
pub struct CtlOutput(pub Output);

impl CtlOutput {
    pub fn code(&self) -> i32 {
        self.0.status.code().unwrap_or(-1)
    }
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.0.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.0.stderr).into_owned()
    }
    /// Asserts success and returns stdout.
    pub fn ok(&self) -> String {
        assert_eq!(
            self.code(),
            0,
            "mcpauthctl failed ({:?})\nstdout: {}\nstderr: {}",
            self.0.status,
            self.stdout(),
            self.stderr()
        );
        self.stdout()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.ok()).expect("valid JSON on stdout")
    }
}

pub fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// The first of `secrets` that occurs anywhere in `text`. One pass over
/// the text (hash lookups at each position, per distinct secret length),
/// so it stays fast on the megabytes of logs of hundreds of daemon runs.
pub fn leaked<'a>(text: &str, secrets: &'a [String]) -> Option<&'a str> {
    use std::collections::{BTreeSet, HashMap};
    let by_text: HashMap<&[u8], &'a str> = secrets
        .iter()
        .filter(|s| !s.is_empty())
        .map(|s| (s.as_bytes(), s.as_str()))
        .collect();
    let lengths: BTreeSet<usize> = by_text.keys().map(|s| s.len()).collect();
    let mut first = [false; 256];
    for s in by_text.keys() {
        first[s[0] as usize] = true;
    }
    let bytes = text.as_bytes();
    for i in 0..bytes.len() {
        if !first[bytes[i] as usize] {
            continue;
        }
        for &len in &lengths {
            if let Some(candidate) = bytes.get(i..i + len)
                && let Some(secret) = by_text.get(candidate)
            {
                return Some(secret);
            }
        }
    }
    None
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// The real MCP hosts of `tests/hosts` (Codex and Claude Code from npm,
/// pinned by its lockfile): installed by `tests/hosts/install.sh` the first
/// time a test asks, once per machine. Returns the directory of their
/// executables. npm is needed, as for the other tests against independent
/// implementations.
pub fn real_hosts() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("hosts");
    let bin = dir.join("node_modules/.bin");
    let lock = std::fs::File::create(std::env::temp_dir().join("mcpauth-hosts-install.lock"))
        .expect("lock file");
    let _guard = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .expect("lock");
    if !["codex", "claude", "mcp-remote-client"]
        .iter()
        .all(|b| bin.join(b).exists())
    {
        let status = Command::new(dir.join("install.sh"))
            .status()
            .expect("npm is needed to install the real hosts (tests/hosts/install.sh)");
        assert!(status.success(), "tests/hosts/install.sh failed");
    }
    bin
}

/// A TLS listener on 127.0.0.1 presenting `cert`: it shakes hands and
/// answers a request 404, and closes the connection.
pub async fn tls_listener(cert: &rcgen::Certificate, key: &rcgen::KeyPair) -> u16 {
    use std::sync::Arc;
    use tokio_rustls::rustls;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    // The request's head, then the answer, then a clean
                    // close (close_notify): a connection dropped without
                    // one is a TLS error to the client, whether or not it
                    // had the answer yet.
                    let mut request = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = tls
                        .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                        .await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    port
}

/// The official MCP Python SDK (PyPI `mcp`, pinned in tests/pysdk),
/// installed into tests/pysdk/.venv by its `install.sh` on first use (it
/// does nothing when the venv is current). Returns tests/pysdk, whose
/// `server.py` is an authorization and MCP server and `host.py` a stdio
/// host, both built with the SDK.
pub fn pysdk_installed() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("pysdk");
    let lock = std::fs::File::create(std::env::temp_dir().join("mcpauth-pysdk-install.lock"))
        .expect("lock file");
    let _guard = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .expect("lock");
    let status = Command::new(dir.join("install.sh"))
        .stdout(Stdio::null())
        .status()
        .expect("python3 is needed for the Python SDK tests (tests/pysdk/install.sh)");
    assert!(status.success(), "tests/pysdk/install.sh failed");
    dir
}

/// A Secret Service (GNOME Keyring, unlocked, with its keyring in the
/// test's HOME) on a private D-Bus session bus: the OS keyring as a
/// desktop has it, for the tools that keep their logins there. Both
/// processes stop when it is dropped. GNOME Keyring and D-Bus come from
/// Debian's packages (`tests/keyring/install.sh`, run on first use).
pub struct SecretService {
    /// The bus, as `DBUS_SESSION_BUS_ADDRESS`.
    pub address: String,
    children: Vec<std::process::Child>,
    home: PathBuf,
    run: PathBuf,
}

/// The password of the tests' login keyring.
const KEYRING_PASSWORD: &[u8] = b"test-keyring-password";

impl SecretService {
    pub fn start(env: &TestEnv) -> Self {
        let installed = |b: &str| {
            Command::new("sh")
                .args(["-c", &format!("command -v {b}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        {
            let lock =
                std::fs::File::create(std::env::temp_dir().join("mcpauth-keyring-install.lock"))
                    .expect("lock file");
            let _guard = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
                .map_err(|(_, e)| e)
                .expect("lock");
            if !["gnome-keyring-daemon", "dbus-daemon", "dbus-send"]
                .iter()
                .all(|b| installed(b))
            {
                let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("keyring/install.sh");
                let status = Command::new(script)
                    .status()
                    .expect("tests/keyring/install.sh");
                assert!(status.success(), "tests/keyring/install.sh failed");
            }
        }
        let dir = env.root.path().join("session");
        std::fs::create_dir_all(dir.join("run")).unwrap();
        std::fs::set_permissions(dir.join("run"), std::fs::Permissions::from_mode(0o700)).unwrap();
        let socket = dir.join("bus");
        let address = format!("unix:path={}", socket.display());
        let bus = Command::new("dbus-daemon")
            .args(["--session", "--nofork", "--nopidfile"])
            .arg(format!("--address={address}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dbus-daemon");
        let mut service = SecretService {
            address,
            children: vec![bus],
            home: env.home(),
            run: dir.join("run"),
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "the session bus did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        service.start_keyring(&[]);
        loop {
            let answer = Command::new("dbus-send")
                .env("DBUS_SESSION_BUS_ADDRESS", &service.address)
                .args([
                    "--session",
                    "--print-reply",
                    "--dest=org.freedesktop.DBus",
                    "/org/freedesktop/DBus",
                    "org.freedesktop.DBus.NameHasOwner",
                    "string:org.freedesktop.secrets",
                ])
                .output()
                .expect("dbus-send");
            if String::from_utf8_lossy(&answer.stdout).contains("boolean true") {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the Secret Service did not start on the session bus"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        service
    }
}

impl SecretService {
    /// Starts GNOME Keyring with the login keyring unlocked: `--unlock`
    /// reads its password from stdin (and creates it, the default
    /// collection, the first time).
    fn start_keyring(&mut self, extra: &[&str]) {
        let mut keyring = Command::new("gnome-keyring-daemon")
            .args(["--foreground", "--unlock", "--components=secrets"])
            .args(extra)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &self.home)
            .env("XDG_RUNTIME_DIR", &self.run)
            .env("XDG_DATA_HOME", self.home.join(".local/share"))
            .env("DBUS_SESSION_BUS_ADDRESS", &self.address)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("gnome-keyring-daemon");
        {
            use std::io::Write;
            let mut stdin = keyring.stdin.take().unwrap();
            stdin.write_all(KEYRING_PASSWORD).unwrap();
        }
        self.children.push(keyring);
    }

    fn secret_call(&self, args: &[&str]) -> String {
        let out = Command::new("dbus-send")
            .env("DBUS_SESSION_BUS_ADDRESS", &self.address)
            .args([
                "--session",
                "--print-reply",
                "--dest=org.freedesktop.secrets",
            ])
            .args(args)
            .output()
            .expect("dbus-send");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Whether the login keyring is locked.
    pub fn is_locked(&self) -> bool {
        self.secret_call(&[
            "/org/freedesktop/secrets/collection/login",
            "org.freedesktop.DBus.Properties.Get",
            "string:org.freedesktop.Secret.Collection",
            "string:Locked",
        ])
        .contains("boolean true")
    }

    /// Locks the login keyring (as a screen lock or a timeout does).
    pub fn lock(&self) {
        self.secret_call(&[
            "/org/freedesktop/secrets",
            "org.freedesktop.Secret.Service.Lock",
            "array:objpath:/org/freedesktop/secrets/collection/login",
        ]);
        assert!(self.is_locked(), "the keyring did not lock");
    }

    /// Unlocks it with its password, as a desktop login does (a new
    /// GNOME Keyring replaces the running one, unlocked).
    pub fn unlock(&mut self) {
        self.start_keyring(&["--replace"]);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.is_locked()
            || !self
                .secret_call(&["/org/freedesktop/secrets", "org.freedesktop.DBus.Peer.Ping"])
                .contains("method return")
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the keyring did not unlock"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for SecretService {
    fn drop(&mut self) {
        for child in self.children.iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn leaked_finds_a_secret_anywhere_and_only_then() {
        let secrets = vec!["at-12-abc".to_string(), "rt-7-xyz_-".to_string()];
        assert_eq!(super::leaked("nothing here at-12-ab", &secrets), None);
        assert_eq!(
            super::leaked("x=\"at-12-abc\"", &secrets),
            Some("at-12-abc")
        );
        assert_eq!(
            super::leaked("prefixrt-7-xyz_-", &secrets),
            Some("rt-7-xyz_-")
        );
    }
}
