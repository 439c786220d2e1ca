//! The one place that refreshes a grant.
//!
//! `Broker::refresh` takes the server's lock, so concurrent callers never
//! send the same refresh token twice. The token request runs in its own
//! task: a caller that goes away mid-refresh cannot abort it and lose a
//! rotated refresh token. The new grant is stored (flushed) before it is
//! published or returned.
//!
//! Rules:
//! - a refresh token only goes back to the issuer that issued it; if
//!   discovery now names another issuer, a new login is required;
//! - an answer without `refresh_token` keeps the old one, without `scope`
//!   keeps the old scopes;
//! - `invalid_grant` (or no refresh token at all) means "login required";
//! - `invalid_client` for a dynamically registered client drops that
//!   registration too, so the next login registers afresh;
//! - network trouble, 5xx and 429 mean "unavailable, retry later", and
//!   change nothing that is stored.

use std::sync::Arc;

use tracing::{info, warn};

use crate::broker::{Broker, BrokerError, EventKind};
use crate::config::ServerName;
use crate::state::{Grant, RegistrationKind};

/// Seconds a client should wait after "unavailable".
pub const RETRY_AFTER_SECS: u64 = 5;

/// When a refresh may be skipped because the grant is already fresh.
#[derive(Clone, Copy, Debug)]
pub enum Freshness {
    /// Always refresh (`mcpauthctl refresh`).
    Force,
    /// Skip if the grant is no longer this generation: someone else
    /// refreshed while we waited for the lock (401 reports).
    UnlessNewerThan(u64),
    /// Skip if the grant is valid for at least this many ms (GetToken).
    UnlessValidForMs(i64),
}

impl Broker {
    /// Refreshes `name`'s grant now.
    pub async fn refresh(self: &Arc<Self>, name: &str) -> Result<Grant, BrokerError> {
        let name = self.configured(name)?;
        self.refresh_grant(name, Freshness::Force).await
    }

    /// The single entry point of every refresh. Detached: the task runs to
    /// completion whatever happens to the caller.
    pub(crate) async fn refresh_grant(
        self: &Arc<Self>,
        name: ServerName,
        freshness: Freshness,
    ) -> Result<Grant, BrokerError> {
        let broker = self.clone();
        tokio::spawn(async move { broker.refresh_locked(name, freshness).await })
            .await
            .map_err(|e| BrokerError::Internal(format!("refresh task failed: {e}")))?
    }

    async fn refresh_locked(
        self: Arc<Self>,
        name: ServerName,
        freshness: Freshness,
    ) -> Result<Grant, BrokerError> {
        let lock = self.server_lock(&name);
        let _guard = lock.lock().await;
        let login_required = |reason: &str| BrokerError::LoginRequired {
            server: name.to_string(),
            reason: reason.to_string(),
        };
        let grant = self
            .store()
            .grant(&name)?
            .ok_or_else(|| login_required("no tokens are held"))?;
        let now = self.now_ms();
        match freshness {
            Freshness::Force => {}
            Freshness::UnlessNewerThan(generation) if grant.generation != generation => {
                return Ok(grant);
            }
            Freshness::UnlessValidForMs(ms)
                if grant.expires_at_ms.is_none_or(|at| at - now >= ms) =>
            {
                return Ok(grant);
            }
            _ => {}
        }
        let Some(refresh_token) = grant.refresh_token.clone() else {
            return Err(login_required("the server issued no refresh token"));
        };
        let record = self.store().server(&name)?;
        let discovery = record
            .as_ref()
            .and_then(|r| r.discovery.clone())
            .ok_or_else(|| login_required("the authorization server is not known"))?;
        if discovery.issuer != grant.issuer {
            return Err(login_required("the server's authorization server changed"));
        }
        // A grant imported from a token file may belong to another tool's
        // (public) client: refresh it as that client.
        let registration = match self
            .store()
            .registration(&name, &grant.issuer)?
            .filter(|r| r.client_id == grant.client_id)
        {
            Some(r) => r,
            None if !grant.client_id.is_empty() => crate::state::Registration {
                issuer: grant.issuer.clone(),
                client_id: grant.client_id.clone(),
                client_secret: None,
                auth_method: crate::state::ClientAuthMethod::None,
                redirect_uri: String::new(),
                kind: RegistrationKind::Configured,
                registered_at_ms: now,
            },
            None => return Err(login_required("the client registration is gone")),
        };

        match self
            .http
            .refresh(&discovery, &registration, &refresh_token)
            .await
        {
            Ok(tokens) => {
                let now = self.now_ms();
                let new = Grant {
                    issuer: grant.issuer.clone(),
                    client_id: grant.client_id.clone(),
                    resource: grant.resource.clone(),
                    access_token: tokens.access_token,
                    token_type: tokens.token_type,
                    refresh_token: tokens.refresh_token.or(grant.refresh_token),
                    expires_at_ms: tokens
                        .expires_in
                        .map(|s| now + (s as i64).saturating_mul(1000)),
                    scopes: tokens.scope.unwrap_or(grant.scopes),
                    obtained_at_ms: now,
                    generation: grant.generation + 1,
                };
                // Stored before anyone can see it.
                self.store().put_grant(&name, &new).await?;
                self.update_record(&name, |r| {
                    r.last_refresh_ms = Some(now);
                    r.last_error = None;
                })
                .await?;
                info!(server = %name, generation = new.generation, "token refreshed");
                self.publish(
                    Some(name.clone()),
                    EventKind::TokenIssued {
                        generation: new.generation,
                        expires_at_ms: new.expires_at_ms,
                    },
                );
                Ok(new)
            }
            Err(e) if e.is_transient() => {
                let message = format!("refresh failed, will retry: {e}");
                warn!(server = %name, error = %e, "refresh failed (transient)");
                self.record_error(&name, &message).await;
                Err(BrokerError::Unavailable {
                    reason: e.to_string(),
                    retry_after_secs: RETRY_AFTER_SECS,
                })
            }
            Err(e) => {
                let code = e.token_error().unwrap_or("");
                if code == "invalid_client" && registration.kind == RegistrationKind::Dynamic {
                    self.store()
                        .delete_registration(&name, &registration.issuer)
                        .await?;
                    warn!(server = %name, "the AS no longer knows our client; registration dropped");
                }
                if matches!(
                    code,
                    "invalid_grant" | "invalid_client" | "unauthorized_client"
                ) {
                    self.store().delete_grant(&name).await?;
                    let reason = format!("the authorization server rejected the refresh ({code})");
                    self.record_error(&name, &format!("{reason}; run `mcpauthctl login {name}`"))
                        .await;
                    self.publish(
                        Some(name.clone()),
                        EventKind::LoginRequired {
                            reason: reason.clone(),
                        },
                    );
                    return Err(login_required(&reason));
                }
                self.record_error(&name, &e.to_string()).await;
                Err(BrokerError::OAuth(e))
            }
        }
    }

    /// Revokes the tokens at the AS when it offers RFC 7009, then deletes
    /// them; with `forget_client`, the client registrations too. Returns
    /// whether anything was revoked.
    pub async fn logout(
        self: &Arc<Self>,
        name: &str,
        forget_client: bool,
    ) -> Result<bool, BrokerError> {
        let server = self.configured(name)?;
        self.cancel_login(name).await?;
        let lock = self.server_lock(&server);
        let _guard = lock.lock().await;
        let mut revoked = false;
        if let Some(grant) = self.store().grant(&server)? {
            let discovery = self.store().server(&server)?.and_then(|r| r.discovery);
            let registration = self.store().registration(&server, &grant.issuer)?;
            if let (Some(d), Some(reg)) =
                (discovery.filter(|d| d.issuer == grant.issuer), registration)
                && d.metadata.revocation_endpoint.is_some()
            {
                let mut ok = true;
                if let Some(rt) = &grant.refresh_token {
                    ok &= self.http.revoke(&d, &reg, rt, "refresh_token").await.map_err(|e| {
                        warn!(server = %server, error = %e, "revoking the refresh token failed");
                    }).is_ok();
                }
                ok &= self
                    .http
                    .revoke(&d, &reg, &grant.access_token, "access_token")
                    .await
                    .map_err(|e| {
                        warn!(server = %server, error = %e, "revoking the access token failed");
                    })
                    .is_ok();
                revoked = ok;
            }
            self.store().delete_grant(&server).await?;
        }
        if forget_client {
            self.store().delete_registrations(&server).await?;
        }
        self.update_record(&server, |r| {
            r.last_error = None;
            r.step_up = None;
        })
        .await?;
        info!(server = %server, revoked, forget_client, "logged out");
        self.publish(
            Some(server),
            EventKind::LoginRequired {
                reason: "logged out".into(),
            },
        );
        Ok(revoked)
    }
}
