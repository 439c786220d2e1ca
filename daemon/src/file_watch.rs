//! Keeping token files in step: the `FileWatch` part.
//!
//! It watches the directories of every `import` file (writers replace
//! files by rename, so the directory, not the file) and adopts a token
//! written there when it is newer than the one held and from the server's
//! own issuer, through the one installer; it writes a server's `export`
//! file again when the server's config changes, and every export file
//! when its event subscription lags. The broker's own writes are
//! recognised by content hash (`TokenFiles::wrote`) and never imported
//! back. The formats and the export itself are `files.rs`'s.
//!
//! Lock: `watcher` (`std::sync::Mutex`), the one `notify` watcher;
//! replaced whole when the set of import files changes, never held
//! across an await.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc};
use tracing::{debug, info, warn};

use crate::config::{ServerName, TokenFileFormat};
use crate::context::{Context, EventKind};
use crate::error::BrokerError;
use crate::files::{FileToken, TokenFiles, parse_file};
use crate::install::{GrantSource, Installer, NewGrant};
use crate::watcher::{Naming, watch_files};

/// Bigger files are not token files.
const MAX_FILE: u64 = 64 * 1024;
const DEBOUNCE: Duration = Duration::from_millis(20);

pub struct FileWatch {
    ctx: Arc<Context>,
    files: Arc<TokenFiles>,
    installer: Arc<Installer>,
    /// The watch on the import files' directories.
    watcher: Mutex<Option<notify::RecommendedWatcher>>,
}

impl FileWatch {
    pub fn new(ctx: Arc<Context>, files: Arc<TokenFiles>, installer: Arc<Installer>) -> Self {
        Self {
            ctx,
            files,
            installer,
            watcher: Mutex::default(),
        }
    }

    /// Starts exporting on new tokens and importing on file changes.
    pub fn start(self: &Arc<Self>) {
        let (tx, rx) = mpsc::channel::<PathBuf>(256);
        self.rewatch_imports(&tx);
        self.spawn_import_loop(rx);
        let broker = Arc::downgrade(self);
        let mut events = self.ctx.subscribe();
        let stop = self.ctx.shutdown().wait();
        tokio::spawn(async move {
            tokio::pin!(stop);
            // Import what is there at start.
            if let Some(b) = broker.upgrade() {
                for (name, server) in b.ctx.config().servers.iter() {
                    if let Some(import) = &server.import {
                        b.import_file(name, &import.path, import.format).await;
                    }
                }
            }
            loop {
                let event = tokio::select! {
                    _ = &mut stop => return,
                    e = events.recv() => e,
                };
                let Some(b) = broker.upgrade() else { return };
                match event {
                    Ok(e) => match e.kind {
                        EventKind::ServerAdded { .. } | EventKind::ServerChanged { .. } => {
                            b.rewatch_imports(&tx);
                            if let Some(name) = e.server {
                                b.files.export_current(&name).await;
                            }
                        }
                        EventKind::ServerRemoved => b.rewatch_imports(&tx),
                        _ => {}
                    },
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        // Whatever was missed, the files end up current.
                        debug!(
                            missed,
                            "token files: events missed; exporting every current token"
                        );
                        b.rewatch_imports(&tx);
                        for name in b.ctx.config().servers.keys() {
                            b.files.export_current(name).await;
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
    }

    /// (Re)creates the watch on the directories of every import file.
    fn rewatch_imports(&self, tx: &mpsc::Sender<PathBuf>) {
        let config = self.ctx.config();
        let files: HashSet<PathBuf> = config
            .servers
            .values()
            .filter_map(|s| s.import.as_ref().map(|i| i.path.clone()))
            .collect();
        let mut slot = self.watcher.lock().unwrap();
        *slot = None;
        *slot = watch_files(files, Naming::TheFile, true, tx, "token files");
    }

    fn spawn_import_loop(self: &Arc<Self>, mut rx: mpsc::Receiver<PathBuf>) {
        let broker = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                tokio::time::sleep(DEBOUNCE).await;
                let mut paths = HashSet::from([first]);
                while let Ok(p) = rx.try_recv() {
                    paths.insert(p);
                }
                let Some(b) = broker.upgrade() else { return };
                let config = b.ctx.config();
                for (name, server) in config.servers.iter() {
                    if let Some(import) = server.import.as_ref().filter(|i| paths.contains(&i.path))
                    {
                        b.import_file(name, &import.path, import.format).await;
                    }
                }
            }
        });
    }

    /// Reads an import file and adopts its token if it is newer.
    async fn import_file(&self, name: &ServerName, path: &Path, format: TokenFileFormat) {
        let read = {
            let path = path.to_path_buf();
            tokio::task::spawn_blocking(move || -> std::io::Result<(Vec<u8>, i64)> {
                let meta = std::fs::metadata(&path)?;
                if meta.len() > MAX_FILE {
                    return Err(std::io::Error::other("larger than 64 KiB"));
                }
                let mtime = meta
                    .modified()
                    .ok()
                    .and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_millis() as i64);
                Ok((std::fs::read(&path)?, mtime))
            })
            .await
        };
        let (bytes, mtime) = match read {
            Ok(Ok(r)) => r,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => return,
            Ok(Err(e)) => {
                warn!(server = %name, path = %path.display(), error = %e, "token file ignored");
                return;
            }
            Err(_) => return,
        };
        if self.files.wrote(path, &bytes) {
            debug!(server = %name, path = %path.display(), "token file is the broker's own export; not read back");
            return;
        }
        let token = match parse_file(format, &bytes, mtime) {
            Ok(t) => t,
            Err(reason) => {
                warn!(server = %name, path = %path.display(), %reason, "token file ignored (malformed or partial)");
                return;
            }
        };
        if let Err(e) = self.adopt(name, token, path).await {
            warn!(server = %name, error = %e, "importing the token file failed");
        }
    }

    async fn adopt(
        &self,
        name: &ServerName,
        token: FileToken,
        path: &Path,
    ) -> Result<(), BrokerError> {
        let guard = self.ctx.locks.lock(name).await;
        let now = self.ctx.now_ms();
        let current = self.ctx.store().grant(name)?;
        let ignore = |why: &str| {
            info!(server = %name, path = %path.display(), "token file not adopted: {why}");
            Ok(())
        };
        let Some(mut record) = self.ctx.store().server(name)? else {
            return ignore("the server is no longer configured");
        };
        // A token is bound to the server's own authorization server: the
        // one discovered for its URL, discovered now if never before.
        if record.discovery.is_none() {
            let Some((url, settings)) = self
                .ctx
                .config()
                .servers
                .get(name)
                .map(|s| (s.url.clone(), s.settings.clone()))
            else {
                return ignore("the server is no longer configured");
            };
            match self.ctx.http.discover(&url, now, true, &settings).await {
                Ok(found) => {
                    record.discovery = Some(found.discovery);
                    self.ctx.store().put_server(&guard, &record).await?;
                }
                Err(e) => {
                    warn!(server = %name, path = %path.display(), error = %e, "token file not adopted: the server's authorization server cannot be discovered");
                    return Ok(());
                }
            }
        }
        let record = Some(record);
        let known_issuer = record
            .as_ref()
            .and_then(|r| r.discovery.as_ref().map(|d| d.issuer.clone()));
        if token
            .issuer
            .as_ref()
            .is_some_and(|file| Some(file) != known_issuer.as_ref())
        {
            return ignore("it is from another issuer");
        }
        if token.expires_at_ms.is_some_and(|at| at <= now) {
            return ignore("it has expired");
        }
        if let Some(current) = &current {
            if current.access_token.same_as(&token.access_token) {
                return Ok(());
            }
            let newer = match (token.expires_at_ms, current.expires_at_ms) {
                (Some(file), Some(held)) => file > held,
                (Some(_), None) => true,
                (None, _) => false,
            };
            if !newer {
                return ignore("it is not newer than the token held");
            }
        }
        let resource = record
            .as_ref()
            .and_then(|r| r.discovery.as_ref().map(|d| d.resource.clone()))
            .unwrap_or_default();
        let new = NewGrant {
            account: None,
            issuer: token.issuer.or(known_issuer).unwrap_or_default(),
            client_id: token
                .client_id
                .or_else(|| current.as_ref().map(|g| g.client_id.clone()))
                .unwrap_or_default(),
            resource: current.as_ref().map_or(resource, |g| g.resource.clone()),
            access_token: token.access_token,
            token_type: token.token_type,
            refresh_token: token
                .refresh_token
                .or_else(|| current.as_ref().and_then(|g| g.refresh_token.clone())),
            expires_at_ms: token.expires_at_ms,
            scopes: token
                .scopes
                .or_else(|| current.as_ref().map(|g| g.scopes.clone()))
                .unwrap_or_default(),
        };
        let grant = self
            .installer
            .install_grant(&guard, new, GrantSource::Import, |_| {})
            .await?;
        info!(server = %name, path = %path.display(), generation = grant.generation, "token adopted from file");
        Ok(())
    }
}
