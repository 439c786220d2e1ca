//! Device logins (RFC 8628), as the `Logins` part runs them.
//!
//! `mcpauthctl login NAME --device` (or a client with neither a browser
//! nor a terminal, when the AS offers it) starts one. The daemon asks the
//! device authorization endpoint for a code, hands the user code and the
//! verification URI to every caller (joined like a browser login), and
//! polls the token endpoint itself: the login survives the CLI going away,
//! and one poll serves every caller.
//!
//! Polling: no faster than the interval the AS gave (5 s if none);
//! `slow_down` adds 5 s from then on; `authorization_pending` goes on;
//! `access_denied` ends it (denied), `expired_token` or the code's own
//! expiry end it (timed out); network trouble is retried at the next
//! interval; any other error ends it. `CancelLogin` stops it. No PKCE
//! (RFC 8628 has none); `resource` is sent as on every token request. The
//! tokens go through `install_grant` like a browser login's.
//!
//! The device code lives in memory only (a `Secret`): a daemon restart
//! ends the login, and the person starts again.

use std::future::Future;
use std::ops::ControlFlow;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tracing::{info, warn};

use super::{ActiveLogin, DeviceView, FailureKind, LoginHandle, LoginOutcome, Logins, login_done};
use crate::config::{ServerConfig, ServerName};
use crate::context::EventKind;
use crate::error::BrokerError;
use crate::install::{GrantSource, NewGrant};
use crate::locks::ServerGuard;
use crate::oauth::challenge::BearerChallenge;
use crate::oauth::grants::{DeviceAuthorization, DevicePoll, SLOW_DOWN_SECS};
use crate::oauth::token::ClientAuth;
use crate::secret::Secret;
use crate::state::{Discovery, PendingFlow, Registration};

impl Logins {
    /// Starts a device login; called by `login_with` under the guard, with
    /// the discovery just made.
    pub(crate) async fn start_device_login(
        self: &Arc<Self>,
        guard: ServerGuard,
        server: &ServerConfig,
        discovery: Discovery,
        asked: Vec<String>,
        probed: Option<BearerChallenge>,
        stored: Option<BearerChallenge>,
    ) -> Result<LoginHandle, BrokerError> {
        let name = guard.name().clone();
        let now = self.ctx.now_ms();
        self.ctx
            .update_record(&guard, |r| r.discovery = Some(discovery.clone()))
            .await?;
        if self.ctx.store().server(&name)?.is_none() {
            let mut record = crate::state::ServerRecord::new(&server.url, now);
            record.discovery = Some(discovery.clone());
            self.ctx.store().put_server(&guard, &record).await?;
        }
        let scopes = self
            .login_scopes(&guard, server, &discovery, asked, probed, stored)
            .await?;
        // A device client has no redirect URI.
        let registration = match self
            .registration_for(&guard, server, &discovery, "", &scopes, now)
            .await
        {
            Ok(r) => r,
            Err(e) => {
                warn!(server = %name, error = %e, "device login failed: client registration");
                self.ctx.record_error(&guard, &e.to_string()).await;
                return Err(e);
            }
        };
        let authorization = match self
            .ctx
            .http
            .device_authorization(&discovery, &ClientAuth::of(&registration), &scopes)
            .await
        {
            Ok(a) => a,
            Err(e) => {
                warn!(server = %name, error = %e, "device login failed: device authorization");
                self.ctx.record_error(&guard, &e.to_string()).await;
                return Err(BrokerError::OAuth(e));
            }
        };
        let (view, flow) = device_flow(&discovery, &registration, scopes, &authorization, now);
        let (active, rx) = ActiveLogin::new(flow.clone(), 0, Some(view.clone()));
        self.insert(&name, active.clone());
        drop(guard);
        let poller = DevicePoller {
            name: name.clone(),
            active,
            discovery,
            registration,
            device_code: authorization.device_code,
            lifetime: Duration::from_secs(authorization.expires_in_secs),
            interval: authorization.interval_secs,
        };
        tokio::spawn(poller.run(Arc::downgrade(self), self.ctx.shutdown().wait()));
        info!(server = %name, issuer = %flow.issuer, "device login started");
        self.ctx.publish(Some(name), EventKind::LoginStarted);
        Ok(LoginHandle {
            flow,
            callback_port: 0,
            device: Some(view),
            joined: false,
            device_offered: true,
            outcome: rx,
        })
    }

    /// Ends a device login without tokens, under the server's lock.
    async fn settle_device_login(
        &self,
        name: &ServerName,
        active: &Arc<ActiveLogin>,
        kind: FailureKind,
        message: String,
    ) {
        let guard = self.ctx.locks.lock(name).await;
        self.finish_login(
            &guard,
            active,
            LoginOutcome::Failed { kind, message },
            false,
        )
        .await;
    }

    /// Installs the tokens of an approved device login and settles it.
    async fn finish_device_login(
        &self,
        name: &ServerName,
        active: &Arc<ActiveLogin>,
        discovery: &Discovery,
        registration: &Registration,
        tokens: crate::oauth::token::TokenSet,
    ) {
        let guard = self.ctx.locks.lock(name).await;
        let account = crate::oauth::jwt::account_of(&tokens);
        let new = NewGrant {
            account,
            issuer: discovery.issuer.clone(),
            client_id: registration.client_id.clone(),
            resource: discovery.resource.clone(),
            expires_at_ms: tokens.expires_at_ms(self.ctx.now_ms()),
            access_token: tokens.access_token,
            token_type: tokens.token_type,
            refresh_token: tokens.refresh_token,
            scopes: tokens.scope.unwrap_or_else(|| active.flow.scopes.clone()),
        };
        let granted = new.scopes.clone();
        let outcome = match self
            .installer
            .install_grant(&guard, new, GrantSource::Login, |r| login_done(r, &granted))
            .await
        {
            Ok(grant) => {
                info!(server = %name, generation = grant.generation, "device login complete");
                LoginOutcome::Success {
                    refresh_token: grant.refresh_token.is_some(),
                    scopes: grant.scopes,
                    expires_at_ms: grant.expires_at_ms,
                }
            }
            Err(e) => LoginOutcome::Failed {
                kind: FailureKind::Error,
                message: e.to_string(),
            },
        };
        self.finish_login(&guard, active, outcome, false).await;
    }
}

/// What a person is shown of a device login, and its stored flow.
fn device_flow(
    discovery: &Discovery,
    registration: &Registration,
    scopes: Vec<String>,
    authorization: &DeviceAuthorization,
    now: i64,
) -> (DeviceView, PendingFlow) {
    let expires_at_ms = now + (authorization.expires_in_secs as i64) * 1000;
    let view = DeviceView {
        user_code: authorization.user_code.clone(),
        verification_uri: authorization.verification_uri.clone(),
        verification_uri_complete: authorization.verification_uri_complete.clone(),
        expires_at_ms,
        interval_secs: authorization.interval_secs,
    };
    let flow = PendingFlow {
        state: Secret::new(crate::oauth::pkce::new_state()),
        verifier: Secret::new(""),
        issuer: discovery.issuer.clone(),
        client_id: registration.client_id.clone(),
        redirect_uri: String::new(),
        scopes,
        authorization_url: view
            .verification_uri_complete
            .clone()
            .unwrap_or_else(|| view.verification_uri.clone()),
        created_at_ms: now,
        expires_at_ms,
    };
    (view, flow)
}

/// The poll of one device login's token endpoint, spawned when it starts
/// and ended by the login settling, the daemon shutting down, or the
/// logins part going away.
struct DevicePoller {
    name: ServerName,
    active: Arc<ActiveLogin>,
    discovery: Discovery,
    registration: Registration,
    device_code: Secret,
    lifetime: Duration,
    /// Seconds between polls; `slow_down` adds to it.
    interval: u64,
}

impl DevicePoller {
    async fn run(
        mut self,
        logins: Weak<Logins>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) {
        let stopped = self.active.stopped();
        tokio::pin!(stopped, shutdown);
        let deadline = tokio::time::Instant::now() + self.lifetime;
        loop {
            tokio::select! {
                _ = &mut stopped => return,
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(Duration::from_secs(self.interval)) => {}
            }
            let Some(logins) = logins.upgrade() else {
                return;
            };
            if self.poll_once(&logins, deadline).await.is_break() {
                return;
            }
        }
    }

    /// One poll, once the interval has passed: `Break` when the login is
    /// settled.
    async fn poll_once(
        &mut self,
        logins: &Logins,
        deadline: tokio::time::Instant,
    ) -> ControlFlow<()> {
        let name = &self.name;
        let settle = |kind: FailureKind, message: String| {
            logins.settle_device_login(name, &self.active, kind, message)
        };
        if tokio::time::Instant::now() >= deadline {
            settle(
                FailureKind::TimedOut,
                "the code expired before it was approved; run the login again".into(),
            )
            .await;
            return ControlFlow::Break(());
        }
        let poll = logins
            .ctx
            .http
            .poll_device(
                &self.discovery,
                &ClientAuth::of(&self.registration),
                &self.device_code,
            )
            .await;
        match poll {
            Ok(DevicePoll::Pending) => return ControlFlow::Continue(()),
            Ok(DevicePoll::SlowDown) => {
                self.interval += SLOW_DOWN_SECS;
                let interval = self.interval;
                info!(server = %name, interval, "the authorization server asked to slow down");
                return ControlFlow::Continue(());
            }
            Ok(DevicePoll::Denied) => {
                settle(
                    FailureKind::Denied,
                    "the authorization server refused: access_denied".into(),
                )
                .await;
            }
            Ok(DevicePoll::Expired) => {
                settle(
                    FailureKind::TimedOut,
                    "the code expired before it was approved (expired_token); run the login again"
                        .into(),
                )
                .await;
            }
            Err(e) if e.is_transient() => {
                warn!(server = %name, error = %e, "device login: polling failed; trying again");
                return ControlFlow::Continue(());
            }
            Err(e) => {
                let guard = logins.ctx.locks.lock(name).await;
                logins.ctx.record_error(&guard, &e.to_string()).await;
                drop(guard);
                settle(FailureKind::Error, e.to_string()).await;
            }
            Ok(DevicePoll::Tokens(tokens)) => {
                logins
                    .finish_device_login(
                        name,
                        &self.active,
                        &self.discovery,
                        &self.registration,
                        tokens,
                    )
                    .await;
            }
        }
        ControlFlow::Break(())
    }
}
