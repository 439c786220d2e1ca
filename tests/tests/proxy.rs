//! `mcpauthctl proxy NAME` end to end: the real binaries, a host played by
//! the test over stdin/stdout, and MCP servers protected by the test AS:
//! the in-repo test server (Streamable HTTP, and HTTP+SSE), and a server
//! built with the official TypeScript SDK from npm.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mcpauth_tests::authserver::{AuthServer, Switches};
use mcpauth_tests::mcpserver::{Hang, McpServer};
use mcpauth_tests::{TestEnv, wait_until};
use serde_json::{Value, json};

/// The proxy as a host runs it.
struct Host {
    child: Child,
    stdin: Option<ChildStdin>,
    out: mpsc::Receiver<String>,
    /// Messages read but not yet asked for.
    pending: std::cell::RefCell<Vec<Value>>,
    stdout_log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
    /// The threads reading stdout and stderr, done at their end.
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Host {
    fn start(env: &TestEnv, name: &str) -> Self {
        Self::start_with(env, name, &[])
    }

    fn start_with(env: &TestEnv, name: &str, vars: &[(&str, &str)]) -> Self {
        let mut child = env
            .command("mcpauthctl")
            .args(["proxy", name])
            .envs(vars.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, out) = mpsc::channel();
        let stdout_log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = stdout_log.clone();
        let stdout_reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                log.lock().unwrap().push(line.clone());
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let err = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = err.clone();
        let stderr_reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        Host {
            pending: Default::default(),
            stdin: child.stdin.take(),
            child,
            out,
            stdout_log,
            stderr: err,
            readers: vec![stdout_reader, stderr_reader],
        }
    }

    fn send(&mut self, message: Value) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{message}").unwrap();
        stdin.flush().unwrap();
    }

    /// The first message that satisfies `want`; others are kept for later.
    fn wait(&self, what: &str, want: impl Fn(&Value) -> bool) -> Value {
        {
            let mut pending = self.pending.borrow_mut();
            if let Some(i) = pending.iter().position(&want) {
                return pending.remove(i);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.out.recv_timeout(left).unwrap_or_else(|_| {
                panic!(
                    "no {what} from the proxy; stderr:\n{}",
                    self.stderr.lock().unwrap()
                )
            });
            let v: Value = serde_json::from_str(&line)
                .unwrap_or_else(|_| panic!("stdout carries only JSON-RPC: {line}"));
            if want(&v) {
                return v;
            }
            self.pending.borrow_mut().push(v);
        }
    }

    fn answer(&self, id: u64) -> Value {
        self.wait(&format!("answer {id}"), |v| {
            v["id"] == id && (v.get("result").is_some() || v.get("error").is_some())
        })
    }

    fn request(&mut self, id: u64, method: &str, params: Value) -> Value {
        self.send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        self.answer(id)
    }

    fn initialize(&mut self) -> Value {
        let answer = self.request(
            1,
            "initialize",
            json!({"protocolVersion": "2025-06-18", "capabilities": {},
                   "clientInfo": {"name": "test-host", "version": "1"}}),
        );
        self.send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        answer
    }

    /// Closes stdin and waits for a clean exit.
    fn close(mut self) -> (String, Vec<String>) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "proxy exit: {status}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the proxy did not exit after stdin closed"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // All it wrote has been read once both pipes are at their end.
        wait_until(
            Duration::from_secs(10),
            "the end of the proxy's output",
            || self.readers.iter().all(|r| r.is_finished()),
        );
        let stderr = self.stderr.lock().unwrap().clone();
        let stdout = self.stdout_log.lock().unwrap().clone();
        (stderr, stdout)
    }
}

async fn logged_in_to(mcp_legacy: bool) -> (AuthServer, McpServer, TestEnv, mcpauth_tests::Daemon) {
    let auth = AuthServer::start(Switches::default()).await;
    let mcp = McpServer::start(&auth.issuer, auth.validator(), mcp_legacy).await;
    let env = TestEnv::new();
    let daemon = env.start_daemon();
    env.ctl(&["add", "s", &mcp.url]).ok();
    env.ctl(&["login", "s"]).ok();
    (auth, mcp, env, daemon)
}

/// A server whose URL carries a credential in its query, logged in.
async fn logged_in_with_a_query(
    mcp_legacy: bool,
) -> (AuthServer, McpServer, TestEnv, mcpauth_tests::Daemon) {
    let auth = AuthServer::start(Switches::default()).await;
    let mcp = McpServer::start(&auth.issuer, auth.validator(), mcp_legacy).await;
    let env = TestEnv::new();
    let daemon = env.start_daemon();
    env.ctl(&["add", "s", &format!("{}?key=querysecret", mcp.url)])
        .ok();
    env.ctl(&["login", "s"]).ok();
    (auth, mcp, env, daemon)
}

/// What the proxy waits for response headers in these tests: 1 s, not 30.
const SHORT_OPEN: (&str, &str) = ("MCP_BROKER_TEST_PROXY_OPEN_MS", "1000");

/// Nothing the host sees or the proxy logs shows the URL's query.
fn assert_no_query(stderr: &str, stdout: &[String]) {
    for line in stderr.lines().chain(stdout.iter().map(String::as_str)) {
        assert!(
            !line.contains("querysecret") && !line.contains("key="),
            "a line shows the URL's query: {line}"
        );
    }
}

/// A server that accepts the initialize and never sends response headers:
/// the host's initialize gets a JSON-RPC error within the time limit, and
/// the line that says so shows the server's URL without its query.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_initialize_the_server_never_answers_gets_an_error_not_a_hang() {
    let (_auth, mcp, env, _d) = logged_in_with_a_query(false).await;
    mcp.hang(Hang::Everything);
    let mut host = Host::start_with(&env, "s", &[SHORT_OPEN]);
    let started = Instant::now();
    let init = host.request(1, "initialize", json!({"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "h", "version": "1"}}));
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(init["error"]["code"], -32002, "{init}");
    let message = init["error"]["message"].as_str().unwrap();
    assert!(message.contains("sent no answer within 1 s"), "{init}");
    assert!(message.contains(&mcp.url), "the URL is named: {init}");
    assert!(
        mcp.seen()
            .iter()
            .any(|s| s.rpc.as_deref() == Some("initialize")),
        "the server got it"
    );
    let (stderr, stdout) = host.close();
    assert!(stderr.contains("sent no answer"), "{stderr}");
    assert_no_query(&stderr, &stdout);
}

/// An HTTP+SSE (2024-11-05) server whose stream never opens: the GET for
/// the `endpoint` event is limited too, and the host hears of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_sse_stream_that_never_opens_gets_the_host_an_error_not_a_hang() {
    let (_auth, mcp, env, _d) = logged_in_with_a_query(true).await;
    mcp.hang(Hang::Gets);
    let mut host = Host::start_with(&env, "s", &[SHORT_OPEN]);
    let started = Instant::now();
    let init = host.request(1, "initialize", json!({"protocolVersion": "2024-11-05", "capabilities": {}, "clientInfo": {"name": "h", "version": "1"}}));
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(init["error"]["code"], -32002, "{init}");
    let message = init["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("not an HTTP+SSE server either") && message.contains("sent no answer"),
        "{init}"
    );
    assert!(
        mcp.seen().iter().any(|s| s.method == "GET"),
        "the stream was asked for"
    );
    let (stderr, stdout) = host.close();
    assert_no_query(&stderr, &stdout);
}

/// The Streamable HTTP GET stream is limited while it opens, not once
/// open: a server that never answers it costs a line and a retry, and
/// requests go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_stream_that_never_opens_is_retried_and_requests_go_on() {
    let (_auth, mcp, env, _d) = logged_in_with_a_query(false).await;
    mcp.hang(Hang::Gets);
    let mut host = Host::start_with(&env, "s", &[SHORT_OPEN]);
    let init = host.initialize();
    assert!(init["result"].is_object(), "{init}");
    wait_until(Duration::from_secs(10), "the GET to be given up on", || {
        host.stderr.lock().unwrap().contains("sent no answer")
    });
    let tools = host.request(2, "tools/list", json!({}));
    assert!(tools["result"]["tools"].is_array(), "{tools}");
    let (stderr, stdout) = host.close();
    assert!(stderr.contains("event stream failed"), "{stderr}");
    assert_no_query(&stderr, &stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_bridges_sessions_json_sse_and_server_messages_and_recovers_a_401() {
    let (auth, mcp, env, _d) = logged_in_to(false).await;
    let mut host = Host::start(&env, "s");
    let init = host.initialize();
    assert_eq!(init["result"]["protocolVersion"], "2025-06-18", "{init}");

    // JSON answers.
    let tools = host.request(2, "tools/list", json!({}));
    assert_eq!(
        tools["result"]["tools"].as_array().unwrap().len(),
        3,
        "{tools}"
    );
    // An SSE answer: the notification first, then the result.
    host.send(json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "sse", "arguments": {}}}));
    host.wait("progress", |v| v["method"] == "notifications/progress");
    assert_eq!(host.answer(3)["result"]["content"][0]["text"], "sse done");

    // Server-initiated messages on the GET stream.
    wait_until(Duration::from_secs(10), "a GET stream to open", || {
        mcp.seen()
            .iter()
            .any(|s| s.method == "GET" && s.status == 200)
    });
    mcp.push(json!({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}));
    host.wait("a server-initiated message", |v| {
        v["method"] == "notifications/tools/list_changed"
    });

    // A stream that breaks before its answer is resumed with Last-Event-ID.
    let answer = host.request(4, "tools/call", json!({"name": "broken", "arguments": {}}));
    assert_eq!(
        answer["result"]["content"][0]["text"], "broken done",
        "{answer}"
    );
    assert!(
        mcp.seen()
            .iter()
            .any(|s| s.method == "GET" && s.last_event_id.is_some()),
        "resumed with Last-Event-ID"
    );

    // Headers: the session, the negotiated version, the method headers.
    let seen = mcp.seen();
    let session = seen
        .iter()
        .find_map(|s| s.session.clone())
        .expect("a session id was sent");
    // (The broker's discovery probe, without a token, is not the proxy's.)
    for s in seen.iter().filter(|s| {
        s.method == "POST" && s.rpc.as_deref() != Some("initialize") && s.bearer.is_some()
    }) {
        assert_eq!(s.session.as_deref(), Some(session.as_str()), "{s:?}");
        assert_eq!(s.protocol_version.as_deref(), Some("2025-06-18"), "{s:?}");
        assert_eq!(s.mcp_method, s.rpc, "{s:?}");
    }
    let call = seen
        .iter()
        .find(|s| s.rpc.as_deref() == Some("tools/call"))
        .unwrap();
    assert_eq!(call.mcp_name.as_deref(), Some("sse"));

    // The server stops accepting the token mid-session: one refresh, and
    // the request still succeeds, as do requests sent at the same time.
    auth.reject_current_access_tokens();
    for id in 10..15 {
        host.send(json!({"jsonrpc": "2.0", "id": id, "method": "tools/list", "params": {}}));
    }
    for id in 10..15 {
        let a = host.answer(id);
        assert!(a.get("result").is_some(), "{a}");
    }
    assert_eq!(
        auth.token_requests("refresh_token").len(),
        1,
        "one recovery for all"
    );

    // 403 insufficient_scope: an error that tells the person what to do,
    // and the step-up is recorded.
    let denied = host.request(20, "tools/call", json!({"name": "admin", "arguments": {}}));
    assert_eq!(denied["error"]["code"], -32001, "{denied}");
    assert!(
        denied["error"]["message"]
            .as_str()
            .unwrap()
            .contains("mcpauthctl login s"),
        "{denied}"
    );
    assert_eq!(
        env.ctl(&["show", "s", "--json"]).json()["state"],
        "step_up_required"
    );

    // The host goes away: the session is deleted, the exit is clean, and
    // no token was ever printed.
    let (stderr, stdout) = host.close();
    assert_eq!(mcp.deleted(), vec![session]);
    let secrets = auth.secrets();
    let all = format!("{stderr}\n{}", stdout.join("\n"));
    assert!(
        mcpauth_tests::leaked(&all, &secrets).is_none(),
        "a secret in the proxy's output"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_login_requests_are_answered_at_once_and_a_login_heals_without_a_restart() {
    let auth = AuthServer::start(Switches::default()).await;
    let mcp = McpServer::start(&auth.issuer, auth.validator(), false).await;
    let env = TestEnv::new();
    let _d = env.start_daemon();
    env.ctl(&["add", "s", &mcp.url]).ok();
    let mut host = Host::start(&env, "s");
    let started = Instant::now();
    let init = host.request(1, "initialize", json!({"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "h", "version": "1"}}));
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(init["error"]["code"], -32001, "{init}");
    assert!(
        init["error"]["message"]
            .as_str()
            .unwrap()
            .contains("mcpauthctl login s"),
        "{init}"
    );
    assert!(mcp.seen().is_empty(), "nothing was sent without a token");
    // The next step is said once.
    let said = init["error"]["message"].as_str().unwrap();
    assert_eq!(said.matches("mcpauthctl login s").count(), 1, "{said}");

    env.ctl(&["login", "s"]).ok();
    // The host goes on without initializing again (its initialize got an
    // error): the proxy starts the session with the host's initialize.
    let tools = host.request(2, "tools/list", json!({}));
    assert!(tools["result"]["tools"].is_array(), "{tools}");
    let posts: Vec<String> = mcp
        .seen()
        .iter()
        .filter(|s| s.method == "POST" && s.bearer.is_some())
        .filter_map(|s| s.rpc.clone())
        .collect();
    assert_eq!(posts[0], "initialize", "{posts:?}");
    assert_eq!(posts.last().map(String::as_str), Some("tools/list"));
    let (stderr, _) = host.close();
    assert!(
        stderr.lines().count() <= 3,
        "one line per problem:\n{stderr}"
    );
}

/// The server's URL changes in config.toml while a host is connected,
/// and the person logs in to the new server: the old server never sees
/// the new server's token. The proxy says so once, tells the host to
/// restart it, and ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_change_never_sends_the_new_servers_token_to_the_old_one() {
    let (old_auth, old_mcp, env, _d) = logged_in_to(false).await;
    let new_auth = AuthServer::start(Switches::default()).await;
    let new_mcp = McpServer::start(&new_auth.issuer, new_auth.validator(), false).await;
    let mut host = Host::start(&env, "s");
    host.initialize();
    let tools = host.request(2, "tools/list", json!({}));
    assert!(tools["result"]["tools"].is_array(), "{tools}");

    env.write_config(&format!("[servers.s]\nurl = \"{}\"\n", new_mcp.url));
    wait_until(Duration::from_secs(10), "the URL change to apply", || {
        env.ctl(&["show", "s", "--json"]).json()["url"] == new_mcp.url.as_str()
    });
    env.ctl(&["login", "s"]).ok();
    let new_token = env.ctl(&["token", "s"]).ok().trim().to_string();
    assert!(new_auth.is_valid_access_token(&new_token));

    // The old server stops taking the old token: the proxy reports it,
    // and the broker's answer is a token for the new URL.
    old_auth.reject_current_access_tokens();
    let answer = host.request(3, "tools/list", json!({}));
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("restart") && message.contains(&new_mcp.url),
        "{answer}"
    );
    let (stderr, _) = host.close();
    assert!(
        old_mcp
            .seen()
            .iter()
            .all(|r| r.bearer.as_deref() != Some(new_token.as_str())),
        "the old server received the new server's token"
    );
    assert!(new_mcp.seen().iter().all(|r| r.bearer.is_none()));
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains(&new_mcp.url), "{stderr}");
}

/// Some servers end the session whenever the token changes: the proxy's
/// next request meets 404, starts one new session (replaying the host's
/// initialize), and the request succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_the_server_ends_after_a_refresh_is_started_again_once() {
    let (_auth, mcp, env, _d) = logged_in_to(false).await;
    let mut host = Host::start(&env, "s");
    host.initialize();
    assert!(host.request(2, "tools/list", json!({}))["result"].is_object());
    env.ctl(&["refresh", "s"]).ok();
    mcp.drop_sessions();
    let tools = host.request(3, "tools/list", json!({}));
    assert!(tools["result"]["tools"].is_array(), "{tools}");
    let initializes = mcp
        .seen()
        .iter()
        .filter(|s| s.rpc.as_deref() == Some("initialize") && s.bearer.is_some())
        .count();
    assert_eq!(initializes, 2, "the host's, and one new session");
    host.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_sse_server_of_2024_11_05_is_bridged_too() {
    let (_auth, mcp, env, _d) = logged_in_to(true).await;
    let mut host = Host::start(&env, "s");
    let init = host.initialize();
    assert_eq!(init["result"]["protocolVersion"], "2024-11-05", "{init}");
    let tools = host.request(2, "tools/list", json!({}));
    assert!(tools["result"]["tools"].is_array(), "{tools}");
    assert!(mcp.seen().iter().any(|s| s.path == "/messages"));
    host.close();
}

/// A rejected token and a step-up are met as on Streamable HTTP: the
/// same one recovery serves both transports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_sse_server_gets_the_same_401_recovery_and_step_up() {
    let (auth, _mcp, env, _d) = logged_in_to(true).await;
    let mut host = Host::start(&env, "s");
    host.initialize();
    auth.reject_current_access_tokens();
    let tools = host.request(2, "tools/list", json!({}));
    assert!(tools["result"]["tools"].is_array(), "{tools}");
    assert_eq!(auth.token_requests("refresh_token").len(), 1);
    let denied = host.request(3, "tools/call", json!({"name": "admin", "arguments": {}}));
    assert_eq!(denied["error"]["code"], -32001, "{denied}");
    let said = denied["error"]["message"].as_str().unwrap();
    assert_eq!(said.matches("mcpauthctl login s").count(), 1, "{said}");
    assert_eq!(
        env.ctl(&["show", "s", "--json"]).json()["state"],
        "step_up_required"
    );
    host.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_sse_session_lost_with_its_stream_is_started_again() {
    let (_auth, mcp, env, _d) = logged_in_to(true).await;
    let mut host = Host::start(&env, "s");
    host.initialize();
    host.request(2, "tools/list", json!({}));
    // The server restarts: the stream ends, and the session with it.
    mcp.drop_legacy_streams();
    wait_until(
        Duration::from_secs(10),
        "the proxy to notice the stream end",
        || {
            host.stderr
                .lock()
                .unwrap()
                .contains("closed its event stream")
        },
    );
    // The host's next request works: a new stream, its initialize
    // replayed there, then the request.
    let tools = host.request(3, "tools/list", json!({}));
    assert!(tools["result"]["tools"].is_array(), "{tools}");
    let seen = mcp.seen();
    let streams = seen
        .iter()
        .filter(|s| s.method == "GET" && s.path == "/mcp")
        .count();
    assert_eq!(streams, 2, "one new stream");
    let posts: Vec<&str> = seen
        .iter()
        .filter(|s| s.path == "/messages")
        .filter_map(|s| s.rpc.as_deref())
        .collect();
    assert_eq!(
        posts,
        [
            "initialize",
            "notifications/initialized",
            "tools/list",
            "initialize",
            "notifications/initialized",
            "tools/list"
        ]
    );
    let (stderr, stdout) = host.close();
    // The replayed initialize's answer stayed with the proxy: the host
    // saw one answer to its one initialize.
    let answers_to_initialize = stdout
        .iter()
        .filter(|l| l.contains("protocolVersion"))
        .count();
    assert_eq!(answers_to_initialize, 1, "{stdout:?}");
    assert!(
        stderr.contains("starting a new one"),
        "one line says so:\n{stderr}"
    );
}

/// Installs the official SDK (tests/sdk) with npm, once per test run.
fn sdk_installed() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("sdk");
    let lock =
        std::fs::File::create(std::env::temp_dir().join("mcpauth-sdk-install.lock")).unwrap();
    let _guard = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).unwrap();
    if !dir
        .join("node_modules/@modelcontextprotocol/sdk/package.json")
        .exists()
    {
        let status = std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .status()
            .expect("npm is needed for the SDK interoperability test");
        assert!(status.success(), "npm ci in tests/sdk failed");
    }
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_talks_to_a_server_built_with_the_official_sdk() {
    let dir = sdk_installed();
    let auth = AuthServer::start(Switches::default()).await;
    let env = TestEnv::new();
    let _d = env.start_daemon();
    let bearer = env.root.path().join("bearer");
    std::fs::write(&bearer, "no token yet").unwrap();
    let mut server = KillOnDrop(
        std::process::Command::new("node")
            .arg(dir.join("server.mjs"))
            .env("MCP_TEST_BEARER_FILE", &bearer)
            .env("MCP_TEST_ISSUER", &auth.issuer)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut url = String::new();
    BufReader::new(server.0.stdout.take().unwrap())
        .read_line(&mut url)
        .unwrap();
    let url = url.trim().to_string();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    // The broker discovers the test AS from the SDK server's metadata and
    // logs in there; the SDK server is told which token is good.
    env.ctl(&["add", "sdk", &url]).ok();
    env.ctl(&["login", "sdk"]).ok();
    let token = env.ctl(&["token", "sdk"]).ok().trim().to_string();
    std::fs::write(&bearer, &token).unwrap();

    let mut host = Host::start(&env, "sdk");
    let init = host.initialize();
    assert!(
        init["result"]["serverInfo"]["name"] == "sdk-test-server",
        "{init}"
    );
    let tools = host.request(2, "tools/list", json!({}));
    assert_eq!(tools["result"]["tools"][0]["name"], "echo", "{tools}");
    host.send(json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
                     "params": {"name": "echo", "arguments": {"text": "hi"}}}));
    let log = host.wait("the log notification", |v| {
        v["method"] == "notifications/message"
    });
    assert_eq!(log["params"]["data"], "echoing hi", "{log}");
    assert_eq!(host.answer(3)["result"]["content"][0]["text"], "echo: hi");

    // The token is replaced (refreshed elsewhere) and the SDK server only
    // takes the new one: the proxy's next request recovers on the 401.
    env.ctl(&["refresh", "sdk"]).ok();
    let fresh = env.ctl(&["token", "sdk"]).ok().trim().to_string();
    assert_ne!(fresh, token);
    std::fs::write(&bearer, &fresh).unwrap();
    let again = host.request(4, "tools/list", json!({}));
    assert!(again.get("result").is_some(), "{again}");
    host.close();
}

async fn pysdk_stats(base: &str) -> Value {
    reqwest::get(format!("{base}/test/stats"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// An authorization server built with the MCP Python SDK's auth routes, as
/// FastMCP's is, with `valid_scopes` and no default scopes: it refuses any
/// authorization for a scope the client did not register with. The
/// broker registers for the scope it asks, logs in, refreshes 3 s tokens,
/// and a host calls a tool through the proxy before and after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_authorization_server_that_limits_scopes() {
    let dir = mcpauth_tests::pysdk_installed();
    let mut server = KillOnDrop(
        std::process::Command::new(dir.join(".venv/bin/python"))
            .arg(dir.join("server.py"))
            .env("MCP_TEST_TOKEN_TTL", "3")
            .env("MCP_TEST_NO_DEFAULT_SCOPES", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut url = String::new();
    BufReader::new(server.0.stdout.take().unwrap())
        .read_line(&mut url)
        .unwrap();
    let url = url.trim().to_string();
    let base = url.trim_end_matches("/mcp").to_string();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let env = TestEnv::new();
    let _d = env.start_daemon();
    env.ctl(&["add", "py", &url]).ok();
    let login = env.ctl(&["login", "py"]);
    assert_eq!(login.code(), 0, "{}", login.stderr());
    let first = env.ctl(&["token", "py"]).ok().trim().to_string();
    let stats = pysdk_stats(&base).await;
    assert_eq!(stats["register"], 1, "{stats}");
    assert_eq!(stats["register_scopes"], json!(["mcp:tools"]), "{stats}");

    let mut host = Host::start(&env, "py");
    host.initialize();
    let call = |id: u64| {
        json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                                "params": {"name": "echo", "arguments": {"text": "hi"}}})
    };
    host.send(call(2));
    assert_eq!(host.answer(2)["result"]["content"][0]["text"], "echo: hi");

    // The first token expires; the broker refreshes (without scope, the
    // spec's form, which this AS takes) and the next call still works.
    let deadline = Instant::now() + Duration::from_secs(20);
    while pysdk_stats(&base).await["token"]["refresh_token"] == 0 {
        assert!(Instant::now() < deadline, "no refresh");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Until the first token's lifetime is over: the SDK server turns it
    // away.
    let deadline = Instant::now() + Duration::from_secs(20);
    while reqwest::Client::new()
        .post(&url)
        .bearer_auth(&first)
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}))
        .send()
        .await
        .unwrap()
        .status()
        != 401
    {
        assert!(Instant::now() < deadline, "the first token never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    host.send(call(3));
    assert_eq!(host.answer(3)["result"]["content"][0]["text"], "echo: hi");
    let stats = pysdk_stats(&base).await;
    assert_eq!(stats["register"], 1, "{stats}");
    assert_eq!(stats["authorize"], 1, "{stats}");
    host.close();
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
