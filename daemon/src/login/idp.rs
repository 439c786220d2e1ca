//! The login at an identity provider (enterprise-managed authorization,
//! `grant = "enterprise"`), as the `Logins` part runs it: an OpenID
//! Connect authorization-code login with PKCE through the usual login
//! machinery (stored flow, loopback callback or pasted redirect). Its ID
//! token is kept per identity provider (`enterprise.rs` uses it); the
//! server's own tokens then come through the refresh path.

use std::sync::Arc;

use tracing::{info, warn};

use super::{ActiveLogin, FailureKind, LoginHandle, LoginOutcome, Logins, redirect_uri};
use crate::backoff::Freshness;
use crate::config::ServerConfig;
use crate::context::EventKind;
use crate::enterprise::{OIDC_SCOPE, check_id_token, expiry_ms, idp_discovery, idp_registration};
use crate::error::BrokerError;
use crate::locks::ServerGuard;
use crate::oauth::token::TokenSet;
use crate::state::PendingFlow;

impl Logins {
    /// Starts the login at `server`'s identity provider; called by
    /// `login_with` under the server's guard. The flow is the server's
    /// (stored, joined, completed by the callback or a paste as usual).
    pub(crate) async fn start_idp_login(
        self: &Arc<Self>,
        guard: ServerGuard,
        server: &ServerConfig,
    ) -> Result<LoginHandle, BrokerError> {
        let name = guard.name().clone();
        let (idp_name, idp) = self.enterprise.identity_provider(server);
        let now = self.ctx.now_ms();
        let record = match self.enterprise.idp_record(&idp_name, &idp).await {
            Ok(r) => r,
            Err(e) => {
                warn!(server = %name, idp = %idp_name, error = %e, "login failed: identity provider discovery");
                self.ctx.record_error(&guard, &e.to_string()).await;
                return Err(e);
            }
        };
        // The server's own AS is not the identity provider: no discovery
        // is recorded for it here.
        let (listener, port) = self.bind_callback(&guard, server, None, now).await?;
        let redirect_uri = redirect_uri(port);
        let registration = idp_registration(&idp, &record.metadata, &redirect_uri, now)?;
        self.ctx
            .store()
            .put_registration(&guard, &registration)
            .await?;
        let discovery = idp_discovery(&idp, &record);
        let (pending, rx) = self
            .open_flow(
                &guard,
                &discovery,
                &registration.client_id,
                vec![OIDC_SCOPE.to_string()],
                (listener, port),
                |_| {},
            )
            .await?;
        info!(server = %name, idp = %idp_name, port, "login at the identity provider started");
        self.ctx.publish(Some(name), EventKind::LoginStarted);
        Ok(LoginHandle {
            flow: pending,
            callback_port: port,
            device: None,
            joined: false,
            device_offered: false,
            outcome: rx,
        })
    }

    /// Ends a login at the identity provider: keeps the ID token, then
    /// gets the server's tokens through the refresh path (the guard is let
    /// go for that, and taken again to settle the login).
    pub(crate) async fn finish_idp_login(
        self: &Arc<Self>,
        guard: ServerGuard,
        active: Option<&Arc<ActiveLogin>>,
        flow: &PendingFlow,
        tokens: TokenSet,
    ) -> Result<LoginOutcome, BrokerError> {
        let name = guard.name().clone();
        let idp_name = self
            .ctx
            .config()
            .servers
            .get(&name)
            .and_then(|s| s.identity_provider.clone());
        let kept = match (idp_name, tokens.id_token) {
            (Some(_), Some(id_token))
                if let Err(why) = check_id_token(&id_token, &flow.issuer, &flow.client_id) =>
            {
                warn!(server = %name, reason = %why, "the identity provider's ID token was refused");
                Err(format!("the identity provider's ID token was refused: {why}"))
            }
            (Some(idp_name), Some(id_token)) => {
                let idp_guard = self.ctx.idp_locks.lock(&idp_name).await;
                match self.ctx.store().identity(&idp_name)? {
                    Some(mut record) if record.issuer == flow.issuer => {
                        record.id_token_expires_at_ms = expiry_ms(&id_token);
                        record.id_token = Some(id_token);
                        record.logged_in_at_ms = self.ctx.now_ms();
                        self.ctx.store().put_identity(&idp_guard, &record).await?;
                        info!(server = %name, idp = %idp_name, "logged in at the identity provider");
                        Ok(())
                    }
                    _ => Err("the identity provider changed during the login".to_string()),
                }
            }
            (_, None) => Err(
                "the identity provider sent no ID token (is the openid scope allowed for this client?)"
                    .to_string(),
            ),
            (None, _) => Err("the server is no longer an enterprise server".to_string()),
        };
        if let Err(message) = kept {
            self.end_flow(
                &guard,
                active,
                LoginOutcome::Failed {
                    kind: FailureKind::Error,
                    message: message.clone(),
                },
            )
            .await;
            return Err(BrokerError::Internal(message));
        }
        if let Err(e) = self.ctx.store().delete_flow(&guard).await {
            warn!(server = %name, error = %e, "cannot delete the finished flow");
        }
        drop(guard);
        let outcome = match self
            .refresher
            .refresh_grant(name.clone(), Freshness::Force)
            .await
        {
            // Renewed by asking again while the ID token is valid.
            Ok(grant) => LoginOutcome::Success {
                scopes: grant.scopes,
                expires_at_ms: grant.expires_at_ms,
                refresh_token: true,
            },
            Err(e) => LoginOutcome::Failed {
                kind: FailureKind::Error,
                message: e.to_string(),
            },
        };
        if let Some(active) = active {
            let guard = self.ctx.locks.lock(&name).await;
            self.finish_login(&guard, active, outcome.clone(), false)
                .await;
        }
        Ok(outcome)
    }
}
