//! The grants beyond the authorization code, at the token endpoint:
//!
//! - client credentials (RFC 6749 §4.4): the client's own credentials;
//! - JWT bearer (RFC 7523 §2.1): an assertion from elsewhere (a workload
//!   identity token), checked before it is sent (see `jwt`);
//! - device authorization (RFC 8628): the device authorization request
//!   and one poll of the token endpoint. No PKCE (RFC 8628 has none);
//! - token exchange (RFC 8693) at an identity provider: an ID token for
//!   an ID-JAG (enterprise-managed authorization).
//!
//! Every request carries `resource` (RFC 8707) unless `send_resource =
//! false`, as the code exchange and
//! the refresh do. Server text in errors is sanitised and stripped of
//! everything sent.

use serde::Deserialize;

use super::http::{HttpClient, checked, display_url, parse_json};
use super::token::{ClientAuth, TokenSet};
use super::{OAuthError, sanitize};
use crate::secret::Secret;
use crate::state::Discovery;

pub const GRANT_CLIENT_CREDENTIALS: &str = "client_credentials";
pub const GRANT_JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
pub const GRANT_DEVICE_CODE: &str = "urn:ietf:params:oauth:grant-type:device_code";
pub const GRANT_TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const TOKEN_TYPE_ID_TOKEN: &str = "urn:ietf:params:oauth:token-type:id_token";
pub const TOKEN_TYPE_ID_JAG: &str = "urn:ietf:params:oauth:token-type:id-jag";
/// What an AS lists in `authorization_grant_profiles_supported` when it
/// takes ID-JAGs (enterprise-managed authorization, section 6).
pub const PROFILE_ID_JAG: &str = "urn:ietf:params:oauth:grant-profile:id-jag";
/// RFC 8628 §3.2: the polling interval when the AS names none.
pub const DEFAULT_DEVICE_INTERVAL_SECS: u64 = 5;
/// RFC 8628 §3.5: what `slow_down` adds to the interval.
pub const SLOW_DOWN_SECS: u64 = 5;
/// The longest a device code is polled for, whatever the AS says.
pub const MAX_DEVICE_LIFETIME_SECS: u64 = 30 * 60;

/// What the device authorization endpoint answered (RFC 8628 §3.2).
#[derive(Debug)]
pub struct DeviceAuthorization {
    pub device_code: Secret,
    pub user_code: String,
    pub verification_uri: String,
    pub verification_uri_complete: Option<String>,
    pub expires_in_secs: u64,
    pub interval_secs: u64,
}

/// One poll of the token endpoint with a device code.
#[derive(Debug)]
pub enum DevicePoll {
    Tokens(TokenSet),
    /// `authorization_pending`: ask again after the interval.
    Pending,
    /// `slow_down`: ask again after the interval plus 5 s, from now on.
    SlowDown,
    /// `access_denied`.
    Denied,
    /// `expired_token`: the person did not approve in time.
    Expired,
}

#[derive(Deserialize)]
struct RawExchange {
    access_token: String,
    #[serde(default)]
    issued_token_type: Option<String>,
}

#[derive(Deserialize)]
struct RawDeviceAuthorization {
    device_code: String,
    user_code: String,
    #[serde(alias = "verification_url")]
    verification_uri: String,
    #[serde(default)]
    verification_uri_complete: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
    #[serde(default)]
    interval: Option<u64>,
}

fn scope_param(scopes: &[String]) -> Option<String> {
    (!scopes.is_empty()).then(|| scopes.join(" "))
}

impl HttpClient {
    /// A client credentials grant.
    pub async fn client_credentials(
        &self,
        discovery: &Discovery,
        auth: &ClientAuth<'_>,
        scopes: &[String],
    ) -> Result<TokenSet, OAuthError> {
        let scope = scope_param(scopes);
        let mut form = vec![("grant_type", GRANT_CLIENT_CREDENTIALS)];
        if let Some(resource) = discovery.resource_to_send() {
            form.push(("resource", resource));
        }
        if let Some(scope) = &scope {
            form.push(("scope", scope));
        }
        self.token_request_as(discovery, auth, form, &[]).await
    }

    /// A JWT bearer grant with `assertion` (checked by the caller).
    pub async fn jwt_bearer(
        &self,
        discovery: &Discovery,
        auth: &ClientAuth<'_>,
        assertion: &Secret,
        scopes: &[String],
    ) -> Result<TokenSet, OAuthError> {
        let scope = scope_param(scopes);
        let mut form = vec![
            ("grant_type", GRANT_JWT_BEARER),
            ("assertion", assertion.expose()),
        ];
        if let Some(resource) = discovery.resource_to_send() {
            form.push(("resource", resource));
        }
        if let Some(scope) = &scope {
            form.push(("scope", scope));
        }
        self.token_request_as(discovery, auth, form, &[assertion.expose()])
            .await
    }

    /// Exchanges an ID token for an ID-JAG at the identity provider
    /// `idp` (RFC 8693; enterprise-managed authorization, section 4):
    /// `audience` is the MCP server's AS issuer, `resource` the server.
    pub async fn exchange_for_id_jag(
        &self,
        idp: &Discovery,
        auth: &ClientAuth<'_>,
        id_token: &Secret,
        audience: &str,
        resource: &str,
        scopes: &[String],
    ) -> Result<Secret, OAuthError> {
        let url = checked("token endpoint", &idp.metadata.token_endpoint)?;
        let scope = scope_param(scopes);
        let mut form = vec![
            ("grant_type", GRANT_TOKEN_EXCHANGE),
            ("requested_token_type", TOKEN_TYPE_ID_JAG),
            ("audience", audience),
            ("resource", resource),
            ("subject_token", id_token.expose()),
            ("subject_token_type", TOKEN_TYPE_ID_TOKEN),
        ];
        if let Some(scope) = &scope {
            form.push(("scope", scope));
        }
        let basic = auth.apply(&mut form);
        let response = self.post_form(&url, &form, basic).await?;
        let mut secrets = vec![id_token.expose()];
        secrets.extend(auth.secret());
        if !(200..300).contains(&response.status) {
            return Err(
                super::token::parse_token_response(&url, &response, &secrets)
                    .err()
                    .unwrap_or(OAuthError::Status {
                        url: display_url(&url),
                        status: response.status,
                        retry_after_secs: response.retry_after_secs,
                    }),
            );
        }
        let raw: RawExchange = parse_json(&url, &response)?;
        if raw.access_token.is_empty()
            || raw.issued_token_type.as_deref() != Some(TOKEN_TYPE_ID_JAG)
        {
            return Err(OAuthError::BadDocument {
                url: display_url(&url),
                reason: "the answer is not an ID-JAG (issued_token_type)".into(),
            });
        }
        Ok(Secret::new(raw.access_token))
    }

    /// Starts a device login (RFC 8628 §3.1).
    pub async fn device_authorization(
        &self,
        discovery: &Discovery,
        auth: &ClientAuth<'_>,
        scopes: &[String],
    ) -> Result<DeviceAuthorization, OAuthError> {
        let endpoint = discovery
            .metadata
            .device_authorization_endpoint
            .as_deref()
            .ok_or_else(|| OAuthError::DeviceUnsupported {
                issuer: discovery.issuer.clone(),
            })?;
        let url = checked("device authorization endpoint", endpoint)?;
        let scope = scope_param(scopes);
        let mut form = Vec::new();
        if let Some(resource) = discovery.resource_to_send() {
            form.push(("resource", resource));
        }
        if let Some(scope) = &scope {
            form.push(("scope", scope));
        }
        let basic = auth.apply(&mut form);
        let response = self.post_form(&url, &form, basic).await?;
        let secrets: Vec<&str> = auth.secret().into_iter().collect();
        if !(200..300).contains(&response.status) {
            // An OAuth error answer, or an HTTP failure.
            return Err(
                super::token::parse_token_response(&url, &response, &secrets)
                    .err()
                    .unwrap_or(OAuthError::Status {
                        url: display_url(&url),
                        status: response.status,
                        retry_after_secs: response.retry_after_secs,
                    }),
            );
        }
        let raw: RawDeviceAuthorization = parse_json(&url, &response)?;
        let bad = |reason: &str| OAuthError::BadDocument {
            url: display_url(&url),
            reason: reason.into(),
        };
        if raw.device_code.is_empty() {
            return Err(bad("empty device_code"));
        }
        let user_code = sanitize(&raw.user_code, &[]);
        if user_code.is_empty() || user_code.chars().count() > 64 {
            return Err(bad("a user_code that cannot be shown"));
        }
        // Shown to a person and maybe opened: http(s) only, by policy.
        let verification_uri = checked("verification URI", &raw.verification_uri)?.to_string();
        let verification_uri_complete = match raw.verification_uri_complete {
            Some(u) => Some(checked("verification URI", &u)?.to_string()),
            None => None,
        };
        Ok(DeviceAuthorization {
            device_code: Secret::new(raw.device_code),
            user_code,
            verification_uri,
            verification_uri_complete,
            expires_in_secs: raw
                .expires_in
                .unwrap_or(MAX_DEVICE_LIFETIME_SECS)
                .clamp(1, MAX_DEVICE_LIFETIME_SECS),
            interval_secs: raw
                .interval
                .unwrap_or(DEFAULT_DEVICE_INTERVAL_SECS)
                .clamp(1, 60),
        })
    }

    /// Polls the token endpoint once with a device code (RFC 8628 §3.4).
    pub async fn poll_device(
        &self,
        discovery: &Discovery,
        auth: &ClientAuth<'_>,
        device_code: &Secret,
    ) -> Result<DevicePoll, OAuthError> {
        let mut form = vec![
            ("grant_type", GRANT_DEVICE_CODE),
            ("device_code", device_code.expose()),
        ];
        if let Some(resource) = discovery.resource_to_send() {
            form.push(("resource", resource));
        }
        match self
            .token_request_as(discovery, auth, form, &[device_code.expose()])
            .await
        {
            Ok(tokens) => Ok(DevicePoll::Tokens(tokens)),
            Err(e) => match e.token_error() {
                Some("authorization_pending") => Ok(DevicePoll::Pending),
                Some("slow_down") => Ok(DevicePoll::SlowDown),
                Some("access_denied") => Ok(DevicePoll::Denied),
                Some("expired_token") => Ok(DevicePoll::Expired),
                _ => Err(e),
            },
        }
    }
}
