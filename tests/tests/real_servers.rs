//! The servers people actually use: what Google, Stripe, Slack, Supabase,
//! Atlassian, Microsoft Entra and Cloudflare's workers-oauth-provider do
//! that a spec-exact client trips over (see /work/shared/design/servers.md
//! and the README's "Servers that bend the spec"). Each behaviour is a
//! switch of the in-repo test AS. What is safe is tolerated by itself;
//! what is not takes one named per-server setting, which the failing
//! login's one line names.
//!
//! Each test drives `add` (or a config.toml with the setting), `login`,
//! `token`, a forced `refresh` and an authorized MCP call, and counts the
//! AS's requests.

use mcpauth_tests::authserver::{AuthServer, IssMode, PrmMode, Switches};
use mcpauth_tests::{CtlOutput, Daemon, TestEnv};

/// `add`, `login`, `token`, a forced `refresh` and an authorized call,
/// each succeeding; returns the daemon.
async fn works_end_to_end(server: &AuthServer) -> (TestEnv, Daemon) {
    let env = TestEnv::new();
    let daemon = env.start_daemon();
    env.ctl(&["add", "s", &server.mcp_url]).ok();
    let out = env.ctl(&["login", "s"]);
    assert_eq!(out.code(), 0, "login: {}", out.stderr());
    assert!(env.authorized_call("s", &server.mcp_url).await.is_success());
    env.ctl(&["refresh", "s"]).ok();
    assert!(env.authorized_call("s", &server.mcp_url).await.is_success());
    (env, daemon)
}

/// Replaces config.toml with one server, `name`, at `url`, with `extra`
/// lines; waits until the daemon has it.
fn configure(env: &TestEnv, name: &str, url: &str, extra: &str) {
    env.write_config(&format!("[servers.{name}]\nurl = \"{url}\"\n{extra}\n"));
    wait_until_applied(env, name);
}

/// Waits until the daemon has the server `name` of the config written.
fn wait_until_applied(env: &TestEnv, name: &str) {
    mcpauth_tests::wait_until(
        std::time::Duration::from_secs(10),
        "the config to apply",
        || env.ctl(&["show", name]).code() == 0,
    );
}

/// The line a failed command ends with (a login that got as far as the
/// browser printed its URL before).
fn failure_line(out: &CtlOutput) -> String {
    assert_ne!(out.code(), 0, "{}", out.stdout());
    out.stderr().trim().lines().last().unwrap_or("").to_string()
}

/// A failed login: its one line names `setting` and says to set it only
/// for a trusted server.
fn refused_naming(out: &CtlOutput, setting: &str) {
    let line = failure_line(out);
    assert!(line.contains(setting), "{setting} named: {}", out.stderr());
    assert!(line.contains("only if you trust"), "{line}");
}

/// Google: the resource metadata names `https://accounts.google.com/`,
/// the metadata says `https://accounts.google.com`. The same issuer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuer_differing_only_by_a_trailing_slash_is_the_same_issuer() {
    let server = AuthServer::start(Switches {
        prm_issuer_trailing_slash: true,
        split_origin: true,
        ..Default::default()
    })
    .await;
    let (env, _d) = works_end_to_end(&server).await;
    assert_eq!(server.requests("/authorize").len(), 1);
    assert_eq!(server.token_requests("refresh_token").len(), 1);
    // Bound to the metadata's spelling, which is what `iss` says.
    let show = env.ctl(&["show", "s", "--json"]).json();
    assert!(
        !show.to_string().contains(&format!("{}/\"", server.issuer)),
        "{show}"
    );
}

/// The same slash on an issuer with a path is another issuer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuer_with_a_path_is_compared_exactly() {
    let server = AuthServer::start(Switches {
        issuer_path: "/tenant1".into(),
        prm_issuer_trailing_slash: true,
        ..Default::default()
    })
    .await;
    let env = TestEnv::new();
    let _d = env.start_daemon();
    env.ctl(&["add", "s", &server.mcp_url]).ok();
    let out = env.ctl(&["login", "s"]);
    refused_naming(&out, "auth_server_metadata_url = \"");
    assert!(server.requests("/authorize").is_empty());
}

/// Stripe: `resource_metadata=https://…` without quotes is read whole;
/// a challenge that cannot be used falls back to the well-known PRM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unquoted_resource_metadata_url_is_read_whole() {
    let server = AuthServer::start(Switches {
        unquoted_resource_metadata: true,
        ..Default::default()
    })
    .await;
    let (_env, _d) = works_end_to_end(&server).await;
    // Only the challenge names that URL.
    assert!(!server.requests("/meta/resource-metadata.json").is_empty());
    assert_eq!(server.token_requests("refresh_token").len(), 1);

    // Not a URL; a URL the policy refuses (plain http elsewhere): not
    // requested, and the well-known location is found.
    for raw in ["::not a url::", "http://mcp.example.com/prm"] {
        let garbled = AuthServer::start(Switches {
            challenge_resource_metadata: Some(raw.into()),
            prm: PrmMode::WellKnownPath,
            ..Default::default()
        })
        .await;
        let (_env, _d) = works_end_to_end(&garbled).await;
        assert!(
            !garbled
                .requests("/.well-known/oauth-protected-resource/mcp")
                .is_empty()
        );
    }
}

/// Slack: token-endpoint errors come as HTTP 200 `{"ok": false, "error":
/// "invalid_grant"}`. A revoked grant is "login required", once, not an
/// outage retried forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_in_a_200_is_an_oauth_error() {
    let server = AuthServer::start(Switches {
        errors_as_200: true,
        ..Default::default()
    })
    .await;
    let (env, _d) = works_end_to_end(&server).await;
    server.revoke_all_refresh_tokens();
    let out = env.ctl(&["refresh", "s"]);
    assert_eq!(out.code(), 4, "{}", out.stderr());
    assert_eq!(out.stderr().trim().lines().count(), 1, "{}", out.stderr());
    assert!(out.stderr().contains("invalid_grant"), "{}", out.stderr());
    assert_eq!(server.token_requests("refresh_token").len(), 2);
    // No loop: the grant is gone, nothing more is asked.
    let again = env.ctl(&["token", "s"]);
    assert_eq!(again.code(), 4, "{}", again.stderr());
    assert_eq!(server.token_requests("refresh_token").len(), 2);
    env.ctl(&["login", "s"]).ok();
    assert!(env.authorized_call("s", &server.mcp_url).await.is_success());
    assert_eq!(server.requests("/register").len(), 1, "same client");
}

/// Supabase: a pruned client gets `422 {"message": "Unrecognized
/// client_id"}`. Login required, in one line; the registration the broker
/// made is dropped, and the next login registers once and works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_the_server_no_longer_knows_is_registered_again_once() {
    let server = AuthServer::start(Switches {
        unknown_client_422: true,
        ..Default::default()
    })
    .await;
    let (env, _d) = works_end_to_end(&server).await;
    assert_eq!(server.requests("/register").len(), 1);
    server.forget_clients();
    let out = env.ctl(&["refresh", "s"]);
    assert_eq!(out.code(), 4, "{}", out.stderr());
    let line = out.stderr();
    assert_eq!(line.trim().lines().count(), 1, "{line}");
    assert!(
        line.contains("Unrecognized client_id") && line.contains("registers a new one"),
        "{line}"
    );
    assert_eq!(server.token_requests("refresh_token").len(), 2, "no loop");
    assert_eq!(env.ctl(&["token", "s"]).code(), 4);
    assert_eq!(server.token_requests("refresh_token").len(), 2);

    let out = env.ctl(&["login", "s"]);
    assert_eq!(out.code(), 0, "{}", out.stderr());
    assert_eq!(server.requests("/register").len(), 2, "registered once");
    assert!(env.authorized_call("s", &server.mcp_url).await.is_success());
    env.ctl(&["refresh", "s"]).ok();
    assert!(env.authorized_call("s", &server.mcp_url).await.is_success());
    assert_eq!(server.requests("/register").len(), 2);
    assert_eq!(server.requests("/authorize").len(), 2);
}

/// Atlassian: `/authorize` answers an HTML 500 for a stale client, and
/// the browser never comes back. The login times out saying what may
/// have happened, and the next login registers anew, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_that_never_comes_back_does_not_leave_a_dead_registration() {
    let server = AuthServer::start(Switches {
        unknown_client_authorize_500: true,
        ..Default::default()
    })
    .await;
    let env = TestEnv::new();
    let _d = env
        .spawn_daemon(
            env.command("mcpauthd")
                .args(["--callback-timeout-secs", "2"]),
        )
        .unwrap();
    env.ctl(&["add", "s", &server.mcp_url]).ok();
    env.ctl(&["login", "s"]).ok();
    assert!(env.authorized_call("s", &server.mcp_url).await.is_success());
    server.forget_clients();
    let out = env.ctl(&["login", "s"]);
    assert_eq!(out.code(), 1, "{}", out.stderr());
    let line = failure_line(&out);
    assert!(
        line.contains("no answer from the browser")
            && line.contains("the next login registers a new one"),
        "{line}"
    );
    assert_eq!(server.requests("/register").len(), 1);
    let out = env.ctl(&["login", "s"]);
    assert_eq!(out.code(), 0, "{}", out.stderr());
    assert_eq!(server.requests("/register").len(), 2, "registered once");
    assert!(env.authorized_call("s", &server.mcp_url).await.is_success());
    env.ctl(&["refresh", "s"]).ok();
    assert!(env.authorized_call("s", &server.mcp_url).await.is_success());
    assert_eq!(server.requests("/authorize").len(), 3);
}

/// Google, Vercel, Clerk: no refresh token unless asked. The login says
/// so, and when to log in again; so do `show` and `status`. With
/// `authorization_params`, the request asks and a refresh token comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_without_a_refresh_token_says_so_and_authorization_params_ask() {
    let server = AuthServer::start(Switches {
        refresh_token_only_with: Some(("access_type".into(), "offline".into())),
        ..Default::default()
    })
    .await;
    let env = TestEnv::new();
    let _d = env.start_daemon();
    env.ctl(&["add", "s", &server.mcp_url]).ok();
    let out = env.ctl(&["login", "s"]);
    assert_eq!(out.code(), 0, "{}", out.stderr());
    let said = format!("{}{}", out.stdout(), out.stderr());
    assert!(
        said.contains("no refresh token")
            && said.contains("log in again before")
            && said.contains("authorization_params")
            && said.contains("offline_access"),
        "{said}"
    );
    assert!(env.authorized_call("s", &server.mcp_url).await.is_success());
    let show = env.ctl(&["show", "s"]).ok();
    assert!(
        show.contains("renew") && show.contains("none, log in again before"),
        "{show}"
    );
    let status = env.ctl(&["status"]).ok();
    assert!(status.contains("none, log in again before"), "{status}");
    assert_eq!(
        env.ctl(&["show", "s", "--json"]).json()["no_refresh_token"],
        true
    );
    let refresh = env.ctl(&["refresh", "s"]);
    assert_eq!(refresh.code(), 4, "{}", refresh.stderr());
    assert!(server.token_requests("refresh_token").is_empty());

    configure(
        &env,
        "g",
        &server.mcp_url,
        "authorization_params = { access_type = \"offline\", prompt = \"consent\" }",
    );
    let out = env.ctl(&["login", "g"]);
    assert_eq!(out.code(), 0, "{}", out.stderr());
    assert!(
        !out.stdout().contains("no refresh token"),
        "{}",
        out.stdout()
    );
    let asked = &server.requests("/authorize")[1].query;
    assert_eq!(asked["access_type"], "offline");
    assert_eq!(asked["prompt"], "consent");
    assert_eq!(asked["response_type"], "code");
    assert!(env.authorized_call("g", &server.mcp_url).await.is_success());
    env.ctl(&["refresh", "g"]).ok();
    assert!(env.authorized_call("g", &server.mcp_url).await.is_success());
    assert_eq!(server.token_requests("refresh_token").len(), 1);
    assert_eq!(
        env.ctl(&["show", "g", "--json"]).json()["no_refresh_token"],
        false
    );
}

/// Entra, Cognito: no `code_challenge_methods_supported` (S256 works);
/// Entra also refuses RFC 8707 `resource` (AADSTS9010010). Each refusal
/// names its setting; with both, S256 is still used and no `resource`
/// is sent anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assume_pkce_s256_and_send_resource_false() {
    let server = AuthServer::start(Switches {
        pkce_advertised: false,
        resource_refused: true,
        ..Default::default()
    })
    .await;
    let env = TestEnv::new();
    let _d = env.start_daemon();
    env.ctl(&["add", "s", &server.mcp_url]).ok();
    refused_naming(&env.ctl(&["login", "s"]), "assume_pkce_s256 = true");
    assert!(server.requests("/authorize").is_empty());

    configure(&env, "e", &server.mcp_url, "assume_pkce_s256 = true");
    refused_naming(&env.ctl(&["login", "e"]), "send_resource = false");
    assert_eq!(server.requests("/authorize").len(), 1);
    assert!(server.requests("/token").is_empty());

    configure(
        &env,
        "f",
        &server.mcp_url,
        "assume_pkce_s256 = true\nsend_resource = false",
    );
    let out = env.ctl(&["login", "f"]);
    assert_eq!(out.code(), 0, "{}", out.stderr());
    let authorize = &server.requests("/authorize")[1].query;
    assert_eq!(authorize["code_challenge_method"], "S256");
    assert!(!authorize.contains_key("resource"));
    assert!(env.authorized_call("f", &server.mcp_url).await.is_success());
    env.ctl(&["refresh", "f"]).ok();
    assert!(env.authorized_call("f", &server.mcp_url).await.is_success());
    let tokens = server.requests("/token");
    assert_eq!(tokens.len(), 2);
    assert!(tokens.iter().all(|t| !t.form.contains_key("resource")));
}

/// Slack, Atlassian: the AS metadata names another issuer than the one
/// it was found for. Refused, naming `auth_server_metadata_url` with the
/// document's URL; with it, bound to the issuer that document names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_server_metadata_url_binds_to_the_issuer_it_names() {
    let server = AuthServer::start(Switches {
        wrong_issuer: true,
        split_origin: true,
        ..Default::default()
    })
    .await;
    let env = TestEnv::new();
    let _d = env.start_daemon();
    env.ctl(&["add", "s", &server.mcp_url]).ok();
    let metadata_url = format!("{}/.well-known/oauth-authorization-server", server.issuer);
    let out = env.ctl(&["login", "s"]);
    refused_naming(
        &out,
        &format!("auth_server_metadata_url = \"{metadata_url}\""),
    );
    assert!(server.requests("/authorize").is_empty());

    configure(
        &env,
        "m",
        &server.mcp_url,
        &format!("auth_server_metadata_url = \"{metadata_url}\""),
    );
    let out = env.ctl(&["login", "m"]);
    assert_eq!(out.code(), 0, "{}", out.stderr());
    assert!(env.authorized_call("m", &server.mcp_url).await.is_success());
    env.ctl(&["refresh", "m"]).ok();
    assert!(env.authorized_call("m", &server.mcp_url).await.is_success());
    assert_eq!(server.token_requests("refresh_token").len(), 1);
    // The callback's `iss` is the issuer the document names.
    assert_eq!(server.requests("/authorize").len(), 1);
}

/// Cloudflare's workers-oauth-provider: `iss` promised, not sent. Refused,
/// naming `allow_missing_iss`; with it, accepted; a wrong `iss` is still
/// refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_missing_iss_still_checks_an_iss_that_is_sent() {
    let server = AuthServer::start(Switches {
        iss: IssMode::AdvertisedMissing,
        ..Default::default()
    })
    .await;
    let env = TestEnv::new();
    let _d = env.start_daemon();
    env.ctl(&["add", "s", &server.mcp_url]).ok();
    refused_naming(&env.ctl(&["login", "s"]), "allow_missing_iss = true");
    assert!(server.requests("/token").is_empty());

    configure(&env, "c", &server.mcp_url, "allow_missing_iss = true");
    let out = env.ctl(&["login", "c"]);
    assert_eq!(out.code(), 0, "{}", out.stderr());
    assert!(env.authorized_call("c", &server.mcp_url).await.is_success());
    env.ctl(&["refresh", "c"]).ok();
    assert!(env.authorized_call("c", &server.mcp_url).await.is_success());
    assert_eq!(server.token_requests("refresh_token").len(), 1);

    server.set(|s| s.iss = IssMode::Wrong);
    let out = env.ctl(&["login", "c"]);
    assert_ne!(out.code(), 0);
    assert!(out.stderr().contains("mix-up"), "{}", out.stderr());
    assert_eq!(server.token_requests("authorization_code").len(), 1);
}

/// `doctor NAME`: discovery and registration step by step, nothing
/// changed (no registration, no authorization, no token request), each
/// problem with the one setting that fixes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_walks_discovery_and_names_the_fix() {
    let healthy = AuthServer::start(Switches::default()).await;
    let env = TestEnv::new();
    let _d = env.start_daemon();
    env.ctl(&["add", "s", &healthy.mcp_url]).ok();
    let out = env.ctl(&["doctor", "s"]);
    assert_eq!(out.code(), 0, "{}{}", out.stdout(), out.stderr());
    let text = out.stdout();
    for step in [
        "ok challenge: HTTP 401, Bearer resource_metadata=",
        "ok resource metadata: GET ",
        "ok resource: ",
        "ok authorization server: ",
        "ok metadata: GET ",
        "ok issuer: ",
        "ok endpoints: authorization ",
        "ok registration: dynamic",
        "ok pkce: S256 listed",
        "ok iss: promised",
        "ok grant types: authorization_code refresh_token",
        "ok settings: assume_pkce_s256 = false (the spec); send_resource = true (the spec)",
    ] {
        assert!(text.contains(step), "{step:?} in {text}");
    }

    let entra = AuthServer::start(Switches {
        pkce_advertised: false,
        wrong_issuer: true,
        dcr: false,
        ..Default::default()
    })
    .await;
    configure(&env, "e", &entra.mcp_url, "");
    let out = env.ctl(&["doctor", "e", "--json"]);
    assert_eq!(out.code(), 1, "{}", out.stderr());
    let report: serde_json::Value = serde_json::from_str(&out.stdout()).unwrap();
    assert_eq!(report["ok"], false);
    let steps = report["steps"].as_array().unwrap();
    let issuer = steps.iter().find(|s| s["step"] == "issuer").unwrap();
    assert_eq!(issuer["ok"], false);
    let metadata_url = format!("{}/.well-known/oauth-authorization-server", entra.issuer);
    assert!(
        issuer["fix"]
            .as_str()
            .unwrap()
            .contains(&format!("auth_server_metadata_url = \"{metadata_url}\"")),
        "{issuer}"
    );
    // With that set, the walk goes on to the next problems.
    configure(
        &env,
        "f",
        &entra.mcp_url,
        &format!("auth_server_metadata_url = \"{metadata_url}\""),
    );
    let out = env.ctl(&["doctor", "f"]);
    assert_eq!(out.code(), 1);
    let text = out.stdout();
    assert!(
        text.contains("!! pkce: no code_challenge_methods_supported")
            && text.contains("fix: only if you trust this server, set assume_pkce_s256 = true"),
        "{text}"
    );
    assert!(
        text.contains("!! registration:") && text.contains("--client-id"),
        "{text}"
    );
    assert!(
        out.stderr().contains("2 problems found"),
        "{}",
        out.stderr()
    );
    for server in [&healthy, &entra] {
        assert!(server.requests("/register").is_empty());
        assert!(server.requests("/authorize").is_empty());
        assert!(server.requests("/token").is_empty());
    }
}

/// A forward HTTP proxy (absolute-form requests), recording each URL it
/// forwards.
async fn forward_proxy() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use axum::body::{Body, to_bytes};
    use axum::http::Request;
    use axum::response::IntoResponse;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let upstream = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let app = axum::Router::new().fallback(move |request: Request<Body>| {
        let log = log.clone();
        let upstream = upstream.clone();
        async move {
            let (parts, body) = request.into_parts();
            let url = parts.uri.to_string();
            log.lock().unwrap().push(format!("{} {url}", parts.method));
            let body = to_bytes(body, 1 << 20).await.unwrap_or_default();
            let mut forwarded = upstream.request(parts.method.clone(), &url).body(body);
            for (name, value) in &parts.headers {
                if !matches!(
                    name.as_str(),
                    "host" | "proxy-authorization" | "proxy-connection"
                ) {
                    forwarded = forwarded.header(name, value);
                }
            }
            let Ok(answer) = forwarded.send().await else {
                return axum::http::StatusCode::BAD_GATEWAY.into_response();
            };
            let mut response = axum::http::Response::builder().status(answer.status());
            for (name, value) in answer.headers() {
                if !matches!(
                    name.as_str(),
                    "transfer-encoding" | "connection" | "content-length"
                ) {
                    response = response.header(name, value);
                }
            }
            let bytes = answer.bytes().await.unwrap_or_default();
            response.body(Body::from(bytes)).unwrap().into_response()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("127.0.0.1:{port}"), seen)
}

/// Top-level `proxy = "http://…"`: every request of the daemon goes
/// through it (its password never reaches a log), and so do those of
/// `mcpauthctl proxy`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_proxy_carries_the_daemons_and_the_proxys_requests() {
    let server = AuthServer::start(Switches::default()).await;
    let (proxy, seen) = forward_proxy().await;
    let env = TestEnv::new();
    let daemon = env.start_daemon();
    env.write_config(&format!(
        "proxy = \"http://me:pr0xy-s3cret@{proxy}\"\n\n[servers.s]\nurl = \"{}\"\n",
        server.mcp_url
    ));
    wait_until_applied(&env, "s");
    let out = env.ctl(&["login", "s"]);
    assert_eq!(out.code(), 0, "{}", out.stderr());
    assert!(env.authorized_call("s", &server.mcp_url).await.is_success());
    env.ctl(&["refresh", "s"]).ok();
    assert!(env.authorized_call("s", &server.mcp_url).await.is_success());
    let through = seen.lock().unwrap().clone();
    for expected in [
        "POST http://127.0.0.1",
        "/.well-known/oauth-authorization-server",
        "/register",
        "/token",
    ] {
        assert!(
            through.iter().any(|s| s.contains(expected)),
            "{expected} in {through:?}"
        );
    }
    assert_eq!(server.token_requests("refresh_token").len(), 1);
    let before = through.len();

    // mcpauthctl proxy reads the same setting.
    let mut child = env
        .command("mcpauthctl")
        .args(["proxy", "s"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    use std::io::Write;
    writeln!(
        stdin,
        "{}",
        serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                       "clientInfo": {"name": "test-host", "version": "1"}}})
    )
    .unwrap();
    stdin.flush().unwrap();
    let answer = rx
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("an answer through the proxy");
    assert!(answer.contains("\"id\":1"), "{answer}");
    drop(stdin);
    let _ = child.kill();
    let _ = child.wait();
    let through = seen.lock().unwrap().clone();
    assert!(
        through[before..]
            .iter()
            .any(|s| s.starts_with("POST") && s.ends_with("/mcp")),
        "{through:?}"
    );
    let log = daemon.log();
    assert!(
        !log.contains("pr0xy-s3cret"),
        "the proxy's password is in the log"
    );
}

/// Top-level `ca_file`: an authority the system does not trust (an
/// intercepting proxy's) is trusted for the daemon's requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_ca_file_is_trusted() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let env = TestEnv::new();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "a corporate authority");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let bundle = env.home().join("corp-ca.pem");
    std::fs::write(&bundle, ca_cert.pem()).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let port = mcpauth_tests::tls_listener(&cert, &key).await;
    let url = format!("https://127.0.0.1:{port}/mcp");
    let _d = env.start_daemon();
    configure(&env, "t", &url, "");
    let out = env.ctl(&["login", "t"]);
    assert!(
        failure_line(&out).contains("unknown authority"),
        "{}",
        out.stderr()
    );
    env.write_config(&format!(
        "ca_file = \"{}\"\n\n[servers.u]\nurl = \"{url}\"\n",
        bundle.display()
    ));
    wait_until_applied(&env, "u");
    let out = env.ctl(&["login", "u"]);
    let line = failure_line(&out);
    assert!(!line.contains("TLS"), "TLS passes now: {line}");
}

/// A 4xx that is no OAuth answer and names neither the grant nor the
/// client is a refusal, shown as it is: not an outage ("retry after"),
/// and not a reason to drop the grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_4xx_is_a_refusal_not_an_outage() {
    let server = AuthServer::start(Switches::default()).await;
    let (env, _d) = works_end_to_end(&server).await;
    let held = env.ctl(&["token", "s"]).ok();
    server.set(|s| s.token_failure = Some(400));
    let out = env.ctl(&["refresh", "s"]);
    assert_ne!(out.code(), 0);
    let line = failure_line(&out);
    assert!(line.contains("refused with HTTP 400"), "{line}");
    assert!(!line.contains("retry after"), "{line}");
    // The grant is kept, and served while valid.
    assert_eq!(env.ctl(&["token", "s"]).ok(), held);
    server.set(|s| s.token_failure = None);
    env.ctl(&["refresh", "s"]).ok();
    assert!(env.authorized_call("s", &server.mcp_url).await.is_success());
}

/// A real forward proxy, Debian's tinyproxy, installed by
/// tests/proxy/install.sh (apt) on first use, on loopback.
struct Tinyproxy {
    child: std::process::Child,
    log: std::path::PathBuf,
    port: u16,
}

impl Tinyproxy {
    fn start(env: &TestEnv) -> Self {
        {
            let lock =
                std::fs::File::create(std::env::temp_dir().join("mcpauth-proxy-install.lock"))
                    .unwrap();
            let _guard = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
                .map_err(|(_, e)| e)
                .unwrap();
            let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("proxy/install.sh");
            let status = std::process::Command::new(script)
                .stdout(std::process::Stdio::null())
                .status()
                .expect("tests/proxy/install.sh");
            assert!(status.success(), "tests/proxy/install.sh failed");
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = env.root.path().join("tinyproxy");
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("log");
        let conf = dir.join("conf");
        std::fs::write(
            &conf,
            format!(
                "Port {port}\nListen 127.0.0.1\nTimeout 30\nAllow 127.0.0.1\nLogLevel Info\n\
                 LogFile \"{}\"\nMaxClients 20\nDisableViaHeader Yes\n",
                log.display()
            ),
        )
        .unwrap();
        let child = std::process::Command::new("tinyproxy")
            .args(["-d", "-c"])
            .arg(&conf)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("tinyproxy");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "tinyproxy did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Self { child, log, port }
    }

    /// The connections it opened, as `host:port`.
    fn connections(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split("opensock: opening connection to ").nth(1))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// config.toml's `proxy` with a real forward proxy (tinyproxy), and a
/// daemon started the way a host with a filtered environment starts it
/// (HOME and PATH only, no proxy variables): the login, the refresh and
/// the token check all go through the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_forward_proxy_carries_a_daemon_started_with_home_and_path_only() {
    let server = AuthServer::start(Switches::default()).await;
    let env = TestEnv::new();
    let proxy = Tinyproxy::start(&env);
    env.write_config(&format!(
        "proxy = \"http://127.0.0.1:{}\"\n\n[servers.s]\nurl = \"{}\"\n",
        proxy.port, server.mcp_url
    ));
    let mut cmd = std::process::Command::new(mcpauth_tests::bin("mcpauthd"));
    cmd.env_clear()
        .env("HOME", env.home())
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .arg("--socket")
        .arg(env.socket());
    let _daemon = env.spawn_daemon(&mut cmd).unwrap();
    let out = env.ctl(&["login", "s"]);
    assert_eq!(
        out.code(),
        0,
        "{}\n{}",
        out.stderr(),
        std::fs::read_to_string(&proxy.log).unwrap_or_default()
    );
    env.ctl(&["refresh", "s"]).ok();
    assert!(env.authorized_call("s", &server.mcp_url).await.is_success());
    assert_eq!(server.token_requests("authorization_code").len(), 1);
    assert_eq!(server.token_requests("refresh_token").len(), 1);
    let as_host = server
        .mcp_url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let through = proxy.connections();
    assert!(
        through.iter().filter(|c| **c == as_host).count() >= 4,
        "discovery, registration, code exchange and refresh through the proxy: {through:?}"
    );
}
