//! Editing and reloading `config.toml`: the `ConfigEditor` part.
//!
//! It puts a config in force (`Context::set_config`) and reconciles the
//! store with it: removed servers lose their state, a changed URL starts
//! afresh, new servers get a record. The parts that keep something in
//! memory for a server are told through the `forget` hook wired at start,
//! so this part depends on none of them.
//!
//! Locks:
//! - `edits` (`tokio::sync::Mutex`): one edit or reload at a time, held
//!   across the file write and the store's flushed writes; an RPC edit
//!   and a reload triggered by the watcher never interleave.
//! - Every server whose state changes is locked (its `ServerGuard`, in
//!   name order, after `edits`) until the new config is in force: an
//!   operation in flight for it finishes first, and one that starts after
//!   sees the new identity.
//! - `health` (`std::sync::Mutex`): whether the file on disk is the one
//!   in force; held only to read or replace it.

use std::sync::{Arc, Mutex};

use tracing::{info, warn};

use crate::config::{Config, ConfigDocument, ConfigError, NewServer, ServerName, write_atomically};
use crate::context::{Context, EventKind};
use crate::error::BrokerError;
use crate::locks::ServerGuard;
use crate::state::ServerRecord;
use crate::store::StoreError;

/// Whether the config on disk is the one in force.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigHealth {
    pub loaded_at_ms: i64,
    pub error: Option<String>,
    pub error_at_ms: i64,
}

/// Drops what a part keeps in memory for a server whose state was
/// deleted (removed, or its URL changed).
pub type Forget = Box<dyn Fn(&ServerName) + Send + Sync>;

pub struct ConfigEditor {
    ctx: Arc<Context>,
    edits: tokio::sync::Mutex<()>,
    health: Mutex<ConfigHealth>,
    forget: Forget,
}

impl ConfigEditor {
    /// Puts the last good config (kept in the store) in force, then loads
    /// `config.toml` and reconciles the store with it.
    ///
    /// A config that does not parse does not stop the daemon: the last
    /// good config stays in force and the error is reported. A missing
    /// file never removes servers either; an empty one does.
    pub async fn start(ctx: Arc<Context>, forget: Forget) -> Result<Self, BrokerError> {
        // Sealed like the secrets: a locked store starts from the file.
        let last_good = match ctx.store().last_good_config() {
            Err(StoreError::KeyMissing(_)) => None,
            other => other?,
        };
        if let Some(text) = last_good {
            match Config::parse(&text, &ctx.paths.config) {
                Ok(config) => ctx.set_config(config),
                Err(e) => warn!(error = %e, "the stored last good config no longer parses"),
            }
        }
        let editor = Self {
            ctx,
            edits: tokio::sync::Mutex::new(()),
            health: Mutex::default(),
            forget,
        };
        {
            let _guard = editor.edits.lock().await;
            editor.reload_locked(true).await?;
        }
        Ok(editor)
    }

    /// Whether the config on disk is the one in force.
    pub fn health(&self) -> ConfigHealth {
        self.health.lock().unwrap().clone()
    }

    /// Adds a server by editing `config.toml`, then applies the new file.
    pub async fn add(&self, new: NewServer) -> Result<ServerName, BrokerError> {
        let name = ServerName::parse_new(&new.name)?;
        // Validate the section on its own before touching the file.
        let mut probe = ConfigDocument::new_file();
        probe.add(&name, &new);
        Config::parse(&probe.to_text(), &self.ctx.paths.config).map_err(|e| match e {
            ConfigError::Invalid { source, .. } => BrokerError::Invalid(source),
            other => BrokerError::config(other),
        })?;

        let _guard = self.edits.lock().await;
        let mut doc = self.read_document()?;
        if doc.contains(&name) {
            return Err(BrokerError::AlreadyExists(name.to_string()));
        }
        if let Some(existing) = self
            .ctx
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
        Ok(name)
    }

    /// Removes a server from `config.toml` and deletes all of its state.
    pub async fn remove(&self, name: &str) -> Result<(), BrokerError> {
        let name = ServerName::parse(name)?;
        let _guard = self.edits.lock().await;
        let mut doc = self.read_document()?;
        if !doc.remove(&name) {
            return Err(self.ctx.not_found(&name));
        }
        self.write_and_apply(&doc).await?;
        info!(server = %name, "server removed");
        Ok(())
    }

    fn read_document(&self) -> Result<ConfigDocument, BrokerError> {
        match crate::config::read_checked(&self.ctx.paths.config) {
            Ok(Some(text)) => ConfigDocument::parse(&text, &self.ctx.paths.config)
                .map_err(BrokerError::config_broken),
            Ok(None) => Ok(ConfigDocument::new_file()),
            Err(e @ ConfigError::Unsafe { .. }) => Err(BrokerError::config_broken(e)),
            Err(e) => Err(BrokerError::config(e)),
        }
    }

    async fn write_and_apply(&self, doc: &ConfigDocument) -> Result<(), BrokerError> {
        let text = doc.to_text();
        let config = Config::parse(&text, &self.ctx.paths.config).map_err(BrokerError::config)?;
        if let Some(dir) = self.ctx.paths.config.parent() {
            crate::fsutil::create_private_dir(dir).map_err(|source| {
                BrokerError::config(ConfigError::Write {
                    path: dir.to_path_buf(),
                    source,
                })
            })?;
        }
        write_atomically(&self.ctx.paths.config, &text).map_err(BrokerError::config)?;
        self.apply(config, &text).await
    }

    /// Re-reads `config.toml` (called by the watcher).
    pub async fn reload(&self) -> Result<(), BrokerError> {
        let _guard = self.edits.lock().await;
        self.reload_locked(false).await
    }

    async fn reload_locked(&self, at_start: bool) -> Result<(), BrokerError> {
        match Config::load(&self.ctx.paths.config) {
            Ok(Some((config, text))) => self.apply(config, &text).await,
            Ok(None) if at_start && self.ctx.store.last_good_config()?.is_none() => {
                // First start: no file is an empty config.
                self.apply(Config::default(), "").await
            }
            Ok(None) => {
                self.reject(format!(
                    "{} is missing; the last good config stays in force (an empty file removes every server)",
                    self.ctx.paths.config.display()
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
            health.error_at_ms = self.ctx.now_ms();
        }
        warn!(%error, "config edit rejected; the last good config stays in force");
        self.ctx.publish(None, EventKind::ConfigRejected { error });
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
        let old = self.ctx.config();
        let now = self.ctx.now_ms();
        let mut events = Vec::new();

        let touched = self.servers_to_change(&config).await?;
        let guards = self.ctx.locks.lock_all(touched).await;
        for guard in &guards {
            if let Some(event) = self.reconcile(guard, &config, now).await? {
                events.push(event);
            }
        }
        config_only_events(&old, &config, &guards, &mut events);
        self.ctx.store.set_last_good_config(text).await?;
        // `proxy` and `ca_file`: the HTTP client is rebuilt when they
        // change; one that cannot be (an unreadable CA file) keeps the
        // client in use, and the log says why.
        match self.ctx.http.use_network(&config.network) {
            Ok(true) => info!(
                proxy = config.network.proxy.is_some(),
                ca_file = ?config.network.ca_file,
                "network settings in use"
            ),
            Ok(false) => {}
            Err(e) => warn!(error = %e, "network settings not used; the previous ones stay"),
        }
        self.ctx.set_config(config);
        drop(guards);
        if self.loaded(now, !events.is_empty()) {
            events.push((None, EventKind::ConfigAccepted));
        }
        for (server, kind) in events {
            self.ctx.publish(server, kind);
        }
        Ok(())
    }

    /// The servers whose state `config` changes: stored ones it drops or
    /// gives another URL, and configured ones with no record yet. A
    /// stored name that is no longer valid is purged on the way.
    async fn servers_to_change(&self, config: &Config) -> Result<Vec<ServerName>, BrokerError> {
        let stored = self.ctx.store.servers()?;
        let mut touched = Vec::new();
        for (stored_name, record) in &stored {
            match ServerName::parse(stored_name) {
                Ok(n) => match config.servers.get(&n) {
                    Some(server) if server.url.as_str() == record.url => {}
                    _ => touched.push(n),
                },
                Err(_) => self.ctx.store.purge_invalid(stored_name).await?,
            }
        }
        for name in config.servers.keys() {
            if !stored.iter().any(|(n, _)| n == name.as_str()) {
                touched.push(name.clone());
            }
        }
        Ok(touched)
    }

    /// Brings one locked server's state in line with `config`: deleted
    /// when it is gone, started afresh when its URL changed, created when
    /// it is new. Returns the event to publish, if any.
    async fn reconcile(
        &self,
        guard: &ServerGuard,
        config: &Config,
        now: i64,
    ) -> Result<Option<(Option<ServerName>, EventKind)>, BrokerError> {
        let name = guard.name();
        // Read again under the lock: this is the state that changes.
        let record = self.ctx.store.server(name)?;
        Ok(match (record, config.servers.get(name)) {
            (Some(_), None) => {
                // Removed, maybe while the daemon was down.
                self.ctx.store.delete_server(guard).await?;
                (self.forget)(name);
                info!(server = %name, "server no longer configured; its state is deleted");
                Some((Some(name.clone()), EventKind::ServerRemoved))
            }
            (Some(record), Some(server)) if record.url != server.url.as_str() => {
                // Another URL: state for the old one must not be reused.
                self.ctx.store.delete_server(guard).await?;
                (self.forget)(name);
                let mut fresh = ServerRecord::new(&server.url, now);
                // Generations keep growing across the change.
                fresh.last_generation = record
                    .last_generation
                    .max(self.ctx.store.grant(name)?.map_or(0, |g| g.generation));
                self.ctx.store.put_server(guard, &fresh).await?;
                let url = server.url.to_string();
                info!(server = %name, %url, "server URL changed; its state starts afresh");
                Some((Some(name.clone()), EventKind::ServerChanged { url }))
            }
            (None, Some(server)) => {
                self.ctx
                    .store
                    .put_server(guard, &ServerRecord::new(&server.url, now))
                    .await?;
                Some((
                    Some(name.clone()),
                    EventKind::ServerAdded {
                        url: server.url.to_string(),
                    },
                ))
            }
            _ => None,
        })
    }

    /// Records that the config in force is the file's, as of `now`;
    /// returns whether it heals an earlier rejection.
    fn loaded(&self, now: i64, changed: bool) -> bool {
        let mut health = self.health.lock().unwrap();
        if health.error.is_some() || health.loaded_at_ms == 0 || changed {
            info!(servers = self.ctx.config().servers.len(), "config loaded");
        }
        let healed = health.error.is_some();
        *health = ConfigHealth {
            loaded_at_ms: now,
            error: None,
            error_at_ms: 0,
        };
        healed
    }
}

/// The events of servers whose state stays as it is: a changed entry
/// with the same URL (no record was touched), and one removed that had
/// no record (its event is not listed yet).
fn config_only_events(
    old: &Config,
    config: &Config,
    guards: &[ServerGuard],
    events: &mut Vec<(Option<ServerName>, EventKind)>,
) {
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
}
