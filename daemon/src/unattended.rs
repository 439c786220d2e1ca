//! Grants without a person, the `Unattended` part: `grant = "client_credentials"`,
//! `grant = "workload"`, and the renewals of `grant = "enterprise"` (see
//! `enterprise.rs`), which need a person only to log in at the identity
//! provider.
//!
//! Such a server never needs a login. Its first token is obtained on first
//! use and renewed by asking again before it expires (there is no refresh
//! token); both go through the one refresh path, `refresh_grant`, which
//! calls [`Unattended::renew`] under the server's guard, so the
//! single flight, the backoff and "durable before handing out"
//! (`install_grant`) are the same as for a refresh.
//!
//! - Discovery runs without the PKCE requirement (no browser is involved)
//!   and is persisted like a login's. An AS that lists
//!   `grant_types_supported` must list the grant.
//! - Client authentication: `client_secret_basic`/`client_secret_post`
//!   (per `token_endpoint_auth_methods_supported`), or `private_key_jwt`
//!   with an assertion signed afresh for every request.
//! - Workload: the JWT is read from `assertion_file` at every request. It
//!   is decoded (not verified) and refused, with nothing sent, when it has
//!   expired or its audience is neither the AS issuer nor its token
//!   endpoint. The file's directory is watched (`notify`): a rotation
//!   ends the backoff a bad or expired token started, and the scheduler
//!   plans again.
//!
//! Keys, secrets and assertions are read into `Secret`s (or the key type,
//! whose `Debug` shows nothing) and never logged.
//!
//! Lock: `assertion_watch` (`std::sync::Mutex`), the one `notify` watcher
//! of the assertion files' directories; replaced whole when the set of
//! files changes, never held across an await. Everything else runs under
//! the caller's `ServerGuard`.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::{broadcast, mpsc};
use tracing::{debug, info, warn};

use crate::backoff::Backoffs;
use crate::backoff::Freshness;
use crate::config::{GrantKind, ServerConfig, ServerName};
use crate::context::{Context, EventKind};
use crate::enterprise::Enterprise;
use crate::error::BrokerError;
use crate::fsutil::CredentialFile;
use crate::install::{GrantSource, Installer, NewGrant};
use crate::locks::ServerGuard;
use crate::oauth::OAuthError;
use crate::oauth::credentials::{Credentials, read_file};
use crate::oauth::grants::{GRANT_CLIENT_CREDENTIALS, GRANT_JWT_BEARER};
use crate::oauth::jwt;
use crate::oauth::token::TokenSet;
use crate::scheduler::Scheduler;
use crate::state::{Discovery, Grant};
use crate::watcher::{Naming, watch_files};

/// Refuses an AS that lists its grant types without this one.
fn check_grant_listed(discovery: &Discovery, grant: &'static str) -> Result<(), OAuthError> {
    match &discovery.metadata.grant_types_supported {
        Some(types) if !types.iter().any(|t| t == grant) => Err(OAuthError::GrantUnsupported {
            issuer: discovery.issuer.clone(),
            grant,
        }),
        _ => Ok(()),
    }
}

pub struct Unattended {
    ctx: Arc<Context>,
    installer: Arc<Installer>,
    backoffs: Arc<Backoffs>,
    enterprise: Arc<Enterprise>,
    scheduler: Arc<Scheduler>,
    /// The watch on the directories of workload assertion files.
    assertion_watch: Mutex<Option<notify::RecommendedWatcher>>,
}

impl Unattended {
    pub fn new(
        ctx: Arc<Context>,
        installer: Arc<Installer>,
        backoffs: Arc<Backoffs>,
        enterprise: Arc<Enterprise>,
        scheduler: Arc<Scheduler>,
    ) -> Self {
        Self {
            ctx,
            installer,
            backoffs,
            enterprise,
            scheduler,
            assertion_watch: Mutex::default(),
        }
    }

    /// The discovery held for the server, or a new one (persisted).
    async fn unattended_discovery(
        &self,
        guard: &ServerGuard,
        server: &ServerConfig,
    ) -> Result<Discovery, BrokerError> {
        let name = guard.name();
        let record = self.ctx.store().server(name)?;
        if let Some(d) = record.as_ref().and_then(|r| r.discovery.clone()) {
            return Ok(d);
        }
        let now = self.ctx.now_ms();
        let discovered = self
            .ctx
            .http
            .discover(&server.url, now, false, &server.settings)
            .await?;
        let discovery = discovered.discovery;
        let mut record =
            record.unwrap_or_else(|| crate::state::ServerRecord::new(&server.url, now));
        record.discovery = Some(discovery.clone());
        self.ctx.store().put_server(guard, &record).await?;
        info!(server = %name, issuer = %discovery.issuer, "authorization server discovered");
        Ok(discovery)
    }

    /// The token request of an unattended grant.
    async fn request_unattended(
        &self,
        name: &ServerName,
        server: &ServerConfig,
        discovery: &Discovery,
    ) -> Result<TokenSet, BrokerError> {
        let credentials = Credentials::read(server)?;
        let now = self.ctx.now_ms();
        match server.grant {
            GrantKind::ClientCredentials => {
                check_grant_listed(discovery, GRANT_CLIENT_CREDENTIALS)?;
                let auth = credentials.auth(discovery, now);
                Ok(self
                    .ctx
                    .http
                    .client_credentials(discovery, &auth, &server.scopes)
                    .await?)
            }
            GrantKind::Enterprise => {
                check_grant_listed(discovery, GRANT_JWT_BEARER)?;
                self.enterprise
                    .enterprise_tokens(name, server, discovery, &credentials)
                    .await
            }
            GrantKind::Workload => {
                check_grant_listed(discovery, GRANT_JWT_BEARER)?;
                let path = server
                    .assertion_file
                    .as_deref()
                    .expect("validated: workload has an assertion_file");
                let shown = path.display().to_string();
                let assertion = read_file(path, CredentialFile::Assertion, |path, reason| {
                    OAuthError::AssertionFile { path, reason }
                })?;
                let claims =
                    jwt::decode_unverified(&assertion).map_err(|reason| OAuthError::Assertion {
                        path: shown.clone(),
                        reason,
                    })?;
                jwt::check_forwarded(
                    &claims,
                    &[
                        discovery.issuer.as_str(),
                        discovery.metadata.token_endpoint.as_str(),
                    ],
                    now / 1000,
                )
                .map_err(|reason| OAuthError::Assertion {
                    path: shown,
                    reason,
                })?;
                let auth = credentials.auth(discovery, now);
                Ok(self
                    .ctx
                    .http
                    .jwt_bearer(discovery, &auth, &assertion, &server.scopes)
                    .await?)
            }
            GrantKind::AuthorizationCode => Err(BrokerError::Internal(
                "an authorization-code server has no unattended grant".into(),
            )),
        }
    }

    /// Obtains or renews an unattended grant; called by `refresh_locked`
    /// under the server's guard (so this is the same single flight).
    pub(crate) async fn renew(
        &self,
        guard: &ServerGuard,
        server: &ServerConfig,
        freshness: Freshness,
    ) -> Result<Grant, BrokerError> {
        let name = guard.name().clone();
        let current = self.ctx.store().grant(&name)?;
        let now = self.ctx.now_ms();
        if let Some(grant) = &current {
            match freshness {
                Freshness::Force => {}
                Freshness::UnlessNewerThan(generation) if grant.generation != generation => {
                    return Ok(grant.clone());
                }
                Freshness::UnlessValidForMs(ms)
                    if grant.expires_at_ms.is_none_or(|at| at - now >= ms) =>
                {
                    return Ok(grant.clone());
                }
                _ => {}
            }
        }
        let generation = current.as_ref().map_or(0, |g| g.generation);
        if !matches!(freshness, Freshness::Force)
            && let Some(backoff) = self.backoffs.get(&name, generation)
            && now < backoff.retry_at_ms
        {
            return Err(BrokerError::Unavailable {
                reason: backoff.reason.clone(),
                retry_after_secs: backoff.retry_after_secs(now),
            });
        }
        let obtained = match self.unattended_discovery(guard, server).await {
            Ok(discovery) => self
                .request_unattended(&name, server, &discovery)
                .await
                .map(|tokens| (discovery, tokens)),
            Err(e) => Err(e),
        };
        match obtained {
            Ok((discovery, tokens)) => {
                let expires_at_ms = tokens.expires_at_ms(self.ctx.now_ms());
                let account = crate::oauth::jwt::account_of(&tokens);
                let new = NewGrant {
                    account,
                    issuer: discovery.issuer.clone(),
                    client_id: server.client_id.clone().unwrap_or_default(),
                    resource: discovery.resource.clone(),
                    access_token: tokens.access_token,
                    token_type: tokens.token_type,
                    // Renewal asks again; a refresh token is not kept.
                    refresh_token: None,
                    expires_at_ms,
                    scopes: tokens.scope.unwrap_or_else(|| server.scopes.clone()),
                };
                let source = if current.is_some() {
                    GrantSource::Refresh
                } else {
                    GrantSource::Login
                };
                self.installer
                    .install_grant(guard, new, source, |r| r.challenge = None)
                    .await
            }
            Err(e @ BrokerError::LoginRequired { .. }) => {
                // A person must log in (at the identity provider): no
                // backoff, nothing would change before they do. Said once
                // (a write and an event), not at every request that finds
                // it so.
                if let BrokerError::LoginRequired { reason, .. } = &e {
                    let known = self
                        .ctx
                        .store()
                        .server(&name)?
                        .and_then(|r| r.last_error)
                        .is_some_and(|last| &last == reason);
                    if !known {
                        info!(server = %name, error = %e, "login required");
                        self.ctx.record_error(guard, reason).await;
                        self.ctx.publish(
                            Some(name.clone()),
                            EventKind::LoginRequired {
                                reason: reason.clone(),
                            },
                        );
                    }
                }
                Err(e)
            }
            Err(e) => {
                let (asked, transient) = match &e {
                    BrokerError::OAuth(o) => (o.retry_after_secs(), o.is_transient()),
                    _ => (None, false),
                };
                let backoff =
                    self.backoffs
                        .start(&name, generation, asked, e.to_string(), self.ctx.now_ms());
                let now = self.ctx.now_ms();
                warn!(server = %name, grant = server.grant.as_str(), error = %e, failures = backoff.failures, "obtaining a token failed");
                self.ctx
                    .record_error(guard, &format!("obtaining a token failed: {e}"))
                    .await;
                if transient {
                    Err(BrokerError::Unavailable {
                        reason: e.to_string(),
                        retry_after_secs: backoff.retry_after_secs(now),
                    })
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Watches the directories of the workload assertion files; a change
    /// to one ends that server's backoff and wakes the scheduler.
    pub fn start_assertion_watch(self: &Arc<Self>) {
        let (tx, mut rx) = mpsc::channel::<PathBuf>(64);
        self.rewatch_assertions(&tx);
        let broker = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                let mut paths = HashSet::from([first]);
                while let Ok(p) = rx.try_recv() {
                    paths.insert(p);
                }
                let Some(b) = broker.upgrade() else { return };
                let config = b.ctx.config();
                for (name, server) in config.servers.iter() {
                    let id_token_file = server
                        .identity_provider
                        .as_ref()
                        .and_then(|i| config.identity_providers.get(i))
                        .and_then(|i| i.id_token_file.as_ref());
                    if server
                        .assertion_file
                        .as_ref()
                        .or(id_token_file)
                        .is_some_and(|f| paths.contains(f))
                    {
                        debug!(server = %name, "the workload assertion file changed");
                        b.backoffs.end(name);
                        b.scheduler.wake();
                    }
                }
            }
        });
        let broker = Arc::downgrade(self);
        let mut events = self.ctx.subscribe();
        let stop = self.ctx.shutdown().wait();
        tokio::spawn(async move {
            tokio::pin!(stop);
            loop {
                let event = tokio::select! {
                    _ = &mut stop => return,
                    e = events.recv() => e,
                };
                let Some(b) = broker.upgrade() else { return };
                match event {
                    Ok(e)
                        if !matches!(
                            e.kind,
                            EventKind::ServerAdded { .. }
                                | EventKind::ServerChanged { .. }
                                | EventKind::ServerRemoved
                        ) => {}
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                        b.rewatch_assertions(&tx)
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
    }

    fn rewatch_assertions(&self, tx: &mpsc::Sender<PathBuf>) {
        let config = self.ctx.config();
        let files: HashSet<PathBuf> = config
            .servers
            .values()
            .filter_map(|s| s.assertion_file.clone())
            .chain(
                config
                    .identity_providers
                    .values()
                    .filter_map(|i| i.id_token_file.clone()),
            )
            .collect();
        let mut slot = self.assertion_watch.lock().unwrap();
        *slot = None;
        *slot = watch_files(
            files,
            Naming::ItsDirectory,
            false,
            tx,
            "the workload assertion files",
        );
    }
}
