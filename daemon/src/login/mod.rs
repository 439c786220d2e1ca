//! Logins: the authorization-code flow from the broker's side.
//!
//! `Logins::login` discovers the authorization server, registers if needed,
//! stores the pending flow (state, verifier, issuer, redirect URI, scopes)
//! and only then hands out the URL. A second `login` for the same server
//! while one is pending joins it: same URL, same outcome. The loopback
//! callback runs on the server's persisted port for at most the callback
//! timeout (5 minutes); a pasted redirect URL (`complete_login`) is
//! accepted until the stored flow expires (10 minutes), even after a
//! daemon restart.

mod device;
mod idp;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

use crate::callback::{self, Page};
use crate::config::{ServerConfig, ServerName};
use crate::context::{Context, EventKind};
use crate::enterprise::Enterprise;
use crate::error::BrokerError;
use crate::install::{GrantSource, Installer, NewGrant};
use crate::locks::ServerGuard;
use crate::oauth::challenge::BearerChallenge;
use crate::oauth::discovery::Discovered;
use crate::oauth::flow::{self, CallbackError, CallbackParams};
use crate::oauth::{pkce, registration};
use crate::refresh::{Refresher, remember_client_auth};
use crate::shutdown::Shutdown;
use crate::state::{Discovery, PendingFlow, Registration, RegistrationKind};
use crate::step_up::{count_step_up_attempt, store_challenge};

/// What a login refused for its `resource` (RFC 8707) says to do: Entra
/// refuses it with v2 scopes (AADSTS9010010).
const SEND_RESOURCE_HINT: &str = "; the authorization server refuses the resource parameter: only if you trust this server, set send_resource = false for it in config.toml";

/// How long a stored flow stays valid.
pub const FLOW_LIFETIME: Duration = Duration::from_secs(10 * 60);

/// Why a login ended without tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// The person or the AS refused (`error=access_denied`, ...).
    Denied,
    TimedOut,
    Cancelled,
    /// A callback failed the state or issuer checks.
    Rejected,
    /// Anything else (token endpoint, network).
    Error,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoginOutcome {
    Success {
        scopes: Vec<String>,
        expires_at_ms: Option<i64>,
        /// Whether a refresh token is held (else a login is needed again
        /// once the token expires).
        refresh_token: bool,
    },
    Failed {
        kind: FailureKind,
        message: String,
    },
}

/// How a person logs in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LoginMethod {
    /// The authorization-code flow: a browser, or a pasted redirect.
    #[default]
    Browser,
    /// RFC 8628: a code entered on any device (see `device.rs`).
    Device,
    /// The device flow where the AS offers it, else the browser.
    DeviceIfOffered,
}

/// What a caller asks of a login.
#[derive(Clone, Debug, Default)]
pub struct LoginOptions {
    /// Scopes to ask for; empty: step-up, stored challenge, configured,
    /// or suggested by the server.
    pub scopes: Vec<String>,
    pub method: LoginMethod,
    /// A challenge the client received without a token: kept (its scopes
    /// only) and authoritative for this login.
    pub www_authenticate: Option<String>,
}

/// What a person is shown of a device login.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceView {
    pub user_code: String,
    pub verification_uri: String,
    pub verification_uri_complete: Option<String>,
    pub expires_at_ms: i64,
    pub interval_secs: u64,
}

/// A login in progress, shared by everyone who asked for it.
pub struct ActiveLogin {
    pub flow: PendingFlow,
    pub callback_port: u16,
    /// Set for a device login (which has no callback).
    pub device: Option<DeviceView>,
    outcome: watch::Sender<Option<LoginOutcome>>,
    /// Stops the callback server.
    stop: Shutdown,
    /// One completion at a time (callback and paste may race).
    completing: tokio::sync::Mutex<()>,
}

/// What a caller of `login` gets.
pub struct LoginHandle {
    pub flow: PendingFlow,
    pub callback_port: u16,
    pub device: Option<DeviceView>,
    pub joined: bool,
    /// The authorization server offers the device flow (false when not
    /// known).
    pub device_offered: bool,
    pub outcome: watch::Receiver<Option<LoginOutcome>>,
}

/// A login as stored when it started, which its callback completes.
struct StoredLogin {
    flow: PendingFlow,
    /// The discovery of the flow's issuer.
    discovery: Discovery,
    /// The client the flow was started with.
    registration: Registration,
    /// The login is at an enterprise server's identity provider.
    at_idp: bool,
}

impl StoredLogin {
    /// Whether the callback must carry `iss` (RFC 9207).
    fn iss_expected(&self) -> bool {
        // An issuer the logins implied is not one the AS says: `iss`
        // is not expected then (compared if it comes).
        // `allow_missing_iss`: promised but not sent (Cloudflare's
        // workers-oauth-provider) is accepted; a present `iss` is
        // still compared.
        let discovery = &self.discovery;
        discovery
            .metadata
            .authorization_response_iss_parameter_supported
            && !discovery.metadata.issuer_implied
            && !discovery.settings.allow_missing_iss
    }
}

/// The logins part: every login a person runs (browser, pasted redirect,
/// device code, identity provider), and the logins in progress.
///
/// Lock: `active` (`std::sync::Mutex`), the login in progress per server;
/// held only to look one up or change the map. Starting, completing and
/// settling a login happen under the server's `ServerGuard` (the code
/// exchange and the install included); one completion at a time per
/// login (`ActiveLogin::completing`, a `tokio::sync::Mutex`, held across
/// the exchange, taken before the server's lock).
pub struct Logins {
    ctx: Arc<Context>,
    installer: Arc<Installer>,
    refresher: Arc<Refresher>,
    enterprise: Arc<Enterprise>,
    active: Mutex<HashMap<ServerName, Arc<ActiveLogin>>>,
}

impl Logins {
    pub fn new(
        ctx: Arc<Context>,
        installer: Arc<Installer>,
        refresher: Arc<Refresher>,
        enterprise: Arc<Enterprise>,
    ) -> Self {
        Self {
            ctx,
            installer,
            refresher,
            enterprise,
            active: Mutex::default(),
        }
    }

    pub fn is_active(&self, name: &ServerName) -> bool {
        self.active
            .lock()
            .unwrap()
            .get(name)
            .is_some_and(|a| a.outcome.borrow().is_none())
    }

    pub(crate) fn get(&self, name: &ServerName) -> Option<Arc<ActiveLogin>> {
        self.active.lock().unwrap().get(name).cloned()
    }

    /// Makes `login` the server's login in progress.
    pub(crate) fn insert(&self, name: &ServerName, login: Arc<ActiveLogin>) {
        self.active.lock().unwrap().insert(name.clone(), login);
    }

    /// Ends the login of a server whose state is being deleted: its
    /// waiters are told `reason`.
    pub(crate) fn abandon(&self, name: &ServerName, reason: &str) {
        let active = self.active.lock().unwrap().remove(name);
        if let Some(active) = active {
            active.abandon(reason);
        }
    }
}

impl ActiveLogin {
    /// A login with these parts, not yet settled.
    pub(crate) fn new(
        flow: PendingFlow,
        callback_port: u16,
        device: Option<DeviceView>,
    ) -> (Arc<Self>, watch::Receiver<Option<LoginOutcome>>) {
        let (outcome, rx) = watch::channel(None);
        let login = Arc::new(Self {
            flow,
            callback_port,
            device,
            outcome,
            stop: Shutdown::new(),
            completing: tokio::sync::Mutex::new(()),
        });
        (login, rx)
    }

    /// Resolves when the login is stopped (settled or cancelled).
    pub(crate) fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.stop.wait()
    }

    /// A handle for a caller joining this login.
    fn join(&self) -> LoginHandle {
        LoginHandle {
            flow: self.flow.clone(),
            callback_port: self.callback_port,
            device: self.device.clone(),
            joined: true,
            device_offered: false,
            outcome: self.outcome.subscribe(),
        }
    }

    /// Ends a login whose server's state is gone (its flow with it): the
    /// waiters are told why, and the callback server stops.
    pub(crate) fn abandon(&self, reason: &str) {
        if self.outcome.borrow().is_none() {
            self.outcome.send_replace(Some(LoginOutcome::Failed {
                kind: FailureKind::Cancelled,
                message: reason.to_string(),
            }));
        }
        self.stop.trigger();
    }
}

impl Logins {
    /// Starts a browser login, or joins the one in progress.
    pub async fn login(
        self: &Arc<Self>,
        name: &str,
        scopes: Vec<String>,
    ) -> Result<LoginHandle, BrokerError> {
        self.login_with(
            name,
            LoginOptions {
                scopes,
                ..Default::default()
            },
        )
        .await
    }

    /// Starts a login, or joins the one in progress.
    pub async fn login_with(
        self: &Arc<Self>,
        name: &str,
        options: LoginOptions,
    ) -> Result<LoginHandle, BrokerError> {
        let name = self.ctx.configured(name)?;
        if let Some(grant) = self.ctx.unattended(&name).filter(|g| !g.has_login()) {
            return Err(BrokerError::NoLoginNeeded {
                server: name.to_string(),
                grant: grant.as_str(),
            });
        }
        if let Some(www) = options.www_authenticate.as_deref() {
            store_challenge(&self.ctx, &name, www).await?;
        }
        let scopes = options.scopes;
        // One start at a time per server, so two callers cannot both start.
        let guard = self.ctx.locks.lock(&name).await;
        // The config as it is under the lock (a URL change waits for it).
        let server = self
            .ctx
            .config()
            .servers
            .get(&name)
            .ok_or_else(|| self.ctx.not_found(&name))?
            .clone();
        if let Some(active) = self.get(&name)
            && active.outcome.borrow().is_none()
        {
            return Ok(active.join());
        }
        if server.grant == crate::config::GrantKind::Enterprise {
            // The login is the identity provider's (OpenID Connect), in a
            // browser or with a pasted redirect.
            if options.method == LoginMethod::Device {
                return Err(BrokerError::Invalid(crate::config::InvalidInput::Field {
                    server: name.to_string(),
                    field: "login",
                    reason: "--device is not offered for an enterprise server: its login is the identity provider's, in a browser (or with the pasted redirect, --no-browser)".into(),
                }));
            }
            return self.start_idp_login(guard, &server).await;
        }

        let now = self.ctx.now_ms();
        let (discovered, device) = self
            .discover_for_login(&guard, &server, options.method, now)
            .await?;
        let stored_challenge = self
            .ctx
            .store()
            .server(&name)?
            .and_then(|r| r.challenge)
            .map(|c| BearerChallenge {
                scope: Some(c.scopes.join(" ")),
                ..Default::default()
            });
        if device {
            return self
                .start_device_login(
                    guard,
                    &server,
                    discovered.discovery,
                    scopes,
                    discovered.challenge,
                    stored_challenge,
                )
                .await;
        }
        self.start_browser_login(guard, &server, discovered, scopes, stored_challenge, now)
            .await
    }

    /// Discovers the authorization server for a login, and whether it is
    /// a device login: as asked, and as the AS offers. A browser login
    /// needs PKCE S256 of the AS (the device flow has none).
    async fn discover_for_login(
        &self,
        guard: &ServerGuard,
        server: &ServerConfig,
        method: LoginMethod,
        now: i64,
    ) -> Result<(Discovered, bool), BrokerError> {
        let name = guard.name();
        // PKCE is asked of the AS below, once it is known that the browser
        // flow is the one used (the device flow has none).
        let discovered = match self
            .ctx
            .http
            .discover(&server.url, now, false, &server.settings)
            .await
        {
            Ok(d) => d,
            Err(e) => {
                warn!(server = %name, error = %e, "login failed: discovery");
                self.ctx.record_error(guard, &e.to_string()).await;
                return Err(BrokerError::OAuth(e));
            }
        };
        let discovery = &discovered.discovery;
        let offers_device = discovery.metadata.device_authorization_endpoint.is_some();
        let device = match method {
            LoginMethod::Browser => false,
            LoginMethod::DeviceIfOffered => offers_device,
            LoginMethod::Device if offers_device => true,
            LoginMethod::Device => {
                let e = crate::oauth::OAuthError::DeviceUnsupported {
                    issuer: discovery.issuer.clone(),
                };
                self.ctx.record_error(guard, &e.to_string()).await;
                return Err(BrokerError::OAuth(e));
            }
        };
        if !device
            && !crate::oauth::discovery::pkce_s256_ok(&discovery.metadata, &discovery.settings)
        {
            let e = crate::oauth::discovery::pkce_refusal(&discovery.metadata);
            warn!(server = %name, error = %e, "login failed: discovery");
            self.ctx.record_error(guard, &e.to_string()).await;
            return Err(BrokerError::OAuth(e));
        }
        Ok((discovered, device))
    }

    /// Starts a browser login under the guard: the callback listener, the
    /// scopes and the client, then the authorization URL, whose flow is
    /// stored before anyone sees it.
    async fn start_browser_login(
        self: &Arc<Self>,
        guard: ServerGuard,
        server: &ServerConfig,
        discovered: Discovered,
        asked: Vec<String>,
        stored_challenge: Option<BearerChallenge>,
        now: i64,
    ) -> Result<LoginHandle, BrokerError> {
        let name = guard.name().clone();
        let discovery = discovered.discovery;
        let (listener, port) = self
            .bind_callback(&guard, server, Some(&discovery), now)
            .await?;
        let redirect_uri = redirect_uri(port);
        let scopes = self
            .login_scopes(
                &guard,
                server,
                &discovery,
                asked,
                discovered.challenge,
                stored_challenge,
            )
            .await?;
        let registration = match self
            .registration_for(&guard, server, &discovery, &redirect_uri, &scopes, now)
            .await
        {
            Ok(r) => r,
            Err(e) => {
                warn!(server = %name, error = %e, "login failed: client registration");
                self.ctx.record_error(&guard, &e.to_string()).await;
                return Err(e);
            }
        };

        let shares_url = self.ctx.config().servers.iter().any(|(n, s)| {
            *n != name && crate::import::same_url(s.url.as_str(), server.url.as_str())
        });
        let (pending, rx) = self
            .open_flow(
                &guard,
                &discovery,
                &registration.client_id,
                scopes,
                (listener, port),
                |url| choose_account(url, server.login_hint.as_deref(), shares_url),
            )
            .await?;
        info!(server = %name, issuer = %discovery.issuer, port, "login started");
        self.ctx.publish(Some(name), EventKind::LoginStarted);
        Ok(LoginHandle {
            flow: pending,
            callback_port: port,
            device: None,
            joined: false,
            device_offered: discovery.metadata.device_authorization_endpoint.is_some(),
            outcome: rx,
        })
    }

    /// Opens a browser login's flow: PKCE, state and the authorization URL
    /// (`amend` may add to it), stored (flushed) before anyone sees the
    /// URL; then the login in progress and its callback server (the
    /// caller publishes `LoginStarted`). Under the server's guard.
    pub(super) async fn open_flow(
        self: &Arc<Self>,
        guard: &ServerGuard,
        discovery: &Discovery,
        client_id: &str,
        scopes: Vec<String>,
        (listener, port): (std::net::TcpListener, u16),
        amend: impl FnOnce(&mut url::Url),
    ) -> Result<(PendingFlow, watch::Receiver<Option<LoginOutcome>>), BrokerError> {
        let name = guard.name().clone();
        let now = self.ctx.now_ms();
        let redirect_uri = redirect_uri(port);
        let pkce = pkce::Pkce::new();
        let state = pkce::new_state();
        let mut url = flow::authorization_url(
            discovery,
            client_id,
            &pkce.challenge,
            &state,
            &scopes,
            &redirect_uri,
        )?;
        amend(&mut url);
        let pending = PendingFlow {
            state: crate::secret::Secret::new(state),
            verifier: pkce.verifier,
            issuer: discovery.issuer.clone(),
            client_id: client_id.to_string(),
            redirect_uri,
            scopes,
            authorization_url: url.to_string(),
            created_at_ms: now,
            expires_at_ms: now + FLOW_LIFETIME.as_millis() as i64,
        };
        // Stored before anyone sees the URL.
        self.ctx.store().put_flow(guard, &pending).await?;
        let (active, rx) = ActiveLogin::new(pending.clone(), port, None);
        self.insert(&name, active.clone());
        self.spawn_callback(name, active, listener)?;
        Ok((pending, rx))
    }

    /// The loopback listener for a login's callback, on the configured or
    /// persisted port (any free one the first time), and its port.
    /// Discovery and the port are persisted: a refresh after a restart
    /// goes to the right token endpoint, and the redirect URI stays.
    pub(super) async fn bind_callback(
        &self,
        guard: &ServerGuard,
        server: &ServerConfig,
        discovery: Option<&Discovery>,
        now: i64,
    ) -> Result<(std::net::TcpListener, u16), BrokerError> {
        let mut record = self
            .ctx
            .store()
            .server(guard.name())?
            .unwrap_or_else(|| crate::state::ServerRecord::new(&server.url, now));
        let port = server.callback_port.or(record.callback_port).unwrap_or(0);
        let listener = callback::bind(port).map_err(|e| BrokerError::CallbackPort {
            port,
            reason: e.to_string(),
        })?;
        let port = listener
            .local_addr()
            .map_err(|e| BrokerError::CallbackPort {
                port,
                reason: e.to_string(),
            })?
            .port();
        if server.callback_port.is_none() {
            record.callback_port = Some(port);
        }
        if let Some(discovery) = discovery {
            record.discovery = Some(discovery.clone());
        }
        self.ctx.store().put_server(guard, &record).await?;
        Ok((listener, port))
    }

    /// The scopes of a login: those asked for, else a pending step-up's
    /// (counted), else a stored challenge's (authoritative), else the
    /// configured ones, else what the probe's challenge or the PRM suggest.
    pub(crate) async fn login_scopes(
        &self,
        guard: &ServerGuard,
        server: &crate::config::ServerConfig,
        discovery: &Discovery,
        asked: Vec<String>,
        probed: Option<crate::oauth::challenge::BearerChallenge>,
        stored: Option<crate::oauth::challenge::BearerChallenge>,
    ) -> Result<Vec<String>, BrokerError> {
        let record = self.ctx.store().server(guard.name())?;
        let step_up = record
            .as_ref()
            .and_then(|r| r.step_up.as_ref())
            .filter(|s| !s.scopes.is_empty())
            .map(|s| s.scopes.clone());
        let (explicit, challenge) = if !asked.is_empty() {
            (asked, None)
        } else if let Some(scopes) = step_up {
            count_step_up_attempt(&self.ctx, guard).await?;
            (scopes, None)
        } else if stored.is_some() {
            (Vec::new(), stored)
        } else {
            (server.scopes.clone(), probed)
        };
        Ok(flow::select_scopes(
            &explicit,
            challenge.as_ref(),
            discovery,
        ))
    }

    pub(crate) fn spawn_callback(
        self: &Arc<Self>,
        name: ServerName,
        active: Arc<ActiveLogin>,
        listener: std::net::TcpListener,
    ) -> Result<(), BrokerError> {
        let listener =
            tokio::net::TcpListener::from_std(listener).map_err(|e| BrokerError::CallbackPort {
                port: active.callback_port,
                reason: e.to_string(),
            })?;
        let logins = Arc::downgrade(self);
        let handler_name = name.clone();
        let handler: callback::Handler = Arc::new(move |params| {
            let logins = logins.clone();
            let name = handler_name.clone();
            Box::pin(async move {
                let Some(logins) = logins.upgrade() else {
                    return Page {
                        ok: false,
                        title: "mcpauth is shutting down".into(),
                        message: "Try again in a moment.".into(),
                    };
                };
                match logins.complete_login(name.as_str(), params).await {
                    Ok(_) => Page {
                        ok: true,
                        title: format!("Logged in to {name}"),
                        message: "mcpauth has the tokens. You can close this tab.".into(),
                    },
                    Err(e) => Page {
                        ok: false,
                        title: format!("Login to {name} failed"),
                        message: e.to_string(),
                    },
                }
            })
        });
        let timeout = self.ctx.options.callback_timeout;
        let stop = active.stop.clone();
        let shutdown = self.ctx.shutdown().wait();
        let logins = Arc::downgrade(self);
        tokio::spawn(async move {
            let stopped = stop.wait();
            let timed_out = tokio::select! {
                _ = callback::serve(listener, handler, async {
                    tokio::select! { _ = stopped => {}, _ = shutdown => {} }
                }) => false,
                _ = tokio::time::sleep(timeout) => true,
            };
            if timed_out && let Some(logins) = logins.upgrade() {
                let guard = logins.ctx.locks.lock(&name).await;
                let mut message =
                    format!("no answer from the browser within {}s", timeout.as_secs());
                if active.outcome.borrow().is_none() {
                    message.push_str(
                        &logins
                            .drop_unanswered_registration(&guard, &active.flow)
                            .await,
                    );
                }
                logins
                    .finish_login(
                        &guard,
                        &active,
                        LoginOutcome::Failed {
                            kind: FailureKind::TimedOut,
                            message,
                        },
                        true,
                    )
                    .await;
            }
        });
        Ok(())
    }

    /// A login whose browser never came back may have met an AS that no
    /// longer knows the client (Atlassian answers an HTML 500 at
    /// `/authorize` for a stale one), and nothing comes back to say so.
    /// A registration the logins made itself for that login is dropped,
    /// so the next login registers anew, once; one the person configured
    /// is kept. Returns the rest of the login's line.
    async fn drop_unanswered_registration(
        &self,
        guard: &ServerGuard,
        flow: &PendingFlow,
    ) -> String {
        let name = guard.name();
        let dynamic = self
            .ctx
            .store()
            .registration(name, &flow.issuer)
            .ok()
            .flatten()
            .filter(|r| r.client_id == flow.client_id && r.kind == RegistrationKind::Dynamic);
        let Some(registration) = dynamic else {
            return "; run the login again".into();
        };
        match self
            .ctx
            .store()
            .delete_registration(guard, &registration.issuer)
            .await
        {
            Ok(()) => {
                info!(server = %name, "login timed out; the client registration was dropped");
                "; if the authorization page showed an error, the server may no longer know the client mcpauthd registered: the next login registers a new one".into()
            }
            Err(e) => {
                warn!(server = %name, error = %e, "cannot drop the client registration");
                "; run the login again".into()
            }
        }
    }

    /// The registration to use with `discovery`'s issuer for a login that
    /// asks for `scopes`: configured or CIMD, else a stored dynamic one for
    /// the same redirect URI, else a new dynamic registration. Stored per
    /// issuer.
    ///
    /// A stored dynamic registration made for fewer scopes than the login
    /// asks for (a step-up, a changed config) is made again, once, for the
    /// union: the AS may refuse any scope the client was not registered
    /// with. One registered before scopes were recorded is kept; if the AS
    /// refuses a scope for it, the callback drops it (`complete_login`).
    pub(crate) async fn registration_for(
        &self,
        guard: &ServerGuard,
        server: &crate::config::ServerConfig,
        discovery: &Discovery,
        redirect_uri: &str,
        scopes: &[String],
        now: i64,
    ) -> Result<Registration, BrokerError> {
        let name = guard.name();
        if let Some(mut reg) =
            registration::static_registration(server, discovery, redirect_uri, now)?
        {
            // How this client's secret is taken, as learned at the token
            // endpoint, stays.
            if reg.client_secret.is_some()
                && let Some(stored) = self.ctx.store().registration(name, &discovery.issuer)?
                && stored.kind == reg.kind
                && stored.client_id == reg.client_id
                && stored.client_secret.is_some()
            {
                reg.auth_method = stored.auth_method;
            }
            self.ctx.store().put_registration(guard, &reg).await?;
            return Ok(reg);
        }
        let mut register_for = scopes.to_vec();
        if let Some(reg) = self.ctx.store().registration(name, &discovery.issuer)?
            && reg.kind == RegistrationKind::Dynamic
            && reg.redirect_uri == redirect_uri
        {
            match &reg.scopes {
                None => return Ok(reg),
                Some(_) if reg.covers(scopes) => return Ok(reg),
                Some(held) => {
                    info!(server = %name, issuer = %discovery.issuer, "the login asks for scopes the client was not registered with; registering again");
                    register_for = held.clone();
                    for s in scopes {
                        if !register_for.contains(s) {
                            register_for.push(s.clone());
                        }
                    }
                }
            }
        }
        let reg = self
            .ctx
            .http
            .register(discovery, redirect_uri, &register_for, now)
            .await
            .map_err(BrokerError::OAuth)?;
        self.ctx.store().put_registration(guard, &reg).await?;
        info!(server = %name, issuer = %discovery.issuer, "registered a client dynamically");
        Ok(reg)
    }

    /// Completes a login with the callback's parameters (from the loopback
    /// server or a pasted redirect URL).
    pub async fn complete_login(
        self: &Arc<Self>,
        name: &str,
        params: CallbackParams,
    ) -> Result<LoginOutcome, BrokerError> {
        let name = ServerName::parse(name)?;
        let active = self.get(&name);
        let _completing = match &active {
            Some(a) => Some(a.completing.lock().await),
            None => None,
        };
        // Held until the grant is installed: the code exchange and the
        // install are one operation on the server's state.
        let guard = self.ctx.locks.lock(&name).await;
        let login = self.stored_login(&name)?;
        let code = match flow::validate_callback(&login.flow, login.iss_expected(), &params) {
            Ok(code) => code,
            // A wrong state is ignored: whoever sent it does not know the
            // flow, and must not be able to end it.
            Err(e @ CallbackError::StateMismatch) => {
                warn!(server = %name, "callback with a wrong state ignored");
                return Err(BrokerError::Callback(e));
            }
            Err(e) => {
                self.callback_refused(&guard, active.as_ref(), &login, &e)
                    .await?;
                return Err(BrokerError::Callback(e));
            }
        };

        let obtained = match self
            .ctx
            .http
            .exchange_code(
                &login.discovery,
                &login.registration,
                &code,
                &login.flow.verifier,
                &login.flow.redirect_uri,
            )
            .await
        {
            Ok(o) => o,
            Err(e) => {
                self.exchange_failed(&guard, active.as_ref(), &login, &e)
                    .await?;
                return Err(BrokerError::OAuth(e));
            }
        };
        remember_client_auth(&self.ctx, &guard, &login.registration, obtained.auth_method).await?;
        let tokens = obtained.tokens;
        if login.at_idp {
            return self
                .finish_idp_login(guard, active.as_ref(), &login.flow, tokens)
                .await;
        }
        self.install_login(&guard, active.as_ref(), &login, tokens)
            .await
    }

    /// The login `complete_login` completes, as stored when it started:
    /// a flow not yet expired, the discovery of its issuer (an enterprise
    /// server's at its identity provider) and the client it started with.
    fn stored_login(&self, name: &ServerName) -> Result<StoredLogin, BrokerError> {
        let flow = self
            .ctx
            .store()
            .flow(name)?
            .filter(|f| f.expires_at_ms > self.ctx.now_ms())
            .ok_or_else(|| BrokerError::NoLoginPending(name.to_string()))?;
        let record = self.ctx.store().server(name)?;
        // An enterprise server's login is at its identity provider.
        let idp_login = self.enterprise.idp_discovery_for(name, &flow.issuer)?;
        let at_idp = idp_login.is_some();
        let discovery = record
            .as_ref()
            .and_then(|r| r.discovery.clone())
            .filter(|d| d.issuer == flow.issuer)
            .map(|d| self.ctx.settings_now(name, d))
            .or(idp_login)
            .ok_or_else(|| BrokerError::NoLoginPending(name.to_string()))?;
        let registration = self
            .ctx
            .store()
            .registration(name, &flow.issuer)?
            .filter(|r| r.client_id == flow.client_id)
            .ok_or_else(|| BrokerError::NoLoginPending(name.to_string()))?;
        Ok(StoredLogin {
            flow,
            discovery,
            registration,
            at_idp,
        })
    }

    /// A callback that failed its checks, or that carries the AS's
    /// refusal, ends the login (not a wrong state: see `complete_login`).
    /// A dynamic registration not known to cover the refused scopes is
    /// dropped first.
    async fn callback_refused(
        &self,
        guard: &ServerGuard,
        active: Option<&Arc<ActiveLogin>>,
        login: &StoredLogin,
        e: &CallbackError,
    ) -> Result<(), BrokerError> {
        let name = guard.name();
        let kind = if matches!(e, CallbackError::Denied { .. }) {
            FailureKind::Denied
        } else {
            FailureKind::Rejected
        };
        let mut message = e.to_string();
        if matches!(e, CallbackError::Denied { error, .. } if error == "invalid_target")
            && login.discovery.resource_to_send().is_some()
        {
            message.push_str(SEND_RESOURCE_HINT);
        }
        // The AS refuses a scope this client was not registered
        // for: a registration of ours not known to cover it is
        // dropped, so the next login registers one that does.
        // One known to cover it is kept: no loop.
        if matches!(e, CallbackError::Denied { error, .. } if error == "invalid_scope")
            && login.registration.kind == RegistrationKind::Dynamic
            && !login.registration.covers(&login.flow.scopes)
        {
            self.ctx
                .store()
                .delete_registration(guard, &login.registration.issuer)
                .await?;
            message.push_str(
                "; the client was not registered for that scope, so its registration was dropped: the next login registers a client for it",
            );
        }
        warn!(server = %name, error = %e, "login failed at the callback");
        self.end_flow(guard, active, LoginOutcome::Failed { kind, message })
            .await;
        Ok(())
    }

    /// A code the token endpoint did not exchange ends the login; a
    /// dynamic registration the AS no longer knows is dropped first.
    async fn exchange_failed(
        &self,
        guard: &ServerGuard,
        active: Option<&Arc<ActiveLogin>>,
        login: &StoredLogin,
        e: &crate::oauth::OAuthError,
    ) -> Result<(), BrokerError> {
        let name = guard.name();
        let registration = &login.registration;
        let mut message = e.to_string();
        if e.token_error() == Some("invalid_target") && login.discovery.resource_to_send().is_some()
        {
            message.push_str(SEND_RESOURCE_HINT);
        }
        if e.token_failure() == crate::oauth::TokenFailure::ClientUnknown
            && registration.kind == RegistrationKind::Dynamic
        {
            // The AS forgot our registration: drop it so the next
            // login registers afresh instead of looping.
            self.ctx
                .store()
                .delete_registration(guard, &registration.issuer)
                .await?;
            message.push_str("; the stale client registration was dropped, run the login again");
        }
        warn!(server = %name, error = %e, "login failed at the token endpoint");
        self.ctx.record_error(guard, &message).await;
        self.end_flow(
            guard,
            active,
            LoginOutcome::Failed {
                kind: FailureKind::Error,
                message,
            },
        )
        .await;
        Ok(())
    }

    /// Installs the tokens of a completed login and settles it.
    async fn install_login(
        &self,
        guard: &ServerGuard,
        active: Option<&Arc<ActiveLogin>>,
        login: &StoredLogin,
        tokens: crate::oauth::token::TokenSet,
    ) -> Result<LoginOutcome, BrokerError> {
        let name = guard.name();
        let flow = &login.flow;
        let expires_at_ms = tokens.expires_at_ms(self.ctx.now_ms());
        let account = crate::oauth::jwt::account_of(&tokens);
        let new = NewGrant {
            account,
            issuer: flow.issuer.clone(),
            client_id: login.registration.client_id.clone(),
            resource: login.discovery.resource.clone(),
            access_token: tokens.access_token,
            token_type: tokens.token_type,
            refresh_token: tokens.refresh_token,
            expires_at_ms,
            scopes: tokens.scope.unwrap_or_else(|| flow.scopes.clone()),
        };
        let granted = new.scopes.clone();
        // Durable (and exported) before anyone hears of it.
        let installed = self
            .installer
            .install_grant(guard, new, GrantSource::Login, |r| login_done(r, &granted))
            .await;
        let grant = match installed {
            Ok(grant) => grant,
            Err(e) => {
                self.end_flow(
                    guard,
                    active,
                    LoginOutcome::Failed {
                        kind: FailureKind::Error,
                        message: e.to_string(),
                    },
                )
                .await;
                return Err(e);
            }
        };
        let outcome = LoginOutcome::Success {
            scopes: grant.scopes.clone(),
            expires_at_ms: grant.expires_at_ms,
            refresh_token: grant.refresh_token.is_some(),
        };
        info!(server = %name, generation = grant.generation, "login complete");
        self.end_flow(guard, active, outcome.clone()).await;
        Ok(outcome)
    }

    /// Cancels the login in progress, if any.
    pub async fn cancel_login(&self, name: &str) -> Result<bool, BrokerError> {
        let name = ServerName::parse(name)?;
        let Some(active) = self.get(&name) else {
            return Ok(false);
        };
        if active.outcome.borrow().is_some() {
            return Ok(false);
        }
        let guard = self.ctx.locks.lock(&name).await;
        self.finish_login(
            &guard,
            &active,
            LoginOutcome::Failed {
                kind: FailureKind::Cancelled,
                message: "the login was cancelled".into(),
            },
            true,
        )
        .await;
        Ok(true)
    }

    pub(crate) async fn end_flow(
        &self,
        guard: &ServerGuard,
        active: Option<&Arc<ActiveLogin>>,
        outcome: LoginOutcome,
    ) {
        let name = guard.name();
        match active {
            Some(active) => self.finish_login(guard, active, outcome, true).await,
            None => {
                if let Err(e) = self.ctx.store().delete_flow(guard).await {
                    warn!(server = %name, error = %e, "cannot delete the finished flow");
                }
            }
        }
    }

    /// Settles a login: publishes the outcome, stops its callback server,
    /// and (with `delete`) removes the stored flow.
    pub(crate) async fn finish_login(
        &self,
        guard: &ServerGuard,
        active: &Arc<ActiveLogin>,
        outcome: LoginOutcome,
        delete: bool,
    ) {
        let name = guard.name();
        if active.outcome.borrow().is_some() {
            return;
        }
        if delete && let Err(e) = self.ctx.store().delete_flow(guard).await {
            warn!(server = %name, error = %e, "cannot delete the finished flow");
        }
        if let LoginOutcome::Failed { kind, message } = &outcome {
            info!(server = %name, ?kind, %message, "login ended");
        }
        active.outcome.send_replace(Some(outcome));
        active.stop.trigger();
        let mut logins = self.active.lock().unwrap();
        if logins.get(name).is_some_and(|a| Arc::ptr_eq(a, active)) {
            logins.remove(name);
        }
    }
}

/// What a completed login changes in the server's record: the step-up is
/// satisfied (its attempts stay counted, so the bound holds across
/// logins), and the stored challenge has served.
pub(crate) fn login_done(record: &mut crate::state::ServerRecord, granted: &[String]) {
    if let Some(step_up) = record.step_up.as_mut()
        && step_up.scopes.iter().all(|x| granted.contains(x))
    {
        step_up.scopes.clear();
    }
    record.challenge = None;
}

/// Lets the person pick the account a login is for, when it matters: with
/// `login_hint` configured, that account is asked for; else, for a server
/// whose URL another configured entry also has (two accounts on one
/// server), `prompt=select_account`, so the authorization server does not
/// silently sign in the account its browser session already has. A
/// request that already carries a `prompt` (or `login_hint`) keeps it.
pub(crate) fn choose_account(url: &mut url::Url, login_hint: Option<&str>, shares_url: bool) {
    let has = |name: &str| url.query_pairs().any(|(k, _)| k == name);
    if let Some(hint) = login_hint {
        if !has("login_hint") {
            url.query_pairs_mut().append_pair("login_hint", hint);
        }
    } else if shares_url && !has("prompt") {
        url.query_pairs_mut()
            .append_pair("prompt", "select_account");
    }
}

/// The loopback redirect URI of a login whose callback listens on `port`.
pub(crate) fn redirect_uri(port: u16) -> String {
    format!("http://127.0.0.1:{port}/callback")
}

#[cfg(test)]
mod account_tests {
    use super::choose_account;

    #[test]
    fn the_account_is_chosen_only_when_it_matters_and_an_existing_prompt_stays() {
        let base = "https://as.example/authorize?response_type=code&client_id=c";
        let run = |base: &str, hint: Option<&str>, shared: bool| {
            let mut url = url::Url::parse(base).unwrap();
            choose_account(&mut url, hint, shared);
            url.query().unwrap().to_string()
        };
        assert_eq!(run(base, None, false), "response_type=code&client_id=c");
        assert!(run(base, None, true).ends_with("&prompt=select_account"));
        let hinted = run(base, Some("ann@example.com"), true);
        assert!(
            hinted.ends_with("&login_hint=ann%40example.com"),
            "{hinted}"
        );
        assert!(!hinted.contains("prompt"));
        // An authorization request that already has a prompt keeps it.
        let with_prompt = format!("{base}&prompt=consent");
        assert_eq!(
            run(&with_prompt, None, true),
            "response_type=code&client_id=c&prompt=consent"
        );
    }
}
