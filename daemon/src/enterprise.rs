//! Enterprise-managed authorization (ID-JAG, SEP-990) from the broker's
//! side: the `Enterprise` part, for `grant = "enterprise"` with an
//! `[identity_providers.NAME]`.
//!
//! 1. One OpenID Connect login (authorization code with PKCE, browser or
//!    pasted redirect, through the usual login machinery) at the identity
//!    provider gives an ID token, kept per identity provider in the store
//!    (`identities`), under the identity provider's lock (taken after a
//!    server's, never before). `mcpauthctl login NAME` for any of its
//!    servers, or `login --idp IDP`, is that login; it serves every server
//!    of the identity provider. An `id_token_file` (an SSO agent's) is
//!    used instead when configured, and watched.
//! 2. Per server, and again for every renewal while the ID token is
//!    valid, `Unattended::renew` (the refresh path) exchanges the ID token
//!    at the identity provider for an ID-JAG (RFC 8693) whose audience is
//!    the server's AS and whose resource is the server, refuses an ID-JAG
//!    for any other audience before sending it, and presents it to the AS
//!    as a JWT bearer grant, authenticated as the configured client. An
//!    AS that lists its grant profiles must list the ID-JAG one; one that
//!    leaves the optional field out is not refused for it.
//! 3. Without a valid ID token the answer is "login required at the
//!    identity provider"; an ID token the identity provider refuses
//!    (`invalid_grant`) is dropped, with the same answer.
//!
//! ID tokens and ID-JAGs are `Secret`s and never logged. The login at the
//! identity provider itself is the `Logins` part's (`idp_login.rs`).
//!
//! Lock: the identity provider's (`Context::idp_locks`), held across the
//! metadata fetch's store write and the ID token's, never before a
//! server's.

use std::sync::Arc;

use tracing::warn;

use crate::config::{IdentityProvider, ServerConfig, ServerName};
use crate::context::Context;
use crate::error::BrokerError;
use crate::fsutil::{CredentialError, CredentialFile};
use crate::oauth::OAuthError;
use crate::oauth::grants::PROFILE_ID_JAG;
use crate::oauth::jwt;
use crate::oauth::token::{ClientAuth, TokenSet};
use crate::secret::Secret;
use crate::state::{
    ClientAuthMethod, Discovery, DiscoverySource, IdentityRecord, Registration, RegistrationKind,
};

/// The scope of the login at the identity provider.
pub(crate) const OIDC_SCOPE: &str = "openid";

pub(crate) fn idp_discovery(idp: &IdentityProvider, record: &IdentityRecord) -> Discovery {
    Discovery {
        // Empty: the login is about the person, not a resource.
        resource: String::new(),
        issuer: idp.issuer.clone(),
        metadata: record.metadata.clone(),
        resource_scopes: Vec::new(),
        source: DiscoverySource::ProtectedResource,
        settings: Default::default(),
        discovered_at_ms: record.logged_in_at_ms,
    }
}

/// The broker's client at the identity provider.
pub(crate) fn idp_registration(
    idp: &IdentityProvider,
    metadata: &crate::state::AuthServerMetadata,
    redirect_uri: &str,
    now_ms: i64,
) -> Result<Registration, OAuthError> {
    let client_secret = idp
        .client_secret
        .as_ref()
        .map(crate::oauth::credentials::read_client_secret)
        .transpose()?;
    let auth_method = match &client_secret {
        None => ClientAuthMethod::None,
        Some(_) => match &metadata.token_endpoint_auth_methods_supported {
            Some(m)
                if !m.iter().any(|m| m == "client_secret_basic")
                    && m.iter().any(|m| m == "client_secret_post") =>
            {
                ClientAuthMethod::ClientSecretPost
            }
            _ => ClientAuthMethod::ClientSecretBasic,
        },
    };
    Ok(Registration {
        issuer: idp.issuer.clone(),
        client_id: idp.client_id.clone(),
        client_secret,
        auth_method,
        redirect_uri: redirect_uri.to_string(),
        kind: RegistrationKind::Configured,
        registered_at_ms: now_ms,
        scopes: None,
    })
}

/// The `exp` of a JWT we hold (Unix ms), read without verifying: it came
/// straight from the identity provider (or an SSO agent's file).
pub(crate) fn expiry_ms(token: &Secret) -> Option<i64> {
    jwt::decode_unverified(token)
        .ok()?
        .exp
        .map(|e| e.saturating_mul(1000))
}

/// The checks OpenID Connect Core (3.1.3.7) asks of an ID token that
/// came straight from the token endpoint: issued by the identity provider
/// logged in at, for the client that logged in, and not expired. (Its
/// signature is the token endpoint's TLS; the MCP servers' authorization
/// servers verify it again when it is exchanged.)
pub(crate) fn check_id_token(
    id_token: &Secret,
    issuer: &str,
    client_id: &str,
) -> Result<(), String> {
    let claims = jwt::decode_unverified(id_token).map_err(|_| "it is not a JWT".to_string())?;
    if claims.iss.as_deref() != Some(issuer) {
        return Err(format!("it was not issued by {issuer}"));
    }
    if !claims.aud.iter().any(|a| a == client_id) {
        return Err(format!("it is not meant for the client {client_id}"));
    }
    if claims.exp.is_none() {
        return Err("it has no expiry".into());
    }
    Ok(())
}

pub struct Enterprise {
    ctx: Arc<Context>,
}

impl Enterprise {
    pub fn new(ctx: Arc<Context>) -> Self {
        Self { ctx }
    }

    /// The identity provider an enterprise server uses, as configured now.
    pub(crate) fn identity_provider(
        &self,
        server: &ServerConfig,
    ) -> (ServerName, IdentityProvider) {
        let idp_name = server
            .identity_provider
            .clone()
            .expect("validated: enterprise names an identity provider");
        let idp = self
            .ctx
            .config()
            .identity_providers
            .get(&idp_name)
            .cloned()
            .expect("validated: the identity provider is configured");
        (idp_name, idp)
    }

    fn login_required_at(&self, server: &ServerName, idp: &ServerName, why: &str) -> BrokerError {
        BrokerError::LoginRequired {
            server: server.to_string(),
            reason: format!("login required at the identity provider {idp}: {why}"),
            idp: Some(idp.to_string()),
        }
    }

    /// The identity provider's metadata, as stored or fetched now (then
    /// stored).
    pub(crate) async fn idp_record(
        &self,
        name: &ServerName,
        idp: &IdentityProvider,
    ) -> Result<IdentityRecord, BrokerError> {
        if let Some(record) = self
            .ctx
            .store()
            .identity(name)?
            .filter(|r| r.issuer == idp.issuer)
        {
            return Ok(record);
        }
        let metadata = self
            .ctx
            .http
            .identity_provider_metadata(&idp.issuer)
            .await?;
        let guard = self.ctx.idp_locks.lock(name).await;
        // A login that completed meanwhile wrote a record with its ID
        // token: that one stays.
        if let Some(record) = self
            .ctx
            .store()
            .identity(name)?
            .filter(|r| r.issuer == idp.issuer)
        {
            return Ok(record);
        }
        let record = IdentityRecord {
            issuer: idp.issuer.clone(),
            metadata,
            id_token: None,
            id_token_expires_at_ms: None,
            logged_in_at_ms: 0,
        };
        self.ctx.store().put_identity(&guard, &record).await?;
        Ok(record)
    }

    /// Whether a valid ID token is at hand for the identity provider.
    pub(crate) fn id_token_valid(&self, idp_name: &ServerName) -> bool {
        let config = self.ctx.config();
        let Some(idp) = config.identity_providers.get(idp_name) else {
            return false;
        };
        let now = self.ctx.now_ms();
        match &idp.id_token_file {
            Some(path) => crate::fsutil::read_credential(path, CredentialFile::IdToken)
                .ok()
                .and_then(|t| expiry_ms(&t))
                .is_some_and(|at| at > now),
            None => self
                .ctx
                .store()
                .identity(idp_name)
                .ok()
                .flatten()
                .is_some_and(|r| {
                    r.issuer == idp.issuer
                        && r.id_token.is_some()
                        && r.id_token_expires_at_ms.is_none_or(|at| at > now)
                }),
        }
    }

    /// Steps 2 and 3 for `server`: an ID-JAG from the identity provider,
    /// then the server's token. Called by `request_unattended`, on the
    /// refresh path, under the server's guard.
    pub(crate) async fn enterprise_tokens(
        &self,
        name: &ServerName,
        server: &ServerConfig,
        discovery: &Discovery,
        credentials: &crate::oauth::credentials::Credentials,
    ) -> Result<TokenSet, BrokerError> {
        // Refused only when the AS lists its profiles and leaves the
        // ID-JAG one out (the rule for grant_types_supported): a field
        // that is optional says nothing when absent.
        let listed = discovery
            .metadata
            .authorization_grant_profiles_supported
            .as_deref();
        if listed.is_some_and(|profiles| !profiles.iter().any(|p| p == PROFILE_ID_JAG)) {
            return Err(OAuthError::IdJagUnsupported {
                issuer: discovery.issuer.clone(),
            }
            .into());
        }
        let (idp_name, idp) = self.identity_provider(server);
        let record = self.idp_record(&idp_name, &idp).await?;
        let now = self.ctx.now_ms();
        let id_token =
            match &idp.id_token_file {
                Some(path) => crate::fsutil::read_credential(path, CredentialFile::IdToken)
                    .map_err(|e| {
                        let why = match e {
                            CredentialError::Refused(line) => line,
                            CredentialError::Io(e) => {
                                format!("cannot read the ID token file {}: {e}", path.display())
                            }
                        };
                        self.login_required_at(name, &idp_name, &why)
                    })?,
                None => record.id_token.clone().ok_or_else(|| {
                    self.login_required_at(name, &idp_name, "no ID token is held")
                })?,
            };
        if expiry_ms(&id_token)
            .or(record.id_token_expires_at_ms)
            .is_some_and(|at| at <= now)
        {
            return Err(self.login_required_at(name, &idp_name, "the ID token has expired"));
        }
        let idp_discovery = idp_discovery(&idp, &record);
        let idp_client = idp_registration(&idp, &record.metadata, "", now)?;
        let exchanged = self
            .ctx
            .http
            .exchange_for_id_jag(
                &idp_discovery,
                &ClientAuth::of(&idp_client),
                &id_token,
                &discovery.issuer,
                &discovery.resource,
                &server.scopes,
            )
            .await;
        let id_jag = match exchanged {
            Ok(t) => t,
            Err(e) if e.token_error() == Some("invalid_grant") => {
                if idp.id_token_file.is_none() {
                    let guard = self.ctx.idp_locks.lock(&idp_name).await;
                    if let Some(mut r) = self.ctx.store().identity(&idp_name)? {
                        r.id_token = None;
                        r.id_token_expires_at_ms = None;
                        self.ctx.store().put_identity(&guard, &r).await?;
                    }
                }
                warn!(server = %name, idp = %idp_name, error = %e, "the identity provider refused the ID token");
                return Err(self.login_required_at(
                    name,
                    &idp_name,
                    "it refused the ID token (invalid_grant)",
                ));
            }
            Err(e) => return Err(e.into()),
        };
        // An ID-JAG for another audience would hand this server's AS a
        // grant meant elsewhere (or show another AS ours): never sent.
        let claims =
            jwt::decode_unverified(&id_jag).map_err(|reason| OAuthError::IdJagRefused {
                idp: idp_name.to_string(),
                reason,
            })?;
        jwt::check_forwarded(&claims, &[discovery.issuer.as_str()], now / 1000).map_err(
            |reason| OAuthError::IdJagRefused {
                idp: idp_name.to_string(),
                reason,
            },
        )?;
        let auth = credentials.auth(discovery, now);
        Ok(self
            .ctx
            .http
            .jwt_bearer(discovery, &auth, &id_jag, &server.scopes)
            .await?)
    }

    /// The discovery of `name`'s identity provider when `issuer` is its
    /// issuer (a login at the identity provider), else `None`.
    pub(crate) fn idp_discovery_for(
        &self,
        name: &ServerName,
        issuer: &str,
    ) -> Result<Option<Discovery>, BrokerError> {
        let config = self.ctx.config();
        let Some(idp_name) = config
            .servers
            .get(name)
            .and_then(|s| s.identity_provider.as_ref())
        else {
            return Ok(None);
        };
        let Some(idp) = config
            .identity_providers
            .get(idp_name)
            .filter(|i| i.issuer == issuer)
        else {
            return Ok(None);
        };
        Ok(self
            .ctx
            .store()
            .identity(idp_name)?
            .filter(|r| r.issuer == idp.issuer)
            .map(|r| idp_discovery(idp, &r)))
    }
}
