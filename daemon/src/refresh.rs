//! The one place that refreshes a grant: the `Refresher` part.
//!
//! `Refresher::refresh_grant` takes the server's lock, so concurrent callers never
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
//! - failures are judged by what they say (`OAuthError::token_failure`),
//!   whatever the HTTP status: an `error` member in a 200 is an error;
//! - the grant gone (`invalid_grant`, or a refusal naming the refresh
//!   token, or no refresh token at all) means "login required", once;
//! - the client unknown (`invalid_client`, or a refusal naming the
//!   client, as Supabase's `422 Unrecognized client_id`) means "login
//!   required" too, and drops a registration the broker made itself, so
//!   the next login registers afresh, once;
//! - network trouble, 5xx and 429, and answers that are not OAuth answers
//!   at all (cut off, not JSON, too large, redirected) mean "unavailable,
//!   retry later", and change nothing that is stored; any other 4xx is a
//!   refusal, shown, with the same backoff so nothing loops on it;
//! - after such a failure the server is in backoff: 5 s, doubling per
//!   consecutive failure up to 5 min, or longer when the AS's
//!   `Retry-After` asks (also capped at 5 min). Until then every caller
//!   but a person's `mcpauthctl refresh` gets "unavailable, retry after N
//!   s" without a request, so a thousand clients of a failing AS do not
//!   become a thousand requests.

use std::sync::Arc;

use tracing::{info, warn};

use crate::backoff::{Backoffs, Freshness};
use crate::config::ServerName;
use crate::context::{Context, EventKind};
use crate::error::BrokerError;
use crate::install::{GrantSource, Installer, NewGrant};
use crate::locks::ServerGuard;
use crate::oauth::token::Obtained;
use crate::oauth::token::Revocation;
use crate::oauth::{OAuthError, TokenFailure};
use crate::scheduler::{GrantTiming, RefreshResult, Target};
use crate::state::{Grant, RefreshScope, Registration, RegistrationKind};
use crate::unattended::Unattended;

/// The refresher holds no lock of its own but the server's, which it
/// takes for the whole refresh (token request included), and the
/// backoffs' (`backoff.rs`).
pub struct Refresher {
    ctx: Arc<Context>,
    installer: Arc<Installer>,
    backoffs: Arc<Backoffs>,
    unattended: Arc<Unattended>,
}

impl Refresher {
    pub fn new(
        ctx: Arc<Context>,
        installer: Arc<Installer>,
        backoffs: Arc<Backoffs>,
        unattended: Arc<Unattended>,
    ) -> Self {
        Self {
            ctx,
            installer,
            backoffs,
            unattended,
        }
    }

    /// Refreshes `name`'s grant now.
    pub async fn refresh(self: &Arc<Self>, name: &str) -> Result<Grant, BrokerError> {
        let name = self.ctx.configured(name)?;
        self.refresh_grant(name, Freshness::Force).await
    }

    /// The single entry point of every refresh. Detached: the task runs to
    /// completion whatever happens to the caller.
    pub(crate) async fn refresh_grant(
        self: &Arc<Self>,
        name: ServerName,
        freshness: Freshness,
    ) -> Result<Grant, BrokerError> {
        let refresher = self.clone();
        tokio::spawn(async move { refresher.refresh_locked(name, freshness).await })
            .await
            .map_err(|e| BrokerError::Internal(format!("refresh task failed: {e}")))?
    }

    async fn refresh_locked(
        self: Arc<Self>,
        name: ServerName,
        freshness: Freshness,
    ) -> Result<Grant, BrokerError> {
        let guard = self.ctx.locks.lock(&name).await;
        // The config as it is under the lock: a grant without a person is
        // obtained again instead of refreshed.
        let unattended = self
            .ctx
            .config()
            .servers
            .get(&name)
            .filter(|s| s.grant.unattended())
            .cloned();
        if let Some(server) = unattended {
            return self.unattended.renew(&guard, &server, freshness).await;
        }
        let login_required = |reason: &str| BrokerError::login_required(&name, reason);
        let grant = self
            .ctx
            .store()
            .grant(&name)?
            .ok_or_else(|| login_required(&self.ctx.why_no_tokens(&name)))?;
        let now = self.ctx.now_ms();
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
        if !matches!(freshness, Freshness::Force)
            && let Some(backoff) = self.backoffs.get(&name, grant.generation)
            && now < backoff.retry_at_ms
        {
            return Err(BrokerError::Unavailable {
                reason: backoff.reason.clone(),
                retry_after_secs: backoff.retry_after_secs(now),
            });
        }
        let record = self.ctx.store().server(&name)?;
        let discovery = record
            .as_ref()
            .and_then(|r| r.discovery.clone())
            .map(|d| self.ctx.settings_now(&name, d))
            .ok_or_else(|| login_required("the authorization server is not known"))?;
        if discovery.issuer != grant.issuer {
            return Err(login_required("the server's authorization server changed"));
        }
        // A grant imported from a token file may belong to another tool's
        // (public) client: refresh it as that client.
        let registration = match self
            .ctx
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
                scopes: None,
            },
            None => return Err(login_required("the client registration is gone")),
        };

        let form = record.as_ref().map(|r| r.refresh_scope).unwrap_or_default();
        let obtained = self
            .ctx
            .http
            .refresh(
                &discovery,
                &registration,
                &refresh_token,
                &grant.scopes,
                form,
            )
            .await;
        match obtained {
            Ok(obtained) => {
                self.install_refreshed(&guard, &grant, &registration, form, obtained)
                    .await
            }
            Err(e) if e.token_failure() == TokenFailure::Outage => {
                Err(self.refresh_unavailable(&guard, grant.generation, e).await)
            }
            Err(e) => Err(self.refresh_refused(&guard, &grant, &registration, e).await),
        }
    }

    /// A refresh answered: the new grant installed (stored and exported
    /// before anyone sees it), the client auth and refresh form that
    /// worked remembered.
    async fn install_refreshed(
        &self,
        guard: &ServerGuard,
        grant: &Grant,
        registration: &Registration,
        form: RefreshScope,
        obtained: Obtained,
    ) -> Result<Grant, BrokerError> {
        let name = guard.name();
        let grant = grant.clone();
        remember_client_auth(&self.ctx, guard, registration, obtained.auth_method).await?;
        let refresh_scope = obtained.refresh_scope;
        if refresh_scope != form {
            info!(server = %name, ?refresh_scope, "the authorization server takes refreshes in the other form; remembered");
        }
        let tokens = obtained.tokens;
        let expires_at_ms = tokens.expires_at_ms(self.ctx.now_ms());
        let account = crate::oauth::jwt::account_of(&tokens);
        let new = NewGrant {
            account,
            issuer: grant.issuer.clone(),
            client_id: grant.client_id.clone(),
            resource: grant.resource.clone(),
            access_token: tokens.access_token,
            token_type: tokens.token_type,
            refresh_token: tokens.refresh_token.or(grant.refresh_token),
            expires_at_ms,
            scopes: tokens.scope.unwrap_or(grant.scopes),
        };
        // Stored (and exported) before anyone can see it.
        self.installer
            .install_grant(guard, new, GrantSource::Refresh, |r| {
                r.refresh_scope = refresh_scope;
            })
            .await
    }

    /// A refresh that failed for a reason that may pass (network, 5xx,
    /// 429, not an OAuth answer): nothing stored changes but the backoff.
    async fn refresh_unavailable(
        &self,
        guard: &ServerGuard,
        generation: u64,
        e: OAuthError,
    ) -> BrokerError {
        let name = guard.name();
        let backoff = self.backoffs.start(
            name,
            generation,
            e.retry_after_secs(),
            e.to_string(),
            self.ctx.now_ms(),
        );
        let now = self.ctx.now_ms();
        let retry_after_secs = backoff.retry_after_secs(now);
        warn!(server = %name, error = %e, failures = backoff.failures, retry_after_secs, "refresh failed; nothing changed, will retry");
        // When the next attempt is made is the scheduler's plan,
        // shown beside this; the error itself does not promise one.
        self.ctx
            .record_error(guard, &format!("refresh failed: {e}"))
            .await;
        BrokerError::Unavailable {
            reason: e.to_string(),
            retry_after_secs,
        }
    }

    /// A refresh the authorization server refused: a grant gone or a
    /// client unknown means "login required" (a registration of ours
    /// dropped); anything else backs off like an outage.
    async fn refresh_refused(
        &self,
        guard: &ServerGuard,
        grant: &Grant,
        registration: &Registration,
        e: OAuthError,
    ) -> BrokerError {
        let name = guard.name();
        let login_required = |reason: &str| BrokerError::login_required(name, reason);
        let failure = e.token_failure();
        let mut dropped = false;
        if failure == TokenFailure::ClientUnknown && registration.kind == RegistrationKind::Dynamic
        {
            if let Err(e) = self
                .ctx
                .store()
                .delete_registration(guard, &registration.issuer)
                .await
            {
                return e.into();
            }
            dropped = true;
            warn!(server = %name, "the AS no longer knows our client; registration dropped");
        }
        if matches!(
            failure,
            TokenFailure::GrantGone | TokenFailure::ClientUnknown
        ) {
            if let Err(e) = self.ctx.store().delete_grant(guard).await {
                return e.into();
            }
            self.backoffs.end(name);
            let said = match &e {
                OAuthError::Token { error, .. } => error.clone(),
                OAuthError::Refused {
                    status, message, ..
                } => format!(
                    "HTTP {status}{}",
                    message
                        .as_deref()
                        .map(|m| format!(": {m}"))
                        .unwrap_or_default()
                ),
                other => other.to_string(),
            };
            let mut reason = format!("the authorization server rejected the refresh ({said})");
            if dropped {
                reason.push_str(
                    "; it no longer knows the client mcpauthd registered, so the next login registers a new one",
                );
            } else if failure == TokenFailure::ClientUnknown
                && registration.kind == RegistrationKind::Configured
                && self
                    .ctx
                    .config()
                    .servers
                    .get(name)
                    .is_some_and(|s| s.client_id.is_some())
            {
                reason.push_str("; check client_id and its secret in config.toml");
            }
            warn!(server = %name, %reason, "refresh refused; login required");
            // The state says a login is required; the error says why.
            self.ctx.record_error(guard, &reason).await;
            self.ctx.publish(
                Some(name.clone()),
                EventKind::LoginRequired {
                    reason: reason.clone(),
                },
            );
            return login_required(&reason);
        }
        // Another OAuth error: it may be fixed at the AS; back off
        // like any failure so nothing loops on it.
        self.backoffs.start(
            name,
            grant.generation,
            None,
            e.to_string(),
            self.ctx.now_ms(),
        );
        warn!(server = %name, error = %e, "refresh failed");
        self.ctx
            .record_error(guard, &format!("refresh failed: {e}"))
            .await;
        BrokerError::OAuth(e)
    }

    /// What the scheduler needs to know of `name`'s grant, if one is held.
    pub fn timing(&self, name: &ServerName) -> Option<GrantTiming> {
        let grant = self.ctx.store().grant(name).ok()??;
        Some(GrantTiming {
            generation: grant.generation,
            obtained_ms: grant.obtained_at_ms,
            expires_ms: grant.expires_at_ms,
            refreshable: grant.refresh_token.is_some() || self.ctx.unattended(name).is_some(),
            backoff: self.backoffs.get(name, grant.generation),
        })
    }

    /// The refresher as the scheduler sees it. Weak: the scheduler must
    /// not keep the refresher alive.
    pub fn target(self: &Arc<Self>) -> Arc<dyn Target> {
        Arc::new(RefreshTarget(Arc::downgrade(self)))
    }

    /// Revokes each token at the AS when it offers RFC 7009, then deletes
    /// them (always); with `forget_client`, the client registrations too.
    /// Says what became of each token.
    pub async fn logout(
        self: &Arc<Self>,
        name: &str,
        forget_client: bool,
    ) -> Result<LogoutOutcome, BrokerError> {
        let server = self.ctx.configured(name)?;
        let guard = self.ctx.locks.lock(&server).await;
        let mut outcome = LogoutOutcome::default();
        if let Some(grant) = self.ctx.store().grant(&server)? {
            outcome.held = true;
            outcome.access_expires_at_ms = grant.expires_at_ms;
            let discovery = self
                .ctx
                .store()
                .server(&server)?
                .and_then(|r| r.discovery)
                .filter(|d| d.issuer == grant.issuer);
            let registration = self.ctx.store().registration(&server, &grant.issuer)?;
            let mut tokens = vec![("access_token", &grant.access_token)];
            if let Some(rt) = &grant.refresh_token {
                tokens.insert(0, ("refresh_token", rt));
            }
            for (hint, token) in tokens {
                let result = match (&discovery, &registration) {
                    (Some(d), Some(reg)) => self.ctx.http.revoke(d, reg, token, hint).await,
                    // Nothing to revoke with: the server's AS or our client
                    // is not known any more.
                    _ => Revocation::NotOffered,
                };
                if !matches!(result, Revocation::Revoked | Revocation::NotOffered) {
                    warn!(server = %server, token = hint, outcome = %result, "revocation did not revoke");
                }
                match hint {
                    "access_token" => outcome.access = Some(result),
                    _ => outcome.refresh = Some(result),
                }
            }
            self.ctx.store().delete_grant(&guard).await?;
        }
        if forget_client {
            self.ctx.store().delete_registrations(&guard).await?;
        }
        self.backoffs.end(&server);
        self.ctx
            .update_record(&guard, |r| {
                r.last_error = None;
                r.step_up = None;
            })
            .await?;
        info!(server = %server, held = outcome.held, revoked = outcome.all_revoked(), forget_client, "logged out");
        self.ctx.publish(
            Some(server),
            EventKind::LoginRequired {
                reason: "logged out".into(),
            },
        );
        Ok(outcome)
    }
}

/// What a logout did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogoutOutcome {
    /// Whether tokens were held (they are deleted here either way).
    pub held: bool,
    /// What became of the access token at the server.
    pub access: Option<Revocation>,
    /// What became of the refresh token, if one was held.
    pub refresh: Option<Revocation>,
    pub access_expires_at_ms: Option<i64>,
}

impl LogoutOutcome {
    /// Every token held was revoked at the server.
    pub fn all_revoked(&self) -> bool {
        self.held
            && [&self.access, &self.refresh]
                .iter()
                .all(|r| r.as_ref().is_none_or(|r| *r == Revocation::Revoked))
    }
}

/// Keeps the client authentication that worked for a stored
/// registration, when it is not the one registered (a token endpoint
/// that reads the secret elsewhere than it advertises).
pub(crate) async fn remember_client_auth(
    ctx: &Context,
    guard: &crate::locks::ServerGuard,
    registration: &crate::state::Registration,
    worked: crate::state::ClientAuthMethod,
) -> Result<(), BrokerError> {
    if worked == registration.auth_method {
        return Ok(());
    }
    info!(server = %guard.name(), method = ?worked, "the token endpoint takes the client secret another way; remembered");
    if let Some(mut stored) = ctx
        .store()
        .registration(guard.name(), &registration.issuer)?
        .filter(|r| r.client_id == registration.client_id)
    {
        stored.auth_method = worked;
        ctx.store().put_registration(guard, &stored).await?;
    }
    Ok(())
}

struct RefreshTarget(std::sync::Weak<Refresher>);

impl Target for RefreshTarget {
    fn grants(&self) -> Vec<(ServerName, GrantTiming)> {
        let Some(refresher) = self.0.upgrade() else {
            return Vec::new();
        };
        let config = refresher.ctx.config();
        config
            .servers
            .keys()
            .filter_map(|name| Some((name.clone(), refresher.timing(name)?)))
            .collect()
    }

    fn refresh(&self, name: ServerName, generation: u64) -> crate::scheduler::RefreshFuture {
        let refresher = self.0.clone();
        Box::pin(async move {
            let Some(refresher) = refresher.upgrade() else {
                return RefreshResult::Failed {
                    error: "shutting down".into(),
                };
            };
            match refresher
                .refresh_grant(name, Freshness::UnlessNewerThan(generation))
                .await
            {
                Ok(_) => RefreshResult::Refreshed,
                Err(BrokerError::LoginRequired { reason, .. }) => {
                    RefreshResult::LoginRequired(reason)
                }
                Err(BrokerError::Unavailable { reason, .. }) => {
                    RefreshResult::Failed { error: reason }
                }
                Err(e) => RefreshResult::Failed {
                    error: e.to_string(),
                },
            }
        })
    }
}
