//! Servers built on the common auth libraries, end to end: what the MCP
//! Python SDK's authorization server (FastMCP's among them), Context7,
//! Home Assistant, Entra and Salesforce do that a spec-exact client trips
//! over. Each behaviour is a switch of the in-repo test AS; the Python
//! SDK's own AS (PyPI `mcp`, tests/pysdk) is tested at the end.

use mcpauth_tests::TestEnv;
use mcpauth_tests::authserver::{AuthServer, IssMode, RefreshScopeRule, Switches};

/// `add`, then `login`.
async fn logged_in(switches: Switches) -> (TestEnv, AuthServer, mcpauth_tests::Daemon) {
    let server = AuthServer::start(switches).await;
    let env = TestEnv::new();
    let daemon = env.start_daemon();
    env.ctl(&["add", "s", &server.mcp_url]).ok();
    let out = env.ctl(&["login", "s"]);
    assert_eq!(out.code(), 0, "login: {}", out.stderr());
    (env, server, daemon)
}

/// The `scope` of every registration request, in order.
fn registered_scopes(server: &AuthServer) -> Vec<Option<String>> {
    server
        .requests("/register")
        .iter()
        .map(|r| r.json["scope"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_carries_the_scopes_the_login_asks_for() {
    let (env, server, _d) = logged_in(Switches {
        registered_scope_only: true,
        ..Default::default()
    })
    .await;
    assert_eq!(
        registered_scopes(&server),
        [Some("mcp:read mcp:write".to_string())]
    );
    assert!(env.authorized_call("s", &server.mcp_url).await.is_success());
    env.ctl(&["refresh", "s"]).ok();
    assert!(env.authorized_call("s", &server.mcp_url).await.is_success());

    // A login for more (a step-up, a changed config) registers once more,
    // for the union, and a later one for the same scopes does not.
    for _ in 0..2 {
        let out = env.ctl(&["login", "s", "--scope", "mcp:admin"]);
        assert_eq!(out.code(), 0, "{}", out.stderr());
    }
    assert_eq!(
        registered_scopes(&server),
        [
            Some("mcp:read mcp:write".to_string()),
            Some("mcp:read mcp:write mcp:admin".to_string())
        ]
    );
    assert_eq!(server.requests("/authorize").len(), 3);
    assert!(env.authorized_call("s", &server.mcp_url).await.is_success());
}

/// A registration kept from before scopes were recorded (here: the one a
/// tool's login left, adopted by `import`) that the AS refuses a scope
/// for is dropped, and the next login registers for it: once, no loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_refused_for_its_scope_is_made_again_once() {
    let server = AuthServer::start(Switches {
        registered_scope_only: true,
        ..Default::default()
    })
    .await;
    let env = TestEnv::new();
    let _d = env.start_daemon();
    // Hermes' login: its client registered without a scope.
    server.add_client("hermes-client", None, "none");
    let (access, refresh) = server.mint_grant("hermes-client", None);
    let home = env.home();
    std::fs::create_dir_all(home.join(".hermes/mcp-tokens")).unwrap();
    std::fs::write(
        home.join(".hermes/config.yaml"),
        format!(
            "mcp_servers:\n  s:\n    url: {}\n    auth: oauth\n",
            server.mcp_url
        ),
    )
    .unwrap();
    std::fs::write(
        home.join(".hermes/mcp-tokens/s.json"),
        serde_json::json!({"access_token": access, "token_type": "Bearer", "expires_in": 3600,
            "refresh_token": refresh, "hermes_issuer": server.issuer})
        .to_string(),
    )
    .unwrap();
    std::fs::write(
        home.join(".hermes/mcp-tokens/s.client.json"),
        serde_json::json!({"client_id": "hermes-client",
            "redirect_uris": ["http://127.0.0.1:27890/callback"], "token_endpoint_auth_method": "none"})
        .to_string(),
    )
    .unwrap();
    // The callback Hermes registered, so the broker may use its client.
    env.write_config(&format!(
        "[servers.s]\nurl = \"{}\"\ncallback_port = 27890\n",
        server.mcp_url
    ));
    mcpauth_tests::wait_until(
        std::time::Duration::from_secs(10),
        "the config to apply",
        || env.ctl(&["show", "s"]).code() == 0,
    );
    let imported = env.ctl(&["import", "hermes"]).ok();
    assert!(imported.contains("adopted"), "{imported}");

    let refused = env.ctl(&["login", "s"]);
    assert_eq!(refused.code(), 4, "{}", refused.stderr());
    let line = refused.stderr();
    assert!(
        line.contains("invalid_scope") && line.contains("the next login registers a client"),
        "{line}"
    );
    assert!(registered_scopes(&server).is_empty());
    env.ctl(&["login", "s"]).ok();
    assert_eq!(
        registered_scopes(&server),
        [Some("mcp:read mcp:write".to_string())]
    );
    assert!(env.authorized_call("s", &server.mcp_url).await.is_success());
    assert_eq!(server.requests("/authorize").len(), 2);
}

/// The `scope` of each refresh request, in order (`None`: not sent).
fn refresh_scopes(server: &AuthServer) -> Vec<Option<String>> {
    server
        .token_requests("refresh_token")
        .iter()
        .map(|r| r.form.get("scope").cloned())
        .collect()
}

/// Entra (client also the resource) refuses a refresh without `scope`;
/// Salesforce refuses one with it. One extra request finds the form,
/// which is remembered; a dead grant is still asked about once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refreshes_take_the_form_the_server_accepts_and_remember_it() {
    let (env, server, _d) = logged_in(Switches {
        refresh_scope_rule: Some(RefreshScopeRule::Required),
        ..Default::default()
    })
    .await;
    let granted = Some("mcp:read mcp:write".to_string());
    env.ctl(&["refresh", "s"]).ok();
    assert_eq!(refresh_scopes(&server), [None, granted.clone()]);
    assert!(env.authorized_call("s", &server.mcp_url).await.is_success());
    env.ctl(&["refresh", "s"]).ok();
    assert_eq!(refresh_scopes(&server).len(), 3, "remembered: one request");
    assert_eq!(refresh_scopes(&server)[2], granted);

    // The other way round (Salesforce): the remembered form is refused
    // once, the spec's form works and is remembered in turn.
    server.set(|s| s.refresh_scope_rule = Some(RefreshScopeRule::Refused));
    env.ctl(&["refresh", "s"]).ok();
    env.ctl(&["refresh", "s"]).ok();
    assert_eq!(
        refresh_scopes(&server)[3..],
        [granted.clone(), None, None],
        "{:?}",
        refresh_scopes(&server)
    );
    assert!(env.authorized_call("s", &server.mcp_url).await.is_success());

    // A revoked grant: one request, login required, no retry of the form.
    server.revoke_all_refresh_tokens();
    let dead = env.ctl(&["refresh", "s"]);
    assert_eq!(dead.code(), 4, "{}", dead.stderr());
    assert_eq!(refresh_scopes(&server).len(), 7);
}

/// Context7 (and FastMCP's OAuth proxy): registration issues a secret
/// for `client_secret_basic`, which the token endpoint never reads. One
/// extra request with the secret in the form; then that is remembered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_endpoint_that_reads_the_secret_from_the_form_gets_it_there() {
    let (env, server, _d) = logged_in(Switches {
        form_credentials_only: true,
        auth_methods: Some(vec!["client_secret_basic".into()]),
        ..Default::default()
    })
    .await;
    let exchanges = server.token_requests("authorization_code");
    assert_eq!(exchanges.len(), 2);
    assert!(exchanges[0].basic_auth.is_some() && !exchanges[0].form.contains_key("client_secret"));
    assert!(exchanges[1].basic_auth.is_none() && exchanges[1].form.contains_key("client_secret"));
    assert!(env.authorized_call("s", &server.mcp_url).await.is_success());
    env.ctl(&["refresh", "s"]).ok();
    let refreshes = server.token_requests("refresh_token");
    assert_eq!(refreshes.len(), 1, "the method that worked is remembered");
    assert!(refreshes[0].basic_auth.is_none());
    assert!(env.authorized_call("s", &server.mcp_url).await.is_success());
    // The secret went to the token endpoint only.
    let secret = exchanges[1].form["client_secret"].clone();
    for seen in server.seen() {
        let carries = seen.form.get("client_secret") == Some(&secret)
            || seen.basic_auth.as_ref().is_some_and(|(_, s)| *s == secret);
        assert!(!carries || seen.path.ends_with("/token"), "{}", seen.path);
    }
}

/// Home Assistant: metadata at the MCP server's origin with relative
/// endpoints and no issuer. The endpoints resolve there, the origin is the
/// issuer, and no `iss` is expected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_with_relative_endpoints_and_no_issuer_at_the_servers_origin() {
    let (env, server, _d) = logged_in(Switches {
        relative_endpoints: true,
        omit_issuer: true,
        iss: IssMode::Off,
        ..Default::default()
    })
    .await;
    assert!(env.authorized_call("s", &server.mcp_url).await.is_success());
    env.ctl(&["refresh", "s"]).ok();
    assert!(env.authorized_call("s", &server.mcp_url).await.is_success());
    assert_eq!(server.token_requests("refresh_token").len(), 1);
}

/// The same document on another origin: nothing vouches for an issuer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_without_issuer_elsewhere_is_refused() {
    let server = AuthServer::start(Switches {
        omit_issuer: true,
        split_origin: true,
        ..Default::default()
    })
    .await;
    let env = TestEnv::new();
    let _d = env.start_daemon();
    env.ctl(&["add", "s", &server.mcp_url]).ok();
    let out = env.ctl(&["login", "s"]);
    assert_ne!(out.code(), 0);
    let line = out.stderr();
    assert!(line.contains("no \"issuer\""), "{line}");
    assert!(server.requests("/authorize").is_empty());
}
