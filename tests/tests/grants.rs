//! Grants beyond the browser, end to end: client credentials (secret and
//! private_key_jwt), the device flow, workload JWT bearer, and the two
//! spec gaps of the core flow (a 2025-03-26 AS naming its own issuer, a
//! stateless 2026-07-28 server's challenge), against the test AS.

use std::time::Duration;

use mcpauth_tests::authserver::{AuthServer, IssMode, MetadataMode, PrmMode, Switches};
use mcpauth_tests::grants_as::{GrantSwitches, es256_key, sign, unix_secs};
use mcpauth_tests::{CtlOutput, Daemon, TestEnv, leaked, token_issued, wait_until_async};

struct Setup {
    env: TestEnv,
    server: AuthServer,
    _daemon: Daemon,
}

/// A test AS, and a daemon logging at trace level with `config` (where
/// `{url}` is the MCP URL) as its config.
async fn setup(switches: Switches, config: &str) -> Setup {
    let server = AuthServer::start(switches).await;
    let env = TestEnv::new();
    env.write_config(&config.replace("{url}", &server.mcp_url));
    let mut cmd = env.command("mcpauthd");
    cmd.env(mcpauth_proto::env::LOG, "trace");
    let daemon = env
        .spawn_daemon(&mut cmd)
        .unwrap_or_else(|log| panic!("{log}"));
    Setup {
        env,
        server,
        _daemon: daemon,
    }
}

/// A private file in the test's home.
fn private_file(env: &TestEnv, name: &str, content: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let path = env.home().join(name);
    std::fs::write(&path, content).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path.display().to_string()
}

fn token(env: &TestEnv) -> String {
    env.ctl(&["token", "s"]).ok().trim().to_string()
}

/// No secret in any daemon log (at trace level) or in what the commands
/// printed (but a `token` command's stdout, which is the token).
fn assert_no_leak(env: &TestEnv, server: &AuthServer, extra: &[String], outputs: &[&CtlOutput]) {
    let mut secrets = server.secrets();
    secrets.extend(extra.iter().cloned());
    secrets.retain(|s| s.len() >= 8);
    let logs = env.all_daemon_logs();
    assert!(
        logs.contains("TRACE") || logs.contains("trace"),
        "trace logging was on"
    );
    if let Some(s) = leaked(&logs, &secrets) {
        panic!("a secret ({}...) is in the daemon's log", &s[..6]);
    }
    for out in outputs {
        let text = format!("{}{}", out.stdout(), out.stderr());
        if let Some(s) = leaked(&text, &secrets) {
            panic!("a secret ({}...) is in a command's output", &s[..6]);
        }
    }
}

fn cc_switches() -> Switches {
    Switches {
        grants: GrantSwitches {
            client_credentials: true,
            ..Default::default()
        },
        expires_in: Some(4),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_need_no_login_and_renew_by_asking_again() {
    let server = AuthServer::start(cc_switches()).await;
    server.add_client("svc-ci", Some("cc-secret-value-1"), "client_secret_basic");
    let env = TestEnv::new();
    let secret = private_file(&env, "svc-ci.secret", "cc-secret-value-1\n");
    env.write_config(&format!(
        "[servers.s]\nurl = \"{}\"\ngrant = \"client_credentials\"\nclient_id = \"svc-ci\"\nclient_secret_file = \"{secret}\"\nscopes = [\"tools:run\"]\n",
        server.mcp_url
    ));
    let mut cmd = env.command("mcpauthd");
    cmd.env(mcpauth_proto::env::LOG, "trace");
    let _daemon = env.spawn_daemon(&mut cmd).unwrap();
    let mut events = env.events(Some("s")).await;

    let before = env.ctl(&["show", "s", "--json"]).json();
    assert_eq!(before["grant"], "client_credentials");
    assert_eq!(before["state"], "on_demand");

    // `login` says none is needed; nothing is requested.
    let login = env.ctl(&["login", "s"]);
    assert_ne!(login.code(), 0);
    assert!(
        login.stderr().contains("without a login"),
        "{}",
        login.stderr()
    );
    assert!(server.requests("/token").is_empty());
    assert!(env.browser_log().is_empty());

    // `token` just works: one client credentials request, Basic auth,
    // resource and the configured scope.
    let first = token(&env);
    let first_generation = token_issued(&mut events, "s", 0).await;
    assert!(server.is_valid_access_token(&first));
    let requests = server.token_requests("client_credentials");
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert_eq!(
        r.basic_auth,
        Some(("svc-ci".into(), "cc-secret-value-1".into()))
    );
    assert!(!r.form.contains_key("client_secret"));
    assert_eq!(r.form["resource"], server.mcp_url);
    assert_eq!(r.form["scope"], "tools:run");
    assert!(!r.form.contains_key("code_challenge"));

    let shown = env.ctl(&["show", "s", "--json"]).json();
    assert_eq!(shown["state"], "authorized");
    assert_eq!(shown["grant"], "client_credentials");
    let status = env.ctl(&["status"]).ok();
    assert!(status.contains("(client_credentials)"), "{status}");

    // The token lives 4 s: it is renewed with no person (by the
    // scheduler, or by a request), and a later `token` gets the new one.
    token_issued(&mut events, "s", first_generation).await;
    let second = token(&env);
    assert_ne!(first, second, "renewed");
    assert!(server.is_valid_access_token(&second));
    assert!(server.token_requests("client_credentials").len() >= 2);
    assert!(server.token_requests("refresh_token").is_empty());
    let show = env.ctl(&["show", "s"]);
    assert!(
        show.ok()
            .contains("client_credentials (no person involved)")
    );
    assert_no_leak(
        &env,
        &server,
        &["cc-secret-value-1".into()],
        &[&login, &show],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_secret_post_when_the_as_takes_only_that() {
    let server = AuthServer::start(Switches {
        auth_methods: Some(vec!["client_secret_post".into()]),
        ..cc_switches()
    })
    .await;
    server.add_client("svc", Some("post-secret-value"), "client_secret_post");
    let env = TestEnv::new();
    let secret = private_file(&env, "svc.secret", "post-secret-value");
    env.write_config(&format!(
        "[servers.s]\nurl = \"{}\"\ngrant = \"client_credentials\"\nclient_id = \"svc\"\nclient_secret_file = \"{secret}\"\n",
        server.mcp_url
    ));
    let _daemon = env.start_daemon();
    let t = token(&env);
    assert!(server.is_valid_access_token(&t));
    let r = &server.token_requests("client_credentials")[0];
    assert!(r.basic_auth.is_none());
    assert_eq!(r.form["client_secret"], "post-secret-value");
    assert!(
        !r.form.contains_key("scope"),
        "no scope configured, none sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_with_private_key_jwt() {
    let server = AuthServer::start(cc_switches()).await;
    let (pem, key) = es256_key();
    server
        .state
        .lock()
        .unwrap()
        .grants
        .add_client_key("svc-jwt", *key.verifying_key());
    let env = TestEnv::new();
    let key_file = private_file(&env, "svc.pem", &pem);
    env.write_config(&format!(
        "[servers.s]\nurl = \"{}\"\ngrant = \"client_credentials\"\nclient_id = \"svc-jwt\"\nclient_key_file = \"{key_file}\"\nclient_key_alg = \"ES256\"\n",
        server.mcp_url
    ));
    let mut cmd = env.command("mcpauthd");
    cmd.env(mcpauth_proto::env::LOG, "trace");
    let _daemon = env.spawn_daemon(&mut cmd).unwrap();

    let t = token(&env);
    assert!(
        server.is_valid_access_token(&t),
        "{:?}",
        server.state.lock().unwrap().grants.last_refusal
    );
    // Forced renewals: each carries a new assertion (the AS takes a jti
    // once, and verified iss, sub, aud, exp and the signature).
    env.ctl(&["refresh", "s"]).ok();
    env.ctl(&["refresh", "s"]).ok();
    let requests = server.token_requests("client_credentials");
    assert_eq!(requests.len(), 3);
    for r in &requests {
        assert!(r.basic_auth.is_none());
        assert_eq!(
            r.form["client_assertion_type"],
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
        );
        assert_eq!(r.form["client_id"], "svc-jwt");
        assert!(!r.form.contains_key("client_secret"));
    }
    let assertion = &requests[0].form["client_assertion"];
    let payload: serde_json::Value = serde_json::from_slice(
        &base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            assertion.split('.').nth(1).unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(payload["aud"], server.issuer);
    let lifetime = payload["exp"].as_i64().unwrap() - payload["iat"].as_i64().unwrap();
    assert!((1..=300).contains(&lifetime), "a short exp: {lifetime}s");
    assert_no_leak(&env, &server, &[pem], &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_client_backs_off_and_says_why() {
    let server = AuthServer::start(cc_switches()).await;
    server.add_client("svc", Some("right-secret-value"), "client_secret_basic");
    let env = TestEnv::new();
    let secret = private_file(&env, "svc.secret", "wrong-secret-value");
    env.write_config(&format!(
        "[servers.s]\nurl = \"{}\"\ngrant = \"client_credentials\"\nclient_id = \"svc\"\nclient_secret_file = \"{secret}\"\n",
        server.mcp_url
    ));
    let _daemon = env.start_daemon();
    let out = env.ctl(&["token", "s"]);
    assert_ne!(out.code(), 0);
    assert!(out.stderr().contains("invalid_client"), "{}", out.stderr());
    assert!(
        !out.stderr().contains("login"),
        "no login to suggest: {}",
        out.stderr()
    );
    // Backoff: a second ask sends nothing.
    let again = env.ctl(&["token", "s"]);
    assert_ne!(again.code(), 0);
    assert_eq!(server.token_requests("client_credentials").len(), 1);
    let shown = env.ctl(&["show", "s", "--json"]).json();
    assert_eq!(shown["state"], "refresh_failing");
    assert!(
        shown["last_error"]
            .as_str()
            .unwrap()
            .contains("invalid_client")
    );
}

fn device_switches(grants: GrantSwitches) -> Switches {
    Switches {
        grants: GrantSwitches {
            device: true,
            ..grants
        },
        ..Default::default()
    }
}

async fn device_setup(grants: GrantSwitches) -> Setup {
    let setup = setup(
        device_switches(grants),
        "[servers.s]\nurl = \"{url}\"\nclient_id = \"device-client\"\n",
    )
    .await;
    setup.server.add_client("device-client", None, "none");
    setup
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_login_shows_the_code_and_the_daemon_polls() {
    let Setup {
        env,
        server,
        _daemon,
    } = device_setup(GrantSwitches::default()).await;
    let out = env.ctl(&["login", "s", "--device"]);
    let stdout = out.ok();
    assert!(stdout.contains("logged in to s"), "{stdout}");
    let stderr = out.stderr();
    assert!(stderr.contains("code: WDJB-"), "{stderr}");
    assert!(
        stderr.contains(&format!("{}/device", server.issuer)),
        "{stderr}"
    );
    assert!(stderr.contains("/device?user_code=WDJB-"), "{stderr}");
    assert!(
        env.browser_log().is_empty(),
        "no browser for a device login"
    );

    let authorization = server.requests("/device_authorization");
    assert_eq!(authorization.len(), 1);
    let form = &authorization[0].form;
    assert_eq!(form["client_id"], "device-client");
    assert_eq!(form["resource"], server.mcp_url);
    assert_eq!(form["scope"], "mcp:read mcp:write");
    assert!(!form.contains_key("code_challenge"), "no PKCE in RFC 8628");
    let polls = server.token_requests("urn:ietf:params:oauth:grant-type:device_code");
    assert_eq!(polls.len(), 2, "pending once, then approved");
    assert!(polls.iter().all(|p| p.form["resource"] == server.mcp_url));
    assert!(!polls[0].form.contains_key("code_verifier"));

    let t = token(&env);
    assert!(server.is_valid_access_token(&t));
    let shown = env.ctl(&["show", "s", "--json"]).json();
    assert_eq!(shown["state"], "authorized");
    assert_eq!(shown["grant"], "authorization_code");
    assert_no_leak(&env, &server, &[], &[&out]);
}

/// No client configured: the broker registers one for the device flow
/// (RFC 7591 with the device_code grant and no redirect URI) and logs in
/// with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_login_registers_a_device_client_when_none_is_configured() {
    let Setup {
        env,
        server,
        _daemon,
    } = setup(
        device_switches(GrantSwitches::default()),
        "[servers.s]\nurl = \"{url}\"\n",
    )
    .await;
    let out = env.ctl(&["login", "s", "--device"]);
    assert!(out.ok().contains("logged in to s"), "{}", out.stderr());
    let registrations = server.requests("/register");
    assert_eq!(registrations.len(), 1);
    let body = &registrations[0].json;
    assert_eq!(
        body["grant_types"],
        serde_json::json!([
            "urn:ietf:params:oauth:grant-type:device_code",
            "refresh_token"
        ])
    );
    assert!(body.get("redirect_uris").is_none(), "{body}");
    assert_eq!(body["token_endpoint_auth_method"], "none");
    let registered = server.state.lock().unwrap().clients.keys().next().cloned();
    let authorization = server.requests("/device_authorization");
    assert_eq!(
        Some(&authorization[0].form["client_id"]),
        registered.as_ref()
    );
    assert!(server.is_valid_access_token(&token(&env)));
    assert!(env.browser_log().is_empty());
    // show says the client in use was registered by the broker.
    let shown = env.ctl(&["show", "s", "--json"]).json();
    assert_eq!(
        shown["client_id"].as_str(),
        registered.as_deref(),
        "{shown}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_login_honours_slow_down() {
    let Setup {
        env,
        server,
        _daemon,
    } = device_setup(GrantSwitches {
        device_interval: 1,
        device_slow_down: 1,
        device_approve_on_poll: Some(1),
        ..Default::default()
    })
    .await;
    env.ctl(&["login", "s", "--device"]).ok();
    let polls = server.state.lock().unwrap().grants.device_polls.clone();
    assert_eq!(polls.len(), 2, "slow_down, then approved");
    let gap = polls[1] - polls[0];
    assert!(
        gap >= Duration::from_millis(5_900),
        "the interval grew by 5 s after slow_down: {gap:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_login_stops_at_expiry() {
    let Setup {
        env,
        server,
        _daemon,
    } = device_setup(GrantSwitches {
        device_expires_in: 3,
        device_approve_on_poll: None,
        ..Default::default()
    })
    .await;
    let out = env.ctl(&["login", "s", "--device"]);
    assert_ne!(out.code(), 0);
    assert!(out.stderr().contains("expired"), "{}", out.stderr());
    let polls = server.state.lock().unwrap().grants.device_polls.len();
    assert!(
        (1..=4).contains(&polls),
        "polled about once a second: {polls}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        server.state.lock().unwrap().grants.device_polls.len(),
        polls,
        "no poll after the end"
    );
    let shown = env.ctl(&["show", "s", "--json"]).json();
    assert_eq!(shown["state"], "login_required");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_login_denied() {
    let Setup { env, _daemon, .. } = device_setup(GrantSwitches {
        device_deny: true,
        ..Default::default()
    })
    .await;
    let out = env.ctl(&["login", "s", "--device"]);
    assert_eq!(out.code(), 4, "login required: {}", out.stderr());
    assert!(out.stderr().contains("access_denied"), "{}", out.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_browser_and_no_terminal_means_a_device_login_when_offered() {
    let Setup {
        env,
        server,
        _daemon,
    } = device_setup(GrantSwitches::default()).await;
    // No $BROWSER, no display, stdin not a terminal.
    let out = env.ctl_env(&["login", "s"], &[("BROWSER", "")]);
    assert!(out.ok().contains("logged in to s"));
    assert!(out.stderr().contains("code: WDJB-"), "{}", out.stderr());
    assert!(server.requests("/authorize").is_empty());
    assert_eq!(server.requests("/device_authorization").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_login_is_refused_when_not_offered() {
    let Setup { env, _daemon, .. } =
        setup(Switches::default(), "[servers.s]\nurl = \"{url}\"\n").await;
    let out = env.ctl(&["login", "s", "--device"]);
    assert_ne!(out.code(), 0);
    assert!(
        out.stderr().contains("offers no device login"),
        "{}",
        out.stderr()
    );
}

fn workload_switches() -> Switches {
    Switches {
        grants: GrantSwitches {
            jwt_bearer: true,
            ..Default::default()
        },
        ..Default::default()
    }
}

/// A workload token from `key` for `aud`, expiring in `ttl` seconds.
fn workload_jwt(key: &p256::ecdsa::SigningKey, aud: &str, ttl: i64) -> String {
    let now = unix_secs();
    sign(
        key,
        &serde_json::json!({
            "iss": "https://k8s.example/cluster",
            "sub": "system:serviceaccount:ci:runner",
            "aud": [aud],
            "iat": now,
            "exp": now + ttl,
        }),
    )
}

/// Replaces `path` as platforms do: a new file renamed over it.
fn rotate(path: &std::path::Path, content: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// What the daemon logs when it sees an assertion (or ID token) file
/// change, and ends the backoff.
const FILE_CHANGED: &str = "the workload assertion file changed";

/// [`rotate`], then waits until the daemon has seen a change of the file
/// after it (and so ended any backoff from before).
async fn rotate_seen(env: &TestEnv, path: &std::path::Path, content: &str) {
    let seen = env.all_daemon_logs().matches(FILE_CHANGED).count();
    rotate(path, content);
    wait_until_async(
        Duration::from_secs(10),
        "the daemon to see the rotation",
        || env.all_daemon_logs().matches(FILE_CHANGED).count() > seen,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_identity_sends_the_current_token_and_follows_rotation() {
    let server = AuthServer::start(workload_switches()).await;
    let (_, key) = es256_key();
    server
        .state
        .lock()
        .unwrap()
        .grants
        .trust_assertion_key(*key.verifying_key());
    let env = TestEnv::new();
    let dir = env.root.path().join("tokens");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("mcp");
    let first_jwt = workload_jwt(&key, &server.issuer, 600);
    std::fs::write(&file, &first_jwt).unwrap();
    env.write_config(&format!(
        "[servers.s]\nurl = \"{}\"\ngrant = \"workload\"\nassertion_file = \"{}\"\n",
        server.mcp_url,
        file.display()
    ));
    let mut cmd = env.command("mcpauthd");
    cmd.env(mcpauth_proto::env::LOG, "trace");
    let _daemon = env.spawn_daemon(&mut cmd).unwrap();

    let t = token(&env);
    assert!(
        server.is_valid_access_token(&t),
        "{:?}",
        server.state.lock().unwrap().grants.last_refusal
    );
    let requests = server.token_requests("urn:ietf:params:oauth:grant-type:jwt-bearer");
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].form["assertion"], first_jwt);
    assert_eq!(requests[0].form["resource"], server.mcp_url);
    assert!(
        !requests[0].form.contains_key("client_id"),
        "none configured"
    );

    // The platform rotates the token (aud: the token endpoint this time).
    let second_jwt = workload_jwt(&key, &format!("{}/token", server.issuer), 600);
    rotate(&file, &second_jwt);
    env.ctl(&["refresh", "s"]).ok();
    let requests = server.token_requests("urn:ietf:params:oauth:grant-type:jwt-bearer");
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[1].form["assertion"], second_jwt);
    let shown = env.ctl(&["show", "s", "--json"]).json();
    assert_eq!(shown["grant"], "workload");
    assert_eq!(shown["state"], "authorized");
    assert_no_leak(&env, &server, &[first_jwt, second_jwt], &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_token_for_another_audience_or_expired_is_never_sent() {
    let server = AuthServer::start(workload_switches()).await;
    let (_, key) = es256_key();
    server
        .state
        .lock()
        .unwrap()
        .grants
        .trust_assertion_key(*key.verifying_key());
    server.add_client("workload-client", None, "none");
    let env = TestEnv::new();
    let file = env.home().join("mcp.jwt");
    let elsewhere = workload_jwt(&key, "https://other-as.example", 600);
    std::fs::write(&file, &elsewhere).unwrap();
    env.write_config(&format!(
        "[servers.s]\nurl = \"{}\"\ngrant = \"workload\"\nclient_id = \"workload-client\"\nassertion_file = \"{}\"\n",
        server.mcp_url,
        file.display()
    ));
    let mut cmd = env.command("mcpauthd");
    cmd.env(mcpauth_proto::env::LOG, "trace");
    let _daemon = env.spawn_daemon(&mut cmd).unwrap();

    let out = env.ctl(&["token", "s"]);
    assert_ne!(out.code(), 0);
    assert!(out.stderr().contains("not sent"), "{}", out.stderr());
    assert!(
        out.stderr().contains("https://other-as.example"),
        "{}",
        out.stderr()
    );
    assert!(server.requests("/token").is_empty(), "nothing was sent");

    // Expired: refused too. The rotation ends the backoff at once.
    let expired = workload_jwt(&key, &server.issuer, -60);
    rotate_seen(&env, &file, &expired).await;
    let out2 = env.ctl(&["token", "s"]);
    assert_ne!(out2.code(), 0);
    assert!(out2.stderr().contains("expired"), "{}", out2.stderr());
    assert!(server.requests("/token").is_empty(), "nothing was sent");
    let shown = env.ctl(&["show", "s", "--json"]).json();
    assert!(
        shown["last_error"].as_str().unwrap().contains("expired"),
        "{shown}"
    );

    // A good token arrives: the next ask works without waiting out the
    // backoff.
    let good = workload_jwt(&key, &server.issuer, 600);
    rotate_seen(&env, &file, &good).await;
    let t = token(&env);
    assert!(server.is_valid_access_token(&t));
    let sent = server.token_requests("urn:ietf:params:oauth:grant-type:jwt-bearer");
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].form["assertion"], good);
    assert_eq!(sent[0].form["client_id"], "workload-client");
    assert_no_leak(&env, &server, &[elsewhere, expired, good], &[&out, &out2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2025_03_26_server_whose_metadata_names_its_own_issuer_logs_in() {
    let Setup {
        env,
        server,
        _daemon,
    } = setup(
        Switches {
            prm: PrmMode::None,
            metadata: MetadataMode::Rfc8414,
            wrong_issuer: true,
            iss: IssMode::Off,
            ..Default::default()
        },
        "[servers.s]\nurl = \"{url}\"\n",
    )
    .await;
    let out = env.ctl(&["login", "s"]);
    assert!(out.ok().contains("logged in to s"), "{}", out.stderr());
    assert_eq!(server.requests("/authorize").len(), 1);
    let t = token(&env);
    assert!(server.is_valid_access_token(&t));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stateless_servers_challenge_sets_the_scope() {
    let Setup {
        env,
        server,
        _daemon,
    } = setup(
        Switches {
            grants: GrantSwitches {
                stateless_scope: Some("tools:list".into()),
                ..Default::default()
            },
            ..Default::default()
        },
        "[servers.s]\nurl = \"{url}\"\n",
    )
    .await;
    env.ctl(&["login", "s"]).ok();
    // The probe was a tools/list with the stateless headers: that is the
    // only request this server answers with its challenge.
    let probes = server.requests("/mcp");
    assert_eq!(probes[0].json["method"], "tools/list");
    assert_eq!(
        probes[0].json["params"]["_meta"]["protocolVersion"],
        "2026-07-28"
    );
    assert_eq!(
        server.requests("/authorize")[0].query["scope"],
        "tools:list"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_challenge_met_without_a_token_sets_the_next_logins_scope() {
    let Setup {
        env,
        server,
        _daemon,
    } = setup(Switches::default(), "[servers.s]\nurl = \"{url}\"\n").await;
    // A client's request was refused before any login.
    let out = env.ctl(&[
        "token",
        "s",
        "--rejected",
        "whatever-token",
        "--www-authenticate",
        "Bearer realm=\"mcp\", scope=\"files:read files:write\", error=\"invalid_token\"",
    ]);
    assert_eq!(out.code(), 4, "login required: {}", out.stderr());
    env.ctl(&["login", "s"]).ok();
    assert_eq!(
        server.requests("/authorize")[0].query["scope"],
        "files:read files:write"
    );
    // Used once: the next login is back to the server's suggestion.
    env.ctl(&["logout", "s"]).ok();
    env.ctl(&["login", "s"]).ok();
    assert_eq!(
        server.requests("/authorize")[1].query["scope"],
        "mcp:read mcp:write"
    );
    // Or handed to the login directly.
    env.ctl(&["logout", "s"]).ok();
    env.ctl(&[
        "login",
        "s",
        "--www-authenticate",
        "Bearer scope=\"admin:all\"",
    ])
    .ok();
    assert_eq!(server.requests("/authorize")[2].query["scope"], "admin:all");
}

/// An identity provider and two MCP servers (each with its own AS) that
/// take its ID-JAGs; a daemon with both servers as `enterprise`.
struct Enterprise {
    env: TestEnv,
    idp: AuthServer,
    wiki: AuthServer,
    tools: AuthServer,
    _daemon: Daemon,
}

async fn enterprise(idp_grants: GrantSwitches, mcp_expires_in: Option<u64>) -> Enterprise {
    enterprise_with(idp_grants, mcp_expires_in, None, |_| String::new()).await
}

/// `extra` adds lines to `[identity_providers.corp]` (given the test env);
/// with `wiki_secret`, wiki's client is confidential (client_secret_basic)
/// and the config names its secret file.
async fn enterprise_with(
    idp_grants: GrantSwitches,
    mcp_expires_in: Option<u64>,
    wiki_secret: Option<&str>,
    extra: impl FnOnce(&TestEnv) -> String,
) -> Enterprise {
    let (_, idp_key) = es256_key();
    let idp = AuthServer::start(Switches {
        grants: GrantSwitches {
            idp_id_token_ttl: Some(600),
            ..idp_grants
        },
        ..Default::default()
    })
    .await;
    idp.state.lock().unwrap().grants.idp_key = Some(idp_key.clone());
    idp.add_client("mcpauth-desktop", None, "none");
    let mcp = || async {
        let server = AuthServer::start(Switches {
            grants: GrantSwitches {
                id_jag: true,
                ..Default::default()
            },
            expires_in: mcp_expires_in,
            ..Default::default()
        })
        .await;
        server
            .state
            .lock()
            .unwrap()
            .grants
            .trust_assertion_key(*idp_key.verifying_key());
        server.add_client("wiki-client", None, "none");
        server
    };
    let wiki = mcp().await;
    let tools = mcp().await;
    let env = TestEnv::new();
    let wiki_secret_line = match wiki_secret {
        Some(secret) => {
            wiki.add_client("wiki-client", Some(secret), "client_secret_basic");
            let file = private_file(&env, "wiki-secret", secret);
            format!("client_secret_file = \"{file}\"\n")
        }
        None => String::new(),
    };
    env.write_config(&format!(
        "[servers.wiki]\nurl = \"{}\"\ngrant = \"enterprise\"\nidentity_provider = \"corp\"\nclient_id = \"wiki-client\"\n{}\n\
         [servers.tools]\nurl = \"{}\"\ngrant = \"enterprise\"\nidentity_provider = \"corp\"\nclient_id = \"wiki-client\"\n\n\
         [identity_providers.corp]\nissuer = \"{}\"\nclient_id = \"mcpauth-desktop\"\n{}",
        wiki.mcp_url,
        wiki_secret_line,
        tools.mcp_url,
        idp.issuer,
        extra(&env)
    ));
    let mut cmd = env.command("mcpauthd");
    cmd.env(mcpauth_proto::env::LOG, "trace");
    let daemon = env.spawn_daemon(&mut cmd).unwrap();
    Enterprise {
        env,
        idp,
        wiki,
        tools,
        _daemon: daemon,
    }
}

fn jwt_claims(jwt: &str) -> serde_json::Value {
    serde_json::from_slice(
        &base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            jwt.split('.').nth(1).unwrap(),
        )
        .unwrap(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enterprise_one_idp_login_serves_every_server_and_renews_without_a_person() {
    let Enterprise {
        env,
        idp,
        wiki,
        tools,
        _daemon,
    } = enterprise(GrantSwitches::default(), Some(4)).await;
    let before = env.ctl(&["show", "wiki", "--json"]).json();
    assert_eq!(before["grant"], "enterprise");
    assert_eq!(before["identity_provider"], "corp");
    assert_eq!(before["state"], "login_required");
    let no_login = env.ctl(&["token", "tools"]);
    assert_eq!(no_login.code(), 4, "{}", no_login.stderr());
    assert!(
        no_login.stderr().contains("identity provider corp"),
        "{}",
        no_login.stderr()
    );

    // One OIDC login at the identity provider (browser, PKCE, openid).
    let out = env.ctl(&["login", "--idp", "corp"]);
    assert!(out.ok().contains("logged in to"), "{}", out.stderr());
    assert_eq!(env.browser_log().len(), 1);
    let authorize = &idp.requests("/authorize")[0].query;
    assert_eq!(authorize["scope"], "openid");
    assert_eq!(authorize["client_id"], "mcpauth-desktop");
    assert_eq!(authorize["code_challenge_method"], "S256");
    assert!(!authorize.contains_key("resource"));
    let id_token = idp
        .state
        .lock()
        .unwrap()
        .grants
        .id_tokens
        .keys()
        .next()
        .cloned()
        .unwrap();

    // Both servers get tokens with no further login.
    let t_wiki = env.ctl(&["token", "wiki"]).ok().trim().to_string();
    // From here on, a token issued for wiki is a renewal.
    let mut events = env.events(Some("wiki")).await;
    let t_tools = env.ctl(&["token", "tools"]).ok().trim().to_string();
    assert!(wiki.is_valid_access_token(&t_wiki));
    assert!(tools.is_valid_access_token(&t_tools));
    assert_eq!(env.browser_log().len(), 1, "one login served both");

    // The exchanges at the identity provider, one per server.
    let exchanges = idp.token_requests("urn:ietf:params:oauth:grant-type:token-exchange");
    assert!(exchanges.len() >= 2);
    for (server, audience) in [(&wiki, &wiki.issuer), (&tools, &tools.issuer)] {
        let x = exchanges
            .iter()
            .find(|x| &x.form["audience"] == audience)
            .expect("an exchange for each AS");
        assert_eq!(x.form["subject_token"], id_token);
        assert_eq!(
            x.form["subject_token_type"],
            "urn:ietf:params:oauth:token-type:id_token"
        );
        assert_eq!(
            x.form["requested_token_type"],
            "urn:ietf:params:oauth:token-type:id-jag"
        );
        assert_eq!(x.form["resource"], server.mcp_url);
        assert_eq!(x.form["client_id"], "mcpauth-desktop");
        // And the ID-JAG went to that server's AS as a JWT bearer grant.
        let grants = server.token_requests("urn:ietf:params:oauth:grant-type:jwt-bearer");
        let claims = jwt_claims(&grants[0].form["assertion"]);
        assert_eq!(&claims["aud"], audience.as_str());
        assert_eq!(grants[0].form["client_id"], "wiki-client");
        assert_eq!(grants[0].form["resource"], server.mcp_url);
    }

    // Renewal without a person: the tokens live 4 s.
    token_issued(&mut events, "wiki", 0).await;
    let again = env.ctl(&["token", "wiki"]).ok().trim().to_string();
    assert_ne!(again, t_wiki);
    assert!(wiki.is_valid_access_token(&again));
    assert_eq!(env.browser_log().len(), 1, "no login for a renewal");
    let shown = env.ctl(&["show", "wiki"]).ok();
    assert!(
        shown.contains("one login at the identity provider corp"),
        "{shown}"
    );
    let mut extra: Vec<String> = idp
        .state
        .lock()
        .unwrap()
        .grants
        .id_tokens
        .keys()
        .cloned()
        .collect();
    extra.extend(idp.state.lock().unwrap().grants.id_jags.clone());
    extra.extend(wiki.secrets());
    extra.extend(tools.secrets());
    assert_no_leak(&env, &idp, &extra, &[&out, &no_login]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_jag_for_another_audience_is_never_sent() {
    let Enterprise {
        env,
        idp,
        wiki,
        _daemon,
        ..
    } = enterprise(
        GrantSwitches {
            idp_wrong_audience: Some("https://elsewhere.example".into()),
            ..Default::default()
        },
        None,
    )
    .await;
    let out = env.ctl(&["login", "wiki"]);
    assert_ne!(out.code(), 0);
    assert!(
        out.stderr().contains("ID-JAG") && out.stderr().contains("https://elsewhere.example"),
        "{}",
        out.stderr()
    );
    assert_eq!(
        idp.token_requests("urn:ietf:params:oauth:grant-type:token-exchange")
            .len(),
        1
    );
    assert!(
        wiki.requests("/token").is_empty(),
        "the wrong ID-JAG never reached the server's AS"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_token_meant_for_another_client_is_refused() {
    let Enterprise {
        env,
        idp,
        wiki,
        _daemon,
        ..
    } = enterprise(
        GrantSwitches {
            idp_id_token_audience: Some("someone-else".into()),
            ..Default::default()
        },
        None,
    )
    .await;
    let out = env.ctl(&["login", "--idp", "corp"]);
    assert_ne!(out.code(), 0, "{}", out.stdout());
    assert!(
        out.stderr()
            .contains("not meant for the client mcpauth-desktop"),
        "{}",
        out.stderr()
    );
    assert_eq!(env.ctl(&["token", "wiki"]).code(), 4);
    assert!(
        idp.token_requests("urn:ietf:params:oauth:grant-type:token-exchange")
            .is_empty(),
        "the refused ID token was never exchanged"
    );
    assert!(wiki.requests("/token").is_empty());
    // The right audience again: the login works.
    idp.set(|s| s.grants.idp_id_token_audience = None);
    env.ctl(&["login", "--idp", "corp"]).ok();
    env.ctl(&["token", "wiki"]).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_id_token_means_a_login_at_the_identity_provider() {
    let Enterprise {
        env,
        idp,
        wiki,
        _daemon,
        ..
    } = enterprise(GrantSwitches::default(), None).await;
    // The ID token is issued at the end of the login, and exchanged at
    // once; 3 s (at least 2, `exp` is in whole seconds) is plenty for that.
    idp.set(|s| s.grants.idp_id_token_ttl = Some(3));
    env.ctl(&["login", "wiki"]).ok();
    let exp_ms = 1000
        * *idp
            .state
            .lock()
            .unwrap()
            .grants
            .id_tokens
            .values()
            .max()
            .unwrap();
    wait_until_async(Duration::from_secs(10), "the ID token to expire", || {
        mcpauth_tests::now_ms() >= exp_ms
    })
    .await;
    let out = env.ctl(&["refresh", "wiki"]);
    assert_eq!(out.code(), 4, "{}", out.stderr());
    assert!(
        out.stderr()
            .contains("login required at the identity provider corp"),
        "{}",
        out.stderr()
    );
    let exchanges = idp
        .token_requests("urn:ietf:params:oauth:grant-type:token-exchange")
        .len();
    assert_eq!(exchanges, 1, "no exchange with an expired ID token");
    // Another login there, and it works again.
    idp.set(|s| s.grants.idp_id_token_ttl = Some(600));
    env.ctl(&["login", "--idp", "corp"]).ok();
    env.ctl(&["refresh", "wiki"]).ok();
    assert_eq!(env.browser_log().len(), 2);
    let t = env.ctl(&["token", "wiki"]).ok().trim().to_string();
    assert!(wiki.is_valid_access_token(&t));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confidential_client_presents_the_id_jag_with_its_secret() {
    let secret = "wiki-client-secret-4c1d9e";
    let Enterprise {
        env,
        idp,
        wiki,
        tools,
        _daemon,
    } = enterprise_with(GrantSwitches::default(), None, Some(secret), |_| {
        String::new()
    })
    .await;
    let out = env.ctl(&["login", "--idp", "corp"]);
    out.ok();
    let t = env.ctl(&["token", "wiki"]).ok().trim().to_string();
    assert!(wiki.is_valid_access_token(&t));
    // The ID-JAG went to wiki's AS with client_secret_basic, the secret
    // never in the form; tools' public client sent none.
    let grant = &wiki.token_requests("urn:ietf:params:oauth:grant-type:jwt-bearer")[0];
    assert_eq!(
        grant.basic_auth,
        Some(("wiki-client".to_string(), secret.to_string()))
    );
    assert!(
        !grant.form.contains_key("client_secret"),
        "{:?}",
        grant.form.keys()
    );
    env.ctl(&["token", "tools"]).ok();
    let public = &tools.token_requests("urn:ietf:params:oauth:grant-type:jwt-bearer")[0];
    assert_eq!(public.basic_auth, None);
    assert_eq!(public.form["client_id"], "wiki-client");
    // A wrong secret at the AS: refused, said, and never retried in a loop.
    wiki.add_client(
        "wiki-client",
        Some("rotated-by-the-admin-77"),
        "client_secret_basic",
    );
    let refused = env.ctl(&["refresh", "wiki"]);
    assert_ne!(refused.code(), 0, "{}", refused.stdout());
    assert!(
        refused.stderr().contains("invalid_client"),
        "{}",
        refused.stderr()
    );
    let mut extra = vec![secret.to_string()];
    extra.extend(wiki.secrets());
    extra.extend(idp.state.lock().unwrap().grants.id_jags.clone());
    assert_no_leak(&env, &idp, &extra, &[&out, &refused]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_provider_refusing_the_id_token_means_one_login_there_for_all() {
    let Enterprise {
        env,
        idp,
        wiki,
        tools,
        _daemon,
    } = enterprise(GrantSwitches::default(), None).await;
    env.ctl(&["login", "--idp", "corp"]).ok();
    env.ctl(&["token", "wiki"]).ok();
    env.ctl(&["token", "tools"]).ok();
    // The IdP ends the session (the user signed out, an admin revoked it):
    // it no longer takes the ID token, though it has not expired.
    idp.state.lock().unwrap().grants.id_tokens.clear();
    let exchanges = || {
        idp.token_requests("urn:ietf:params:oauth:grant-type:token-exchange")
            .len()
    };
    let before = exchanges();
    let out = env.ctl(&["refresh", "wiki"]);
    assert_eq!(out.code(), 4, "{}", out.stderr());
    assert!(
        out.stderr()
            .contains("login required at the identity provider corp"),
        "{}",
        out.stderr()
    );
    assert_eq!(exchanges(), before + 1, "one refused exchange");
    // The refused ID token was dropped: the other server needs the same
    // login, and nothing more is sent to the IdP for it.
    let other = env.ctl(&["refresh", "tools"]);
    assert_eq!(other.code(), 4, "{}", other.stderr());
    assert!(
        other.stderr().contains("identity provider corp"),
        "{}",
        other.stderr()
    );
    assert_eq!(
        exchanges(),
        before + 1,
        "a dropped ID token is not sent again"
    );
    // One login there heals both.
    env.ctl(&["login", "--idp", "corp"]).ok();
    env.ctl(&["refresh", "wiki"]).ok();
    env.ctl(&["refresh", "tools"]).ok();
    let t = env.ctl(&["token", "tools"]).ok().trim().to_string();
    assert!(tools.is_valid_access_token(&t));
    let t = env.ctl(&["token", "wiki"]).ok().trim().to_string();
    assert!(wiki.is_valid_access_token(&t));
    assert_eq!(env.browser_log().len(), 2);
}

/// An ID token the test's identity provider will take, as an SSO agent
/// would have it, valid for `ttl` seconds.
fn agent_id_token(idp: &AuthServer, ttl: i64) -> String {
    let now = unix_secs();
    let mut state = idp.state.lock().unwrap();
    let key = state.grants.idp_key.clone().unwrap();
    let token = sign(
        &key,
        &serde_json::json!({"iss": idp.issuer, "sub": "user-1", "aud": "mcpauth-desktop",
            "iat": now, "exp": now + ttl}),
    );
    state.grants.id_tokens.insert(token.clone(), now + ttl);
    token
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sso_agents_id_token_file_stands_in_for_the_login() {
    let Enterprise {
        env,
        idp,
        wiki,
        _daemon,
        ..
    } = enterprise_with(GrantSwitches::default(), None, None, |env| {
        format!(
            "id_token_file = \"{}\"\n",
            env.home().join("sso/id_token").display()
        )
    })
    .await;
    let file = env.home().join("sso/id_token");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    // Expired: login required at the identity provider, nothing exchanged.
    let expired = agent_id_token(&idp, -60);
    rotate(&file, &expired);
    let out = env.ctl(&["token", "wiki"]);
    assert_eq!(out.code(), 4, "{}", out.stderr());
    assert!(out.stderr().contains("expired"), "{}", out.stderr());
    assert!(idp.requests("/token").is_empty());
    // The agent renews it: tokens with no login of ours.
    // (A login required sets no backoff: the next request reads the file
    // again, whether or not the daemon has seen it change.)
    let fresh = agent_id_token(&idp, 600);
    rotate(&file, &fresh);
    let t = env.ctl(&["token", "wiki"]).ok().trim().to_string();
    assert!(wiki.is_valid_access_token(&t));
    let exchange = &idp.token_requests("urn:ietf:params:oauth:grant-type:token-exchange")[0];
    assert_eq!(exchange.form["subject_token"], fresh);
    assert!(env.browser_log().is_empty(), "no login of the broker's own");
    assert_no_leak(&env, &idp, &[expired, fresh], &[&out]);
}

/// `authorization_grant_profiles_supported` is optional: an AS that
/// takes ID-JAGs and leaves the field out is used, like one that omits
/// `grant_types_supported`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_as_that_omits_the_grant_profiles_is_sent_the_id_jag() {
    let Enterprise {
        env,
        idp,
        wiki,
        _daemon,
        ..
    } = enterprise(GrantSwitches::default(), None).await;
    wiki.set(|s| s.grants.omit_grant_profiles = true);
    let out = env.ctl(&["login", "wiki"]);
    assert_eq!(out.code(), 0, "{}", out.stderr());
    let token = env.ctl(&["token", "wiki"]).ok();
    assert!(wiki.is_valid_access_token(token.trim()));
    assert_eq!(
        idp.token_requests("urn:ietf:params:oauth:grant-type:token-exchange")
            .len(),
        1
    );
    assert_eq!(
        wiki.token_requests("urn:ietf:params:oauth:grant-type:jwt-bearer")
            .len(),
        1
    );
    env.ctl(&["refresh", "wiki"]).ok();
    let renewed = env.ctl(&["token", "wiki"]).ok();
    assert!(wiki.is_valid_access_token(renewed.trim()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_as_without_the_id_jag_profile_is_sent_nothing() {
    let Enterprise {
        env,
        idp,
        wiki,
        _daemon,
        ..
    } = enterprise(GrantSwitches::default(), None).await;
    // It takes JWT bearer grants and lists its grant profiles, but not
    // the ID-JAG one.
    wiki.set(|s| {
        s.grants.id_jag = false;
        s.grants.jwt_bearer = true;
        s.grants.grant_profiles = Some(vec!["urn:example:grant-profile:other".into()]);
    });
    let out = env.ctl(&["login", "wiki"]);
    assert_ne!(out.code(), 0);
    assert!(
        out.stderr()
            .contains("authorization_grant_profiles_supported"),
        "{}",
        out.stderr()
    );
    assert!(
        idp.token_requests("urn:ietf:params:oauth:grant-type:token-exchange")
            .is_empty(),
        "no ID-JAG asked for"
    );
    assert!(wiki.requests("/token").is_empty());
}

/// `mode` on `path`.
fn chmod(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Credential files are refused as ssh refuses an unprotected key: an
/// assertion others can change, a key others can read. One line names the
/// file, its mode and the fix; nothing is sent. Fixed, the next ask works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_files_others_can_change_or_read_are_refused_with_one_line() {
    // A group-writable assertion file.
    let server = AuthServer::start(workload_switches()).await;
    let (_, key) = es256_key();
    server
        .state
        .lock()
        .unwrap()
        .grants
        .trust_assertion_key(*key.verifying_key());
    let env = TestEnv::new();
    let file = env.home().join("mcp.jwt");
    let jwt = workload_jwt(&key, &server.issuer, 600);
    std::fs::write(&file, &jwt).unwrap();
    chmod(&file, 0o664);
    env.write_config(&format!(
        "[servers.s]\nurl = \"{}\"\ngrant = \"workload\"\nassertion_file = \"{}\"\n",
        server.mcp_url,
        file.display()
    ));
    let mut cmd = env.command("mcpauthd");
    cmd.env(mcpauth_proto::env::LOG, "trace");
    let _daemon = env.spawn_daemon(&mut cmd).unwrap();
    let out = env.ctl(&["token", "s"]);
    assert_ne!(out.code(), 0);
    let line = format!(
        "assertion_file {} is mode 0664: writable by others; chmod go-w it",
        file.display()
    );
    assert!(out.stderr().contains(&line), "{}", out.stderr());
    assert!(server.requests("/token").is_empty(), "nothing was sent");
    // A world-readable one is fine: platforms hand them over 0644.
    chmod(&file, 0o644);
    env.ctl(&["refresh", "s"]).ok();
    assert!(server.is_valid_access_token(&token(&env)));
    assert_no_leak(&env, &server, &[jwt], &[&out]);

    // A world-readable private key.
    let server = AuthServer::start(cc_switches()).await;
    let (pem, key) = es256_key();
    server
        .state
        .lock()
        .unwrap()
        .grants
        .add_client_key("svc-jwt", *key.verifying_key());
    let env = TestEnv::new();
    let key_file = private_file(&env, "svc.pem", &pem);
    chmod(std::path::Path::new(&key_file), 0o644);
    env.write_config(&format!(
        "[servers.s]\nurl = \"{}\"\ngrant = \"client_credentials\"\nclient_id = \"svc-jwt\"\nclient_key_file = \"{key_file}\"\nclient_key_alg = \"ES256\"\n",
        server.mcp_url
    ));
    let mut cmd = env.command("mcpauthd");
    cmd.env(mcpauth_proto::env::LOG, "trace");
    let _daemon = env.spawn_daemon(&mut cmd).unwrap();
    let out = env.ctl(&["token", "s"]);
    assert_ne!(out.code(), 0);
    let line = format!("client_key_file {key_file} is mode 0644: readable by others; chmod 600 it");
    assert!(out.stderr().contains(&line), "{}", out.stderr());
    assert!(server.requests("/token").is_empty(), "nothing was sent");
    let shown = env.ctl(&["show", "s", "--json"]).json();
    assert!(
        shown["last_error"].as_str().unwrap().contains(&line),
        "{shown}"
    );
    assert!(env.all_daemon_logs().contains(&line), "the daemon says it");
    chmod(std::path::Path::new(&key_file), 0o600);
    env.ctl(&["refresh", "s"]).ok();
    assert!(server.is_valid_access_token(&token(&env)));
    assert_no_leak(&env, &server, &[pem], &[&out]);
}

/// A FIFO as the assertion file must not block the refresh path (which
/// holds the server's lock): it is refused at once, and the daemon goes on
/// answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_as_a_credential_file_is_refused_at_once() {
    let server = AuthServer::start(workload_switches()).await;
    let env = TestEnv::new();
    let fifo = env.home().join("mcp.jwt");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    env.write_config(&format!(
        "[servers.s]\nurl = \"{}\"\ngrant = \"workload\"\nassertion_file = \"{}\"\n",
        server.mcp_url,
        fifo.display()
    ));
    let _daemon = env.start_daemon();
    let started = std::time::Instant::now();
    let out = env.ctl(&["token", "s"]);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_ne!(out.code(), 0);
    let line = format!(
        "assertion_file {} is a FIFO, not a regular file; point it at a file",
        fifo.display()
    );
    assert!(out.stderr().contains(&line), "{}", out.stderr());
    // Asked again: refused again at once, not stuck behind a held lock.
    let started = std::time::Instant::now();
    let again = env.ctl(&["refresh", "s"]);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_ne!(again.code(), 0);
    env.ctl(&["status"]).ok();
}

/// An identity provider's issuer is the one config.toml names, exactly:
/// not even the '/' of an empty path is overlooked (ID tokens and `iss`
/// are compared with it), and the refusal says what to write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_providers_issuer_is_compared_exactly() {
    let idp = AuthServer::start(Switches {
        grants: GrantSwitches {
            idp_id_token_ttl: Some(600),
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let wiki = AuthServer::start(Switches::default()).await;
    let env = TestEnv::new();
    env.write_config(&format!(
        "[servers.wiki]\nurl = \"{}\"\ngrant = \"enterprise\"\nidentity_provider = \"corp\"\nclient_id = \"wiki-client\"\n\n\
         [identity_providers.corp]\nissuer = \"{}/\"\nclient_id = \"mcpauth-desktop\"\n",
        wiki.mcp_url, idp.issuer
    ));
    let _d = env.start_daemon();
    let out = env.ctl(&["login", "--idp", "corp"]);
    assert_ne!(out.code(), 0);
    assert!(
        out.stderr()
            .contains(&format!("set issuer = \"{}\"", idp.issuer)),
        "{}",
        out.stderr()
    );
    assert!(idp.requests("/authorize").is_empty());
}
