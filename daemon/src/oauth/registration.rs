//! Client registration, in the spec's priority order:
//! 1. `client_id` (and secret) configured for the server;
//! 2. a Client ID Metadata Document, when the AS advertises
//!    `client_id_metadata_document_supported` and `client_metadata_url` is
//!    configured (the URL is the client id);
//! 3. Dynamic Client Registration (RFC 7591) at `registration_endpoint`;
//! 4. otherwise an error saying what to configure.
//!
//! A registration belongs to the issuer that made it; callers store it per
//! issuer and never use it with another.
//!
//! A dynamic registration carries `scope`: the scopes the login will ask
//! for. Authorization servers built on the MCP Python SDK's auth routes
//! (FastMCP among them), Fastmail and Clerk refuse a later authorization
//! for any scope the client was not registered with.

use serde::Deserialize;

use super::http::{HttpClient, checked, parse_json};
use super::{OAuthError, sanitize};
use crate::config::{ClientSecret, ServerConfig};
use crate::secret::Secret;
use crate::state::{ClientAuthMethod, Discovery, Registration, RegistrationKind};

#[derive(Deserialize)]
struct RegistrationResponse {
    client_id: String,
    #[serde(default)]
    client_secret: Option<String>,
    #[serde(default)]
    token_endpoint_auth_method: Option<String>,
    #[serde(default)]
    scope: Option<String>,
}

#[derive(Deserialize)]
struct ErrorResponse {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

fn read_secret(secret: &ClientSecret) -> Result<Secret, OAuthError> {
    super::credentials::read_client_secret(secret)
}

/// The auth method for a configured confidential client: Basic unless the
/// AS says it only takes the secret in the body (RFC 8414 default: Basic).
fn confidential_method(discovery: &Discovery) -> ClientAuthMethod {
    match &discovery.metadata.token_endpoint_auth_methods_supported {
        Some(methods)
            if !methods.iter().any(|m| m == "client_secret_basic")
                && methods.iter().any(|m| m == "client_secret_post") =>
        {
            ClientAuthMethod::ClientSecretPost
        }
        _ => ClientAuthMethod::ClientSecretBasic,
    }
}

/// A registration that needs no request: configured or CIMD. `None` when
/// the client must register dynamically.
pub fn static_registration(
    config: &ServerConfig,
    discovery: &Discovery,
    redirect_uri: &str,
    now_ms: i64,
) -> Result<Option<Registration>, OAuthError> {
    if let Some(client_id) = &config.client_id {
        let client_secret = config.client_secret.as_ref().map(read_secret).transpose()?;
        let auth_method = if client_secret.is_some() {
            confidential_method(discovery)
        } else {
            ClientAuthMethod::None
        };
        return Ok(Some(Registration {
            issuer: discovery.issuer.clone(),
            client_id: client_id.clone(),
            client_secret,
            auth_method,
            redirect_uri: redirect_uri.to_string(),
            kind: RegistrationKind::Configured,
            registered_at_ms: now_ms,
            scopes: None,
        }));
    }
    if discovery.metadata.client_id_metadata_document_supported
        && let Some(url) = &config.client_metadata_url
    {
        return Ok(Some(Registration {
            issuer: discovery.issuer.clone(),
            client_id: url.to_string(),
            client_secret: None,
            auth_method: ClientAuthMethod::None,
            redirect_uri: redirect_uri.to_string(),
            kind: RegistrationKind::MetadataDocument,
            registered_at_ms: now_ms,
            scopes: None,
        }));
    }
    Ok(None)
}

impl HttpClient {
    /// Dynamic Client Registration (RFC 7591) as a native public client:
    /// for the browser flow with `redirect_uri`, or, when it is empty, for
    /// the device flow (RFC 8628 §3.1, no redirect URI); registered for
    /// `scopes` (omitted when empty).
    pub async fn register(
        &self,
        discovery: &Discovery,
        redirect_uri: &str,
        scopes: &[String],
        now_ms: i64,
    ) -> Result<Registration, OAuthError> {
        let Some(endpoint) = &discovery.metadata.registration_endpoint else {
            return Err(OAuthError::RegistrationUnavailable {
                issuer: discovery.issuer.clone(),
            });
        };
        let endpoint = checked("registration endpoint", endpoint)?;
        let mut body = if redirect_uri.is_empty() {
            serde_json::json!({
                "client_name": "mcpauth",
                "grant_types": [super::grants::GRANT_DEVICE_CODE, "refresh_token"],
                "response_types": [],
                "token_endpoint_auth_method": "none",
                "application_type": "native",
            })
        } else {
            serde_json::json!({
                "client_name": "mcpauth",
                "redirect_uris": [redirect_uri],
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"],
                "token_endpoint_auth_method": "none",
                "application_type": "native",
            })
        };
        if !scopes.is_empty() {
            body["scope"] = serde_json::Value::String(scopes.join(" "));
        }
        let response = self.post_json(&endpoint, &body, &[]).await?;
        if !(200..300).contains(&response.status) {
            if let Ok(err) = serde_json::from_slice::<ErrorResponse>(&response.body) {
                return Err(OAuthError::RegistrationRejected {
                    issuer: discovery.issuer.clone(),
                    error: sanitize(&err.error, &[]),
                    description: err.error_description.map(|d| sanitize(&d, &[])),
                });
            }
            return Err(OAuthError::Status {
                url: super::http::display_url(&endpoint),
                status: response.status,
                retry_after_secs: response.retry_after_secs,
            });
        }
        let reg: RegistrationResponse = parse_json(&endpoint, &response)?;
        let client_secret = reg.client_secret.filter(|s| !s.is_empty()).map(Secret::new);
        let auth_method = match reg.token_endpoint_auth_method.as_deref() {
            Some("client_secret_post") => ClientAuthMethod::ClientSecretPost,
            Some("client_secret_basic") => ClientAuthMethod::ClientSecretBasic,
            Some("none") => ClientAuthMethod::None,
            _ if client_secret.is_some() => ClientAuthMethod::ClientSecretBasic,
            _ => ClientAuthMethod::None,
        };
        Ok(Registration {
            issuer: discovery.issuer.clone(),
            client_id: reg.client_id,
            client_secret,
            auth_method,
            redirect_uri: redirect_uri.to_string(),
            kind: RegistrationKind::Dynamic,
            registered_at_ms: now_ms,
            // What the AS says it registered, else what was asked.
            scopes: Some(match reg.scope {
                Some(s) => s.split_whitespace().map(str::to_string).collect(),
                None => scopes.to_vec(),
            }),
        })
    }
}
