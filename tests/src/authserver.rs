//! A test authorization server and protected MCP endpoint, with a switch
//! for each variant of the MCP authorization spec and for the faults the
//! broker must survive. Everything it sees is counted and recorded so tests
//! can assert on requests, not only on outcomes.
//!
//! One axum app serves both roles; with `split_origin` the authorization
//! server listens on a second port (another origin), as real deployments
//! often do. It rotates refresh tokens and, like real servers, revokes the
//! whole grant when a used refresh token comes back.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, Request, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use sha2::{Digest, Sha256};

/// Where the protected resource metadata is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrmMode {
    /// Named by the 401's `resource_metadata` (at an unusual path, so only
    /// the header can find it).
    Header,
    /// `/.well-known/oauth-protected-resource/<mcp path>`.
    WellKnownPath,
    /// `/.well-known/oauth-protected-resource`.
    WellKnownRoot,
    /// None at all (a 2025-03-26 server).
    None,
}

/// Where the AS metadata is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetadataMode {
    Rfc8414,
    OidcInserted,
    OidcAppended,
    /// No metadata document: legacy default endpoints.
    None,
}

/// RFC 9207 behaviour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IssMode {
    /// Not advertised, not sent.
    Off,
    /// Advertised and sent correctly.
    On,
    /// Advertised but not sent.
    AdvertisedMissing,
    /// Advertised and sent with another value.
    Wrong,
}

#[derive(Clone, Debug)]
pub struct Switches {
    pub prm: PrmMode,
    pub metadata: MetadataMode,
    /// The issuer has this path (e.g. `/tenant1`).
    pub issuer_path: String,
    pub split_origin: bool,
    /// Metadata names another issuer than the one it was fetched for.
    pub wrong_issuer: bool,
    pub pkce_advertised: bool,
    /// PRM `resource` value; `None`: the MCP URL.
    pub prm_resource: Option<String>,
    pub prm_scopes: Vec<String>,
    pub as_scopes: Option<Vec<String>>,
    /// `scope` of the 401 challenge.
    pub challenge_scope: Option<String>,
    pub dcr: bool,
    pub cimd: bool,
    /// `token_endpoint_auth_methods_supported`, when set.
    pub auth_methods: Option<Vec<String>>,
    pub iss: IssMode,
    /// The person refuses consent.
    pub deny: bool,
    pub expires_in: Option<u64>,
    pub issue_refresh_token: bool,
    /// Refresh answers carry a new refresh token (rotation).
    pub rotate: bool,
    pub revocation: bool,
    /// The token endpoint answers after this long (a slow AS).
    pub token_delay_ms: u64,
    /// The token endpoint answers this status with an HTML body (an AS in
    /// trouble behind a proxy).
    pub token_failure: Option<u16>,
    /// How the token endpoint misbehaves, if it does (see [`TokenFault`]).
    pub token_fault: Option<TokenFault>,
    /// A rotated refresh token may be presented again as long as its
    /// successor was never used: the client evidently never received the
    /// answer (it crashed). The unused successor is then invalidated. Real
    /// servers offer this as a "grace period" or "reuse interval" (Okta,
    /// Auth0, Cognito, Hydra). Off: any reuse revokes the grant.
    pub reuse_grace: bool,
    /// The AS keeps the `scope` a client registered with (none if it sent
    /// none) and refuses any authorization for another scope with
    /// `invalid_scope`, as the MCP Python SDK's auth routes (FastMCP),
    /// Fastmail and Clerk do.
    pub registered_scope_only: bool,
    /// What a refresh's `scope` must be (Entra, Salesforce).
    pub refresh_scope_rule: Option<RefreshScopeRule>,
    /// Context7, FastMCP's OAuth proxy: registration issues a secret for
    /// `client_secret_basic`, but the token endpoint reads client
    /// credentials only from the form body (`invalid_request: Missing
    /// client_id` otherwise).
    pub form_credentials_only: bool,
    /// Home Assistant: endpoints in the metadata are relative paths.
    pub relative_endpoints: bool,
    /// Home Assistant: the metadata names no issuer.
    pub omit_issuer: bool,
    /// better-auth: JWT access tokens cannot be revoked
    /// (`unsupported_token_type`); refresh tokens can.
    pub revocation_refuses_access_tokens: bool,
    /// The MCP Python SDK (1.x to 2.3): revocation requires a
    /// `client_secret` form field, even (empty) from a public client.
    pub revocation_requires_client_secret: bool,
    /// Revocation refused for every token (`invalid_request`).
    pub revocation_refuses_all: bool,
    /// Google: the PRM names the issuer with a trailing `/`
    /// (`https://accounts.google.com/`); the metadata names it without.
    pub prm_issuer_trailing_slash: bool,
    /// Stripe: the challenge's `resource_metadata` URL is not quoted.
    pub unquoted_resource_metadata: bool,
    /// The challenge's `resource_metadata` is this (quoted), whatever
    /// `prm` says: not a URL, or one the URL policy refuses.
    pub challenge_resource_metadata: Option<String>,
    /// Slack: token-endpoint errors are HTTP 200 `{"ok": false, "error": …}`.
    pub errors_as_200: bool,
    /// Supabase: a client the token endpoint does not know gets
    /// `422 {"message": "Unrecognized client_id"}`.
    pub unknown_client_422: bool,
    /// Atlassian: `/authorize` answers an HTML 500 for a client it does
    /// not know (a stale registration).
    pub unknown_client_authorize_500: bool,
    /// Entra (AADSTS9010010): a `resource` on the authorization or token
    /// request is refused.
    pub resource_refused: bool,
    /// Google, Vercel: a refresh token only when the authorization
    /// request carried this parameter (`access_type=offline`).
    pub refresh_token_only_with: Option<(String, String)>,
    /// Device flow, client credentials, JWT bearer, stateless MCP.
    pub grants: crate::grants_as::GrantSwitches,
    /// The people who can sign in here (emails). Empty: nobody is told
    /// apart. Otherwise the browser holds a session for one of them (the
    /// first, at the start) and the authorization request decides whose
    /// tokens are issued: `login_hint` names the account, `prompt=
    /// select_account` has the person choose (the next account in turn),
    /// and anything else gets the session's account. An ID token naming
    /// the account (`email`, `preferred_username`) comes with the code
    /// exchange when the scope has `openid`.
    pub accounts: Vec<String>,
}

/// What a refresh's `scope` must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefreshScopeRule {
    /// A refresh without `scope` is refused (`invalid_request`), as Entra
    /// does when the client is also the resource (AADSTS90009).
    Required,
    /// A refresh with `scope` is refused (`invalid_request`: "scope
    /// parameter not supported"), as Salesforce does.
    Refused,
}

/// Ways a token endpoint can fail, beyond an error status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenFault {
    /// 503 with `Retry-After: 120` and a JSON error.
    Unavailable503,
    /// A JSON body cut off half way.
    TruncatedJson,
    /// 200 with a body that is not JSON at all.
    MalformedJson,
    /// 200 JSON, 2 MiB of it.
    Oversized,
    /// 200 with `Content-Type: text/html` around a valid-looking body.
    WrongContentType,
    /// 302 to another origin.
    Redirect,
    /// Accepts the request and never answers.
    Hang,
}

impl Default for Switches {
    fn default() -> Self {
        Self {
            prm: PrmMode::Header,
            metadata: MetadataMode::Rfc8414,
            issuer_path: String::new(),
            split_origin: false,
            wrong_issuer: false,
            pkce_advertised: true,
            prm_resource: None,
            prm_scopes: vec!["mcp:read".into(), "mcp:write".into()],
            as_scopes: None,
            challenge_scope: None,
            dcr: true,
            cimd: false,
            auth_methods: None,
            iss: IssMode::On,
            deny: false,
            expires_in: Some(3600),
            issue_refresh_token: true,
            rotate: true,
            revocation: true,
            token_delay_ms: 0,
            token_failure: None,
            token_fault: None,
            reuse_grace: false,
            registered_scope_only: false,
            refresh_scope_rule: None,
            form_credentials_only: false,
            relative_endpoints: false,
            omit_issuer: false,
            revocation_refuses_access_tokens: false,
            revocation_requires_client_secret: false,
            revocation_refuses_all: false,
            prm_issuer_trailing_slash: false,
            unquoted_resource_metadata: false,
            challenge_resource_metadata: None,
            errors_as_200: false,
            unknown_client_422: false,
            unknown_client_authorize_500: false,
            resource_refused: false,
            refresh_token_only_with: None,
            grants: Default::default(),
            accounts: Vec::new(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Client {
    pub secret: Option<String>,
    pub auth_method: String,
    pub redirect_uris: Vec<String>,
    /// The `scope` it registered with (RFC 7591).
    pub scope: Option<String>,
}

#[derive(Clone, Debug)]
struct Code {
    client_id: String,
    challenge: String,
    redirect_uri: String,
    scope: Option<String>,
    /// The request carried what `refresh_token_only_with` asks for.
    offline: bool,
    /// Whose code it is (with `Switches::accounts`).
    account: Option<String>,
}

#[derive(Clone, Debug)]
struct RefreshToken {
    client_id: String,
    family: u64,
    used: bool,
    scope: Option<String>,
    /// The refresh token issued when this one was used.
    successor: Option<String>,
}

/// A request the server saw.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: HashMap<String, String>,
    pub form: HashMap<String, String>,
    pub json: serde_json::Value,
    pub basic_auth: Option<(String, String)>,
    /// The bearer token of the `Authorization` header, if any.
    pub bearer: Option<String>,
}

#[derive(Default)]
pub struct AsState {
    pub switches: Switches,
    pub clients: HashMap<String, Client>,
    codes: HashMap<String, Code>,
    refresh_tokens: HashMap<String, RefreshToken>,
    pub(crate) access_tokens: HashMap<String, u64>,
    revoked_families: Vec<u64>,
    pub(crate) next: u64,
    /// Every request, in order.
    pub seen: Vec<Seen>,
    /// Set when a used refresh token came back and the grant was revoked.
    pub reuse_detected: bool,
    /// Reuses accepted under `reuse_grace`.
    pub grace_reuses: u64,
    /// Token requests being handled right now.
    pub token_requests_in_flight: u64,
    pub grants: crate::grants_as::GrantState,
    /// The account the browser is signed in as (an index into
    /// `Switches::accounts`).
    session_account: usize,
    /// How many times the person was asked to choose an account.
    selections: usize,
    /// Whose each grant (family) is.
    family_accounts: HashMap<u64, String>,
}

impl AsState {
    pub(crate) fn id(&mut self, prefix: &str) -> String {
        self.next += 1;
        let mut bytes = [0u8; 12];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
        format!("{prefix}-{}-{}", self.next, URL_SAFE_NO_PAD.encode(bytes))
    }
}

pub struct AuthServer {
    pub state: Arc<Mutex<AsState>>,
    /// The protected MCP endpoint.
    pub mcp_url: String,
    /// The AS issuer.
    pub issuer: String,
    rs_base: String,
    router: Router,
    addrs: Vec<SocketAddr>,
    serving: Mutex<
        Vec<(
            tokio::sync::watch::Sender<bool>,
            tokio::task::JoinHandle<()>,
        )>,
    >,
}

/// Serves `router` on `listener` until told to stop.
fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
) -> (
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, mut rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                // A dropped `AuthServer` keeps serving, as some tests rely on.
                if rx.wait_for(|stop| *stop).await.is_err() {
                    std::future::pending::<()>().await;
                }
            })
            .await
            .unwrap();
    });
    (tx, task)
}

#[derive(Clone)]
struct App {
    state: Arc<Mutex<AsState>>,
    rs_base: String,
    as_base: String,
}

pub const MCP_PATH: &str = "/mcp";

impl AuthServer {
    pub async fn start(switches: Switches) -> Self {
        let rs_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let rs_addr: SocketAddr = rs_listener.local_addr().unwrap();
        let rs_base = format!("http://127.0.0.1:{}", rs_addr.port());
        let (as_listener, as_base) = if switches.split_origin {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let base = format!("http://127.0.0.1:{}", l.local_addr().unwrap().port());
            (Some(l), base)
        } else {
            (None, rs_base.clone())
        };
        let issuer = format!("{as_base}{}", switches.issuer_path);
        let state = Arc::new(Mutex::new(AsState {
            switches,
            ..Default::default()
        }));
        let app = App {
            state: state.clone(),
            rs_base: rs_base.clone(),
            as_base,
        };
        let router = Router::new().fallback(handle).with_state(app);
        let mut addrs = vec![rs_addr];
        let mut serving = vec![serve(rs_listener, router.clone())];
        if let Some(l) = as_listener {
            addrs.push(l.local_addr().unwrap());
            serving.push(serve(l, router.clone()));
        }
        Self {
            state,
            mcp_url: format!("{rs_base}{MCP_PATH}"),
            issuer,
            rs_base,
            router,
            addrs,
            serving: Mutex::new(serving),
        }
    }

    /// Stops listening and closes every connection: from now on
    /// connections are refused, until [`AuthServer::resume`].
    pub async fn stop(&self) {
        let serving = std::mem::take(&mut *self.serving.lock().unwrap());
        for (stop, task) in serving {
            stop.send_replace(true);
            let _ = task.await;
        }
    }

    /// Listens again on the same ports, with the same state.
    pub async fn resume(&self) {
        let mut serving = Vec::new();
        for addr in &self.addrs {
            let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
            serving.push(serve(listener, self.router.clone()));
        }
        *self.serving.lock().unwrap() = serving;
    }

    pub fn rs_base(&self) -> &str {
        &self.rs_base
    }

    /// Changes switches while running.
    pub fn set(&self, change: impl FnOnce(&mut Switches)) {
        change(&mut self.state.lock().unwrap().switches);
    }

    /// Registers a client by hand (a pre-registered client).
    pub fn add_client(&self, id: &str, secret: Option<&str>, auth_method: &str) {
        self.state.lock().unwrap().clients.insert(
            id.into(),
            Client {
                secret: secret.map(Into::into),
                auth_method: auth_method.into(),
                redirect_uris: Vec::new(),
                scope: None,
            },
        );
    }

    /// A grant as another tool's login would have left it: `client_id`
    /// (registered with [`Self::add_client`]) holds the access and refresh
    /// token returned, which this server honours like any it issued.
    pub fn mint_grant(&self, client_id: &str, scope: Option<&str>) -> (String, String) {
        let mut s = self.state.lock().unwrap();
        s.next += 1;
        let family = s.next;
        let access = s.id("at");
        s.access_tokens.insert(access.clone(), family);
        let refresh = s.id("rt");
        s.refresh_tokens.insert(
            refresh.clone(),
            RefreshToken {
                client_id: client_id.into(),
                family,
                used: false,
                scope: scope.map(Into::into),
                successor: None,
            },
        );
        (access, refresh)
    }

    /// Forgets every client (a server that lost its registrations).
    pub fn forget_clients(&self) {
        self.state.lock().unwrap().clients.clear();
    }

    /// Revokes every refresh token (e.g. the user revoked the app).
    pub fn revoke_all_refresh_tokens(&self) {
        let mut s = self.state.lock().unwrap();
        let families: Vec<u64> = s.refresh_tokens.values().map(|r| r.family).collect();
        s.revoked_families.extend(families);
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    /// Requests to paths ending with `suffix`.
    pub fn requests(&self, suffix: &str) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.path.ends_with(suffix))
            .collect()
    }

    /// Token requests with this grant type.
    pub fn token_requests(&self, grant_type: &str) -> Vec<Seen> {
        self.requests("/token")
            .into_iter()
            .filter(|s| s.form.get("grant_type").map(String::as_str) == Some(grant_type))
            .collect()
    }

    /// Whose `token` (an access token this server issued) is, with
    /// `Switches::accounts`.
    pub fn account_of(&self, token: &str) -> Option<String> {
        let s = self.state.lock().unwrap();
        let family = s.access_tokens.get(token)?;
        s.family_accounts.get(family).cloned()
    }

    /// Every access token issued so far.
    pub fn issued_access_tokens(&self) -> Vec<String> {
        self.state
            .lock()
            .unwrap()
            .access_tokens
            .keys()
            .cloned()
            .collect()
    }

    pub fn reuse_detected(&self) -> bool {
        self.state.lock().unwrap().reuse_detected
    }

    /// Every secret that crossed this server: access tokens issued, and
    /// every code, verifier, refresh token and token sent to it.
    pub fn secrets(&self) -> Vec<String> {
        let mut secrets = self.issued_access_tokens();
        for seen in self.seen() {
            for key in [
                "code",
                "code_verifier",
                "refresh_token",
                "token",
                "client_secret",
                "client_assertion",
                "assertion",
                "device_code",
                "subject_token",
            ] {
                if let Some(v) = seen.form.get(key) {
                    secrets.push(v.clone());
                }
            }
        }
        secrets.sort();
        secrets.dedup();
        secrets
    }

    /// Reuses accepted under `reuse_grace`.
    pub fn grace_reuses(&self) -> u64 {
        self.state.lock().unwrap().grace_reuses
    }

    /// Token requests being handled right now.
    pub fn token_requests_in_flight(&self) -> u64 {
        self.state.lock().unwrap().token_requests_in_flight
    }

    /// The resource server stops accepting every access token issued so
    /// far (revoked at the AS, signing keys rotated); refresh tokens stay
    /// good, so a refresh recovers.
    pub fn reject_current_access_tokens(&self) {
        self.state.lock().unwrap().access_tokens.clear();
    }

    /// Checks access tokens the way this AS's resource server does, for
    /// another resource server (the test MCP server).
    pub fn validator(&self) -> std::sync::Arc<dyn Fn(&str) -> bool + Send + Sync> {
        let state = self.state.clone();
        std::sync::Arc::new(move |token: &str| {
            let s = state.lock().unwrap();
            s.access_tokens
                .get(token)
                .is_some_and(|f| !s.revoked_families.contains(f))
        })
    }

    /// Whether `token` is a live access token.
    pub fn is_valid_access_token(&self, token: &str) -> bool {
        let s = self.state.lock().unwrap();
        s.access_tokens
            .get(token)
            .is_some_and(|f| !s.revoked_families.contains(f))
    }
}

fn json(status: StatusCode, value: serde_json::Value) -> Response {
    (
        status,
        [("content-type", "application/json")],
        value.to_string(),
    )
        .into_response()
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    json(
        status,
        serde_json::json!({"error": error, "error_description": description}),
    )
}

fn token_fault(fault: TokenFault) -> Response {
    let body = r#"{"access_token":"at-fault","token_type":"Bearer","expires_in":3600}"#;
    match fault {
        TokenFault::Unavailable503 => (
            StatusCode::SERVICE_UNAVAILABLE,
            [("content-type", "application/json"), ("retry-after", "120")],
            r#"{"error":"temporarily_unavailable"}"#,
        )
            .into_response(),
        TokenFault::TruncatedJson => (
            StatusCode::OK,
            [("content-type", "application/json")],
            &body[..body.len() / 2],
        )
            .into_response(),
        TokenFault::MalformedJson => (
            StatusCode::OK,
            [("content-type", "application/json")],
            "access_token=at-fault&token_type=Bearer",
        )
            .into_response(),
        TokenFault::Oversized => {
            let padding = "x".repeat(2 << 20);
            let big = format!(
                r#"{{"access_token":"at-fault","token_type":"Bearer","padding":"{padding}"}}"#
            );
            (StatusCode::OK, [("content-type", "application/json")], big).into_response()
        }
        TokenFault::WrongContentType => {
            (StatusCode::OK, [("content-type", "text/html")], body).into_response()
        }
        TokenFault::Redirect => redirect("https://elsewhere.example/token"),
        TokenFault::Hang => unreachable!("handled before anything else"),
    }
}

fn redirect(location: &str) -> Response {
    (StatusCode::FOUND, [("location", location.to_string())]).into_response()
}

fn parse_pairs(s: &str) -> HashMap<String, String> {
    url::form_urlencoded::parse(s.as_bytes())
        .into_owned()
        .collect()
}

fn basic_auth(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get("authorization")?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = String::from_utf8(STANDARD.decode(encoded).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    let dec = |s: &str| {
        url::form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
    };
    Some((dec(id)?, dec(secret)?))
}

/// Counts a token request as in flight until it is answered or dropped
/// (the client went away).
struct InFlight(Arc<Mutex<AsState>>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.lock().unwrap().token_requests_in_flight -= 1;
    }
}

/// Slack's way with token-endpoint errors: HTTP 200 and `"ok": false`.
async fn handle(state: State<App>, request: Request<Body>) -> Response {
    let slack = state.state.lock().unwrap().switches.errors_as_200
        && request.uri().path().ends_with("/token");
    let response = handle_inner(state, request).await;
    if !slack || !response.status().is_client_error() {
        return response;
    }
    let body = to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    let mut value: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    value["ok"] = serde_json::json!(false);
    json(StatusCode::OK, value)
}

async fn handle_inner(State(app): State<App>, request: Request<Body>) -> Response {
    let _in_flight = request.uri().path().ends_with("/token").then(|| {
        app.state.lock().unwrap().token_requests_in_flight += 1;
        InFlight(app.state.clone())
    });
    let (delay, fault) = {
        let s = app.state.lock().unwrap();
        (s.switches.token_delay_ms, s.switches.token_fault)
    };
    if fault == Some(TokenFault::Hang) && request.uri().path().ends_with("/token") {
        return std::future::pending().await;
    }
    if delay > 0 && request.uri().path().ends_with("/token") {
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    }
    let (parts, body) = request.into_parts();
    let body = to_bytes(body, 1 << 20).await.unwrap_or_default();
    let body = String::from_utf8_lossy(&body).into_owned();
    let uri: Uri = parts.uri.clone();
    let path = uri.path().to_string();
    let query = parse_pairs(uri.query().unwrap_or(""));
    let is_form = parts
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let form = if is_form {
        parse_pairs(&body)
    } else {
        HashMap::new()
    };
    let basic = basic_auth(&parts.headers);
    let host_base = match parts.headers.get("host").and_then(|h| h.to_str().ok()) {
        Some(host) => format!("http://{host}"),
        None => app.rs_base.clone(),
    };
    let mut s = app.state.lock().unwrap();
    s.seen.push(Seen {
        method: parts.method.to_string(),
        path: path.clone(),
        query: query.clone(),
        form: form.clone(),
        json: serde_json::from_str(&body).unwrap_or_default(),
        basic_auth: basic.clone(),
        bearer: parts
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_string),
    });
    let sw = s.switches.clone();
    let issuer = format!("{}{}", app.as_base, sw.issuer_path);
    let on_rs = host_base == app.rs_base;
    let on_as = host_base == app.as_base;
    let mcp_url = format!("{}{MCP_PATH}", app.rs_base);
    let prm_header_path = "/meta/resource-metadata.json";

    // --- the protected resource ---
    if on_rs && path == MCP_PATH && parts.method == Method::POST {
        let bearer = parts
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_string);
        let valid = bearer.is_some_and(|t| {
            s.access_tokens
                .get(&t)
                .is_some_and(|f| !s.revoked_families.contains(f))
        });
        if valid {
            // An answer to the request sent (its id), as a client waits
            // for; a notification gets none.
            let id = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .map(|request| request["id"].clone());
            return match id {
                Some(serde_json::Value::Null) => StatusCode::ACCEPTED.into_response(),
                id => json(
                    StatusCode::OK,
                    serde_json::json!({"jsonrpc": "2.0", "id": id.unwrap_or(1.into()), "result": {}}),
                ),
            };
        }
        let mut challenge = "Bearer realm=\"mcp\"".to_string();
        if let Some(raw) = &sw.challenge_resource_metadata {
            challenge.push_str(&format!(", resource_metadata=\"{raw}\""));
        } else if sw.prm == PrmMode::Header && sw.unquoted_resource_metadata {
            challenge.push_str(&format!(
                ", resource_metadata={}{prm_header_path}",
                app.rs_base
            ));
        } else if sw.prm == PrmMode::Header {
            challenge.push_str(&format!(
                ", resource_metadata=\"{}{prm_header_path}\"",
                app.rs_base
            ));
        }
        if let Some(r) = crate::grants_as::stateless(&sw.grants, &parts.headers, &body, &challenge)
        {
            return r;
        }
        if let Some(scope) = &sw.challenge_scope {
            challenge.push_str(&format!(", scope=\"{scope}\""));
        }
        return (StatusCode::UNAUTHORIZED, [("www-authenticate", challenge)]).into_response();
    }
    let prm_doc = || {
        let mut doc = serde_json::json!({
            "resource": sw.prm_resource.clone().unwrap_or_else(|| mcp_url.clone()),
            "authorization_servers": [if sw.prm_issuer_trailing_slash {
                format!("{issuer}/")
            } else {
                issuer.clone()
            }],
        });
        if !sw.prm_scopes.is_empty() {
            doc["scopes_supported"] = serde_json::json!(sw.prm_scopes);
        }
        json(StatusCode::OK, doc)
    };
    if on_rs && parts.method == Method::GET {
        let served = match sw.prm {
            PrmMode::Header => path == prm_header_path,
            PrmMode::WellKnownPath => {
                path == format!("/.well-known/oauth-protected-resource{MCP_PATH}")
            }
            PrmMode::WellKnownRoot => path == "/.well-known/oauth-protected-resource",
            PrmMode::None => false,
        };
        if served {
            return prm_doc();
        }
    }

    // --- the authorization server ---
    if on_as && parts.method == Method::GET {
        let ip = &sw.issuer_path;
        let metadata_path = match sw.metadata {
            MetadataMode::Rfc8414 => Some(format!("/.well-known/oauth-authorization-server{ip}")),
            MetadataMode::OidcInserted => Some(format!("/.well-known/openid-configuration{ip}")),
            MetadataMode::OidcAppended => Some(format!("{ip}/.well-known/openid-configuration")),
            MetadataMode::None => None,
        };
        if metadata_path.as_deref() == Some(path.as_str()) {
            let mut doc = serde_json::json!({
                "issuer": if sw.wrong_issuer { format!("{issuer}/other") } else { issuer.clone() },
                "authorization_endpoint": format!("{issuer}/authorize"),
                "token_endpoint": format!("{issuer}/token"),
                "response_types_supported": ["code"],
                "grant_types_supported": ["authorization_code", "refresh_token"],
            });
            if sw.pkce_advertised {
                doc["code_challenge_methods_supported"] = serde_json::json!(["S256"]);
            }
            if sw.dcr {
                doc["registration_endpoint"] = serde_json::json!(format!("{issuer}/register"));
            }
            if sw.revocation {
                doc["revocation_endpoint"] = serde_json::json!(format!("{issuer}/revoke"));
            }
            if sw.cimd {
                doc["client_id_metadata_document_supported"] = serde_json::json!(true);
            }
            if let Some(scopes) = &sw.as_scopes {
                doc["scopes_supported"] = serde_json::json!(scopes);
            }
            if let Some(methods) = &sw.auth_methods {
                doc["token_endpoint_auth_methods_supported"] = serde_json::json!(methods);
            }
            if sw.iss != IssMode::Off {
                doc["authorization_response_iss_parameter_supported"] = serde_json::json!(true);
            }
            crate::grants_as::metadata(&sw.grants, &issuer, &mut doc);
            if sw.relative_endpoints {
                for field in [
                    "authorization_endpoint",
                    "token_endpoint",
                    "registration_endpoint",
                    "revocation_endpoint",
                ] {
                    if let Some(url) = doc[field].as_str() {
                        let path = url::Url::parse(url).unwrap().path().to_string();
                        doc[field] = serde_json::json!(path);
                    }
                }
            }
            if sw.omit_issuer {
                doc.as_object_mut().unwrap().remove("issuer");
            }
            return json(StatusCode::OK, doc);
        }
    }
    let endpoint = |name: &str| {
        let legacy = sw.metadata == MetadataMode::None;
        path == format!(
            "{}/{name}",
            if legacy { "" } else { sw.issuer_path.as_str() }
        )
    };
    if on_as && parts.method == Method::GET && endpoint("authorize") {
        let client_id = query.get("client_id").cloned().unwrap_or_default();
        let redirect_uri = query.get("redirect_uri").cloned().unwrap_or_default();
        let known = s.clients.get(&client_id).cloned();
        let cimd_ok = sw.cimd && client_id.starts_with("https://");
        if sw.unknown_client_authorize_500 && known.is_none() && !cimd_ok {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                [("content-type", "text/html")],
                "<html><body>Something went wrong</body></html>",
            )
                .into_response();
        }
        let redirect_ok = match &known {
            Some(c) => c.redirect_uris.is_empty() || c.redirect_uris.contains(&redirect_uri),
            None => cimd_ok,
        };
        if !redirect_ok || query.get("code_challenge_method").map(String::as_str) != Some("S256") {
            return (StatusCode::BAD_REQUEST, "bad authorization request").into_response();
        }
        let state = query.get("state").cloned().unwrap_or_default();
        let advertised = if sw.wrong_issuer {
            format!("{issuer}/other")
        } else {
            issuer.clone()
        };
        if sw.resource_refused && query.contains_key("resource") {
            let mut location = url::Url::parse(&redirect_uri).unwrap();
            location
                .query_pairs_mut()
                .append_pair("error", "invalid_target")
                .append_pair(
                    "error_description",
                    "AADSTS9010010: The resource parameter provided in the request doesn't match with the requested scopes.",
                )
                .append_pair("state", &state);
            if sw.iss == IssMode::On {
                location.query_pairs_mut().append_pair("iss", &advertised);
            }
            return redirect(location.as_str());
        }
        let unregistered = known
            .as_ref()
            .filter(|_| sw.registered_scope_only)
            .and_then(|c| {
                let registered: Vec<&str> = c.scope.as_deref().unwrap_or("").split(' ').collect();
                query
                    .get("scope")?
                    .split(' ')
                    .find(|s| !registered.contains(s))
                    .map(str::to_string)
            });
        if let Some(scope) = unregistered {
            let mut location = url::Url::parse(&redirect_uri).unwrap();
            location
                .query_pairs_mut()
                .append_pair("error", "invalid_scope")
                .append_pair(
                    "error_description",
                    &format!("Client was not registered with scope {scope}"),
                )
                .append_pair("state", &state);
            if sw.iss == IssMode::On {
                location.query_pairs_mut().append_pair("iss", &advertised);
            }
            return redirect(location.as_str());
        }
        let mut location = url::Url::parse(&redirect_uri).unwrap();
        {
            let mut q = location.query_pairs_mut();
            if sw.deny {
                q.append_pair("error", "access_denied");
                q.append_pair("error_description", "the user said no");
            } else {
                let account = (!sw.accounts.is_empty()).then(|| {
                    let hinted = query
                        .get("login_hint")
                        .and_then(|h| sw.accounts.iter().position(|a| a == h));
                    let picked = match hinted {
                        Some(i) => i,
                        None if query.get("prompt").map(String::as_str)
                            == Some("select_account") =>
                        {
                            s.selections += 1;
                            (s.selections - 1) % sw.accounts.len()
                        }
                        None => s.session_account,
                    };
                    s.session_account = picked;
                    sw.accounts[picked].clone()
                });
                let code = s.id("code");
                s.codes.insert(
                    code.clone(),
                    Code {
                        client_id,
                        challenge: query.get("code_challenge").cloned().unwrap_or_default(),
                        redirect_uri: redirect_uri.clone(),
                        scope: query.get("scope").cloned(),
                        offline: sw
                            .refresh_token_only_with
                            .as_ref()
                            .is_none_or(|(k, v)| query.get(k) == Some(v)),
                        account,
                    },
                );
                q.append_pair("code", &code);
            }
            q.append_pair("state", &state);
            match sw.iss {
                IssMode::On => {
                    q.append_pair("iss", &advertised);
                }
                IssMode::Wrong => {
                    q.append_pair("iss", "http://127.0.0.1:1/evil");
                }
                IssMode::Off | IssMode::AdvertisedMissing => {}
            }
        }
        return redirect(location.as_str());
    }
    if on_as && parts.method == Method::POST && endpoint("register") && sw.dcr {
        let request: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let redirect_uris: Vec<String> = request["redirect_uris"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let grant_types = request["grant_types"].clone();
        // Only a device-flow client (RFC 8628) may go without one.
        let device_only = grant_types
            .as_array()
            .is_some_and(|g| g.iter().any(|t| t == crate::grants_as::DEVICE_CODE));
        if redirect_uris.is_empty() && !device_only {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_redirect_uri",
                "no redirect_uris",
            );
        }
        let id = s.id("client");
        // Context7 issues a secret whatever was asked.
        let (secret, auth_method) = if sw.form_credentials_only {
            (Some(s.id("secret")), "client_secret_basic")
        } else {
            (None, "none")
        };
        s.clients.insert(
            id.clone(),
            Client {
                secret: secret.clone(),
                auth_method: auth_method.into(),
                redirect_uris: redirect_uris.clone(),
                scope: request["scope"].as_str().map(str::to_string),
            },
        );
        let mut answer = serde_json::json!({
            "client_id": id,
            "redirect_uris": redirect_uris,
            "token_endpoint_auth_method": auth_method,
            "grant_types": if device_only { grant_types } else { serde_json::json!(["authorization_code", "refresh_token"]) },
        });
        if let Some(secret) = secret {
            answer["client_secret"] = serde_json::json!(secret);
        }
        return json(StatusCode::CREATED, answer);
    }
    if on_as && parts.method == Method::POST && endpoint("revoke") && sw.revocation {
        if sw.revocation_refuses_all {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "revocation is not enabled for this client",
            );
        }
        if sw.revocation_requires_client_secret && !form.contains_key("client_secret") {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "client_secret: Field required",
            );
        }
        if sw.revocation_refuses_access_tokens
            && form
                .get("token")
                .is_some_and(|t| s.access_tokens.contains_key(t))
        {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_token_type",
                "JWT access tokens are self-contained",
            );
        }
        if let Some(token) = form.get("token") {
            if let Some(rt) = s.refresh_tokens.get(token).cloned() {
                s.revoked_families.push(rt.family);
            }
            if let Some(f) = s.access_tokens.get(token).copied() {
                s.revoked_families.push(f);
            }
        }
        return StatusCode::OK.into_response();
    }
    if on_as
        && parts.method == Method::POST
        && endpoint("token")
        && let Some(fault) = sw.token_fault
    {
        return token_fault(fault);
    }
    if on_as
        && parts.method == Method::POST
        && endpoint("token")
        && let Some(status) = sw.token_failure
    {
        return (
            StatusCode::from_u16(status).unwrap(),
            [("content-type", "text/html")],
            "<html>upstream trouble</html>",
        )
            .into_response();
    }
    if on_as
        && parts.method == Method::POST
        && let Some(r) = crate::grants_as::handle(
            &mut s,
            endpoint("device_authorization"),
            endpoint("token"),
            &form,
            &basic,
            &issuer,
        )
    {
        return r;
    }
    if on_as && parts.method == Method::POST && endpoint("token") {
        // Client authentication, as registered.
        if sw.form_credentials_only && !form.contains_key("client_id") {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "Missing client_id",
            );
        }
        let client_id = basic
            .as_ref()
            .map(|(id, _)| id.clone())
            .or_else(|| form.get("client_id").cloned())
            .unwrap_or_default();
        let client = s.clients.get(&client_id).cloned();
        let client = match client {
            Some(c) => c,
            None if sw.cimd && client_id.starts_with("https://") => Client {
                secret: None,
                auth_method: "none".into(),
                redirect_uris: vec![],
                scope: None,
            },
            None if sw.unknown_client_422 => {
                return json(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    serde_json::json!({"message": "Unrecognized client_id"}),
                );
            }
            None => {
                return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "unknown client");
            }
        };
        let authenticated = match client.auth_method.as_str() {
            "client_secret_basic" if sw.form_credentials_only => {
                basic.is_none() && form.get("client_secret").cloned() == client.secret
            }
            "client_secret_basic" => {
                basic.as_ref().map(|(_, s)| Some(s.clone())) == Some(client.secret.clone())
            }
            "client_secret_post" => {
                basic.is_none() && form.get("client_secret").cloned() == client.secret
            }
            _ => basic.is_none() && !form.contains_key("client_secret"),
        };
        if !authenticated {
            return oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "client authentication failed",
            );
        }
        // An identity provider's OIDC login is about the person: no
        // resource there.
        if sw.resource_refused && form.contains_key("resource") {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_target",
                "AADSTS9010010: The resource parameter provided in the request doesn't match with the requested scopes.",
            );
        }
        if !form.contains_key("resource")
            && sw.grants.idp_id_token_ttl.is_none()
            && !sw.resource_refused
        {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_target",
                "resource is required",
            );
        }
        let grant_type = form.get("grant_type").cloned().unwrap_or_default();
        let mut offline = true;
        let mut code_account = None;
        let (family, scope) = match grant_type.as_str() {
            "authorization_code" => {
                let code = form.get("code").cloned().unwrap_or_default();
                let Some(c) = s.codes.remove(&code) else {
                    return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", "unknown code");
                };
                let verifier = form.get("code_verifier").cloned().unwrap_or_default();
                let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
                if c.client_id != client_id
                    || c.challenge != challenge
                    || form.get("redirect_uri") != Some(&c.redirect_uri)
                {
                    return oauth_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_grant",
                        "code does not match",
                    );
                }
                s.next += 1;
                offline = c.offline;
                code_account = c.account;
                (s.next, c.scope)
            }
            "refresh_token" => {
                match (sw.refresh_scope_rule, form.contains_key("scope")) {
                    (Some(RefreshScopeRule::Required), false) => {
                        return oauth_error(
                            StatusCode::BAD_REQUEST,
                            "invalid_request",
                            "AADSTS90009: Application is requesting a token for itself; scope is required",
                        );
                    }
                    (Some(RefreshScopeRule::Refused), true) => {
                        return oauth_error(
                            StatusCode::BAD_REQUEST,
                            "invalid_request",
                            "scope parameter not supported",
                        );
                    }
                    _ => {}
                }
                let token = form.get("refresh_token").cloned().unwrap_or_default();
                let Some(rt) = s.refresh_tokens.get(&token).cloned() else {
                    return oauth_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_grant",
                        "unknown refresh token",
                    );
                };
                if s.revoked_families.contains(&rt.family) {
                    return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", "grant revoked");
                }
                if rt.client_id != client_id {
                    return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", "wrong client");
                }
                let successor_unused = rt
                    .successor
                    .as_ref()
                    .and_then(|next| s.refresh_tokens.get(next))
                    .is_some_and(|next| !next.used);
                if rt.used && sw.reuse_grace && successor_unused {
                    // The client never got the successor: accept once
                    // more, and the successor can never be used.
                    let next = rt.successor.clone().unwrap();
                    s.refresh_tokens.get_mut(&next).unwrap().used = true;
                    s.grace_reuses += 1;
                } else if rt.used {
                    // Reuse of a rotated refresh token: revoke the grant.
                    s.revoked_families.push(rt.family);
                    s.reuse_detected = true;
                    return oauth_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_grant",
                        "refresh token reused; grant revoked",
                    );
                }
                if sw.rotate {
                    s.refresh_tokens.get_mut(&token).unwrap().used = true;
                }
                (rt.family, rt.scope)
            }
            _ => return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type", "?"),
        };
        let access = s.id("at");
        s.access_tokens.insert(access.clone(), family);
        let mut response = serde_json::json!({"access_token": access, "token_type": "Bearer"});
        if let Some(e) = sw.expires_in {
            response["expires_in"] = serde_json::json!(e);
        }
        let new_refresh =
            sw.issue_refresh_token && offline && (grant_type == "authorization_code" || sw.rotate);
        if new_refresh {
            let rt = s.id("rt");
            s.refresh_tokens.insert(
                rt.clone(),
                RefreshToken {
                    client_id: client_id.clone(),
                    family,
                    used: false,
                    scope: scope.clone(),
                    successor: None,
                },
            );
            if grant_type == "refresh_token"
                && let Some(old) = form
                    .get("refresh_token")
                    .and_then(|old| s.refresh_tokens.get_mut(old))
            {
                old.successor = Some(rt.clone());
            }
            response["refresh_token"] = serde_json::json!(rt);
        }
        if grant_type == "authorization_code"
            && let Some(scope) = &scope
        {
            response["scope"] = serde_json::json!(scope);
        }
        if let Some(account) = code_account {
            s.family_accounts.insert(family, account.clone());
            let openid = scope
                .as_deref()
                .is_some_and(|sc| sc.split(' ').any(|x| x == "openid"));
            if openid {
                // Unsigned: the broker only shows whose tokens they are.
                let claims = serde_json::json!({
                    "iss": issuer,
                    "sub": format!("sub-{account}"),
                    "aud": client_id,
                    "email": account,
                    "preferred_username": account.split('@').next(),
                });
                response["id_token"] = serde_json::json!(format!(
                    "{}.{}.",
                    URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
                    URL_SAFE_NO_PAD.encode(claims.to_string())
                ));
            }
        }
        if grant_type == "authorization_code" {
            crate::grants_as::on_code_exchange(&mut s, &issuer, &client_id, &mut response);
        }
        return json(StatusCode::OK, response);
    }
    (StatusCode::NOT_FOUND, "not found").into_response()
}

/// The order in which this server issued `token` (access or refresh):
/// its ids count up across every kind of id it hands out.
pub fn issue_order(token: &str) -> Option<u64> {
    token.split('-').nth(1)?.parse().ok()
}
