//! The OAuth engine end to end: the real daemon and CLI against the test
//! authorization server, one spec variant or fault per test.

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;

use base64::Engine;
use mcpauth_tests::authserver::{AuthServer, IssMode, MetadataMode, PrmMode, Switches};
use mcpauth_tests::{Daemon, TestEnv};
use sha2::Digest;

struct Setup {
    env: TestEnv,
    server: AuthServer,
    daemon: Daemon,
}

async fn setup(switches: Switches) -> Setup {
    setup_with(switches, &[]).await
}

async fn setup_with(switches: Switches, daemon_args: &[&str]) -> Setup {
    let server = AuthServer::start(switches).await;
    let env = TestEnv::new();
    let mut cmd = env.command("mcpauthd");
    cmd.args(daemon_args);
    let daemon = env
        .spawn_daemon(&mut cmd)
        .unwrap_or_else(|log| panic!("{log}"));
    env.ctl(&["add", "s", &server.mcp_url]).ok();
    Setup {
        env,
        server,
        daemon,
    }
}

fn s256(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(verifier.as_bytes()))
}

fn login(env: &TestEnv) -> mcpauth_tests::CtlOutput {
    env.ctl(&["login", "s"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_registers_uses_pkce_and_sends_resource_everywhere() {
    let Setup {
        env,
        server,
        daemon: _d,
    } = setup(Switches::default()).await;
    let out = login(&env);
    let stdout = out.ok();
    assert!(stdout.contains("logged in to s"), "{stdout}");
    assert!(stdout.contains("mcp:read mcp:write"), "{stdout}");

    // Dynamic registration as a native public client with refresh_token.
    let register = server.requests("/register");
    assert_eq!(register.len(), 1);
    let body = &register[0].json;
    assert_eq!(body["application_type"], "native");
    assert_eq!(body["token_endpoint_auth_method"], "none");
    assert_eq!(
        body["grant_types"],
        serde_json::json!(["authorization_code", "refresh_token"])
    );
    let redirect_uri = body["redirect_uris"][0].as_str().unwrap().to_string();
    assert!(redirect_uri.starts_with("http://127.0.0.1:") && redirect_uri.ends_with("/callback"));

    // The authorization request.
    let authorize = &server.requests("/authorize")[0].query;
    assert_eq!(authorize["response_type"], "code");
    assert_eq!(authorize["code_challenge_method"], "S256");
    assert_eq!(authorize["resource"], server.mcp_url);
    assert_eq!(authorize["scope"], "mcp:read mcp:write");
    assert_eq!(authorize["redirect_uri"], redirect_uri);
    assert!(authorize["state"].len() >= 22, "128+ bits of state");

    // The code exchange: the verifier matches the challenge.
    let exchange = &server.token_requests("authorization_code")[0].form;
    assert_eq!(
        s256(&exchange["code_verifier"]),
        authorize["code_challenge"]
    );
    assert_eq!(exchange["resource"], server.mcp_url);
    assert_eq!(exchange["redirect_uri"], redirect_uri);

    let status = env.ctl(&["show", "s", "--json"]).json();
    assert_eq!(status["state"], "authorized");
    let expires = status["token_expires_at_unix_ms"].as_i64().unwrap();
    let now = mcpauth_tests::now_ms();
    assert!(
        (now + 3_500_000..now + 3_700_000).contains(&expires),
        "absolute expiry stored"
    );

    // Refresh twice: the rotated refresh token is carried forward (the
    // server revokes the grant if an old one comes back).
    env.ctl(&["refresh", "s"]).ok();
    env.ctl(&["refresh", "s"]).ok();
    let refreshes = server.token_requests("refresh_token");
    assert_eq!(refreshes.len(), 2);
    assert_ne!(
        refreshes[0].form["refresh_token"],
        refreshes[1].form["refresh_token"]
    );
    assert!(
        refreshes
            .iter()
            .all(|r| r.form["resource"] == server.mcp_url)
    );
    assert!(!server.reuse_detected());
    // The browser was opened exactly once, with the authorization URL.
    assert_eq!(env.browser_log().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_discovery_variant_logs_in() {
    struct Case {
        prm: PrmMode,
        metadata: MetadataMode,
        issuer_path: &'static str,
        split: bool,
        /// Metadata paths tried, in order (on the AS origin).
        tried: &'static [&'static str],
    }
    let cases = [
        Case {
            prm: PrmMode::Header,
            metadata: MetadataMode::Rfc8414,
            issuer_path: "",
            split: false,
            tried: &["/.well-known/oauth-authorization-server"],
        },
        Case {
            prm: PrmMode::WellKnownPath,
            metadata: MetadataMode::OidcInserted,
            issuer_path: "/tenant1",
            split: true,
            tried: &[
                "/.well-known/oauth-authorization-server/tenant1",
                "/.well-known/openid-configuration/tenant1",
            ],
        },
        Case {
            prm: PrmMode::WellKnownRoot,
            metadata: MetadataMode::OidcAppended,
            issuer_path: "/tenant1",
            split: true,
            tried: &[
                "/.well-known/oauth-authorization-server/tenant1",
                "/.well-known/openid-configuration/tenant1",
                "/tenant1/.well-known/openid-configuration",
            ],
        },
        Case {
            prm: PrmMode::WellKnownRoot,
            metadata: MetadataMode::OidcInserted,
            issuer_path: "",
            split: true,
            tried: &[
                "/.well-known/oauth-authorization-server",
                "/.well-known/openid-configuration",
            ],
        },
        // 2025-03-26: no PRM, metadata at the server's origin.
        Case {
            prm: PrmMode::None,
            metadata: MetadataMode::Rfc8414,
            issuer_path: "",
            split: false,
            tried: &["/.well-known/oauth-authorization-server"],
        },
        // 2025-03-26: no PRM, no metadata: default endpoints.
        Case {
            prm: PrmMode::None,
            metadata: MetadataMode::None,
            issuer_path: "",
            split: false,
            tried: &[
                "/.well-known/oauth-authorization-server",
                "/.well-known/openid-configuration",
            ],
        },
    ];
    for case in cases {
        let label = format!(
            "{:?}/{:?}/{}/split={}",
            case.prm, case.metadata, case.issuer_path, case.split
        );
        let Setup {
            env,
            server,
            daemon: _d,
        } = setup(Switches {
            prm: case.prm,
            metadata: case.metadata,
            issuer_path: case.issuer_path.into(),
            split_origin: case.split,
            ..Default::default()
        })
        .await;
        let out = login(&env);
        assert_eq!(out.code(), 0, "{label}: {}", out.stderr());
        let seen = server.seen();
        let metadata: Vec<&str> = seen
            .iter()
            .filter(|s| s.path.contains("/.well-known/o"))
            .filter(|s| !s.path.contains("protected-resource"))
            .map(|s| s.path.as_str())
            .collect();
        assert_eq!(metadata, case.tried, "{label}");
        let prm: Vec<&str> = seen
            .iter()
            .filter(|s| s.path.contains("protected-resource") || s.path.starts_with("/meta/"))
            .map(|s| s.path.as_str())
            .collect();
        match case.prm {
            PrmMode::Header => assert_eq!(prm, ["/meta/resource-metadata.json"], "{label}"),
            PrmMode::WellKnownPath => assert_eq!(
                prm,
                ["/.well-known/oauth-protected-resource/mcp"],
                "{label}"
            ),
            PrmMode::WellKnownRoot | PrmMode::None => assert_eq!(
                prm,
                [
                    "/.well-known/oauth-protected-resource/mcp",
                    "/.well-known/oauth-protected-resource"
                ],
                "{label}"
            ),
        }
        assert_eq!(
            server.token_requests("authorization_code").len(),
            1,
            "{label}"
        );
    }
}

async fn refused(switches: Switches, expected: &str) -> AuthServer {
    let Setup {
        env,
        server,
        daemon: _d,
    } = setup(switches).await;
    let out = login(&env);
    assert_eq!(out.code(), 1, "{}", out.stderr());
    assert!(
        out.stderr().contains(expected),
        "{expected:?} in {}",
        out.stderr()
    );
    assert!(server.requests("/authorize").is_empty());
    assert!(server.requests("/token").is_empty());
    assert!(env.browser_log().is_empty(), "no browser opened");
    let status = env.ctl(&["show", "s", "--json"]).json();
    assert!(status["last_error"].as_str().unwrap().contains(expected));
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuer_mismatch_is_refused() {
    refused(
        Switches {
            wrong_issuer: true,
            ..Default::default()
        },
        "refusing it",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authorization_server_without_pkce_is_refused() {
    refused(
        Switches {
            pkce_advertised: false,
            ..Default::default()
        },
        "lists no PKCE methods (no code_challenge_methods_supported); refusing",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resource_mismatch_stops_before_any_authorization_request() {
    let server = refused(
        Switches {
            prm_resource: Some("http://127.0.0.1:9/other".into()),
            ..Default::default()
        },
        "not this server",
    )
    .await;
    assert!(server.requests("/register").is_empty());
    assert!(
        server.requests("oauth-authorization-server").is_empty(),
        "not even AS metadata"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preregistered_clients_use_each_token_endpoint_auth_method() {
    for (method, supported) in [
        ("none", None),
        ("client_secret_basic", None),
        (
            "client_secret_post",
            Some(vec!["client_secret_post".to_string()]),
        ),
    ] {
        let server = AuthServer::start(Switches {
            dcr: false,
            auth_methods: supported,
            ..Default::default()
        })
        .await;
        let secret = (method != "none").then_some("s3cret-value-123");
        server.add_client("pre-1", secret, method);
        let env = TestEnv::new();
        let _d = env.start_daemon();
        let mut args = vec!["add", "s", server.mcp_url.as_str(), "--client-id", "pre-1"];
        let secret_file = env.root.path().join("secret");
        if let Some(secret) = secret {
            std::fs::write(&secret_file, format!("{secret}\n")).unwrap();
            std::fs::set_permissions(
                &secret_file,
                std::os::unix::fs::PermissionsExt::from_mode(0o600),
            )
            .unwrap();
            args.extend(["--client-secret-file", secret_file.to_str().unwrap()]);
        }
        env.ctl(&args).ok();
        let out = login(&env);
        assert_eq!(out.code(), 0, "{method}: {}", out.stderr());
        let exchange = &server.token_requests("authorization_code")[0];
        match method {
            "none" => {
                assert_eq!(exchange.form["client_id"], "pre-1");
                assert!(
                    exchange.basic_auth.is_none() && !exchange.form.contains_key("client_secret")
                );
            }
            "client_secret_basic" => {
                assert_eq!(
                    exchange.basic_auth,
                    Some(("pre-1".into(), "s3cret-value-123".into()))
                );
                assert!(!exchange.form.contains_key("client_secret"));
            }
            _ => {
                assert!(exchange.basic_auth.is_none());
                assert_eq!(exchange.form["client_secret"], "s3cret-value-123");
            }
        }
        assert!(
            server.requests("/register").is_empty(),
            "{method}: configured clients never register"
        );
        env.ctl(&["refresh", "s"]).ok();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_id_metadata_document_is_used_when_supported() {
    let server = AuthServer::start(Switches {
        cimd: true,
        ..Default::default()
    })
    .await;
    let env = TestEnv::new();
    let _d = env.start_daemon();
    env.ctl(&[
        "add",
        "s",
        &server.mcp_url,
        "--client-metadata-url",
        "https://tools.example/mcpauth.json",
    ])
    .ok();
    login(&env).ok();
    assert_eq!(
        server.requests("/authorize")[0].query["client_id"],
        "https://tools.example/mcpauth.json"
    );
    assert!(server.requests("/register").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_any_way_to_register_the_person_is_told_what_to_configure() {
    let Setup {
        env,
        server,
        daemon: _d,
    } = setup(Switches {
        dcr: false,
        ..Default::default()
    })
    .await;
    let out = login(&env);
    assert_eq!(out.code(), 1);
    assert!(out.stderr().contains("--client-id"), "{}", out.stderr());
    assert!(server.requests("/authorize").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_state_is_ignored() {
    let Setup {
        env,
        server,
        daemon,
    } = setup_with(Switches::default(), &["--callback-timeout-secs", "2"]).await;
    let out = env.ctl_env(&["login", "s"], &[("TEST_BROWSER_MODE", "tamper-state")]);
    // The forged callback did not end the login: it ran into the timeout.
    assert_eq!(out.code(), 1, "{}", out.stderr());
    assert!(
        out.stderr().contains("no answer from the browser"),
        "{}",
        out.stderr()
    );
    assert!(
        server.requests("/token").is_empty(),
        "the forged code was never exchanged"
    );
    assert!(
        daemon.log().contains("callback with a wrong state ignored"),
        "the forged callback arrived"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_that_break_the_issuer_rules_are_rejected() {
    for (mode, expected) in [
        (IssMode::Wrong, "mix-up"),
        (IssMode::AdvertisedMissing, "promised an iss"),
    ] {
        let Setup {
            env,
            server,
            daemon: _d,
        } = setup(Switches {
            iss: mode,
            ..Default::default()
        })
        .await;
        let out = login(&env);
        assert_eq!(out.code(), 1, "{mode:?}: {}", out.stderr());
        assert!(
            out.stderr().contains(expected),
            "{mode:?}: {}",
            out.stderr()
        );
        assert!(server.requests("/token").is_empty(), "{mode:?}");
    }
    // Not advertised and not sent: fine.
    let Setup {
        env, daemon: _d, ..
    } = setup(Switches {
        iss: IssMode::Off,
        ..Default::default()
    })
    .await;
    login(&env).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_consent_is_reported_with_exit_4() {
    let Setup {
        env,
        server,
        daemon: _d,
    } = setup(Switches {
        deny: true,
        ..Default::default()
    })
    .await;
    let out = login(&env);
    assert_eq!(out.code(), 4, "{}", out.stderr());
    assert!(out.stderr().contains("access_denied") && out.stderr().contains("the user said no"));
    assert!(server.requests("/token").is_empty());
    assert_eq!(
        env.ctl(&["show", "s", "--json"]).json()["state"],
        "login_required"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_nobody_finishes_times_out() {
    let Setup {
        env, daemon: _d, ..
    } = setup_with(Switches::default(), &["--callback-timeout-secs", "1"]).await;
    let out = env.ctl_env(&["login", "s"], &[("TEST_BROWSER_MODE", "ignore")]);
    assert_eq!(out.code(), 1);
    assert!(
        out.stderr()
            .contains("no answer from the browser within 1s"),
        "{}",
        out.stderr()
    );
    assert_eq!(
        env.ctl(&["show", "s", "--json"]).json()["state"],
        "login_required"
    );
}

/// Starts `mcpauthctl login s` in the background and waits until it has
/// printed the authorization URL.
fn start_login(
    env: &TestEnv,
    extra: &[&str],
    browser_mode: &str,
) -> (
    std::process::Child,
    String,
    BufReader<std::process::ChildStderr>,
) {
    let mut cmd = env.command("mcpauthctl");
    cmd.args(["login", "s"])
        .args(extra)
        .env("TEST_BROWSER_MODE", browser_mode);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut url = None;
    let mut seen = String::new();
    for _ in 0..50 {
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap() == 0 {
            break;
        }
        seen.push_str(&line);
        if let Some(u) = line.trim().strip_prefix("http") {
            url = Some(format!("http{u}"));
            break;
        }
    }
    (
        child,
        url.unwrap_or_else(|| panic!("no URL in: {seen}")),
        stderr,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_cancels_the_login_and_a_second_login_joins_a_pending_one() {
    let Setup {
        env, daemon: _d, ..
    } = setup(Switches::default()).await;
    let (first, url1, _e1) = start_login(&env, &[], "ignore");
    let (second, url2, mut e2) = start_login(&env, &[], "ignore");
    assert_eq!(url1, url2, "the second login joined the first");
    let mut line = String::new();
    e2.read_line(&mut line).unwrap();
    assert!(line.trim().is_empty() || line.contains("joining"), "{line}");
    let mut rest = String::new();
    e2.read_line(&mut rest).unwrap();
    assert!(
        format!("{line}{rest}").contains("joining the login already in progress"),
        "{line}{rest}"
    );
    assert_eq!(
        env.ctl(&["show", "s", "--json"]).json()["state"],
        "login_pending"
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let out = first.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    // The joined one hears of the cancellation too.
    let out2 = second.wait_with_output().unwrap();
    assert_eq!(out2.status.code(), Some(1));
    assert_eq!(
        env.ctl(&["show", "s", "--json"]).json()["state"],
        "login_required"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_headless_login_completes_with_the_pasted_redirect() {
    let Setup {
        env,
        server,
        daemon: _d,
    } = setup(Switches::default()).await;
    let (mut child, url, mut stderr) = start_login(&env, &["--no-browser"], "ignore");
    let mut banner = String::new();
    while !banner.contains("ends up on") {
        let mut line = String::new();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "{banner}");
        banner.push_str(&line);
    }
    assert!(banner.contains("ssh -N -L"), "tunnel hint: {banner}");
    assert!(env.browser_log().is_empty(), "no browser with --no-browser");
    // The person opens the URL elsewhere; the browser ends on the callback
    // address, which they paste.
    let response = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(&url)
        .send()
        .await
        .unwrap();
    let location = response.headers()["location"].to_str().unwrap().to_string();
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "not a url").unwrap();
    writeln!(stdin, "{location}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("logged in to s"));
    assert_eq!(server.token_requests("authorization_code").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_refresh_goes_to_the_stored_token_endpoint() {
    let Setup {
        env,
        server,
        daemon,
    } = setup(Switches {
        split_origin: true,
        issuer_path: "/tenant1".into(),
        prm: PrmMode::WellKnownRoot,
        ..Default::default()
    })
    .await;
    login(&env).ok();
    daemon.stop();
    let discovery_requests = server
        .seen()
        .iter()
        .filter(|s| s.path.contains(".well-known"))
        .count();
    let _daemon = env.start_daemon();
    let out = env.ctl(&["refresh", "s"]);
    assert_eq!(out.code(), 0, "{}", out.stderr());
    let refresh = server.token_requests("refresh_token");
    assert_eq!(refresh.len(), 1);
    assert_eq!(refresh[0].path, "/tenant1/token");
    let after = server
        .seen()
        .iter()
        .filter(|s| s.path.contains(".well-known"))
        .count();
    assert_eq!(discovery_requests, after, "no new discovery, no new login");
    assert!(server.requests("/authorize").len() == 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_answer_without_refresh_token_keeps_the_old_one() {
    let Setup {
        env,
        server,
        daemon: _d,
    } = setup(Switches {
        rotate: false,
        ..Default::default()
    })
    .await;
    login(&env).ok();
    env.ctl(&["refresh", "s"]).ok();
    env.ctl(&["refresh", "s"]).ok();
    let refreshes = server.token_requests("refresh_token");
    assert_eq!(
        refreshes[0].form["refresh_token"],
        refreshes[1].form["refresh_token"]
    );
    let shown = env.ctl(&["show", "s", "--json"]).json();
    assert_eq!(shown["state"], "authorized");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_grant_means_login_required() {
    let Setup {
        env,
        server,
        daemon: _d,
    } = setup(Switches::default()).await;
    login(&env).ok();
    server.revoke_all_refresh_tokens();
    let out = env.ctl(&["refresh", "s"]);
    assert_eq!(out.code(), 4, "{}", out.stderr());
    assert!(
        out.stderr().contains("mcpauthctl login s"),
        "{}",
        out.stderr()
    );
    let shown = env.ctl(&["show", "s", "--json"]).json();
    assert_eq!(shown["state"], "login_required");
    assert!(
        shown["last_error"]
            .as_str()
            .unwrap()
            .contains("invalid_grant")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_client_drops_the_registration_and_the_next_login_registers_again() {
    let Setup {
        env,
        server,
        daemon: _d,
    } = setup(Switches::default()).await;
    login(&env).ok();
    server.forget_clients();
    let out = env.ctl(&["refresh", "s"]);
    assert_eq!(out.code(), 4, "{}", out.stderr());
    assert_eq!(server.requests("/register").len(), 1);
    login(&env).ok();
    assert_eq!(
        server.requests("/register").len(),
        2,
        "registered once more"
    );
    env.ctl(&["refresh", "s"]).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_revokes_and_forget_client_registers_anew() {
    let Setup {
        env,
        server,
        daemon: _d,
    } = setup(Switches::default()).await;
    login(&env).ok();
    let out = env.ctl(&["logout", "s"]).ok();
    assert!(out.contains("revoked"), "{out}");
    let revokes = server.requests("/revoke");
    assert_eq!(revokes.len(), 2);
    assert_eq!(revokes[0].form["token_type_hint"], "refresh_token");
    assert_eq!(
        env.ctl(&["show", "s", "--json"]).json()["state"],
        "login_required"
    );
    assert_eq!(env.ctl(&["refresh", "s"]).code(), 4);
    login(&env).ok();
    assert_eq!(
        server.requests("/register").len(),
        1,
        "the registration was kept"
    );
    env.ctl(&["logout", "s", "--forget-client"]).ok();
    login(&env).ok();
    assert_eq!(server.requests("/register").len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_expiry_is_kept_unknown() {
    let Setup {
        env, daemon: _d, ..
    } = setup(Switches {
        expires_in: None,
        ..Default::default()
    })
    .await;
    login(&env).ok();
    let shown = env.ctl(&["show", "s", "--json"]).json();
    assert_eq!(shown["state"], "authorized");
    assert!(shown["token_expires_at_unix_ms"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_code_or_verifier_reaches_any_log_or_output() {
    let server = AuthServer::start(Switches::default()).await;
    let env = TestEnv::new();
    let mut cmd = env.command("mcpauthd");
    cmd.env(mcpauth_proto::env::LOG, "trace");
    let daemon = env.spawn_daemon(&mut cmd).unwrap();
    let mut outputs = Vec::new();
    let mut run = |args: &[&str]| {
        let out = env.ctl(args);
        outputs.push(out.stdout());
        outputs.push(out.stderr());
    };
    run(&["add", "s", &server.mcp_url]);
    run(&["login", "s"]);
    run(&["refresh", "s"]);
    run(&["status", "--json"]);
    // Tokens cross the socket here (its stdout is the token, on purpose,
    // so only the daemon's side is checked).
    let handed_out = env.ctl(&["token", "s"]).ok();
    assert!(!handed_out.trim().is_empty());
    let reported_stderr = env
        .ctl(&["token", "s", "--rejected", handed_out.trim()])
        .stderr();
    run(&["show", "s", "--json"]);
    run(&["logout", "s"]);
    outputs.push(reported_stderr);
    let log = daemon.stop();
    let secrets = server.secrets();
    assert!(
        secrets.len() >= 6,
        "tokens, code, verifier, refresh tokens: {}",
        secrets.len()
    );
    for secret in &secrets {
        for text in outputs.iter().chain([&log]) {
            assert!(
                !text.contains(secret.as_str()),
                "a secret leaked into output:\n{text}"
            );
        }
    }
    assert!(log.contains("TRACE") || log.contains("DEBUG"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_callback_answers_only_its_path_and_ignores_strangers() {
    let Setup {
        env,
        server,
        daemon: _d,
    } = setup(Switches::default()).await;
    let (child, url, _stderr) = start_login(&env, &[], "ignore");
    let redirect = url::Url::parse(&url)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "redirect_uri")
        .map(|(_, v)| v.into_owned())
        .unwrap();
    let base = redirect.trim_end_matches("/callback");
    let http = reqwest::Client::new();
    assert_eq!(
        http.get(format!("{base}/favicon.ico"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        http.post(format!("{base}/callback"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let forged = http
        .get(format!("{base}/callback?code=x&state=forged"))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 400);
    let page = forged.text().await.unwrap();
    assert!(page.contains("does not match"), "{page}");
    assert!(server.requests("/token").is_empty());
    // The login is still pending after the stranger's visit.
    assert_eq!(
        env.ctl(&["show", "s", "--json"]).json()["state"],
        "login_pending"
    );
    env.ctl(&["logout", "s"]).ok();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_port_in_use_is_a_clear_error() {
    let server = AuthServer::start(Switches::default()).await;
    let env = TestEnv::new();
    let _d = env.start_daemon();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port().to_string();
    env.ctl(&["add", "s", &server.mcp_url, "--callback-port", &port])
        .ok();
    let out = login(&env);
    assert_eq!(out.code(), 1);
    assert!(
        out.stderr().contains(&format!("127.0.0.1:{port}")),
        "{}",
        out.stderr()
    );
    assert!(out.stderr().contains("callback_port"), "{}", out.stderr());
    drop(busy);
    login(&env).ok();
    let redirect = &server.requests("/authorize")[0].query["redirect_uri"];
    assert_eq!(redirect, &format!("http://127.0.0.1:{port}/callback"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chosen_callback_port_is_reused_by_later_logins() {
    let Setup {
        env,
        server,
        daemon,
    } = setup(Switches::default()).await;
    login(&env).ok();
    daemon.stop();
    let _daemon = env.start_daemon();
    env.ctl(&["logout", "s"]).ok();
    login(&env).ok();
    let authorize = server.requests("/authorize");
    assert_eq!(
        authorize[0].query["redirect_uri"],
        authorize[1].query["redirect_uri"]
    );
    assert_eq!(
        server.requests("/register").len(),
        1,
        "the registered redirect URI stayed valid"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_terminal_or_a_browser_login_does_not_block() {
    let Setup {
        env, daemon: _d, ..
    } = setup(Switches::default()).await;
    // stdin is /dev/null and stderr a pipe: nobody could finish the login.
    let out = env.ctl_env(&["login", "s"], &[("BROWSER", "/nonexistent/browser")]);
    assert_eq!(out.code(), 4, "{}", out.stderr());
    assert!(
        out.stderr()
            .contains("run `mcpauthctl login s` in a terminal"),
        "{}",
        out.stderr()
    );
    assert_eq!(
        env.ctl(&["show", "s", "--json"]).json()["state"],
        "login_required",
        "the flow was cancelled"
    );
}
