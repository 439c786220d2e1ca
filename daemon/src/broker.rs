//! The broker: the daemon's parts, wired once at start, and the one
//! facade the RPC layer serves.
//!
//! `Broker` is a short list of parts. Each owns its state and its locks
//! (its module says which) and depends on the shared [`Context`] and on
//! the parts below it, never on `Broker`:
//!
//! ```text
//!   Broker ─┬─ TokenService ─┬─ Logins ─┬─ Refresher ─┬─ Unattended ─┬─ Enterprise
//!           │  (tokens.rs)   │ (login/) │ (refresh.rs)│(unattended.rs)│(enterprise.rs)
//!           ├─ Importer ─────┼──────────┴─────────────┴──────┬───────┘
//!           ├─ FileWatch ────┤                               ▼
//!           ├─ ConfigEditor  └──────────────────────▶ Installer ─┬─ TokenFiles
//!           └─ Scheduler                              (install.rs) ├─ Notices
//!                                                                  └─ Backoffs
//!   every part ──▶ Context (config in force, store, locks, HTTP, clock, events)
//! ```
//!
//! What crosses parts is read here: the views of servers (`status`,
//! `list`, `get`) combine the store with the logins in progress, the
//! report guards, the backoffs and the scheduler's plan. It knows neither
//! tonic nor sled.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::broadcast;

use crate::backoff::Backoffs;
use crate::config::{Config, NewServer, ServerConfig, ServerName};
use crate::config_edit::{ConfigEditor, ConfigHealth};
use crate::context::{BrokerOptions, Context, Event, EventKind, Paths};
use crate::desktop::Notices;
use crate::enterprise::Enterprise;
use crate::error::BrokerError;
use crate::file_watch::FileWatch;
use crate::files::TokenFiles;
use crate::import::{ImportItem, ImportOutcome, Importer};
use crate::install::Installer;
use crate::login::{LoginHandle, LoginOptions, LoginOutcome, Logins};
use crate::oauth::flow::CallbackParams;
use crate::refresh::{LogoutOutcome, Refresher};
use crate::scheduler::{Plan, Scheduler};
use crate::shutdown::Shutdown;
use crate::state::{Grant, ServerRecord};
use crate::store::Store;
use crate::tokens::TokenService;
use crate::unattended::Unattended;

/// Authorization state of a server as shown to people and clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthState {
    LoginRequired,
    LoginPending,
    Authorized,
    RefreshFailing,
    StepUpRequired,
    /// No token yet, and none needs a person: one is obtained at the first
    /// request (client credentials, workload).
    OnDemand,
    /// The store key is not at hand: no secret can be read.
    Locked,
}

/// What a client sees of a server: declared config plus runtime state.
#[derive(Clone, Debug)]
pub struct ServerView {
    pub name: ServerName,
    pub config: ServerConfig,
    pub record: Option<ServerRecord>,
    pub state: AuthState,
    /// Expiry of the access token held, if any and known.
    pub token_expires_at_ms: Option<i64>,
    /// Scopes of the grant held.
    pub granted_scopes: Vec<String>,
    /// A person's login is held without a refresh token.
    pub no_refresh_token: bool,
    /// Whose tokens the grant holds, when known.
    pub account: Option<String>,
    /// What the refresh scheduler plans for this server.
    pub plan: Plan,
    /// The client id in effect and where it comes from.
    pub client_id: Option<(String, &'static str)>,
    /// The callback port in effect and where it comes from.
    pub callback_port: Option<(u16, &'static str)>,
    /// While the report guard holds refreshes back: why (shown as the
    /// last error; it is not stored).
    pub guard_error: Option<String>,
}

/// Derives the state shown for a server from what is stored.
/// `unattended`: the server's grant needs no person (it is renewed by
/// asking again, not with a refresh token).
pub fn auth_state(
    record: Option<&ServerRecord>,
    grant: Option<&Grant>,
    login_pending: bool,
    now_ms: i64,
    unattended: bool,
) -> AuthState {
    if login_pending {
        return AuthState::LoginPending;
    }
    if unattended {
        let failing = record.and_then(|r| r.last_error.as_ref()).is_some();
        return match grant {
            None if failing => AuthState::RefreshFailing,
            None => AuthState::OnDemand,
            Some(g) if failing && g.expires_at_ms.is_some_and(|at| at <= now_ms) => {
                AuthState::RefreshFailing
            }
            Some(_) => AuthState::Authorized,
        };
    }
    if record
        .and_then(|r| r.step_up.as_ref())
        .is_some_and(|s| !s.scopes.is_empty())
    {
        return AuthState::StepUpRequired;
    }
    let Some(grant) = grant else {
        return AuthState::LoginRequired;
    };
    let expired = grant.expires_at_ms.is_some_and(|at| at <= now_ms);
    match (expired, grant.refresh_token.is_some()) {
        (false, _) => AuthState::Authorized,
        (true, false) => AuthState::LoginRequired,
        (true, true) if record.and_then(|r| r.last_error.as_ref()).is_some() => {
            AuthState::RefreshFailing
        }
        (true, true) => AuthState::Authorized,
    }
}

/// What the daemon reports about itself.
#[derive(Clone, Debug)]
pub struct DaemonStatus {
    pub pid: u32,
    pub uptime_ms: u64,
    pub paths: Paths,
    pub socket_activated: bool,
    pub config: ConfigHealth,
    pub servers: Vec<ServerView>,
    /// Where the store key is, or why it is not at hand.
    pub store_key: StoreKeyStatus,
}

/// The store key's whereabouts, for `status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreKeyStatus {
    Keyring,
    File(PathBuf),
    Locked(String),
}

/// The parts, each behind an `Arc` so the tasks it spawns can hold it.
pub struct Broker {
    ctx: Arc<Context>,
    started: Instant,
    socket_activated: bool,
    editor: Arc<ConfigEditor>,
    tokens: Arc<TokenService>,
    logins: Arc<Logins>,
    refresher: Arc<Refresher>,
    unattended: Arc<Unattended>,
    enterprise: Arc<Enterprise>,
    importer: Importer,
    file_watch: Arc<FileWatch>,
    scheduler: Arc<Scheduler>,
}

impl Broker {
    /// Wires the parts, loads the config and reconciles the store with it.
    pub async fn start(
        paths: Paths,
        store: Store,
        socket_activated: bool,
        shutdown: Shutdown,
        options: BrokerOptions,
    ) -> Result<Arc<Self>, BrokerError> {
        let scheduler = Scheduler::new(options.clock.clone());
        let ctx = Arc::new(Context::new(paths, store, shutdown, options));
        let backoffs = Arc::new(Backoffs::default());
        let notices = Arc::new(Notices::new(ctx.clone()));
        let files = Arc::new(TokenFiles::new(ctx.clone()));
        let installer = Arc::new(Installer::new(
            ctx.clone(),
            backoffs.clone(),
            files.clone(),
            notices.clone(),
        ));
        let enterprise = Arc::new(Enterprise::new(ctx.clone()));
        let unattended = Arc::new(Unattended::new(
            ctx.clone(),
            installer.clone(),
            backoffs.clone(),
            enterprise.clone(),
            scheduler.clone(),
        ));
        let refresher = Arc::new(Refresher::new(
            ctx.clone(),
            installer.clone(),
            backoffs.clone(),
            unattended.clone(),
        ));
        let logins = Arc::new(Logins::new(
            ctx.clone(),
            installer.clone(),
            refresher.clone(),
            enterprise.clone(),
        ));
        let tokens = Arc::new(TokenService::new(
            ctx.clone(),
            refresher.clone(),
            notices.clone(),
            logins.clone(),
        ));
        // What each part keeps in memory for a server whose state is
        // deleted (removed, or its URL changed) goes with it.
        let forget = {
            let (backoffs, notices, tokens, logins) =
                (backoffs, notices, tokens.clone(), logins.clone());
            Box::new(move |name: &ServerName| {
                backoffs.end(name);
                notices.person_no_longer_needed(name);
                tokens.forget(name);
                logins.abandon(name, "the server was removed or its URL changed");
            })
        };
        let editor = Arc::new(ConfigEditor::start(ctx.clone(), forget).await?);
        Ok(Arc::new(Self {
            importer: Importer::new(ctx.clone(), editor.clone(), installer.clone()),
            file_watch: Arc::new(FileWatch::new(ctx.clone(), files, installer)),
            ctx,
            started: Instant::now(),
            socket_activated,
            editor,
            tokens,
            logins,
            refresher,
            unattended,
            enterprise,
            scheduler,
        }))
    }

    pub fn now_ms(&self) -> i64 {
        self.ctx.now_ms()
    }

    /// What every part shares (tests reach the locks and the store here).
    #[cfg(test)]
    pub(crate) fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    pub fn scheduler(&self) -> &Arc<Scheduler> {
        &self.scheduler
    }

    /// Runs the refresh scheduler until shutdown; it re-plans on every
    /// event (new token, login required, server added or removed).
    pub fn start_scheduler(&self) {
        let scheduler = self.scheduler.clone();
        tokio::spawn(
            scheduler
                .clone()
                .run(self.refresher.target(), self.ctx.shutdown().wait()),
        );
        let mut events = self.ctx.subscribe();
        let stop = self.ctx.shutdown().wait();
        tokio::spawn(async move {
            tokio::pin!(stop);
            loop {
                tokio::select! {
                    _ = &mut stop => return,
                    event = events.recv() => match event {
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => scheduler.wake(),
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                }
            }
        });
    }

    /// Starts exporting on new tokens and importing on file changes.
    pub fn start_token_files(&self) {
        self.file_watch.start();
    }

    /// Watches the workload assertion and ID token files.
    pub fn start_assertion_watch(&self) {
        self.unattended.start_assertion_watch();
    }

    pub fn store(&self) -> &Store {
        self.ctx.store()
    }

    pub fn paths(&self) -> &Paths {
        &self.ctx.paths
    }

    pub fn shutdown(&self) -> &Shutdown {
        self.ctx.shutdown()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.ctx.subscribe()
    }

    pub fn config(&self) -> Arc<Config> {
        self.ctx.config()
    }

    /// `name` parsed, if it is a configured server.
    pub fn configured(&self, name: &str) -> Result<ServerName, BrokerError> {
        self.ctx.configured(name)
    }

    /// The store key came after the start: every server's state is
    /// readable now, so the scheduler plans again and token files are
    /// written (as after any change of a server).
    pub(crate) fn store_unlocked(&self) {
        for (name, server) in self.ctx.config().servers.iter() {
            self.ctx.publish(
                Some(name.clone()),
                EventKind::ServerChanged {
                    url: server.url.to_string(),
                },
            );
        }
    }

    pub fn status(&self) -> Result<DaemonStatus, BrokerError> {
        Ok(DaemonStatus {
            pid: std::process::id(),
            uptime_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            paths: self.ctx.paths.clone(),
            socket_activated: self.socket_activated,
            config: self.editor.health(),
            servers: self.list()?,
            store_key: match self.ctx.store().key_in_file() {
                Ok(true) => StoreKeyStatus::File(crate::store_key_file()),
                Ok(false) => StoreKeyStatus::Keyring,
                Err(why) => StoreKeyStatus::Locked(why),
            },
        })
    }

    pub fn list(&self) -> Result<Vec<ServerView>, BrokerError> {
        let config = self.ctx.config();
        config
            .servers
            .iter()
            .map(|(name, server)| self.view(name, server))
            .collect()
    }

    pub fn get(&self, name: &str) -> Result<ServerView, BrokerError> {
        let name = ServerName::parse(name)?;
        let config = self.ctx.config();
        let server = config
            .servers
            .get(&name)
            .ok_or_else(|| self.ctx.not_found(&name))?;
        self.view(&name, server)
    }

    fn view(&self, name: &ServerName, server: &ServerConfig) -> Result<ServerView, BrokerError> {
        let record = self.ctx.store.server(name)?;
        // A locked store still shows every server, as locked.
        let (grant, locked) = match self.ctx.store.grant(name) {
            Err(crate::store::StoreError::KeyMissing(_)) => (None, true),
            other => (other?, false),
        };
        let state = auth_state(
            record.as_ref(),
            grant.as_ref(),
            self.logins.is_active(name),
            self.ctx.now_ms(),
            // An enterprise server needs a person while no valid ID token
            // is at hand.
            server.grant.unattended()
                && server
                    .identity_provider
                    .as_ref()
                    .is_none_or(|idp| self.enterprise.id_token_valid(idp)),
        );
        let client_id = if let Some(id) = &server.client_id {
            Some((id.clone(), "configured"))
        } else {
            let issuer = record
                .as_ref()
                .and_then(|r| r.discovery.as_ref().map(|d| d.issuer.clone()));
            let registration = match &issuer {
                Some(issuer) if !locked => self.ctx.store.registration(name, issuer)?,
                _ => None,
            };
            match (registration, &grant) {
                (Some(reg), _) => Some((
                    reg.client_id,
                    match reg.kind {
                        crate::state::RegistrationKind::Configured => "configured",
                        crate::state::RegistrationKind::MetadataDocument => "metadata_document",
                        crate::state::RegistrationKind::Dynamic => "registered",
                    },
                )),
                (None, Some(g)) if !g.client_id.is_empty() => {
                    Some((g.client_id.clone(), "imported"))
                }
                _ => None,
            }
        };
        let callback_port = match (
            server.callback_port,
            record.as_ref().and_then(|r| r.callback_port),
        ) {
            (Some(port), _) => Some((port, "configured")),
            (None, Some(port)) => Some((port, "chosen")),
            _ => None,
        };
        let state = if locked { AuthState::Locked } else { state };
        Ok(ServerView {
            client_id,
            callback_port,
            name: name.clone(),
            config: server.clone(),
            record,
            state,
            token_expires_at_ms: grant.as_ref().and_then(|g| g.expires_at_ms),
            guard_error: self.tokens.report_guard_error(name),
            no_refresh_token: !server.grant.unattended()
                && grant.as_ref().is_some_and(|g| g.refresh_token.is_none()),
            account: grant.as_ref().and_then(|g| g.account.clone()),
            granted_scopes: grant.map(|g| g.scopes).unwrap_or_default(),
            plan: self.scheduler.plan(name, self.refresher.timing(name)),
        })
    }

    /// `mcpauthctl doctor`: discovery and registration for `name` walked
    /// step by step, changing nothing.
    pub async fn doctor(
        &self,
        name: &str,
    ) -> Result<Vec<crate::oauth::doctor::DoctorStep>, BrokerError> {
        let name = self.ctx.configured(name)?;
        let server = self
            .ctx
            .config()
            .servers
            .get(&name)
            .cloned()
            .ok_or_else(|| self.ctx.not_found(&name))?;
        Ok(self.ctx.http.diagnose(name.as_str(), &server).await)
    }

    /// Adds a server by editing `config.toml`, then applies the new file.
    pub async fn add(&self, new: NewServer) -> Result<ServerView, BrokerError> {
        let name = self.editor.add(new).await?;
        self.get(name.as_str())
    }

    /// Removes a server from `config.toml` and deletes all of its state.
    pub async fn remove(&self, name: &str) -> Result<(), BrokerError> {
        self.editor.remove(name).await
    }

    /// The config editor, for the watcher to reload `config.toml`.
    pub fn config_editor(&self) -> Arc<ConfigEditor> {
        self.editor.clone()
    }

    /// Adopts the logins other tools hold.
    pub async fn import(
        &self,
        items: Vec<ImportItem>,
        dry_run: bool,
    ) -> Result<Vec<ImportOutcome>, BrokerError> {
        self.importer.import(items, dry_run).await
    }

    /// Starts a browser login, or joins the one in progress.
    pub async fn login(&self, name: &str, scopes: Vec<String>) -> Result<LoginHandle, BrokerError> {
        self.logins.login(name, scopes).await
    }

    /// Starts a login, or joins the one in progress.
    pub async fn login_with(
        &self,
        name: &str,
        options: LoginOptions,
    ) -> Result<LoginHandle, BrokerError> {
        self.logins.login_with(name, options).await
    }

    /// Completes a login with a pasted redirect URL's parameters.
    pub async fn complete_login(
        &self,
        name: &str,
        params: CallbackParams,
    ) -> Result<LoginOutcome, BrokerError> {
        self.logins.complete_login(name, params).await
    }

    /// Cancels the login in progress, if any.
    pub async fn cancel_login(&self, name: &str) -> Result<bool, BrokerError> {
        self.logins.cancel_login(name).await
    }

    /// Ends any login in progress, then revokes and deletes the tokens.
    pub async fn logout(
        &self,
        name: &str,
        forget_client: bool,
    ) -> Result<LogoutOutcome, BrokerError> {
        self.ctx.configured(name)?;
        self.logins.cancel_login(name).await?;
        self.refresher.logout(name, forget_client).await
    }

    /// Refreshes `name`'s grant now.
    pub async fn refresh(&self, name: &str) -> Result<Grant, BrokerError> {
        self.refresher.refresh(name).await
    }

    /// The current token, valid for at least `min_ttl` if it can be made so.
    pub async fn get_token(
        &self,
        name: &str,
        min_ttl: std::time::Duration,
    ) -> Result<Grant, BrokerError> {
        self.tokens.get_token(name, min_ttl).await
    }

    /// `get_token` for a headers helper.
    pub async fn helper_token(
        &self,
        name: &str,
        min_ttl: std::time::Duration,
    ) -> Result<Grant, BrokerError> {
        self.tokens.helper_token(name, min_ttl).await
    }

    /// A resource server rejected the token with this fingerprint.
    pub async fn report_unauthorized(
        &self,
        name: &str,
        fingerprint: &str,
        http_status: u32,
        www_authenticate: &str,
    ) -> Result<Grant, BrokerError> {
        self.tokens
            .report_unauthorized(name, fingerprint, http_status, www_authenticate)
            .await
    }
}
