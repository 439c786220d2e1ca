//! Authorization-server faults during refresh: every way a token endpoint
//! can fail, one after another on one server while a second server keeps
//! being served.
//!
//! For each fault:
//! - the person's `mcpauthctl refresh` gets one precise line and a retry
//!   time, exit 1;
//! - the other server is served meanwhile (even while a request hangs);
//! - the grant is untouched: the held token is still handed out, and the
//!   old refresh token works once the fault clears (no reuse at the AS);
//! - during the backoff, programs (`token`, rejected-token reports) get
//!   the held token or "retry after" without another request to the AS.

use mcpauth_tests::TestEnv;
use mcpauth_tests::authserver::{AuthServer, Switches, TokenFault};

/// The seconds the daemon waits for an HTTP answer in this test.
const HTTP_TIMEOUT_SECS: &str = "2";

#[derive(Clone, Copy, Debug)]
enum Fault {
    Status(u16),
    Endpoint(TokenFault),
    Refused,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_token_endpoint_changes_nothing_and_blocks_no_other_server() {
    let bad = AuthServer::start(Switches::default()).await;
    let good = AuthServer::start(Switches::default()).await;
    let env = TestEnv::new();
    let daemon = env
        .spawn_daemon(
            env.command("mcpauthd")
                .env(mcpauth_proto::env::LOG, "trace")
                .args(["--http-timeout-secs", HTTP_TIMEOUT_SECS]),
        )
        .unwrap();
    let mut outputs = Vec::new();
    env.ctl(&["add", "bad", &bad.mcp_url]).ok();
    env.ctl(&["add", "good", &good.mcp_url]).ok();
    env.ctl(&["login", "bad"]).ok();
    env.ctl(&["login", "good"]).ok();

    let cases: &[(Fault, &[&str])] = &[
        (Fault::Status(500), &["answered HTTP 500", "retry after 5s"]),
        (Fault::Status(502), &["answered HTTP 502"]),
        (
            Fault::Endpoint(TokenFault::Unavailable503),
            &["temporarily_unavailable", "retry after 120s"],
        ),
        (
            Fault::Endpoint(TokenFault::TruncatedJson),
            &["sent an invalid document", "EOF"],
        ),
        (
            Fault::Endpoint(TokenFault::MalformedJson),
            &["sent an invalid document"],
        ),
        (
            Fault::Endpoint(TokenFault::Oversized),
            &["sent more than 1048576 bytes"],
        ),
        (
            Fault::Endpoint(TokenFault::WrongContentType),
            &["did not send JSON (text/html)"],
        ),
        (
            Fault::Endpoint(TokenFault::Redirect),
            &["redirect to https://elsewhere.example/token, which is not followed"],
        ),
        (Fault::Endpoint(TokenFault::Hang), &["timed out"]),
        (Fault::Refused, &["connection refused by"]),
    ];

    for &(fault, expected) in cases {
        let held = env.ctl(&["token", "bad", "--min-ttl", "0"]).ok();
        let requests = || bad.token_requests("refresh_token").len();
        let before = requests();
        match fault {
            Fault::Status(code) => bad.set(|s| s.token_failure = Some(code)),
            Fault::Endpoint(f) => bad.set(|s| s.token_fault = Some(f)),
            Fault::Refused => bad.stop().await,
        }

        // A person asks for a refresh; while it is under way (a hanging
        // AS keeps it so), the other server is served.
        let person = env
            .command("mcpauthctl")
            .args(["refresh", "bad"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        if matches!(fault, Fault::Endpoint(TokenFault::Hang)) {
            while bad.token_requests_in_flight() == 0 {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
        let other = env.ctl(&["token", "good"]).ok();
        assert!(good.is_valid_access_token(other.trim()), "{fault:?}");
        if matches!(fault, Fault::Endpoint(TokenFault::Hang)) {
            assert_eq!(
                bad.token_requests_in_flight(),
                1,
                "the other server was served while the request hung"
            );
        }
        let out = mcpauth_tests::CtlOutput(person.wait_with_output().unwrap());
        outputs.push(out.stderr());
        assert_eq!(out.code(), 1, "{fault:?}: {}", out.stderr());
        let line = out.stderr();
        assert_eq!(
            line.trim().lines().count(),
            1,
            "{fault:?}: one line: {line}"
        );
        for text in expected.iter().chain(&["retry after"]) {
            assert!(line.contains(text), "{fault:?}: {text:?} in {line}");
        }
        if matches!(fault, Fault::Status(_) | Fault::Endpoint(_))
            && !matches!(fault, Fault::Endpoint(TokenFault::Hang))
        {
            assert_eq!(requests(), before + 1, "{fault:?}");
        }
        let after_failure = requests();

        // Backoff: programs get the held token (still valid), or "retry
        // after" for a rejected one, and the AS hears nothing.
        let still = env.ctl(&["token", "bad", "--min-ttl", "7200"]).ok();
        assert_eq!(still, held, "{fault:?}: the held token is kept and served");
        let report = env.ctl(&["token", "bad", "--rejected", held.trim()]);
        assert_eq!(report.code(), 1, "{fault:?}: {}", report.stderr());
        assert!(
            report.stderr().contains("retry after"),
            "{}",
            report.stderr()
        );
        outputs.push(report.stderr());
        outputs.push(env.ctl(&["status"]).ok());
        assert_eq!(
            requests(),
            after_failure,
            "{fault:?}: no request in backoff"
        );
        let show = env.ctl(&["show", "bad", "--json"]).json();
        assert!(
            show.to_string().contains(expected[0]),
            "{fault:?}: the error is shown: {show}"
        );

        // The fault clears: the old refresh token still works.
        match fault {
            Fault::Status(_) => bad.set(|s| s.token_failure = None),
            Fault::Endpoint(_) => bad.set(|s| s.token_fault = None),
            Fault::Refused => bad.resume().await,
        }
        env.ctl(&["refresh", "bad"]).ok();
        let fresh = env.ctl(&["token", "bad", "--min-ttl", "0"]).ok();
        assert_ne!(fresh, held, "{fault:?}");
        assert!(bad.is_valid_access_token(fresh.trim()), "{fault:?}");
        assert!(
            !bad.reuse_detected(),
            "{fault:?}: a refresh token was reused"
        );
    }
    assert!(!good.reuse_detected());

    // Nothing secret in any error or log line, at the most verbose level,
    // whatever the server sent back.
    let log = daemon.stop();
    let mut secrets = bad.secrets();
    secrets.extend(good.secrets());
    secrets.push("at-fault".into());
    assert!(secrets.len() > 20, "{}", secrets.len());
    for secret in &secrets {
        for text in outputs.iter().chain([&log]) {
            assert!(!text.contains(secret.as_str()), "a secret leaked:\n{text}");
        }
    }
    assert!(log.contains("TRACE"));
}
