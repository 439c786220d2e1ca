//! Hostile and broken clients on the socket: oversized requests, invalid
//! names, unknown servers, and floods of connections. Each is refused
//! precisely, and the daemon goes on serving everyone else.

use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use mcpauth_client::{ClientError, fingerprint, pb};
use mcpauth_tests::TestEnv;
use mcpauth_tests::authserver::{AuthServer, Switches};
use mcpauthd::listener::MAX_CONNECTIONS;
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use tonic::Code;

fn code<T: std::fmt::Debug>(result: Result<T, ClientError>) -> (Code, String) {
    match result {
        Err(ClientError::Rpc { code, message, .. }) => (code, message),
        other => panic!("expected an RPC error, got {other:?}"),
    }
}

fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_invalid_and_unknown_requests_are_refused_and_service_goes_on() {
    let server = AuthServer::start(Switches::default()).await;
    let env = TestEnv::new();
    let daemon = env.start_daemon();
    env.ctl(&["add", "s", &server.mcp_url]).ok();
    env.ctl(&["login", "s"]).ok();
    let config_before = std::fs::read_to_string(env.config_path()).unwrap();
    let mut client = env.client().await;
    let token = client.get_token("s", None).await.unwrap().access_token;

    // Oversized: refused before anything reads it.
    let huge = "x".repeat(200 * 1024);
    let (c, message) = code(
        client
            .add_server(pb::AddServerRequest {
                name: "big".into(),
                url: format!("https://mcp.example.com/{huge}"),
                ..Default::default()
            })
            .await,
    );
    assert!(
        matches!(c, Code::OutOfRange | Code::ResourceExhausted),
        "{c:?}: {message}"
    );
    assert!(message.len() < 300, "bounded: {message}");
    let (c, _) = code(client.get_token(&huge, None).await);
    assert!(matches!(c, Code::OutOfRange | Code::ResourceExhausted));

    // Invalid names (one just under the size cap): refused, and the
    // message stays short.
    let long = "n".repeat(50 * 1024);
    for name in [
        "",
        ".",
        "..",
        "../etc",
        "a/b",
        "a b",
        "naïve",
        "s\n",
        "s\0",
        long.as_str(),
    ] {
        let (c, message) = code(client.get_token(name, None).await);
        assert_eq!(c, Code::InvalidArgument, "{name:?}: {message}");
        assert!(message.len() < 300, "{name:?}: bounded: {}", message.len());
        let (c, _) = code(
            client
                .add_server(pb::AddServerRequest {
                    name: name.into(),
                    url: "https://mcp.example.com/mcp".into(),
                    ..Default::default()
                })
                .await,
        );
        assert_eq!(c, Code::InvalidArgument, "{name:?}");
    }

    // Unknown servers: NOT_FOUND from every call that names one.
    let nope = "nope";
    let fp = fingerprint("whatever");
    let results = [
        code(client.get_token(nope, None).await),
        code(client.report_unauthorized(nope, "whatever", 401, "").await),
        code(client.refresh(nope).await),
        code(client.logout(nope, false).await),
        code(client.get_server(nope).await),
        code(client.remove_server(nope).await),
        code(client.login(nope, vec![]).await),
    ];
    for (c, message) in results {
        assert_eq!(c, Code::NotFound, "{message}");
    }
    assert_eq!(fp.len(), 64);

    // A report that sends the token itself instead of its hash is refused
    // without being looked at.
    let raw = client
        .report_unauthorized_raw(pb::ReportUnauthorizedRequest {
            server: "s".into(),
            token_sha256: token.clone(),
            http_status: 401,
            www_authenticate: String::new(),
        })
        .await;
    let (c, message) = code(raw);
    assert_eq!(c, Code::InvalidArgument);
    assert!(!message.contains(&token));

    // Nothing changed, and the daemon serves as before.
    assert_eq!(
        std::fs::read_to_string(env.config_path()).unwrap(),
        config_before
    );
    assert_eq!(
        client.get_token("s", None).await.unwrap().access_token,
        token
    );
    assert!(server.token_requests("refresh_token").is_empty());
    assert!(!daemon.log().contains(&token));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_is_bounded_and_service_resumes_when_it_ends() {
    // This process needs the files for the flood.
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    let need = (MAX_CONNECTIONS + 400) as u64;
    if soft < need {
        if hard < need {
            eprintln!("SKIPPED: the hard file limit ({hard}) is below {need}");
            return;
        }
        setrlimit(Resource::RLIMIT_NOFILE, need, hard).unwrap();
    }
    let env = TestEnv::new();
    let daemon = env.start_daemon();
    env.ctl(&["status"]).ok();
    let baseline = open_fds(daemon.pid());

    // Connections that never speak, more than the daemon takes.
    let mut flood = Vec::new();
    for _ in 0..MAX_CONNECTIONS + 100 {
        flood.push(UnixStream::connect(env.socket()).unwrap());
    }
    mcpauth_tests::wait_until(Duration::from_secs(20), "the overload to be logged", || {
        daemon.log().contains("too many open connections")
    });
    let during = open_fds(daemon.pid());
    let rss = std::fs::read_to_string(format!("/proc/{}/status", daemon.pid()))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmRSS"))
        .map(|l| l.split_whitespace().nth(1).unwrap_or("?").to_string())
        .unwrap_or_default();
    println!(
        "connection flood: {} attempted, {} fds open in the daemon (baseline {baseline}), RSS {rss} kB",
        flood.len(),
        during
    );
    assert!(
        during <= baseline + MAX_CONNECTIONS + 2,
        "{during} fds open with {} connections attempted (baseline {baseline})",
        flood.len()
    );
    // A new client fails at once with a clear error instead of queueing.
    let refused = env.ctl(&["status", "--no-autostart"]);
    assert_eq!(refused.code(), 3, "{}", refused.stderr());
    assert_eq!(
        daemon.log().matches("too many open connections").count(),
        1,
        "logged once per overload, not once per connection"
    );

    // The flood ends: service resumes.
    drop(flood);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = env.ctl(&["status", "--no-autostart"]);
        if out.code() == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{}", out.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
    // Every slot comes back.
    while open_fds(daemon.pid()) > baseline + 2 {
        assert!(
            Instant::now() < deadline,
            "{} fds still open (baseline {baseline})",
            open_fds(daemon.pid())
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    daemon.stop();
}
