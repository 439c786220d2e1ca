//! The token endpoint: authorization-code exchange and refresh (RFC 6749
//! with PKCE and the `resource` indicator of RFC 8707), and revocation
//! (RFC 7009).
//!
//! Any 2xx is a success. A refresh answer without `refresh_token` or
//! `scope` keeps the old ones (the caller merges). Error answers become
//! [`OAuthError::Token`] with the OAuth error code; server-provided text is
//! sanitised and stripped of anything we sent.
//!
//! Two tolerances, each one extra request at most, whose outcome the
//! caller remembers:
//! - client authentication: a client with a secret refused as an unknown
//!   or missing client (`invalid_client`, `invalid_request` about the
//!   client, a bare 401) tries once more with the other of
//!   `client_secret_basic` and `client_secret_post`, at the same endpoint
//!   (Context7 and FastMCP's OAuth proxy advertise Basic but read the
//!   form);
//! - refresh form: the spec's refresh carries no `scope`; one refused with
//!   `invalid_request` or `invalid_scope` (not `invalid_grant`) is sent
//!   once more the other way, with the granted scopes (Entra, when the
//!   client is also the resource, wants them; Salesforce refuses them).

use serde::Deserialize;

use super::http::{HttpClient, Response, checked, display_url};
use super::{OAuthError, sanitize};
use crate::secret::Secret;
use crate::state::{ClientAuthMethod, Discovery, RefreshScope, Registration};

/// What a successful token response carries.
#[derive(Clone, Debug)]
pub struct TokenSet {
    pub access_token: Secret,
    pub token_type: String,
    pub refresh_token: Option<Secret>,
    /// Seconds, as sent; `None` when absent (expiry unknown).
    pub expires_in: Option<u64>,
    pub scope: Option<Vec<String>>,
    /// An OpenID Connect login's ID token.
    pub id_token: Option<Secret>,
}

impl TokenSet {
    /// When the token expires, for a response received at `now_ms`. Any
    /// `expires_in` a server sends is safe here: absurd ones saturate
    /// (never expires) instead of overflowing.
    pub fn expires_at_ms(&self, now_ms: i64) -> Option<i64> {
        self.expires_in.map(|secs| {
            let ms = i64::try_from(secs).unwrap_or(i64::MAX).saturating_mul(1000);
            now_ms.saturating_add(ms)
        })
    }
}

#[derive(Deserialize)]
struct RawTokenResponse {
    access_token: String,
    #[serde(default)]
    token_type: Option<String>,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    id_token: Option<String>,
}

#[derive(Deserialize)]
struct RawError {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

/// Parses a token endpoint answer. `sent` are the secrets of the request,
/// removed from any error text.
pub fn parse_token_response(
    url: &url::Url,
    response: &Response,
    sent: &[&str],
) -> Result<TokenSet, OAuthError> {
    // Judged by the body: an `error` member is an OAuth error whatever the
    // status (Slack answers HTTP 200 `{"ok": false, "error": ...}`).
    if let Ok(err) = serde_json::from_slice::<RawError>(&response.body) {
        return Err(OAuthError::Token {
            error: sanitize(&err.error, sent),
            description: err
                .error_description
                .map(|d| sanitize(&d, sent))
                .filter(|d| !d.is_empty()),
            retry_after_secs: response.retry_after_secs,
            status: response.status,
        });
    }
    if !(200..300).contains(&response.status) {
        if (400..500).contains(&response.status) && response.status != 429 {
            return Err(OAuthError::Refused {
                url: display_url(url),
                status: response.status,
                message: refusal_message(&response.body, sent),
            });
        }
        return Err(OAuthError::Status {
            url: display_url(url),
            status: response.status,
            retry_after_secs: response.retry_after_secs,
        });
    }
    let raw: RawTokenResponse = super::http::parse_json(url, response)?;
    if raw.access_token.is_empty() {
        return Err(OAuthError::BadDocument {
            url: display_url(url),
            reason: "empty access_token".into(),
        });
    }
    let token_type = raw.token_type.unwrap_or_else(|| "Bearer".into());
    if !token_type.eq_ignore_ascii_case("bearer") {
        return Err(OAuthError::UnsupportedTokenType(sanitize(
            &token_type,
            sent,
        )));
    }
    // Some servers send expires_in as a string.
    let expires_in = match raw.expires_in {
        Some(serde_json::Value::Number(n)) => {
            n.as_u64().or_else(|| n.as_f64().map(|f| f.max(0.0) as u64))
        }
        Some(serde_json::Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    };
    Ok(TokenSet {
        access_token: Secret::new(raw.access_token),
        token_type: "Bearer".into(),
        refresh_token: raw.refresh_token.filter(|t| !t.is_empty()).map(Secret::new),
        expires_in,
        scope: raw
            .scope
            .map(|s| s.split_whitespace().map(str::to_string).collect()),
        id_token: raw.id_token.filter(|t| !t.is_empty()).map(Secret::new),
    })
}

/// What a non-OAuth JSON refusal says, from the members servers use
/// (`message`, `error_code`, `msg`, `detail`, `error_description`); none
/// for a body that is not JSON (an error page).
fn refusal_message(body: &[u8], sent: &[&str]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let said: Vec<&str> = [
        "error_code",
        "message",
        "msg",
        "detail",
        "error_description",
    ]
    .iter()
    .filter_map(|k| value.get(k).and_then(|v| v.as_str()))
    .collect();
    let text = sanitize(&said.join(": "), sent);
    (!text.is_empty()).then_some(text)
}

/// What became of one token at the revocation endpoint (RFC 7009).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Revocation {
    /// Revoked (or already invalid: RFC 7009 answers 200 for both).
    Revoked,
    /// The AS has no revocation endpoint.
    NotOffered,
    /// `unsupported_token_type`: the AS cannot revoke this kind of token
    /// (RFC 7009 §2.2.1), e.g. a self-contained JWT access token.
    Unsupported,
    /// Another OAuth error answer, sanitised.
    Refused {
        error: String,
        description: Option<String>,
    },
    /// No answer that says (network trouble, an error page).
    Failed(String),
}

impl std::fmt::Display for Revocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Revocation::Revoked => f.write_str("revoked"),
            Revocation::NotOffered => f.write_str("no revocation endpoint"),
            Revocation::Unsupported => f.write_str("unsupported_token_type"),
            Revocation::Refused {
                error,
                description: Some(d),
            } => write!(f, "{error}: {d}"),
            Revocation::Refused { error, .. } => f.write_str(error),
            Revocation::Failed(reason) => f.write_str(reason),
        }
    }
}

/// A token answer, and how the request that got it was made, for the
/// caller to remember.
#[derive(Debug)]
pub struct Obtained {
    pub tokens: TokenSet,
    /// The client authentication that worked (for a client with a secret,
    /// possibly not the registered one).
    pub auth_method: ClientAuthMethod,
    pub refresh_scope: RefreshScope,
}

/// Whether a token endpoint's refusal says it did not recognise the
/// client as authenticated: worth one try with the other secret method.
fn client_not_recognised(e: &OAuthError) -> bool {
    match e {
        OAuthError::Token {
            error, description, ..
        } => {
            error == "invalid_client"
                || (error == "invalid_request"
                    && description
                        .as_deref()
                        .is_some_and(|d| d.to_ascii_lowercase().contains("client")))
        }
        OAuthError::Status { status, .. } | OAuthError::Refused { status, .. } => *status == 401,
        _ => false,
    }
}

/// Whether a refused refresh may be about its form (with or without
/// `scope`), not about the grant.
fn refresh_form_refused(e: &OAuthError) -> bool {
    matches!(e.token_error(), Some("invalid_request" | "invalid_scope"))
        && !client_not_recognised(e)
}

/// How a client proves who it is at the token endpoint, for one request.
pub enum ClientAuth<'a> {
    /// No client at all (a JWT bearer grant without a client id).
    Anonymous,
    /// A public client: `client_id` in the form.
    Public { client_id: &'a str },
    /// `client_secret_basic`.
    Basic {
        client_id: &'a str,
        secret: &'a Secret,
    },
    /// `client_secret_post`.
    Post {
        client_id: &'a str,
        secret: &'a Secret,
    },
    /// `private_key_jwt`: a signed assertion made for this request.
    Assertion {
        client_id: &'a str,
        assertion: Secret,
    },
}

impl<'a> ClientAuth<'a> {
    /// The authentication a stored registration calls for.
    pub fn of(registration: &'a Registration) -> Self {
        let client_id = registration.client_id.as_str();
        match (
            registration.auth_method,
            registration.client_secret.as_ref(),
        ) {
            (ClientAuthMethod::ClientSecretBasic, Some(secret)) => {
                ClientAuth::Basic { client_id, secret }
            }
            (ClientAuthMethod::ClientSecretPost, Some(secret)) => {
                ClientAuth::Post { client_id, secret }
            }
            _ => ClientAuth::Public { client_id },
        }
    }

    /// The secret this authentication sends, if any (kept out of errors).
    pub(super) fn secret(&self) -> Option<&str> {
        match self {
            ClientAuth::Basic { secret, .. } | ClientAuth::Post { secret, .. } => {
                Some(secret.expose())
            }
            ClientAuth::Assertion { assertion, .. } => Some(assertion.expose()),
            _ => None,
        }
    }

    /// Adds the authentication to a form; returns HTTP Basic credentials
    /// when that is the method.
    pub(super) fn apply<'b>(
        &'b self,
        form: &mut Vec<(&'static str, &'b str)>,
    ) -> Option<(&'b str, &'b str)> {
        match self {
            ClientAuth::Anonymous => None,
            ClientAuth::Public { client_id } => {
                form.push(("client_id", client_id));
                None
            }
            ClientAuth::Basic { client_id, secret } => Some((client_id, secret.expose())),
            ClientAuth::Post { client_id, secret } => {
                form.push(("client_id", client_id));
                form.push(("client_secret", secret.expose()));
                None
            }
            ClientAuth::Assertion {
                client_id,
                assertion,
            } => {
                form.push(("client_id", client_id));
                form.push(("client_assertion_type", super::jwt::CLIENT_ASSERTION_TYPE));
                form.push(("client_assertion", assertion.expose()));
                None
            }
        }
    }
}

impl HttpClient {
    /// A token request as `registration`'s client; a client with a secret
    /// that is not recognised tries once more with the other method.
    async fn token_request(
        &self,
        discovery: &Discovery,
        registration: &Registration,
        form: Vec<(&'static str, &str)>,
        sent: &[&str],
    ) -> Result<(TokenSet, ClientAuthMethod), OAuthError> {
        let method = registration.auth_method;
        let first = self
            .token_request_as(discovery, &ClientAuth::of(registration), form.clone(), sent)
            .await;
        let other = match (method, &registration.client_secret) {
            (ClientAuthMethod::ClientSecretBasic, Some(_)) => ClientAuthMethod::ClientSecretPost,
            (ClientAuthMethod::ClientSecretPost, Some(_)) => ClientAuthMethod::ClientSecretBasic,
            _ => return first.map(|t| (t, method)),
        };
        match first {
            Err(e) if client_not_recognised(&e) => {
                let retry = Registration {
                    auth_method: other,
                    ..registration.clone()
                };
                self.token_request_as(discovery, &ClientAuth::of(&retry), form, sent)
                    .await
                    .map(|t| (t, other))
            }
            first => first.map(|t| (t, method)),
        }
    }

    /// A token request authenticated as `auth`. `sent`: the secrets in
    /// `form`, removed from any error text.
    pub async fn token_request_as(
        &self,
        discovery: &Discovery,
        auth: &ClientAuth<'_>,
        mut form: Vec<(&'static str, &str)>,
        sent: &[&str],
    ) -> Result<TokenSet, OAuthError> {
        let url = checked("token endpoint", &discovery.metadata.token_endpoint)?;
        let basic = auth.apply(&mut form);
        let response = self.post_form(&url, &form, basic).await?;
        let mut secrets: Vec<&str> = sent.to_vec();
        if let Some(s) = auth.secret() {
            secrets.push(s);
        }
        parse_token_response(&url, &response, &secrets)
    }

    /// Exchanges an authorization code (with its PKCE verifier).
    pub async fn exchange_code(
        &self,
        discovery: &Discovery,
        registration: &Registration,
        code: &Secret,
        verifier: &Secret,
        redirect_uri: &str,
    ) -> Result<Obtained, OAuthError> {
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code.expose()),
            ("redirect_uri", redirect_uri),
            ("code_verifier", verifier.expose()),
        ];
        // None for an identity provider's own login (OIDC), which is
        // about the person, not about a resource, or with
        // `send_resource = false`.
        if let Some(resource) = discovery.resource_to_send() {
            form.push(("resource", resource));
        }
        let (tokens, auth_method) = self
            .token_request(
                discovery,
                registration,
                form,
                &[code.expose(), verifier.expose()],
            )
            .await?;
        Ok(Obtained {
            tokens,
            auth_method,
            refresh_scope: RefreshScope::default(),
        })
    }

    /// Uses a refresh token, in the form `form` (the one that last worked
    /// for this server; the spec's by default), and once the other way if
    /// that form is refused. The caller guarantees `discovery.issuer` is
    /// the issuer that issued it; `scopes` are the granted scopes.
    pub async fn refresh(
        &self,
        discovery: &Discovery,
        registration: &Registration,
        refresh_token: &Secret,
        scopes: &[String],
        form: RefreshScope,
    ) -> Result<Obtained, OAuthError> {
        let scope = scopes.join(" ");
        let attempt = |form: RefreshScope| {
            let mut fields = vec![
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token.expose()),
            ];
            if let Some(resource) = discovery.resource_to_send() {
                fields.push(("resource", resource));
            }
            if form == RefreshScope::Sent {
                fields.push(("scope", scope.as_str()));
            }
            async move {
                self.token_request(discovery, registration, fields, &[refresh_token.expose()])
                    .await
                    .map(|(tokens, auth_method)| Obtained {
                        tokens,
                        auth_method,
                        refresh_scope: form,
                    })
            }
        };
        // Without granted scopes there is no other form to try.
        let form = if scopes.is_empty() {
            RefreshScope::Omitted
        } else {
            form
        };
        match attempt(form).await {
            Err(e) if !scopes.is_empty() && refresh_form_refused(&e) => attempt(form.other()).await,
            result => result,
        }
    }

    /// Revokes a token (RFC 7009) and says what became of it.
    ///
    /// One tolerance: the MCP Python SDK's revocation endpoint (1.x to
    /// 2.3) requires a `client_secret` form field even from a public
    /// client; refused for its absence, a public client tries once more
    /// with an empty one (it has none).
    pub async fn revoke(
        &self,
        discovery: &Discovery,
        registration: &Registration,
        token: &Secret,
        hint: &'static str,
    ) -> Revocation {
        let Some(endpoint) = &discovery.metadata.revocation_endpoint else {
            return Revocation::NotOffered;
        };
        let url = match checked("revocation endpoint", endpoint) {
            Ok(url) => url,
            Err(e) => return Revocation::Failed(e.to_string()),
        };
        let first = self
            .revoke_once(&url, registration, token, hint, false)
            .await;
        let public = registration.client_secret.is_none();
        match first {
            Revocation::Refused {
                ref error,
                ref description,
            } if public
                && error == "invalid_request"
                && description
                    .as_deref()
                    .is_some_and(|d| d.contains("client_secret")) =>
            {
                self.revoke_once(&url, registration, token, hint, true)
                    .await
            }
            other => other,
        }
    }

    async fn revoke_once(
        &self,
        url: &url::Url,
        registration: &Registration,
        token: &Secret,
        hint: &'static str,
        empty_secret: bool,
    ) -> Revocation {
        let mut form = vec![("token", token.expose()), ("token_type_hint", hint)];
        let auth = ClientAuth::of(registration);
        let basic = auth.apply(&mut form);
        if empty_secret {
            form.push(("client_secret", ""));
        }
        let response = match self.post_form(url, &form, basic).await {
            Ok(r) => r,
            Err(e) => return Revocation::Failed(e.to_string()),
        };
        if (200..300).contains(&response.status) {
            return Revocation::Revoked;
        }
        let mut sent = vec![token.expose()];
        if let Some(s) = auth.secret() {
            sent.push(s);
        }
        match parse_token_response(url, &response, &sent) {
            Err(OAuthError::Token { error, .. }) if error == "unsupported_token_type" => {
                Revocation::Unsupported
            }
            Err(OAuthError::Token {
                error, description, ..
            }) => Revocation::Refused { error, description },
            Err(e) => Revocation::Failed(e.to_string()),
            Ok(_) => Revocation::Failed(format!("HTTP {}", response.status)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, body: &str) -> Response {
        Response {
            status,
            retry_after_secs: None,
            content_type: "application/json".into(),
            www_authenticate: vec![],
            body: body.as_bytes().to_vec(),
        }
    }

    fn url() -> url::Url {
        url::Url::parse("https://as.example/token").unwrap()
    }

    #[test]
    fn parses_a_full_and_a_minimal_response() {
        let t = parse_token_response(
            &url(),
            &response(200, r#"{"access_token":"at","token_type":"bearer","expires_in":"3600","refresh_token":"rt","scope":"a b"}"#),
            &[],
        )
        .unwrap();
        assert_eq!(t.access_token.expose(), "at");
        assert_eq!(t.expires_in, Some(3600));
        assert_eq!(t.refresh_token.unwrap().expose(), "rt");
        assert_eq!(t.scope.unwrap(), ["a", "b"]);
        let t =
            parse_token_response(&url(), &response(201, r#"{"access_token":"at"}"#), &[]).unwrap();
        assert_eq!(t.expires_in, None);
        assert!(t.refresh_token.is_none());
        assert!(t.scope.is_none());
    }

    #[test]
    fn errors_are_typed_and_never_echo_what_we_sent() {
        let err = parse_token_response(
            &url(),
            &response(400, r#"{"error":"invalid_grant","error_description":"refresh token rt-secret-value is revoked"}"#),
            &["rt-secret-value"],
        )
        .unwrap_err();
        assert_eq!(err.token_error(), Some("invalid_grant"));
        let shown = err.to_string();
        assert!(!shown.contains("rt-secret-value"), "{shown}");
        assert!(shown.contains("[redacted]"), "{shown}");
        let err = parse_token_response(&url(), &response(503, "oops"), &[]).unwrap_err();
        assert!(err.is_transient());
        assert_eq!(err.token_failure(), crate::oauth::TokenFailure::Outage);
        assert!(
            parse_token_response(
                &url(),
                &response(200, r#"{"access_token":"a","token_type":"DPoP"}"#),
                &[]
            )
            .is_err()
        );
    }

    #[test]
    fn failures_are_judged_by_the_body_and_classified() {
        use crate::oauth::TokenFailure::*;
        let kind = |status: u16, body: &str| match parse_token_response(
            &url(),
            &response(status, body),
            &["rt-secret"],
        ) {
            Ok(_) => None,
            Err(e) => Some(e.token_failure()),
        };
        // Slack: errors with HTTP 200.
        assert_eq!(
            kind(200, r#"{"ok":false,"error":"invalid_grant"}"#),
            Some(GrantGone)
        );
        assert_eq!(
            kind(200, r#"{"ok":false,"error":"invalid_client"}"#),
            Some(ClientUnknown)
        );
        // Supabase: 201 is success, and its refusals are not RFC 6749.
        assert_eq!(kind(201, r#"{"access_token":"a"}"#), None);
        assert_eq!(
            kind(422, r#"{"message":"Unrecognized client_id"}"#),
            Some(ClientUnknown)
        );
        assert_eq!(
            kind(
                400,
                r#"{"error_code":"refresh_token_not_found","msg":"Invalid Refresh Token: rt-secret"}"#
            ),
            Some(GrantGone)
        );
        // Outages only: network, 5xx, 429.
        assert_eq!(kind(500, "<html>"), Some(Outage));
        assert_eq!(kind(429, "slow down"), Some(Outage));
        assert_eq!(kind(503, r#"{"error":"server_error"}"#), Some(Outage));
        assert_eq!(kind(400, "<html>bad</html>"), Some(Other));
        assert_eq!(kind(403, r#"{"message":"forbidden"}"#), Some(Other));
        assert_eq!(kind(400, r#"{"error":"invalid_request"}"#), Some(Other));
        let shown = parse_token_response(
            &url(),
            &response(400, r#"{"error_code":"refresh_token_not_found","msg":"Invalid Refresh Token: rt-secret"}"#),
            &["rt-secret"],
        )
        .unwrap_err()
        .to_string();
        assert!(
            shown.contains("refresh_token_not_found") && !shown.contains("rt-secret"),
            "{shown}"
        );
    }

    #[test]
    fn debug_of_a_token_set_hides_the_tokens() {
        let t = parse_token_response(
            &url(),
            &response(
                200,
                r#"{"access_token":"at-123456","refresh_token":"rt-123456"}"#,
            ),
            &[],
        )
        .unwrap();
        let shown = format!("{t:?}");
        assert!(
            !shown.contains("at-123456") && !shown.contains("rt-123456"),
            "{shown}"
        );
    }
}
