//! The test authorization server's grants beyond the authorization code,
//! and a stateless (2026-07-28) MCP endpoint. Hooked into
//! `authserver.rs`'s dispatch; switched by [`GrantSwitches`].
//!
//! - Device authorization (RFC 8628) at `{issuer}/device_authorization`:
//!   pending until approved (after N polls, or by the test), `slow_down`
//!   for the first N polls, `expired_token` after `expires_in`, or denied.
//!   Every poll's time is recorded.
//! - Client credentials, with `client_secret_basic`/`_post` or
//!   `private_key_jwt` (the assertion's signature, `iss`, `sub`, `aud`,
//!   `exp` and `jti` are verified; a `jti` is accepted once).
//! - JWT bearer (RFC 7523): the assertion must be signed by a trusted key,
//!   unexpired, and for this AS (`aud` the issuer or the token endpoint).
//! - An identity provider (enterprise-managed authorization): ID tokens on
//!   the authorization-code exchange, and RFC 8693 token exchange of an
//!   ID token it issued for an ID-JAG signed with its key (`aud` the
//!   `audience` asked for, unless told to get it wrong). An MCP AS with
//!   `id_jag` lists the ID-JAG grant profile and takes the ID-JAG as a
//!   JWT bearer assertion (signature by a trusted key, audience, expiry).
//! - Stateless MCP: `initialize` does not exist; any other request
//!   without a token gets a 401 whose challenge names the scope, provided
//!   it carries `MCP-Protocol-Version` and an `Mcp-Method` that matches.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p256::ecdsa::signature::Verifier;

use crate::authserver::AsState;

pub const DEVICE_CODE: &str = "urn:ietf:params:oauth:grant-type:device_code";
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
pub const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
pub const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const ID_JAG: &str = "urn:ietf:params:oauth:token-type:id-jag";
pub const ID_TOKEN: &str = "urn:ietf:params:oauth:token-type:id_token";

#[derive(Clone, Debug)]
pub struct GrantSwitches {
    /// Offer the device flow.
    pub device: bool,
    pub device_interval: u64,
    pub device_expires_in: u64,
    /// The first N polls answer `slow_down`.
    pub device_slow_down: u32,
    /// Approved on this poll (1-based); `None`: only by the test.
    pub device_approve_on_poll: Option<u32>,
    /// The person refuses.
    pub device_deny: bool,
    /// List `client_credentials` in `grant_types_supported`.
    pub client_credentials: bool,
    /// List jwt-bearer in `grant_types_supported` and accept it.
    pub jwt_bearer: bool,
    /// A stateless MCP endpoint; the scope its challenges name.
    pub stateless_scope: Option<String>,
    /// Act as an identity provider: ID tokens (valid this long, seconds)
    /// and token exchange for ID-JAGs.
    pub idp_id_token_ttl: Option<i64>,
    /// The identity provider puts this audience in ID-JAGs instead of the
    /// one asked for.
    pub idp_wrong_audience: Option<String>,
    /// The identity provider issues ID tokens for this audience instead of
    /// the client that logged in (a token meant for another client).
    pub idp_id_token_audience: Option<String>,
    /// As an MCP AS: list the ID-JAG grant profile (and jwt-bearer).
    pub id_jag: bool,
    /// As an MCP AS: list exactly these grant profiles instead.
    pub grant_profiles: Option<Vec<String>>,
    /// As an MCP AS: take ID-JAGs, but leave the optional
    /// `authorization_grant_profiles_supported` out of the metadata.
    pub omit_grant_profiles: bool,
}

impl Default for GrantSwitches {
    fn default() -> Self {
        Self {
            device: false,
            device_interval: 1,
            device_expires_in: 600,
            device_slow_down: 0,
            device_approve_on_poll: Some(2),
            device_deny: false,
            client_credentials: false,
            jwt_bearer: false,
            stateless_scope: None,
            idp_id_token_ttl: None,
            idp_wrong_audience: None,
            idp_id_token_audience: None,
            id_jag: false,
            grant_profiles: None,
            omit_grant_profiles: false,
        }
    }
}

#[derive(Clone, Debug)]
struct Device {
    client_id: String,
    user_code: String,
    scope: Option<String>,
    issued: Instant,
    polls: u32,
    approved: bool,
}

/// What the grants part of the test AS keeps.
#[derive(Default)]
pub struct GrantState {
    devices: HashMap<String, Device>,
    /// When each device poll arrived.
    pub device_polls: Vec<Instant>,
    /// Client ids with a public key for `private_key_jwt`.
    client_keys: HashMap<String, p256::ecdsa::VerifyingKey>,
    /// Keys whose JWT bearer assertions are accepted.
    assertion_keys: Vec<p256::ecdsa::VerifyingKey>,
    jtis: HashSet<String>,
    /// Why the last assertion was refused, for test messages.
    pub last_refusal: Option<String>,
    /// The identity provider's signing key (ID tokens, ID-JAGs).
    pub idp_key: Option<p256::ecdsa::SigningKey>,
    /// ID tokens issued, with their expiry (Unix seconds).
    pub id_tokens: HashMap<String, i64>,
    /// ID-JAGs issued.
    pub id_jags: Vec<String>,
}

impl GrantState {
    pub fn add_client_key(&mut self, client_id: &str, key: p256::ecdsa::VerifyingKey) {
        self.client_keys.insert(client_id.into(), key);
    }

    pub fn trust_assertion_key(&mut self, key: p256::ecdsa::VerifyingKey) {
        self.assertion_keys.push(key);
    }

    /// The person approves the device login with this user code.
    pub fn approve(&mut self, user_code: &str) -> bool {
        let mut found = false;
        for d in self.devices.values_mut() {
            if d.user_code == user_code {
                d.approved = true;
                found = true;
            }
        }
        found
    }
}

/// Adds the metadata of the switched-on grants.
pub fn metadata(sw: &GrantSwitches, issuer: &str, doc: &mut serde_json::Value) {
    if sw.device {
        doc["device_authorization_endpoint"] =
            serde_json::json!(format!("{issuer}/device_authorization"));
    }
    if sw.id_jag {
        doc["authorization_grant_profiles_supported"] =
            serde_json::json!(["urn:ietf:params:oauth:grant-profile:id-jag"]);
    }
    if let Some(profiles) = &sw.grant_profiles {
        doc["authorization_grant_profiles_supported"] = serde_json::json!(profiles);
    }
    if sw.omit_grant_profiles {
        doc.as_object_mut()
            .unwrap()
            .remove("authorization_grant_profiles_supported");
    }
    let types = doc["grant_types_supported"].as_array_mut();
    if let Some(types) = types {
        if sw.device {
            types.push(DEVICE_CODE.into());
        }
        if sw.client_credentials {
            types.push("client_credentials".into());
        }
        if sw.jwt_bearer || sw.id_jag {
            types.push(JWT_BEARER.into());
        }
        if sw.idp_id_token_ttl.is_some() {
            types.push(TOKEN_EXCHANGE.into());
        }
    }
    if (sw.client_credentials || sw.jwt_bearer)
        && doc["token_endpoint_auth_methods_supported"].is_null()
    {
        doc["token_endpoint_auth_methods_supported"] = serde_json::json!([
            "client_secret_basic",
            "client_secret_post",
            "private_key_jwt",
            "none"
        ]);
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

fn error(status: StatusCode, error: &str, description: &str) -> Response {
    json(
        status,
        serde_json::json!({"error": error, "error_description": description}),
    )
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Splits and decodes a compact JWS; verifies it with one of `keys`.
fn verify_jwt(jwt: &str, keys: &[&p256::ecdsa::VerifyingKey]) -> Result<serde_json::Value, String> {
    let (input, signature) = jwt.rsplit_once('.').ok_or("not a JWS")?;
    let (header, payload) = input.split_once('.').ok_or("not a JWS")?;
    let header: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    if header["alg"] != "ES256" {
        return Err(format!("alg {}", header["alg"]));
    }
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|e| e.to_string())?;
    let signature =
        p256::ecdsa::Signature::from_slice(&signature).map_err(|_| "bad signature encoding")?;
    if !keys
        .iter()
        .any(|k| k.verify(input.as_bytes(), &signature).is_ok())
    {
        return Err("signature does not verify".into());
    }
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())
}

fn audience_contains(claims: &serde_json::Value, wanted: &[&str]) -> bool {
    match &claims["aud"] {
        serde_json::Value::String(a) => wanted.contains(&a.as_str()),
        serde_json::Value::Array(list) => list
            .iter()
            .any(|a| a.as_str().is_some_and(|a| wanted.contains(&a))),
        _ => false,
    }
}

/// Authenticates the client of a request; `Ok(client_id)` (empty for an
/// anonymous JWT bearer request), or why it was refused.
fn authenticate(
    s: &mut AsState,
    form: &HashMap<String, String>,
    basic: &Option<(String, String)>,
    issuer: &str,
) -> Result<String, String> {
    let refuse = |why: &str| Err(why.to_string());
    if let Some(assertion) = form.get("client_assertion") {
        if form.get("client_assertion_type").map(String::as_str) != Some(CLIENT_ASSERTION_TYPE) {
            return refuse("wrong client_assertion_type");
        }
        let client_id = form.get("client_id").cloned().unwrap_or_default();
        let Some(key) = s.grants.client_keys.get(&client_id).cloned() else {
            return refuse("no key for this client");
        };
        let claims = match verify_jwt(assertion, &[&key]) {
            Ok(c) => c,
            Err(e) => return refuse(&e),
        };
        let now = now_secs();
        let exp = claims["exp"].as_i64().unwrap_or(0);
        let ok = claims["iss"] == client_id.as_str()
            && claims["sub"] == client_id.as_str()
            && audience_contains(&claims, &[issuer])
            && exp > now
            && exp <= now + 300;
        let jti = claims["jti"].as_str().unwrap_or("").to_string();
        if !ok || jti.is_empty() || !s.grants.jtis.insert(jti) {
            s.grants.last_refusal = Some(format!("client assertion claims refused: {claims}"));
            return refuse("client assertion refused");
        }
        return Ok(client_id);
    }
    let client_id = basic
        .as_ref()
        .map(|(id, _)| id.clone())
        .or_else(|| form.get("client_id").cloned())
        .unwrap_or_default();
    if client_id.is_empty() && form.get("grant_type").map(String::as_str) == Some(JWT_BEARER) {
        return Ok(String::new());
    }
    let Some(client) = s.clients.get(&client_id).cloned() else {
        return refuse("unknown client");
    };
    let ok = match client.auth_method.as_str() {
        "client_secret_basic" => {
            basic.as_ref().map(|(_, s)| Some(s.clone())) == Some(client.secret.clone())
        }
        "client_secret_post" => {
            basic.is_none() && form.get("client_secret").cloned() == client.secret
        }
        _ => basic.is_none() && !form.contains_key("client_secret"),
    };
    if ok {
        Ok(client_id)
    } else {
        refuse("client authentication failed")
    }
}

fn issue(s: &mut AsState, expires_in: Option<u64>, scope: Option<String>) -> Response {
    s.next += 1;
    let family = s.next;
    let access = s.id("at");
    s.access_tokens.insert(access.clone(), family);
    let mut response = serde_json::json!({"access_token": access, "token_type": "Bearer"});
    if let Some(e) = expires_in {
        response["expires_in"] = serde_json::json!(e);
    }
    if let Some(scope) = scope {
        response["scope"] = serde_json::json!(scope);
    }
    json(StatusCode::OK, response)
}

/// The device authorization endpoint and the token endpoint's new grants.
/// `None`: not for this module (the authorization-code and refresh grants).
pub fn handle(
    s: &mut AsState,
    is_device_endpoint: bool,
    is_token_endpoint: bool,
    form: &HashMap<String, String>,
    basic: &Option<(String, String)>,
    issuer: &str,
) -> Option<Response> {
    let sw = s.switches.grants.clone();
    let expires_in = s.switches.expires_in;
    if is_device_endpoint {
        if !sw.device {
            return Some(StatusCode::NOT_FOUND.into_response());
        }
        let client_id = match authenticate(s, form, basic, issuer) {
            Ok(id) => id,
            Err(why) => return Some(error(StatusCode::UNAUTHORIZED, "invalid_client", &why)),
        };
        let device_code = s.id("dc");
        let n = s.next;
        let user_code = format!("WDJB-{n:04}");
        s.grants.devices.insert(
            device_code.clone(),
            Device {
                client_id,
                user_code: user_code.clone(),
                scope: form.get("scope").cloned(),
                issued: Instant::now(),
                polls: 0,
                approved: false,
            },
        );
        return Some(json(
            StatusCode::OK,
            serde_json::json!({
                "device_code": device_code,
                "user_code": user_code,
                "verification_uri": format!("{issuer}/device"),
                "verification_uri_complete": format!("{issuer}/device?user_code={user_code}"),
                "expires_in": sw.device_expires_in,
                "interval": sw.device_interval,
            }),
        ));
    }
    if !is_token_endpoint {
        return None;
    }
    let grant_type = form.get("grant_type").cloned().unwrap_or_default();
    let ours = matches!(
        grant_type.as_str(),
        "client_credentials" | DEVICE_CODE | JWT_BEARER | TOKEN_EXCHANGE
    ) || form.contains_key("client_assertion");
    if !ours {
        return None;
    }
    let client_id = match authenticate(s, form, basic, issuer) {
        Ok(id) => id,
        Err(why) => return Some(error(StatusCode::UNAUTHORIZED, "invalid_client", &why)),
    };
    if !form.contains_key("resource") {
        return Some(error(
            StatusCode::BAD_REQUEST,
            "invalid_target",
            "resource is required",
        ));
    }
    Some(match grant_type.as_str() {
        "client_credentials" if sw.client_credentials => {
            issue(s, expires_in, form.get("scope").cloned())
        }
        DEVICE_CODE if sw.device => {
            s.grants.device_polls.push(Instant::now());
            let code = form.get("device_code").cloned().unwrap_or_default();
            let Some(device) = s.grants.devices.get_mut(&code) else {
                return Some(error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "unknown device code",
                ));
            };
            device.polls += 1;
            if device.client_id != client_id {
                return Some(error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "wrong client",
                ));
            }
            if device.issued.elapsed() >= Duration::from_secs(sw.device_expires_in) {
                return Some(error(StatusCode::BAD_REQUEST, "expired_token", "too late"));
            }
            if device.polls <= sw.device_slow_down {
                return Some(error(StatusCode::BAD_REQUEST, "slow_down", "easy"));
            }
            if sw.device_deny {
                return Some(error(
                    StatusCode::BAD_REQUEST,
                    "access_denied",
                    "the user said no",
                ));
            }
            if sw
                .device_approve_on_poll
                .is_some_and(|n| device.polls >= n + sw.device_slow_down)
            {
                device.approved = true;
            }
            if !device.approved {
                return Some(error(
                    StatusCode::BAD_REQUEST,
                    "authorization_pending",
                    "not yet",
                ));
            }
            let scope = device.scope.clone();
            s.grants.devices.remove(&code);
            issue(s, expires_in, scope)
        }
        TOKEN_EXCHANGE if sw.idp_id_token_ttl.is_some() => {
            let subject = form.get("subject_token").cloned().unwrap_or_default();
            let valid = s
                .grants
                .id_tokens
                .get(&subject)
                .is_some_and(|exp| *exp > now_secs());
            if form.get("subject_token_type").map(String::as_str) != Some(ID_TOKEN)
                || form.get("requested_token_type").map(String::as_str) != Some(ID_JAG)
            {
                return Some(error(StatusCode::BAD_REQUEST, "invalid_request", "types"));
            }
            if !valid {
                return Some(error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "unknown or expired ID token",
                ));
            }
            let Some(audience) = form.get("audience").cloned() else {
                return Some(error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "audience",
                ));
            };
            let now = now_secs();
            s.next += 1;
            let key = s
                .grants
                .idp_key
                .clone()
                .expect("the test set the IdP's key");
            let jag = sign_typed(
                &key,
                "oauth-id-jag+jwt",
                &serde_json::json!({
                    "iss": issuer,
                    "sub": "user-1",
                    "aud": sw.idp_wrong_audience.clone().unwrap_or(audience),
                    "resource": form.get("resource"),
                    "client_id": client_id,
                    "scope": form.get("scope"),
                    "iat": now,
                    "exp": now + 300,
                    "jti": format!("jag-{}", s.next),
                }),
            );
            s.grants.id_jags.push(jag.clone());
            json(
                StatusCode::OK,
                serde_json::json!({
                    "issued_token_type": ID_JAG,
                    "access_token": jag,
                    "token_type": "N_A",
                    "expires_in": 300,
                }),
            )
        }
        JWT_BEARER if sw.jwt_bearer || sw.id_jag => {
            let assertion = form.get("assertion").cloned().unwrap_or_default();
            let keys: Vec<p256::ecdsa::VerifyingKey> = s.grants.assertion_keys.clone();
            let claims = match verify_jwt(&assertion, &keys.iter().collect::<Vec<_>>()) {
                Ok(c) => c,
                Err(e) => {
                    s.grants.last_refusal = Some(e.clone());
                    return Some(error(StatusCode::BAD_REQUEST, "invalid_grant", &e));
                }
            };
            let token_endpoint = format!("{issuer}/token");
            if !audience_contains(&claims, &[issuer, &token_endpoint]) {
                return Some(error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "wrong audience",
                ));
            }
            if claims["exp"].as_i64().unwrap_or(0) <= now_secs() {
                return Some(error(StatusCode::BAD_REQUEST, "invalid_grant", "expired"));
            }
            issue(s, expires_in, form.get("scope").cloned())
        }
        _ => error(StatusCode::BAD_REQUEST, "unsupported_grant_type", "?"),
    })
}

/// Adds an ID token to an authorization-code answer when acting as an
/// identity provider.
pub fn on_code_exchange(
    s: &mut AsState,
    issuer: &str,
    client_id: &str,
    response: &mut serde_json::Value,
) {
    let Some(ttl) = s.switches.grants.idp_id_token_ttl else {
        return;
    };
    let Some(key) = s.grants.idp_key.clone() else {
        return;
    };
    let now = now_secs();
    s.next += 1;
    let id_token = sign(
        &key,
        &serde_json::json!({
            "iss": issuer,
            "sub": "user-1",
            "aud": s.switches.grants.idp_id_token_audience.as_deref().unwrap_or(client_id),
            "iat": now,
            "exp": now + ttl,
            "nonce_free": s.next,
        }),
    );
    s.grants.id_tokens.insert(id_token.clone(), now + ttl);
    response["id_token"] = serde_json::json!(id_token);
}

/// The stateless MCP endpoint's answer to a request without a valid
/// token; `None` when the endpoint is not stateless.
pub fn stateless(
    sw: &GrantSwitches,
    headers: &HeaderMap,
    body: &str,
    challenge: &str,
) -> Option<Response> {
    let scope = sw.stateless_scope.as_ref()?;
    let request: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    let method = request["method"].as_str().unwrap_or("");
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if method == "initialize" {
        return Some(json(
            StatusCode::BAD_REQUEST,
            serde_json::json!({"jsonrpc": "2.0", "id": request["id"],
                "error": {"code": -32601, "message": "no initialize: this server is stateless"}}),
        ));
    }
    let well_formed = header("mcp-protocol-version").is_some()
        && header("mcp-method") == Some(method)
        && request["params"]["_meta"]["protocolVersion"].is_string();
    if !well_formed {
        return Some(json(
            StatusCode::BAD_REQUEST,
            serde_json::json!({"jsonrpc": "2.0", "id": request["id"],
                "error": {"code": -32600, "message": "missing MCP headers or _meta"}}),
        ));
    }
    Some(
        (
            StatusCode::UNAUTHORIZED,
            [(
                "www-authenticate",
                format!("{challenge}, scope=\"{scope}\""),
            )],
        )
            .into_response(),
    )
}

/// A new P-256 key pair for tests: the PEM (PKCS#8) of the private key
/// and the public key.
pub fn es256_key() -> (String, p256::ecdsa::SigningKey) {
    use p256::pkcs8::EncodePrivateKey;
    loop {
        let bytes: [u8; 32] = rand::random();
        if let Ok(key) = p256::SecretKey::from_bytes(&bytes.into()) {
            let pem = key
                .to_pkcs8_pem(p256::pkcs8::LineEnding::LF)
                .unwrap()
                .to_string();
            return (pem, p256::ecdsa::SigningKey::from(key));
        }
    }
}

/// A compact ES256 JWS of `claims`, signed with `key`.
pub fn sign(key: &p256::ecdsa::SigningKey, claims: &serde_json::Value) -> String {
    sign_typed(key, "JWT", claims)
}

/// A compact ES256 JWS with this `typ`.
pub fn sign_typed(key: &p256::ecdsa::SigningKey, typ: &str, claims: &serde_json::Value) -> String {
    use p256::ecdsa::signature::Signer;
    let header =
        URL_SAFE_NO_PAD.encode(serde_json::json!({"alg": "ES256", "typ": typ}).to_string());
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let input = format!("{header}.{payload}");
    let signature: p256::ecdsa::Signature = key.sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
}

/// Seconds since the Unix epoch.
pub fn unix_secs() -> i64 {
    now_secs()
}
