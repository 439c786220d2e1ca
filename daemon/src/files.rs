//! Token files, for tools that keep tokens in files instead of asking the
//! broker (Hermes keeps `mcp-tokens/<name>.json` and watches its mtime).
//!
//! - **Export** (`export = { path, format, refresh_token = false }`): every
//!   new grant is written to the file by the install itself
//!   (`install.rs`), before anyone receives it, atomically (temporary file,
//!   fsync, rename, directory fsync) with mode 0600; so no export can be
//!   skipped, whatever the event subscribers do. The file is also written
//!   when its server's config changes, and, for every server, when this
//!   module's event subscriber lags. Without the refresh token by default:
//!   a reader that cannot refresh cannot race the broker.
//! - **Import** (`import = { path, format }`): the broker watches the file
//!   (through its directory, since writers replace files by rename) and
//!   adopts a token written there when it is newer than the one held and
//!   from the same issuer. A malformed or partial file is logged and changes
//!   nothing. The broker's own writes are recognised by content hash and
//!   never imported back.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::sync::{broadcast, mpsc};
use tracing::{debug, info, warn};

use crate::broker::{Broker, EventKind};
use crate::config::{ServerName, TokenFileFormat};
use crate::install::{GrantSource, NewGrant};
use crate::secret::Secret;
use crate::state::Grant;

/// Bigger files are not token files.
const MAX_FILE: u64 = 64 * 1024;
const DEBOUNCE: Duration = Duration::from_millis(20);

/// A token read from a file.
#[derive(Clone, Debug)]
pub struct FileToken {
    pub access_token: Secret,
    pub token_type: String,
    pub refresh_token: Option<Secret>,
    pub expires_at_ms: Option<i64>,
    pub scopes: Option<Vec<String>>,
    pub issuer: Option<String>,
    pub client_id: Option<String>,
}

#[derive(Deserialize)]
struct RawFile {
    access_token: String,
    #[serde(default)]
    token_type: Option<String>,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    expires_at: Option<f64>,
    #[serde(default)]
    expires_in: Option<f64>,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    issuer: Option<String>,
    #[serde(default)]
    client_id: Option<String>,
}

/// Parses a token file. `written_ms` (the file's mtime) anchors a relative
/// `expires_in` when no `expires_at` is given. Errors never quote the file.
pub fn parse_file(
    format: TokenFileFormat,
    bytes: &[u8],
    written_ms: i64,
) -> Result<FileToken, String> {
    let raw: RawFile = serde_json::from_slice(bytes).map_err(|e| {
        format!(
            "not a {format:?} token file (line {}, column {})",
            e.line(),
            e.column()
        )
    })?;
    if raw.access_token.trim().is_empty() {
        return Err("the access_token is empty".into());
    }
    let expires_at_ms = match (raw.expires_at, raw.expires_in, format) {
        (Some(at), _, _) if at.is_finite() && at > 0.0 => Some((at * 1000.0) as i64),
        (None, Some(secs), TokenFileFormat::Hermes) if secs.is_finite() => {
            Some(written_ms.saturating_add((secs * 1000.0) as i64))
        }
        (None, None, _) => None,
        _ => return Err("expires_at is not a time".into()),
    };
    if let Some(t) = &raw.token_type
        && !t.eq_ignore_ascii_case("bearer")
    {
        return Err("only Bearer tokens are supported".into());
    }
    Ok(FileToken {
        access_token: Secret::new(raw.access_token),
        token_type: "Bearer".into(),
        refresh_token: raw.refresh_token.filter(|t| !t.is_empty()).map(Secret::new),
        expires_at_ms,
        scopes: raw
            .scope
            .map(|s| s.split_whitespace().map(str::to_string).collect()),
        issuer: raw.issuer.filter(|i| !i.is_empty()),
        client_id: raw.client_id.filter(|c| !c.is_empty()),
    })
}

/// Renders a grant in a file format.
pub fn render(
    format: TokenFileFormat,
    grant: &Grant,
    include_refresh: bool,
    now_ms: i64,
) -> Vec<u8> {
    let mut doc = serde_json::Map::new();
    doc.insert("access_token".into(), grant.access_token.expose().into());
    doc.insert("token_type".into(), grant.token_type.clone().into());
    if let Some(at) = grant.expires_at_ms {
        doc.insert("expires_at".into(), (at / 1000).into());
        if format == TokenFileFormat::Hermes {
            doc.insert("expires_in".into(), ((at - now_ms).max(0) / 1000).into());
        }
    }
    if !grant.scopes.is_empty() {
        doc.insert("scope".into(), grant.scopes.join(" ").into());
    }
    if include_refresh && let Some(rt) = &grant.refresh_token {
        doc.insert("refresh_token".into(), rt.expose().into());
    }
    if format == TokenFileFormat::Generic {
        doc.insert("issuer".into(), grant.issuer.clone().into());
        doc.insert("client_id".into(), grant.client_id.clone().into());
    }
    let mut out =
        serde_json::to_vec_pretty(&serde_json::Value::Object(doc)).expect("JSON serialises");
    out.push(b'\n');
    out
}

/// Writes `bytes` to `path` atomically with mode 0600, creating a missing
/// parent directory with mode 0700.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    crate::fsutil::create_private_dir(path.parent().unwrap_or(Path::new("/")))?;
    crate::fsutil::write_atomically(path, bytes, 0o600)
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// What the broker keeps for token files.
#[derive(Default)]
pub struct TokenFiles {
    /// Hash of the last content the broker wrote, per path.
    own_writes: Mutex<HashMap<PathBuf, [u8; 32]>>,
    /// The watch on the import files' directories.
    watcher: Mutex<Option<notify::RecommendedWatcher>>,
}

impl Broker {
    /// Starts exporting on new tokens and importing on file changes.
    pub fn start_token_files(self: &Arc<Self>) {
        let (tx, rx) = mpsc::channel::<PathBuf>(256);
        self.rewatch_imports(&tx);
        self.spawn_import_loop(rx);
        let broker = Arc::downgrade(self);
        let mut events = self.subscribe();
        let stop = self.shutdown().wait();
        tokio::spawn(async move {
            tokio::pin!(stop);
            // Import what is there at start.
            if let Some(b) = broker.upgrade() {
                for (name, server) in b.config().servers.iter() {
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
                                b.export_current(&name).await;
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
                        for name in b.config().servers.keys() {
                            b.export_current(name).await;
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
    }

    /// (Re)creates the watch on the directories of every import file.
    fn rewatch_imports(&self, tx: &mpsc::Sender<PathBuf>) {
        let config = self.config();
        let files: HashSet<PathBuf> = config
            .servers
            .values()
            .filter_map(|s| s.import.as_ref().map(|i| i.path.clone()))
            .collect();
        let mut slot = self.token_files.watcher.lock().unwrap();
        *slot = None;
        if files.is_empty() {
            return;
        }
        let tx = tx.clone();
        let wanted = files.clone();
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(event) = res {
                for path in event.paths {
                    if wanted.contains(&path) {
                        let _ = tx.try_send(path);
                    }
                }
            }
        });
        let mut watcher = match watcher {
            Ok(w) => w,
            Err(e) => {
                warn!(error = %e, "cannot watch token files");
                return;
            }
        };
        let dirs: HashSet<&Path> = files.iter().filter_map(|f| f.parent()).collect();
        for dir in dirs {
            if let Err(e) = crate::fsutil::create_private_dir(dir)
                .map_err(notify::Error::io)
                .and_then(|()| watcher.watch(dir, RecursiveMode::NonRecursive))
            {
                warn!(dir = %dir.display(), error = %e, "cannot watch the token file directory");
            }
        }
        *slot = Some(watcher);
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
                let config = b.config();
                for (name, server) in config.servers.iter() {
                    if let Some(import) = server.import.as_ref().filter(|i| paths.contains(&i.path))
                    {
                        b.import_file(name, &import.path, import.format).await;
                    }
                }
            }
        });
    }

    /// Writes the server's export file with the grant held, if any.
    async fn export_current(&self, name: &ServerName) {
        if let Ok(Some(grant)) = self.store().grant(name) {
            self.export_token_file(name, &grant).await;
        }
    }

    /// Writes the server's export file, if it has one, with `grant`.
    pub(crate) async fn export_token_file(&self, name: &ServerName, grant: &Grant) {
        let Some(export) = self
            .config()
            .servers
            .get(name)
            .and_then(|s| s.export.clone())
        else {
            return;
        };
        let bytes = render(export.format, grant, export.refresh_token, self.now_ms());
        // Recorded first: the watcher may fire before the write returns.
        self.token_files
            .own_writes
            .lock()
            .unwrap()
            .insert(export.path.clone(), digest(&bytes));
        let path = export.path.clone();
        match tokio::task::spawn_blocking(move || write_private(&path, &bytes)).await {
            Ok(Ok(())) => {
                debug!(server = %name, path = %export.path.display(), generation = grant.generation, "token file exported")
            }
            Ok(Err(e)) => {
                warn!(server = %name, path = %export.path.display(), error = %e, "cannot write the token file")
            }
            Err(e) => warn!(server = %name, error = %e, "token file export failed"),
        }
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
        if self.token_files.own_writes.lock().unwrap().get(path) == Some(&digest(&bytes)) {
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
    ) -> Result<(), crate::broker::BrokerError> {
        let guard = self.locks.lock(name).await;
        let now = self.now_ms();
        let current = self.store().grant(name)?;
        let ignore = |why: &str| {
            info!(server = %name, path = %path.display(), "token file not adopted: {why}");
            Ok(())
        };
        let Some(mut record) = self.store().server(name)? else {
            return ignore("the server is no longer configured");
        };
        // A token is bound to the server's own authorization server: the
        // one discovered for its URL, discovered now if never before.
        if record.discovery.is_none() {
            let Some((url, settings)) = self
                .config()
                .servers
                .get(name)
                .map(|s| (s.url.clone(), s.settings.clone()))
            else {
                return ignore("the server is no longer configured");
            };
            match self.http.discover(&url, now, true, &settings).await {
                Ok(found) => {
                    record.discovery = Some(found.discovery);
                    self.store().put_server(&guard, &record).await?;
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
            if current.access_token.expose() == token.access_token.expose() {
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
            .install_grant(&guard, new, GrantSource::Import, |_| {})
            .await?;
        info!(server = %name, path = %path.display(), generation = grant.generation, "token adopted from file");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant() -> Grant {
        Grant {
            account: None,
            issuer: "https://as".into(),
            client_id: "c".into(),
            resource: "https://rs".into(),
            access_token: Secret::new("at"),
            token_type: "Bearer".into(),
            refresh_token: Some(Secret::new("rt")),
            expires_at_ms: Some(2_000_000),
            scopes: vec!["a".into(), "b".into()],
            obtained_at_ms: 0,
            generation: 3,
            server_url: String::new(),
        }
    }

    #[test]
    fn hermes_round_trip_without_the_refresh_token_by_default() {
        let bytes = render(TokenFileFormat::Hermes, &grant(), false, 1_000_000);
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["access_token"], "at");
        assert_eq!(json["expires_at"], 2000);
        assert_eq!(json["expires_in"], 1000);
        assert_eq!(json["scope"], "a b");
        assert!(json.get("refresh_token").is_none());
        let back = parse_file(TokenFileFormat::Hermes, &bytes, 0).unwrap();
        assert_eq!(back.expires_at_ms, Some(2_000_000));
        let with = render(TokenFileFormat::Hermes, &grant(), true, 0);
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&with).unwrap()["refresh_token"],
            "rt"
        );
    }

    #[test]
    fn generic_carries_issuer_and_client() {
        let bytes = render(TokenFileFormat::Generic, &grant(), false, 0);
        let t = parse_file(TokenFileFormat::Generic, &bytes, 0).unwrap();
        assert_eq!(t.issuer.as_deref(), Some("https://as"));
        assert_eq!(t.client_id.as_deref(), Some("c"));
    }

    #[test]
    fn hermes_expires_in_counts_from_the_write() {
        let t = parse_file(
            TokenFileFormat::Hermes,
            br#"{"access_token":"x","expires_in":60}"#,
            5_000,
        )
        .unwrap();
        assert_eq!(t.expires_at_ms, Some(65_000));
    }

    #[test]
    fn malformed_files_are_refused_without_quoting_them() {
        for bad in [
            &b"{\"access_token\": \"secret-tok"[..],
            b"",
            b"{}",
            b"{\"access_token\":\"\"}",
            b"{\"access_token\":\"x\",\"token_type\":\"mac\"}",
        ] {
            let err = parse_file(TokenFileFormat::Generic, bad, 0).unwrap_err();
            assert!(!err.contains("secret-tok"), "{err}");
        }
    }

    #[test]
    fn private_atomic_writes() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/tok.json");
        write_private(&path, b"one").unwrap();
        write_private(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1,
            "no temporary left"
        );
    }
}
