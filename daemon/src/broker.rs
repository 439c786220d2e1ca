//! The broker: the daemon's domain core.
//!
//! It holds the config in force, applies config changes to the store,
//! answers queries about servers, and publishes [`Event`]s. The RPC layer
//! is a thin adapter over it; the watcher feeds it file changes. It knows
//! neither tonic nor sled.
//!
//! Config changes are serialised by one async mutex (`edits`): an RPC edit
//! and a reload triggered by the watcher never interleave, and the store is
//! flushed before either returns. A change that removes a server or changes
//! its URL also takes that server's lock (see `locks.rs`), so it waits for
//! a refresh or login in flight, and nothing started under the old identity
//! writes after it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::broadcast;
use tracing::{info, warn};

use crate::clock::{Clock, SystemClock};
use crate::config::{
    Config, ConfigDocument, ConfigError, InvalidInput, NewServer, ServerConfig, ServerName,
    write_atomically,
};
use crate::locks::{ServerGuard, ServerLocks};
use crate::login::Logins;
use crate::oauth::OAuthError;
use crate::oauth::flow::CallbackError;
use crate::oauth::http::HttpClient;
use crate::scheduler::{GrantTiming, Plan, RefreshResult, Scheduler, Target};
use crate::shutdown::Shutdown;
use crate::state::{Grant, ServerRecord};
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// A name no server has; with the configured name it most likely
    /// meant, if one is close.
    /// The config file is named, so a client that reached another daemon
    /// than it meant can tell.
    #[error("no server named {0:?} in {config}{hint}", config = .2.display(), hint = did_you_mean(.1))]
    NotFound(String, Option<String>, std::path::PathBuf),
    /// A name too like one already taken (they differ only in case).
    #[error(
        "a server named {existing:?} already exists, and {name:?} differs from it only in case; choose a name that tells them apart"
    )]
    NameTooAlike { name: String, existing: String },
    #[error(
        "a server named {0:?} already exists; see it with `mcpauthctl show {0}`, or remove it first with `mcpauthctl remove {0}`"
    )]
    AlreadyExists(String),
    #[error(transparent)]
    Invalid(#[from] InvalidInput),
    #[error("config.toml cannot be edited: {0}; fix the file first")]
    ConfigBroken(ConfigError),
    #[error(transparent)]
    Config(ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    OAuth(#[from] OAuthError),
    #[error(
        "cannot listen for the login callback on 127.0.0.1:{port}: {reason}; free the port or set another callback_port in config.toml"
    )]
    CallbackPort { port: u16, reason: String },
    #[error("no login is pending for {0:?}; run `mcpauthctl login {0}`")]
    NoLoginPending(String),
    #[error(transparent)]
    Callback(CallbackError),
    #[error("login required for {server}: {reason}; run `mcpauthctl login {server}`")]
    LoginRequired { server: String, reason: String },
    #[error("the authorization server is unavailable ({reason}); retry after {retry_after_secs}s")]
    Unavailable {
        reason: String,
        retry_after_secs: u64,
    },
    /// The report guard holds refreshes back: the MCP server rejects the
    /// tokens a report just produced.
    #[error("{reason}")]
    ServerRejecting {
        server: String,
        reason: String,
        retry_after_secs: u64,
    },
    #[error("internal error: {0}")]
    Internal(String),
    #[error("step-up required for {server}: the server needs scope {}; run `mcpauthctl login {server}`", scopes.join(" "))]
    StepUpRequired { server: String, scopes: Vec<String> },
    #[error(
        "{server} asked for more scope again after {attempts} authorizations in the last 10 minutes; not asking again now (check the server's scope configuration)"
    )]
    StepUpExhausted { server: String, attempts: usize },
    #[error("the new tokens for {server} were discarded: {reason}; try again")]
    Superseded { server: String, reason: String },
    #[error(
        "{server} uses grant = \"{grant}\": its tokens come without a login (`mcpauthctl token {server}` gets one)"
    )]
    NoLoginNeeded { server: String, grant: &'static str },
}

/// Where the daemon keeps things, resolved once at start.
#[derive(Clone, Debug)]
pub struct Paths {
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub config: PathBuf,
}

/// Whether the config on disk is the one in force.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigHealth {
    pub loaded_at_ms: i64,
    pub error: Option<String>,
    pub error_at_ms: i64,
}

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

/// Tunables of the broker; the defaults are the documented behaviour.
#[derive(Clone)]
pub struct BrokerOptions {
    /// How long the loopback callback waits for the browser.
    pub callback_timeout: Duration,
    /// The whole-request timeout of every outbound HTTP request.
    pub http_timeout: Duration,
    /// Wall-clock time (tests inject one that follows tokio's clock).
    pub clock: Arc<dyn Clock>,
}

impl Default for BrokerOptions {
    fn default() -> Self {
        Self {
            callback_timeout: crate::login::CALLBACK_TIMEOUT,
            http_timeout: crate::oauth::http::REQUEST_TIMEOUT,
            clock: Arc::new(SystemClock),
        }
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

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventKind {
    ServerAdded {
        url: String,
    },
    ServerRemoved,
    ServerChanged {
        url: String,
    },
    ConfigRejected {
        error: String,
    },
    /// `config.toml` is valid again after a rejection.
    ConfigAccepted,
    LoginStarted,
    TokenIssued {
        generation: u64,
        expires_at_ms: Option<i64>,
    },
    LoginRequired {
        reason: String,
    },
    StepUpRequired {
        scopes: Vec<String>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub at_ms: i64,
    /// `None` for daemon-wide events.
    pub server: Option<ServerName>,
    pub kind: EventKind,
}

/// How many events a slow `Watch` client may lag before it is told so.
const EVENT_BUFFER: usize = 256;

pub struct Broker {
    paths: Paths,
    started: Instant,
    socket_activated: bool,
    store: Store,
    config: RwLock<Arc<Config>>,
    health: Mutex<ConfigHealth>,
    edits: tokio::sync::Mutex<()>,
    events: broadcast::Sender<Event>,
    shutdown: Shutdown,
    pub(crate) http: HttpClient,
    pub(crate) logins: Logins,
    pub(crate) options: BrokerOptions,
    /// Per-server locks: every write of a server's state holds its guard.
    pub(crate) locks: ServerLocks,
    /// The report guard of each server: when a report last caused a
    /// refresh, and how many fresh tokens in a row were rejected.
    pub(crate) report_refreshes: Mutex<HashMap<ServerName, crate::tokens::ReportGuard>>,
    pub(crate) scheduler: Arc<Scheduler>,
    pub(crate) token_files: crate::files::TokenFiles,
    pub(crate) notices: crate::desktop::Notices,
    pub(crate) helper_checks: crate::tokens::HelperChecks,
    /// Refreshes caused by reports, in flight: the generation they replace
    /// and where their one result is published.
    pub(crate) inflight: Mutex<HashMap<ServerName, (u64, InflightResult)>>,
    /// Refreshes that failed for a reason that may pass (see
    /// `refresh::Backoff`), per server: until its time, no caller but a
    /// person (`mcpauthctl refresh`) sends another request.
    pub(crate) refresh_backoff: Mutex<HashMap<ServerName, crate::refresh::Backoff>>,
    /// The watch on the directories of workload assertion files.
    pub(crate) assertion_watch: Mutex<Option<notify::RecommendedWatcher>>,
    /// The identity providers' locks (`enterprise`): after a server's.
    pub(crate) idp_locks: crate::locks::IdpLocks,
}

pub(crate) type InflightResult =
    tokio::sync::watch::Receiver<Option<Result<Grant, Arc<BrokerError>>>>;

impl BrokerError {
    /// A copy for each waiter of a shared result. Variants that carry
    /// non-clonable sources keep their message.
    pub fn duplicate(&self) -> BrokerError {
        match self {
            BrokerError::NotFound(n, s, c) => {
                BrokerError::NotFound(n.clone(), s.clone(), c.clone())
            }
            BrokerError::OAuth(e) => BrokerError::OAuth(e.clone()),
            BrokerError::Callback(e) => BrokerError::Callback(e.clone()),
            BrokerError::LoginRequired { server, reason } => BrokerError::LoginRequired {
                server: server.clone(),
                reason: reason.clone(),
            },
            BrokerError::Unavailable {
                reason,
                retry_after_secs,
            } => BrokerError::Unavailable {
                reason: reason.clone(),
                retry_after_secs: *retry_after_secs,
            },
            BrokerError::StepUpRequired { server, scopes } => BrokerError::StepUpRequired {
                server: server.clone(),
                scopes: scopes.clone(),
            },
            other => BrokerError::Internal(other.to_string()),
        }
    }
}

impl Broker {
    /// Loads the config and reconciles the store with it.
    ///
    /// A config that does not parse does not stop the daemon: the last good
    /// config (kept in the store) stays in force and the error is reported.
    /// A missing file never removes servers either; an empty one does.
    pub async fn start(
        paths: Paths,
        store: Store,
        socket_activated: bool,
        shutdown: Shutdown,
        options: BrokerOptions,
    ) -> Result<Arc<Self>, BrokerError> {
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let options_clock = options.clock.clone();
        let broker = Arc::new(Self {
            paths,
            started: Instant::now(),
            socket_activated,
            store,
            config: RwLock::new(Arc::new(Config::default())),
            health: Mutex::new(ConfigHealth::default()),
            edits: tokio::sync::Mutex::new(()),
            events,
            shutdown,
            http: HttpClient::with_timeout(options.http_timeout),
            logins: Logins::default(),
            options,
            locks: ServerLocks::default(),
            report_refreshes: Mutex::new(HashMap::new()),
            scheduler: Scheduler::new(options_clock),
            token_files: Default::default(),
            notices: Default::default(),
            helper_checks: Default::default(),
            inflight: Mutex::new(HashMap::new()),
            refresh_backoff: Mutex::new(HashMap::new()),
            assertion_watch: Mutex::new(None),
            idp_locks: Default::default(),
        });
        // Sealed like the secrets: a locked store starts from the file.
        let last_good = match broker.store.last_good_config() {
            Err(StoreError::KeyMissing(_)) => None,
            other => other?,
        };
        if let Some(text) = last_good {
            match Config::parse(&text, &broker.paths.config) {
                Ok(config) => *broker.config.write().unwrap() = Arc::new(config),
                Err(e) => warn!(error = %e, "the stored last good config no longer parses"),
            }
        }
        {
            let _guard = broker.edits.lock().await;
            broker.reload_locked(true).await?;
        }
        Ok(broker)
    }

    pub fn now_ms(&self) -> i64 {
        self.options.clock.now_ms()
    }

    pub fn scheduler(&self) -> &Arc<Scheduler> {
        &self.scheduler
    }

    /// Runs the refresh scheduler until shutdown; it re-plans on every
    /// event (new token, login required, server added or removed).
    pub fn start_scheduler(self: &Arc<Self>) {
        let target: Arc<dyn Target> = Arc::new(BrokerTarget(Arc::downgrade(self)));
        let scheduler = self.scheduler.clone();
        tokio::spawn(scheduler.clone().run(target, self.shutdown.wait()));
        let mut events = self.events.subscribe();
        let stop = self.shutdown.wait();
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

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn paths(&self) -> &Paths {
        &self.paths
    }

    pub fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Changes a server's record (if the server still has one) and flushes.
    pub(crate) async fn update_record(
        &self,
        guard: &ServerGuard,
        change: impl FnOnce(&mut ServerRecord),
    ) -> Result<(), BrokerError> {
        if let Some(mut record) = self.store.server(guard.name())? {
            change(&mut record);
            self.store.put_server(guard, &record).await?;
        }
        Ok(())
    }

    /// Remembers the last error of a server for `status`.
    pub(crate) async fn record_error(&self, guard: &ServerGuard, message: &str) {
        let message = message.to_string();
        let now = self.now_ms();
        if let Err(e) = self
            .update_record(guard, |r| {
                r.last_error = Some(message);
                r.last_error_at_ms = Some(now);
            })
            .await
        {
            warn!(server = %guard.name(), error = %e, "cannot record the error");
        }
    }

    /// What the scheduler needs to know of `name`'s grant, if one is held.
    fn timing(&self, name: &ServerName) -> Option<GrantTiming> {
        let grant = self.store.grant(name).ok()??;
        Some(GrantTiming {
            generation: grant.generation,
            obtained_ms: grant.obtained_at_ms,
            expires_ms: grant.expires_at_ms,
            refreshable: grant.refresh_token.is_some() || self.unattended(name).is_some(),
            backoff: self.backoff(name, grant.generation),
        })
    }

    /// Why `name` holds no tokens, for a "login required": the error
    /// that cost the grant and how long ago, else that none are held.
    pub(crate) fn why_no_tokens(&self, name: &ServerName) -> String {
        let record = self.store.server(name).ok().flatten();
        match record.and_then(|r| Some((r.last_error?, r.last_error_at_ms))) {
            Some((error, Some(at))) => {
                format!("{error}, {} ago", ago(self.now_ms() - at))
            }
            Some((error, None)) => error,
            None => "no tokens are held".into(),
        }
    }

    pub(crate) fn publish(&self, server: Option<ServerName>, kind: EventKind) {
        // No receiver is not an error: nobody is watching.
        let _ = self.events.send(Event {
            at_ms: self.now_ms(),
            server,
            kind,
        });
    }

    pub fn config(&self) -> Arc<Config> {
        self.config.read().unwrap().clone()
    }

    /// The store key came after the start: every server's state is
    /// readable now, so the scheduler plans again and token files are
    /// written (as after any change of a server).
    pub(crate) fn store_unlocked(&self) {
        for (name, server) in self.config().servers.iter() {
            self.publish(
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
            paths: self.paths.clone(),
            socket_activated: self.socket_activated,
            config: self.health.lock().unwrap().clone(),
            servers: self.list()?,
            store_key: match self.store.key_status() {
                Ok(source) if source == "file" => StoreKeyStatus::File(crate::store_key_file()),
                Ok(_) => StoreKeyStatus::Keyring,
                Err(why) => StoreKeyStatus::Locked(why),
            },
        })
    }

    pub fn list(&self) -> Result<Vec<ServerView>, BrokerError> {
        let config = self.config();
        config
            .servers
            .iter()
            .map(|(name, server)| self.view(name, server))
            .collect()
    }

    /// `name` parsed, if it is a configured server.
    pub(crate) fn configured(&self, name: &str) -> Result<ServerName, BrokerError> {
        let name = ServerName::parse(name)?;
        if !self.config().servers.contains_key(&name) {
            return Err(self.not_found(&name));
        }
        Ok(name)
    }

    /// "No server named …", with the configured name it most likely meant.
    pub(crate) fn not_found(&self, name: &ServerName) -> BrokerError {
        let config = self.config();
        let names: Vec<&str> = config.servers.keys().map(ServerName::as_str).collect();
        BrokerError::NotFound(
            name.to_string(),
            closest(name.as_str(), &names),
            self.paths.config.clone(),
        )
    }

    pub fn get(&self, name: &str) -> Result<ServerView, BrokerError> {
        let name = ServerName::parse(name)?;
        let config = self.config();
        let server = config
            .servers
            .get(&name)
            .ok_or_else(|| self.not_found(&name))?;
        self.view(&name, server)
    }

    fn view(&self, name: &ServerName, server: &ServerConfig) -> Result<ServerView, BrokerError> {
        let record = self.store.server(name)?;
        // A locked store still shows every server, as locked.
        let (grant, locked) = match self.store.grant(name) {
            Err(crate::store::StoreError::KeyMissing(_)) => (None, true),
            other => (other?, false),
        };
        let state = auth_state(
            record.as_ref(),
            grant.as_ref(),
            self.logins.is_active(name),
            self.now_ms(),
            // An enterprise server needs a person while no valid ID token
            // is at hand.
            server.grant.unattended()
                && server
                    .identity_provider
                    .as_ref()
                    .is_none_or(|idp| self.id_token_valid(idp)),
        );
        let client_id = if let Some(id) = &server.client_id {
            Some((id.clone(), "configured"))
        } else {
            let issuer = record
                .as_ref()
                .and_then(|r| r.discovery.as_ref().map(|d| d.issuer.clone()));
            let registration = match &issuer {
                Some(issuer) if !locked => self.store.registration(name, issuer)?,
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
            guard_error: self.report_guard_error(name),
            no_refresh_token: !server.grant.unattended()
                && grant.as_ref().is_some_and(|g| g.refresh_token.is_none()),
            account: grant.as_ref().and_then(|g| g.account.clone()),
            granted_scopes: grant.map(|g| g.scopes).unwrap_or_default(),
            plan: self.scheduler.plan(name, self.timing(name)),
        })
    }

    /// `mcpauthctl doctor`: discovery and registration for `name` walked
    /// step by step, changing nothing.
    pub async fn doctor(
        &self,
        name: &str,
    ) -> Result<Vec<crate::oauth::doctor::DoctorStep>, BrokerError> {
        let name = self.configured(name)?;
        let server = self
            .config()
            .servers
            .get(&name)
            .cloned()
            .ok_or_else(|| self.not_found(&name))?;
        Ok(self.http.diagnose(name.as_str(), &server).await)
    }

    /// Adds a server by editing `config.toml`, then applies the new file.
    pub async fn add(&self, new: NewServer) -> Result<ServerView, BrokerError> {
        let name = ServerName::parse_new(&new.name)?;
        // Validate the section on its own before touching the file.
        let mut probe = ConfigDocument::new_file();
        probe.add(&name, &new);
        Config::parse(&probe.to_text(), &self.paths.config).map_err(|e| match e {
            ConfigError::Invalid { source, .. } => BrokerError::Invalid(source),
            other => BrokerError::Config(other),
        })?;

        let _guard = self.edits.lock().await;
        let mut doc = self.read_document()?;
        if doc.contains(&name) {
            return Err(BrokerError::AlreadyExists(name.to_string()));
        }
        if let Some(existing) = self
            .config()
            .servers
            .keys()
            .find(|n| n.as_str().eq_ignore_ascii_case(name.as_str()))
        {
            return Err(BrokerError::NameTooAlike {
                name: name.to_string(),
                existing: existing.to_string(),
            });
        }
        doc.add(&name, &new);
        self.write_and_apply(&doc).await?;
        info!(server = %name, url = %new.url.trim(), "server added");
        self.get(name.as_str())
    }

    /// Removes a server from `config.toml` and deletes all of its state.
    pub async fn remove(&self, name: &str) -> Result<(), BrokerError> {
        let name = ServerName::parse(name)?;
        let _guard = self.edits.lock().await;
        let mut doc = self.read_document()?;
        if !doc.remove(&name) {
            return Err(self.not_found(&name));
        }
        self.write_and_apply(&doc).await?;
        info!(server = %name, "server removed");
        Ok(())
    }

    fn read_document(&self) -> Result<ConfigDocument, BrokerError> {
        match crate::config::read_checked(&self.paths.config) {
            Ok(Some(text)) => {
                ConfigDocument::parse(&text, &self.paths.config).map_err(BrokerError::ConfigBroken)
            }
            Ok(None) => Ok(ConfigDocument::new_file()),
            Err(e @ ConfigError::Unsafe { .. }) => Err(BrokerError::ConfigBroken(e)),
            Err(e) => Err(BrokerError::Config(e)),
        }
    }

    async fn write_and_apply(&self, doc: &ConfigDocument) -> Result<(), BrokerError> {
        let text = doc.to_text();
        let config = Config::parse(&text, &self.paths.config).map_err(BrokerError::Config)?;
        if let Some(dir) = self.paths.config.parent() {
            crate::fsutil::create_private_dir(dir).map_err(|source| {
                BrokerError::Config(ConfigError::Write {
                    path: dir.to_path_buf(),
                    source,
                })
            })?;
        }
        write_atomically(&self.paths.config, &text).map_err(BrokerError::Config)?;
        self.apply(config, &text).await
    }

    /// Re-reads `config.toml` (called by the watcher).
    pub async fn reload(&self) -> Result<(), BrokerError> {
        let _guard = self.edits.lock().await;
        self.reload_locked(false).await
    }

    async fn reload_locked(&self, at_start: bool) -> Result<(), BrokerError> {
        match Config::load(&self.paths.config) {
            Ok(Some((config, text))) => self.apply(config, &text).await,
            Ok(None) if at_start && self.store.last_good_config()?.is_none() => {
                // First start: no file is an empty config.
                self.apply(Config::default(), "").await
            }
            Ok(None) => {
                self.reject(format!(
                    "{} is missing; the last good config stays in force (an empty file removes every server)",
                    self.paths.config.display()
                ));
                Ok(())
            }
            Err(e) => {
                self.reject(e.to_string());
                Ok(())
            }
        }
    }

    fn reject(&self, error: String) {
        {
            let mut health = self.health.lock().unwrap();
            if health.error.as_deref() == Some(error.as_str()) {
                // The same rejection again (editors write twice): said once.
                return;
            }
            health.error = Some(error.clone());
            health.error_at_ms = self.now_ms();
        }
        warn!(%error, "config edit rejected; the last good config stays in force");
        self.publish(None, EventKind::ConfigRejected { error });
    }

    /// Makes `config` the config in force: deletes the state of servers
    /// that are gone, starts afresh for servers whose URL changed, creates
    /// records for new ones. Everything is flushed before it returns.
    ///
    /// Every server whose state changes is locked first (in name order,
    /// after `edits`), and stays locked until the new config is in force:
    /// an operation in flight for it finishes first, and one that starts
    /// after sees the new identity.
    async fn apply(&self, config: Config, text: &str) -> Result<(), BrokerError> {
        let old = self.config();
        let now = self.now_ms();
        let mut events = Vec::new();

        let stored = self.store.servers()?;
        let mut touched = Vec::new();
        for (stored_name, record) in &stored {
            match ServerName::parse(stored_name) {
                Ok(n) => match config.servers.get(&n) {
                    Some(server) if server.url.as_str() == record.url => {}
                    _ => touched.push(n),
                },
                Err(_) => self.store.purge_invalid(stored_name).await?,
            }
        }
        for name in config.servers.keys() {
            if !stored.iter().any(|(n, _)| n == name.as_str()) {
                touched.push(name.clone());
            }
        }
        let guards = self.locks.lock_all(touched).await;

        for guard in &guards {
            let name = guard.name();
            // Read again under the lock: this is the state that changes.
            let record = self.store.server(name)?;
            match (record, config.servers.get(name)) {
                (Some(_), None) => {
                    // Removed, maybe while the daemon was down.
                    self.store.delete_server(guard).await?;
                    self.forget(name);
                    info!(server = %name, "server no longer configured; its state is deleted");
                    events.push((Some(name.clone()), EventKind::ServerRemoved));
                }
                (Some(record), Some(server)) if record.url != server.url.as_str() => {
                    // Another URL: state for the old one must not be reused.
                    self.store.delete_server(guard).await?;
                    self.forget(name);
                    let mut fresh = ServerRecord::new(&server.url, now);
                    // Generations keep growing across the change.
                    fresh.last_generation = record
                        .last_generation
                        .max(self.store.grant(name)?.map_or(0, |g| g.generation));
                    self.store.put_server(guard, &fresh).await?;
                    let url = server.url.to_string();
                    info!(server = %name, %url, "server URL changed; its state starts afresh");
                    events.push((Some(name.clone()), EventKind::ServerChanged { url }));
                }
                (None, Some(server)) => {
                    self.store
                        .put_server(guard, &ServerRecord::new(&server.url, now))
                        .await?;
                    events.push((
                        Some(name.clone()),
                        EventKind::ServerAdded {
                            url: server.url.to_string(),
                        },
                    ));
                }
                _ => {}
            }
        }
        for (name, server) in &config.servers {
            if !guards.iter().any(|g| g.name() == name)
                && old.servers.get(name).is_some_and(|o| o != server)
            {
                events.push((
                    Some(name.clone()),
                    EventKind::ServerChanged {
                        url: server.url.to_string(),
                    },
                ));
            }
        }
        for name in old.servers.keys() {
            if !config.servers.contains_key(name)
                && !events.iter().any(|(n, _)| n.as_ref() == Some(name))
            {
                events.push((Some(name.clone()), EventKind::ServerRemoved));
            }
        }
        self.store.set_last_good_config(text).await?;
        // `proxy` and `ca_file`: the HTTP client is rebuilt when they
        // change; one that cannot be (an unreadable CA file) keeps the
        // client in use, and the log says why.
        match self.http.use_network(&config.network) {
            Ok(true) => info!(
                proxy = config.network.proxy.is_some(),
                ca_file = ?config.network.ca_file,
                "network settings in use"
            ),
            Ok(false) => {}
            Err(e) => warn!(error = %e, "network settings not used; the previous ones stay"),
        }
        *self.config.write().unwrap() = Arc::new(config);
        drop(guards);
        let healed = {
            let mut health = self.health.lock().unwrap();
            if health.error.is_some() || health.loaded_at_ms == 0 || !events.is_empty() {
                info!(servers = self.config().servers.len(), "config loaded");
            }
            let healed = health.error.is_some();
            *health = ConfigHealth {
                loaded_at_ms: now,
                error: None,
                error_at_ms: 0,
            };
            healed
        };
        if healed {
            events.push((None, EventKind::ConfigAccepted));
        }
        for (server, kind) in events {
            self.publish(server, kind);
        }
        Ok(())
    }

    /// Drops what the daemon keeps in memory for a server whose state was
    /// deleted (removed, or its URL changed).
    fn forget(&self, name: &ServerName) {
        self.end_backoff(name);
        self.person_no_longer_needed(name);
        self.report_refreshes.lock().unwrap().remove(name);
        if let Some(active) = self.logins.take(name) {
            active.abandon("the server was removed or its URL changed");
        }
    }
}

/// The broker as the scheduler sees it. Weak: the scheduler must not keep
/// the broker alive.
struct BrokerTarget(std::sync::Weak<Broker>);

impl Target for BrokerTarget {
    fn grants(&self) -> Vec<(ServerName, GrantTiming)> {
        let Some(broker) = self.0.upgrade() else {
            return Vec::new();
        };
        let config = broker.config();
        config
            .servers
            .keys()
            .filter_map(|name| Some((name.clone(), broker.timing(name)?)))
            .collect()
    }

    fn refresh(&self, name: ServerName, generation: u64) -> crate::scheduler::RefreshFuture {
        let broker = self.0.clone();
        Box::pin(async move {
            let Some(broker) = broker.upgrade() else {
                return RefreshResult::Failed {
                    error: "shutting down".into(),
                };
            };
            match broker
                .refresh_grant(name, crate::refresh::Freshness::UnlessNewerThan(generation))
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

fn did_you_mean(suggestion: &Option<String>) -> String {
    suggestion
        .as_ref()
        .map(|s| format!("; did you mean {s:?}?"))
        .unwrap_or_default()
}

/// The configured name `name` most likely meant: the same but for case,
/// else one at most two edits away (for names longer than two), else
/// none.
fn closest(name: &str, names: &[&str]) -> Option<String> {
    if let Some(same) = names.iter().find(|n| n.eq_ignore_ascii_case(name)) {
        return Some(same.to_string());
    }
    let distance = |a: &str, b: &str| {
        let b: Vec<char> = b.chars().collect();
        let mut row: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut previous = row[0];
            row[0] = i + 1;
            for (j, cb) in b.iter().enumerate() {
                let here = row[j + 1];
                row[j + 1] = (previous + usize::from(ca != *cb))
                    .min(row[j] + 1)
                    .min(here + 1);
                previous = here;
            }
        }
        row[b.len()]
    };
    names
        .iter()
        .filter(|_| name.len() > 2)
        .map(|n| {
            (
                distance(&name.to_ascii_lowercase(), &n.to_ascii_lowercase()),
                n,
            )
        })
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, n)| n.to_string())
}

/// A past duration in words: "6s", "3m", "2h", "4d".
fn ago(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86_399 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}
