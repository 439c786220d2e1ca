//! mcpauth-bench: the broker's costs next to their physical floors, measured
//! side by side in one run (absolute times drift on shared machines; ratios
//! to a baseline taken in the same run do not).
//!
//! ```sh
//! cargo build --release --workspace && target/release/mcpauth-bench [--smoke]
//! ```
//!
//! It starts the real release `mcpauthd` against the in-repo test
//! authorization server, logs in, and prints one markdown table. `--smoke`
//! runs a few iterations of each (CI); it fails only if the 401 storm
//! reaches the authorization server more than once, never on timings.
//!
//! Helper modes (run as subprocesses by the benchmark):
//! - `mcpauth-bench floor-server SOCKET REPLY_BYTES`: a minimal Unix-socket
//!   request/response server: the floor any local IPC must pay.
//! - `mcpauth-bench read-file PATH`: stat, read and parse a JSON token file
//!   and print the token: what file-based clients do on every call.

use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mcpauth_tests::TestEnv;
use mcpauth_tests::authserver::{AuthServer, Switches};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("floor-server") => floor_server(Path::new(&args[1]), args[2].parse().unwrap()),
        Some("read-file") => read_file(Path::new(&args[1])),
        Some("--smoke") | None => {
            let smoke = args.first().is_some_and(|a| a == "--smoke");
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            std::process::exit(runtime.block_on(bench(smoke)));
        }
        Some(other) => {
            eprintln!("unknown mode {other}; usage: mcpauth-bench [--smoke]");
            std::process::exit(2);
        }
    }
}

// --- helper modes ----------------------------------------------------------

/// Length-prefixed request in, `reply_bytes` out, per connection, forever.
fn floor_server(socket: &Path, reply_bytes: usize) {
    let listener = std::os::unix::net::UnixListener::bind(socket).unwrap();
    let reply: Vec<u8> = {
        let mut r = (reply_bytes as u32).to_be_bytes().to_vec();
        r.extend(std::iter::repeat_n(b'x', reply_bytes));
        r
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        listener.set_nonblocking(true).unwrap();
        let listener = tokio::net::UnixListener::from_std(listener).unwrap();
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let reply = reply.clone();
            tokio::spawn(async move {
                let mut len = [0u8; 4];
                let mut buf = vec![0u8; 4096];
                loop {
                    if stream.read_exact(&mut len).await.is_err() {
                        return;
                    }
                    let n = u32::from_be_bytes(len) as usize;
                    if stream.read_exact(&mut buf[..n]).await.is_err() {
                        return;
                    }
                    if stream.write_all(&reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
}

fn read_file(path: &Path) {
    let meta = std::fs::metadata(path).unwrap();
    assert!(meta.len() > 0);
    let text = std::fs::read(path).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&text).unwrap();
    println!("{}", json["access_token"].as_str().unwrap());
}

// --- statistics ------------------------------------------------------------

struct Stats {
    values: Vec<f64>,
}

impl Stats {
    fn new(mut values: Vec<f64>) -> Self {
        values.sort_by(|a, b| a.partial_cmp(b).unwrap());
        Self { values }
    }
    fn pct(&self, p: f64) -> f64 {
        if self.values.is_empty() {
            return f64::NAN;
        }
        let i = ((self.values.len() - 1) as f64 * p).round() as usize;
        self.values[i]
    }
    fn median(&self) -> f64 {
        self.pct(0.5)
    }
    fn p99(&self) -> f64 {
        self.pct(0.99)
    }
    fn min(&self) -> f64 {
        self.values.first().copied().unwrap_or(f64::NAN)
    }
}

struct Row {
    figure: String,
    ours: String,
    baseline: String,
    ratio: String,
    target: String,
}

fn fmt(v: f64, unit: &str) -> String {
    if v >= 100.0 {
        format!("{v:.0} {unit}")
    } else if v >= 10.0 {
        format!("{v:.1} {unit}")
    } else {
        format!("{v:.2} {unit}")
    }
}

// --- the benchmark -----------------------------------------------------------

async fn bench(smoke: bool) -> i32 {
    let runs = if smoke { 2 } else { 5 };
    let seq_calls = if smoke { 500 } else { 20_000 };
    let conc_time = Duration::from_millis(if smoke { 200 } else { 2_000 });
    let oneshots = if smoke { 10 } else { 200 };
    let pickups = if smoke { 5 } else { 100 };
    let churn_calls: u64 = if smoke { 20_000 } else { 1_000_000 };
    let mut rows = Vec::new();
    let mut failed = false;

    let server = AuthServer::start(Switches::default()).await;
    let env = TestEnv::new();
    let import = env.root.path().join("import/s.json");
    std::fs::create_dir_all(import.parent().unwrap()).unwrap();
    env.write_config(&format!(
        "[servers.s]\nurl = \"{}\"\nimport = {{ path = \"{}\", format = \"generic\" }}\n",
        server.mcp_url,
        import.display()
    ));
    let mut cmd = env.command("mcpauthd");
    cmd.env(mcpauth_proto::env::LOG, "warn");
    // BENCH_DAEMON_WRAPPER="valgrind --tool=callgrind ..." profiles the
    // daemon (see README, "Performance").
    if let Ok(wrapper) = std::env::var("BENCH_DAEMON_WRAPPER") {
        let words: Vec<&str> = wrapper.split_whitespace().collect();
        let mut wrapped = Command::new(words[0]);
        wrapped
            .args(&words[1..])
            .arg(mcpauth_tests::bin("mcpauthd"))
            .env_clear();
        for (k, v) in cmd.get_envs() {
            if let Some(v) = v {
                wrapped.env(k, v);
            }
        }
        cmd = wrapped;
    }
    let daemon = env.spawn_daemon(&mut cmd).expect("daemon ready");
    let login = env.ctl(&["login", "s"]);
    assert_eq!(login.code(), 0, "login: {}", login.stderr());
    let socket = env.socket();
    let mut client = mcpauth_client::Client::connect(&socket).await.unwrap();
    let reply = client.get_token("s", Some(0)).await.unwrap();
    let reply_bytes = reply.encoded_len();
    let request_bytes = mcpauth_client::pb::GetTokenRequest {
        server: "s".into(),
        min_ttl_secs: Some(0),
        headers_helper: false,
    }
    .encoded_len();

    // The floor: a minimal request/response over a Unix socket.
    let floor_socket = env.root.path().join("floor.sock");
    let mut floor = Command::new(std::env::current_exe().unwrap())
        .args([
            "floor-server",
            floor_socket.to_str().unwrap(),
            &reply_bytes.to_string(),
        ])
        .spawn()
        .unwrap();
    while StdUnixStream::connect(&floor_socket).is_err() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // 1. GetToken cache hit, sequential.
    let mut ours = Vec::new();
    let mut base = Vec::new();
    for _ in 0..runs {
        for _ in 0..(seq_calls / 10) {
            client.get_token("s", Some(0)).await.unwrap();
        }
        for _ in 0..seq_calls {
            let t = Instant::now();
            client.get_token("s", Some(0)).await.unwrap();
            ours.push(t.elapsed().as_secs_f64() * 1e6);
        }
        let mut stream = tokio::net::UnixStream::connect(&floor_socket)
            .await
            .unwrap();
        let mut request = (request_bytes as u32).to_be_bytes().to_vec();
        request.extend(std::iter::repeat_n(b'r', request_bytes));
        let mut buf = vec![0u8; reply_bytes + 4];
        for i in 0..seq_calls + seq_calls / 10 {
            let t = Instant::now();
            stream.write_all(&request).await.unwrap();
            stream.read_exact(&mut buf).await.unwrap();
            if i >= seq_calls / 10 {
                base.push(t.elapsed().as_secs_f64() * 1e6);
            }
        }
    }
    let (o, b) = (Stats::new(ours), Stats::new(base));
    rows.push(Row {
        figure: format!(
            "1. GetToken, cache hit, 1 client, sequential (latency; {reply_bytes}-byte reply)"
        ),
        ours: format!("{} / {}", fmt(o.median(), "µs"), fmt(o.p99(), "µs")),
        baseline: format!("{} / {}", fmt(b.median(), "µs"), fmt(b.p99(), "µs")),
        ratio: format!("{:.1}x", o.median() / b.median()),
        target: "≤ 3x floor".into(),
    });

    if std::env::var_os("BENCH_ONLY_SEQUENTIAL").is_some() {
        print_table(&rows, smoke);
        let _ = floor.kill();
        let _ = floor.wait();
        // A clean exit, so a profiler wrapping the daemon writes its data.
        let mut daemon = daemon;
        daemon.signal(nix::sys::signal::Signal::SIGTERM);
        let _ = daemon.wait_for_exit(Duration::from_secs(120));
        return i32::from(failed);
    }

    // 2. GetToken cache hit, 64 concurrent clients over 8 connections.
    let mut ours = Vec::new();
    let mut base = Vec::new();
    for _ in 0..runs {
        let mut clients = Vec::new();
        for _ in 0..8 {
            clients.push(mcpauth_client::Client::connect(&socket).await.unwrap());
        }
        let shared = clients.clone();
        ours.push(
            throughput(conc_time, 64, move |i| {
                let mut c = shared[i % 8].clone();
                async move {
                    c.get_token("s", Some(0)).await.unwrap();
                }
            })
            .await,
        );
        base.push(floor_throughput(&floor_socket, conc_time, 64, request_bytes, reply_bytes).await);
    }
    let (o, b) = (Stats::new(ours), Stats::new(base));
    rows.push(Row {
        figure: "2. GetToken, cache hit, 64 concurrent clients (calls/s; median / worst run)"
            .into(),
        ours: format!("{:.0} / {:.0}", o.median(), o.min()),
        baseline: format!("{:.0} / {:.0}", b.median(), b.min()),
        ratio: format!("{:.1}x", b.median() / o.median()),
        target: "≥ 50,000/s, ≤ 3x floor".into(),
    });
    let _ = floor.kill();
    let _ = floor.wait();

    // 3. One-shot `mcpauthctl token` vs reading a token file.
    let token_file = env.root.path().join("token-file.json");
    std::fs::write(
        &token_file,
        serde_json::json!({"access_token": reply.access_token, "expires_at": reply.expires_at_unix_ms / 1000, "token_type": "Bearer"}).to_string(),
    )
    .unwrap();
    let ctl = mcpauth_tests::bin("mcpauthctl");
    let me = std::env::current_exe().unwrap();
    let mut ours = Vec::new();
    let mut base = Vec::new();
    for _ in 0..oneshots {
        ours.push(wall(Command::new(&ctl).args([
            "--socket",
            socket.to_str().unwrap(),
            "token",
            "s",
        ])));
        base.push(wall(
            Command::new(&me).args(["read-file", token_file.to_str().unwrap()]),
        ));
    }
    let (o, b) = (Stats::new(ours), Stats::new(base));
    rows.push(Row {
        figure: "3. One-shot `mcpauthctl token NAME` as a new process (wall time)".into(),
        ours: format!("{} / {}", fmt(o.median(), "ms"), fmt(o.p99(), "ms")),
        baseline: format!("{} / {}", fmt(b.median(), "ms"), fmt(b.p99(), "ms")),
        ratio: format!("{:.1}x", o.median() / b.median()),
        target: "≤ 5 ms median".into(),
    });

    // 4. 401 storm: 1,000 reports of one token from 20 processes, next to
    // the same 1,000 callers asking for the token (no refresh to wait for).
    let as_delay_ms = 50;
    let storm = |token: String| {
        let start_ms = mcpauth_tests::now_ms() + 1500;
        let children: Vec<_> = (0..20)
            .map(|_| {
                let mut c = env.command("test-client");
                c.args([
                    "broker",
                    socket.to_str().unwrap(),
                    "s",
                    &token,
                    "50",
                    &start_ms.to_string(),
                ])
                .stdout(Stdio::piped());
                c.spawn().unwrap()
            })
            .collect();
        let mut done = Vec::new();
        let mut tokens = std::collections::BTreeSet::new();
        for child in children {
            let out = child.wait_with_output().unwrap();
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let (token, at) = line.split_once('\t').unwrap_or((line, "0"));
                tokens.insert(token.to_string());
                done.push((at.parse::<i64>().unwrap_or(0) - start_ms * 1000) as f64 / 1000.0);
            }
        }
        (Stats::new(done), tokens)
    };
    let (plain, _) = storm("-".into());
    server.set(|s| s.token_delay_ms = as_delay_ms);
    let rejected = client.get_token("s", Some(0)).await.unwrap().access_token;
    let before = server.token_requests("refresh_token").len();
    let (d, tokens) = storm(rejected);
    server.set(|s| s.token_delay_ms = 0);
    let as_requests = server.token_requests("refresh_token").len() - before;
    let last = d.values.last().copied().unwrap_or(f64::NAN);
    let plain_last = plain.values.last().copied().unwrap_or(f64::NAN);
    println!(
        "401 storm: 1000 callers in 20 processes; AS token requests: {as_requests}; distinct tokens received: {}",
        tokens.len()
    );
    if as_requests != 1 || tokens.len() != 1 || d.values.len() != 1000 {
        eprintln!(
            "FAILED: the storm must cause exactly one AS request and give everyone the same token"
        );
        failed = true;
    }
    rows.push(Row {
        figure: format!(
            "4. 401 storm: 1,000 reports from 20 processes (time until served; AS answers in {as_delay_ms} ms; baseline: the same callers calling GetToken)"
        ),
        ours: format!("{} / {} (last {})", fmt(d.median(), "ms"), fmt(d.p99(), "ms"), fmt(last, "ms")),
        baseline: format!("{} / {} (last {})", fmt(plain.median(), "ms"), fmt(plain.p99(), "ms"), fmt(plain_last, "ms")),
        ratio: format!("last: +{:.1} ms over the baseline's last; {as_requests} AS request", last - plain_last),
        target: "1 AS request; last ≤ AS + 5 ms".into(),
    });

    // 5. Import pickup: external atomic write until served.
    let mut ours = Vec::new();
    let base_expiry = mcpauth_tests::now_ms() / 1000 + 7200;
    for i in 0..pickups {
        let token = format!("imported-{i}");
        let tmp = import.with_extension("tmp");
        std::fs::write(
            &tmp,
            serde_json::json!({"access_token": token, "expires_at": base_expiry + i as i64, "issuer": server.issuer}).to_string(),
        )
        .unwrap();
        let t = Instant::now();
        std::fs::rename(&tmp, &import).unwrap();
        loop {
            if client.get_token("s", Some(0)).await.unwrap().access_token == token {
                break;
            }
            if t.elapsed() > Duration::from_secs(5) {
                eprintln!("import {i} not picked up within 5 s");
                failed = true;
                break;
            }
        }
        ours.push(t.elapsed().as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let o = Stats::new(ours);
    rows.push(Row {
        figure: "5. Import pickup: atomic write of a token file until served".into(),
        ours: format!("{} / {}", fmt(o.median(), "ms"), fmt(o.p99(), "ms")),
        baseline: "-".into(),
        ratio: "-".into(),
        target: "p99 ≤ 100 ms".into(),
    });

    // 6. Memory and start-up.
    let rss_before = rss_kb(daemon.pid());
    let served = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(mcpauth_client::Client::connect(&socket).await.unwrap());
    }
    let mut tasks = Vec::new();
    for i in 0..64 {
        let mut c = clients[i % 8].clone();
        let served = served.clone();
        tasks.push(tokio::spawn(async move {
            while served.fetch_add(1, Ordering::Relaxed) < churn_calls {
                c.get_token("s", Some(0)).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let rss_after = rss_kb(daemon.pid());
    let mut ready = Vec::new();
    let mut idle = Vec::new();
    for _ in 0..runs {
        let (ms, kb) = start_with_servers(100);
        ready.push(ms);
        idle.push(kb as f64 / 1024.0);
    }
    let (r, m) = (Stats::new(ready), Stats::new(idle));
    rows.push(Row {
        figure: "6a. Daemon RSS, idle, 100 servers configured".into(),
        ours: format!("{} / {}", fmt(m.median(), "MiB"), fmt(m.p99(), "MiB")),
        baseline: "-".into(),
        ratio: "-".into(),
        target: "≤ 20 MB".into(),
    });
    rows.push(Row {
        figure: format!("6b. Daemon RSS before / after {churn_calls} GetToken calls"),
        ours: format!(
            "{} → {}",
            fmt(rss_before as f64 / 1024.0, "MiB"),
            fmt(rss_after as f64 / 1024.0, "MiB")
        ),
        baseline: "-".into(),
        ratio: format!(
            "{:+.1} %",
            (rss_after as f64 / rss_before as f64 - 1.0) * 100.0
        ),
        target: "growth ≤ 10 %".into(),
    });
    rows.push(Row {
        figure: "6c. Time from start to ready (100 servers)".into(),
        ours: format!("{} / {}", fmt(r.median(), "ms"), fmt(r.p99(), "ms")),
        baseline: "-".into(),
        ratio: "-".into(),
        target: "≤ 100 ms".into(),
    });

    // 7. Idle wakeups: the daemon runs all day on laptops.
    let idle_secs = if smoke { 2 } else { 10 };
    let (per_sec, by_thread) = idle_wakeups(100, Duration::from_secs(idle_secs));
    rows.push(Row {
        figure: format!("7. Idle wakeups per second, 100 servers ({idle_secs} s)"),
        ours: format!("{per_sec:.1}/s ({by_thread})"),
        baseline: "-".into(),
        ratio: "-".into(),
        target: "≤ 1/s".into(),
    });

    // 8. Short tokens: 5 processes x 30 GetToken calls with 3 s tokens.
    let (refreshes, elapsed) = short_token_refreshes().await;
    rows.push(Row {
        figure: "8. Refreshes per 150 calls, 3 s tokens (5 clients x 30, 100 ms apart)".into(),
        ours: format!("{refreshes} in {:.1} s", elapsed.as_secs_f64()),
        baseline: "150 (one per call, before the margin cap)".into(),
        ratio: format!("{:.2}", refreshes as f64 / 150.0),
        target: "≈ one per half-life".into(),
    });
    if refreshes > (elapsed.as_millis() / 1500) as usize + 3 {
        eprintln!("FAIL: {refreshes} refreshes for 150 calls with 3 s tokens");
        failed = true;
    }

    // 9. The proxy's added latency per request.
    let calls = if smoke { 20 } else { 300 };
    let (through, direct) = proxy_latency(calls).await;
    let (t, d) = (Stats::new(through), Stats::new(direct));
    rows.push(Row {
        figure: format!(
            "9. MCP request through `mcpauthctl proxy` (tools/list, {calls} sequential; baseline: the same POST sent directly)"
        ),
        ours: format!("{} / {}", fmt(t.median(), "µs"), fmt(t.p99(), "µs")),
        baseline: format!("{} / {}", fmt(d.median(), "µs"), fmt(d.p99(), "µs")),
        ratio: format!("+{}", fmt(t.median() - d.median(), "µs")),
        target: "small next to the network".into(),
    });

    print_table(&rows, smoke);
    drop(daemon);
    i32::from(failed)
}

/// Round-trip times (µs) of `calls` tools/list requests through the proxy
/// and sent directly, to the same in-process test MCP server.
async fn proxy_latency(calls: usize) -> (Vec<f64>, Vec<f64>) {
    use std::io::{BufRead, BufReader, Write};
    let auth = AuthServer::start(Switches::default()).await;
    let mcp =
        mcpauth_tests::mcpserver::McpServer::start(&auth.issuer, auth.validator(), false).await;
    let env = TestEnv::new();
    env.write_config(&format!("[servers.s]\nurl = \"{}\"\n", mcp.url));
    let mut cmd = env.command("mcpauthd");
    cmd.env(mcpauth_proto::env::LOG, "warn");
    let daemon = env.spawn_daemon(&mut cmd).expect("daemon ready");
    let login = env.ctl(&["login", "s"]);
    assert_eq!(login.code(), 0, "login: {}", login.stderr());
    let token = env.ctl(&["token", "s"]).ok().trim().to_string();

    let mut proxy = env
        .command("mcpauthctl")
        .args(["proxy", "s"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = proxy.stdin.take().unwrap();
    let mut stdout = BufReader::new(proxy.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        let mut line = String::new();
        while stdout.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
            if tx.send(std::mem::take(&mut line)).is_err() {
                break;
            }
        }
    });
    let mut ask = |id: usize, body: String| {
        writeln!(stdin, "{body}").unwrap();
        stdin.flush().unwrap();
        loop {
            let line = rx.recv_timeout(Duration::from_secs(10)).expect("an answer");
            if line.contains(&format!("\"id\":{id}")) {
                return;
            }
        }
    };
    ask(0, r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"bench","version":"1"}}}"#.into());
    let mut through = Vec::new();
    for i in 1..=calls {
        let t = Instant::now();
        ask(
            i,
            format!(r#"{{"jsonrpc":"2.0","id":{i},"method":"tools/list","params":{{}}}}"#),
        );
        through.push(t.elapsed().as_secs_f64() * 1e6);
    }
    drop(stdin);
    let _ = proxy.wait();

    // Direct: a session of our own, the same request.
    let http = reqwest::Client::new();
    let init = http
        .post(&mcp.url)
        .bearer_auth(&token)
        .header("accept", "application/json, text/event-stream")
        .body(r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"bench","version":"1"}}}"#)
        .send()
        .await
        .unwrap();
    let session = init.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_string();
    let mut direct = Vec::new();
    for i in 1..=calls {
        let t = Instant::now();
        let r = http
            .post(&mcp.url)
            .bearer_auth(&token)
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .header("mcp-session-id", &session)
            .header("mcp-protocol-version", "2025-06-18")
            .body(format!(
                r#"{{"jsonrpc":"2.0","id":{i},"method":"tools/list","params":{{}}}}"#
            ))
            .send()
            .await
            .unwrap();
        let _ = r.bytes().await.unwrap();
        direct.push(t.elapsed().as_secs_f64() * 1e6);
    }
    drop(daemon);
    (through, direct)
}

/// Context switches of every thread of `pid`, by thread name.
fn switches(pid: i32) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        let mut name = String::new();
        let mut n = 0;
        for line in status.lines() {
            if let Some(v) = line.strip_prefix("Name:") {
                name = v.trim().to_string();
            } else if let Some(v) = line
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                n += v.trim().parse::<u64>().unwrap_or(0);
            }
        }
        *out.entry(name).or_insert(0) += n;
    }
    out
}

/// Wakeups per second of an idle daemon with `n` servers, and the threads
/// that woke.
fn idle_wakeups(n: usize, window: Duration) -> (f64, String) {
    let env = TestEnv::new();
    let mut config = String::new();
    for i in 0..n {
        config.push_str(&format!(
            "[servers.s{i}]\nurl = \"https://mcp{i}.example.com/mcp\"\n"
        ));
    }
    env.write_config(&config);
    let mut cmd = env.command("mcpauthd");
    cmd.env(mcpauth_proto::env::LOG, "warn");
    let daemon = env.spawn_daemon(&mut cmd).expect("ready");
    std::thread::sleep(Duration::from_secs(2));
    let before = switches(daemon.pid());
    std::thread::sleep(window);
    let after = switches(daemon.pid());
    let secs = window.as_secs_f64();
    let mut total = 0u64;
    let mut parts = Vec::new();
    for (name, n) in &after {
        let d = n.saturating_sub(before.get(name).copied().unwrap_or(0));
        total += d;
        if d > 0 {
            parts.push(format!("{name} {:.1}", d as f64 / secs));
        }
    }
    (total as f64 / secs, parts.join(", "))
}

/// Refresh requests at the AS while 5 clients make 30 calls each, 100 ms
/// apart, with 3 s tokens.
async fn short_token_refreshes() -> (usize, Duration) {
    let server = AuthServer::start(Switches {
        expires_in: Some(3),
        ..Default::default()
    })
    .await;
    let env = TestEnv::new();
    env.write_config(&format!("[servers.s]\nurl = \"{}\"\n", server.mcp_url));
    let mut cmd = env.command("mcpauthd");
    cmd.env(mcpauth_proto::env::LOG, "warn");
    let daemon = env.spawn_daemon(&mut cmd).expect("daemon ready");
    let login = env.ctl(&["login", "s"]);
    assert_eq!(login.code(), 0, "login: {}", login.stderr());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let socket = env.socket();
        tasks.push(tokio::spawn(async move {
            let mut c = mcpauth_client::Client::connect(&socket).await.unwrap();
            for _ in 0..30 {
                c.get_token("s", None).await.unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = started.elapsed();
    drop(daemon);
    (server.token_requests("refresh_token").len(), elapsed)
}

/// Calls per second of `tasks` concurrent loops of `call(task)` for `time`.
async fn throughput<F, Fut>(time: Duration, tasks: usize, call: F) -> f64
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let call = Arc::new(call);
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|i| {
            let (stop, count, call) = (stop.clone(), count.clone(), call.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    call(i).await;
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    tokio::time::sleep(time).await;
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        let _ = h.await;
    }
    count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

async fn floor_throughput(
    socket: &Path,
    time: Duration,
    tasks: usize,
    request_bytes: usize,
    reply_bytes: usize,
) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    let start = Instant::now();
    for _ in 0..tasks {
        let (stop, count) = (stop.clone(), count.clone());
        let mut stream = tokio::net::UnixStream::connect(socket).await.unwrap();
        handles.push(tokio::spawn(async move {
            let mut request = (request_bytes as u32).to_be_bytes().to_vec();
            request.extend(std::iter::repeat_n(b'r', request_bytes));
            let mut buf = vec![0u8; reply_bytes + 4];
            while !stop.load(Ordering::Relaxed) {
                stream.write_all(&request).await.unwrap();
                stream.read_exact(&mut buf).await.unwrap();
                count.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(time).await;
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        let _ = h.await;
    }
    count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// Wall time of one run of a command, in ms.
fn wall(cmd: &mut Command) -> f64 {
    let t = Instant::now();
    let status = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "{cmd:?} failed");
    t.elapsed().as_secs_f64() * 1000.0
}

fn rss_kb(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Starts a daemon with `n` servers; returns (ms until READY, idle RSS kB).
fn start_with_servers(n: usize) -> (f64, u64) {
    let env = TestEnv::new();
    let mut config = String::new();
    for i in 0..n {
        config.push_str(&format!(
            "[servers.s{i}]\nurl = \"https://mcp{i}.example.com/mcp\"\n"
        ));
    }
    env.write_config(&config);
    let mut cmd = env.command("mcpauthd");
    cmd.env(mcpauth_proto::env::LOG, "warn");
    let t = Instant::now();
    let daemon = env.spawn_daemon(&mut cmd).expect("ready");
    let ready_ms = t.elapsed().as_secs_f64() * 1000.0;
    std::thread::sleep(Duration::from_millis(300));
    let kb = rss_kb(daemon.pid());
    (ready_ms, kb)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().next().map(|l| {
                l.split_whitespace()
                    .nth(1)
                    .unwrap_or("0")
                    .parse::<u64>()
                    .unwrap_or(0)
            })
        })
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cpu}, {cores} cores, {} GiB, Linux {}",
        mem / 1024 / 1024,
        kernel.trim()
    )
}

fn print_table(rows: &[Row], smoke: bool) {
    println!();
    println!(
        "Machine: {}{}",
        machine(),
        if smoke {
            " (SMOKE RUN: too few samples to quote)"
        } else {
            ""
        }
    );
    println!();
    println!("| figure | mcpauth (median / p99) | baseline (median / p99) | ratio | target |");
    println!("|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} |",
            r.figure, r.ours, r.baseline, r.ratio, r.target
        );
    }
}
