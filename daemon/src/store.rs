//! The daemon's persistent state, in sled. The only module that knows sled.
//!
//! Layout: one sled database in `<state dir>/store`, with trees
//! - `meta`: `schema_version` (a big-endian u32) and `last_good_config`
//!   (the text of the last valid `config.toml`, so a broken edit never
//!   takes servers away, even across a restart);
//! - `servers`: server name -> [`ServerRecord`] as versioned JSON;
//! - `grants`: `<name>\0` -> [`Grant`] (the tokens);
//! - `registrations`: `<name>\0<issuer>` -> [`Registration`];
//! - `flows`: `<name>\0` -> [`PendingFlow`] (a login in progress);
//! - `identities`: identity provider name -> [`IdentityRecord`] (its
//!   metadata and ID token, for `enterprise` servers); written under the
//!   identity provider's [`IdpGuard`], and not a per-server tree.
//!
//! Secrets at rest: the values of `grants`, `registrations`, `flows` and
//! `identities`, and `meta/last_good_config` (a config may carry a client
//! secret), are sealed with the store key (`seal.rs`) before they reach
//! sled, bound to their tree and key. While the key is not at hand (a
//! locked keyring) those values can be neither read nor written:
//! [`StoreError::KeyMissing`] says why. `meta/sealed` marks a store whose
//! every such value is sealed and whose files hold no older plain value: a
//! store from before sealing is rewritten once, into a fresh database
//! ([`Store::rewrite_sealed`]), since sled keeps replaced values in its log
//! until it compacts.
//!
//! Per-server trees key their entries as `<server name>\0<rest>`, so
//! [`Store::delete_server`] can remove every trace of a server by prefix.
//!
//! Durability: every write method flushes before it returns, so the caller
//! (and the RPC client behind it) only hears of a change that is on disk.
//!
//! One writer per server: every write of a server's state takes the
//! [`ServerGuard`] of that server (the key is the guard's name), and a
//! grant is only ever written by [`Store::install_grant`], which writes it
//! together with the server's record in one transaction.
//!
//! The grant cache: a miss reads sled and fills the cache under the cache's
//! write lock; every write (install, delete) changes the cache only after
//! sled, under the same lock. So a fill that read the old value before a
//! write is replaced by the write, and a fill after it reads the new value:
//! the cache can never keep a grant older than one just written (or one
//! just deleted).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::config::ServerName;
use crate::locks::{IdpGuard, ServerGuard};
use crate::seal::StoreKey;
use crate::state::{Grant, IdentityRecord, PendingFlow, Registration, ServerRecord};

/// The layout version written in `meta/schema_version`.
pub const SCHEMA_VERSION: u32 = 1;
/// Bound on sled's page cache: the state is small, the daemon should be too.
const CACHE_BYTES: u64 = 8 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "the state in {path} is already open in another process (is another mcpauthd running?)"
    )]
    Locked { path: PathBuf },
    #[error("cannot open the state in {path}: {message}")]
    Open { path: PathBuf, message: String },
    #[error(
        "the state in {path} has schema version {found}, newer than this mcpauthd understands ({SCHEMA_VERSION}); upgrade mcpauthd"
    )]
    TooNew { path: PathBuf, found: u32 },
    #[error("state storage failed: {0}")]
    Io(String),
    #[error("stored record {key:?} is unreadable: {message}")]
    Corrupt { key: String, message: String },
    /// The store key is not at hand: the reason, and what to do.
    #[error("{0}")]
    KeyMissing(String),
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Io(e.to_string())
    }
}

#[derive(Serialize, Deserialize)]
struct Versioned<T> {
    v: u32,
    #[serde(flatten)]
    data: T,
}

pub struct Store {
    path: PathBuf,
    /// Decoded grants, so `GetToken` is served from memory: filled on
    /// read, replaced after every durable write, dropped on delete.
    grant_cache: std::sync::RwLock<std::collections::HashMap<ServerName, Option<Grant>>>,
    db: sled::Db,
    meta: sled::Tree,
    servers: sled::Tree,
    grants: sled::Tree,
    registrations: sled::Tree,
    flows: sled::Tree,
    identities: sled::Tree,
    /// The store key; `Err(why)` while it is not at hand.
    key: std::sync::RwLock<Result<StoreKey, String>>,
}

/// The trees whose values are sealed.
const SEALED_TREES: [&str; 4] = ["grants", "registrations", "flows", "identities"];
/// The `meta` entries whose values are sealed.
const SEALED_META: [&str; 1] = ["last_good_config"];

fn is_sealed_entry(tree: &[u8], key: &[u8]) -> bool {
    SEALED_TREES.iter().any(|t| t.as_bytes() == tree)
        || (tree == b"meta" && SEALED_META.iter().any(|k| k.as_bytes() == key))
}

fn server_key(name: &ServerName, rest: &str) -> Vec<u8> {
    let mut key = name.as_str().as_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(rest.as_bytes());
    key
}

impl Store {
    /// Opens (creating if needed) the store in `dir/store`. The caller has
    /// made `dir` private (0700) and set the umask to 077.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join("store");
        let db = sled::Config::new()
            .path(&path)
            .cache_capacity(CACHE_BYTES)
            // No background flusher: every write is flushed before it is
            // acknowledged, so the flusher's 2 wakeups a second bought
            // nothing but a busier idle daemon.
            .flush_every_ms(None)
            .open()
            .map_err(|e| match e {
                sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock => {
                    StoreError::Locked { path: path.clone() }
                }
                sled::Error::Io(io) if io.to_string().contains("lock") => {
                    StoreError::Locked { path: path.clone() }
                }
                other => StoreError::Open {
                    path: path.clone(),
                    message: other.to_string(),
                },
            })?;
        let meta = db.open_tree("meta")?;
        let servers = db.open_tree("servers")?;
        let grants = db.open_tree("grants")?;
        let registrations = db.open_tree("registrations")?;
        let flows = db.open_tree("flows")?;
        let identities = db.open_tree("identities")?;
        let store = Self {
            path,
            grant_cache: Default::default(),
            db,
            meta,
            servers,
            grants,
            registrations,
            flows,
            identities,
            key: std::sync::RwLock::new(Err(
                "the store key is not loaded yet; try again in a moment".into(),
            )),
        };
        match store.meta.get("schema_version")? {
            None => {
                store
                    .meta
                    .insert("schema_version", &SCHEMA_VERSION.to_be_bytes())?;
                // A new store never held a plain secret.
                store.meta.insert("sealed", "1")?;
                store.db.flush()?;
            }
            Some(raw) => {
                let found = <[u8; 4]>::try_from(raw.as_ref())
                    .map(u32::from_be_bytes)
                    .map_err(|_| StoreError::Corrupt {
                        key: "schema_version".into(),
                        message: "not a u32".into(),
                    })?;
                if found > SCHEMA_VERSION {
                    return Err(StoreError::TooNew {
                        path: store.path.clone(),
                        found,
                    });
                }
            }
        }
        Ok(store)
    }

    /// Opens the store like [`Store::open`], but waits up to `wait` while
    /// another process holds it: an instance that is shutting down lets go
    /// of it when its process exits, a moment after it stopped answering.
    pub fn open_waiting(dir: &Path, wait: std::time::Duration) -> Result<Self, StoreError> {
        let deadline = std::time::Instant::now() + wait;
        loop {
            match Self::open(dir) {
                Err(StoreError::Locked { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(25));
                }
                other => return other,
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The store key is at hand: secrets are served from now on.
    pub fn set_key(&self, key: StoreKey) {
        *self.key.write().unwrap() = Ok(key);
    }

    /// The store key is not at hand, and why (said by every call that
    /// needs a secret).
    pub fn key_missing(&self, why: String) {
        *self.key.write().unwrap() = Err(why);
    }

    pub fn has_key(&self) -> bool {
        self.key.read().unwrap().is_ok()
    }

    /// While the key is at hand, whether it lives in a file (else in the
    /// OS keyring); `Err(why not)` while it is not.
    pub fn key_in_file(&self) -> Result<bool, String> {
        match &*self.key.read().unwrap() {
            Ok(_) => Ok(self.key_source().ok().flatten().as_deref() == Some("file")),
            Err(why) => Err(why.clone()),
        }
    }

    /// Where the key lives, as recorded at the first start (`keyring` or
    /// `file`).
    pub fn key_source(&self) -> Result<Option<String>, StoreError> {
        Ok(self
            .meta
            .get("key_source")?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    pub fn set_key_source(&self, tag: &str) -> Result<(), StoreError> {
        self.meta.insert("key_source", tag.as_bytes())?;
        self.db.flush()?;
        Ok(())
    }

    /// Whether every secret in the store is sealed and its files hold no
    /// older plain value.
    pub fn is_sealed(&self) -> Result<bool, StoreError> {
        Ok(self.meta.get("sealed")?.is_some())
    }

    /// The value to write for `key` in `tree`: sealed where it holds a
    /// secret.
    fn seal_value(
        &self,
        tree: &sled::Tree,
        key: &[u8],
        plain: Vec<u8>,
    ) -> Result<Vec<u8>, StoreError> {
        if !is_sealed_entry(&tree.name(), key) {
            return Ok(plain);
        }
        let plain = zeroize::Zeroizing::new(plain);
        let guard = self.key.read().unwrap();
        let store_key = guard
            .as_ref()
            .map_err(|why| StoreError::KeyMissing(why.clone()))?;
        Ok(crate::seal::seal(
            store_key,
            &String::from_utf8_lossy(&tree.name()),
            key,
            &plain,
        ))
    }

    /// The plain value of `key` in `tree`, opened where it is sealed. A
    /// secret is never served without the key, even one stored plain
    /// before sealing existed.
    fn open_value(
        &self,
        tree: &sled::Tree,
        key: &[u8],
        raw: &[u8],
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, StoreError> {
        if !is_sealed_entry(&tree.name(), key) {
            return Ok(zeroize::Zeroizing::new(raw.to_vec()));
        }
        let guard = self.key.read().unwrap();
        let store_key = guard
            .as_ref()
            .map_err(|why| StoreError::KeyMissing(why.clone()))?;
        if !crate::seal::is_sealed(raw) {
            return Ok(zeroize::Zeroizing::new(raw.to_vec()));
        }
        crate::seal::open(store_key, &String::from_utf8_lossy(&tree.name()), key, raw).map_err(
            |e| StoreError::Corrupt {
                key: String::from_utf8_lossy(key).replace('\0', "/"),
                message: e.to_string(),
            },
        )
    }

    /// The store key has come (a keyring unlocked after the start): seals,
    /// where they are, the plain secrets of a store from before sealing,
    /// then serves secrets. Until the key is set nothing can write a
    /// secret, and each value is swapped only if it is still the one read,
    /// so no write is undone. The files may still hold the plain values
    /// until [`Store::rewrite_sealed`] runs at the next start. Returns how
    /// many values were sealed.
    pub async fn unlock(&self, key: StoreKey) -> Result<usize, StoreError> {
        let mut sealed = 0;
        for tree in [
            &self.grants,
            &self.registrations,
            &self.flows,
            &self.identities,
            &self.meta,
        ] {
            let name = String::from_utf8_lossy(&tree.name()).into_owned();
            for entry in tree.iter() {
                let (k, v) = entry?;
                if !is_sealed_entry(name.as_bytes(), &k) || crate::seal::is_sealed(&v) {
                    continue;
                }
                let value = crate::seal::seal(&key, &name, &k, &v);
                if tree.compare_and_swap(&k, Some(&v), Some(value))?.is_ok() {
                    sealed += 1;
                }
            }
        }
        self.flush().await?;
        self.set_key(key);
        Ok(sealed)
    }

    /// Rewrites the store in `dir` into a fresh database with every
    /// secret sealed, so no plain value stays behind in sled's files; a
    /// store already sealed is left alone. Run at start, with no `Store`
    /// open. An interrupted rewrite is finished or undone at the next
    /// call: the old database is replaced only once the new one is
    /// flushed. Returns whether it rewrote anything.
    pub fn rewrite_sealed(dir: &Path, key: &StoreKey) -> Result<bool, StoreError> {
        let path = dir.join("store");
        let fresh = dir.join("store.sealing");
        let old = dir.join("store.plain");
        let io = |e: std::io::Error| StoreError::Io(e.to_string());
        // A rewrite that stopped half way: a complete new database is
        // only ever renamed once the old one is out of the way.
        if fresh.exists() && !path.exists() {
            std::fs::rename(&fresh, &path).map_err(io)?;
        }
        if fresh.exists() {
            std::fs::remove_dir_all(&fresh).map_err(io)?;
        }
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(io)?;
        }
        let entries = {
            let store = Self::open_waiting(dir, std::time::Duration::from_secs(5))?;
            if store.is_sealed()? {
                return Ok(false);
            }
            store.set_key(key.clone());
            let mut entries = Vec::new();
            for name in store.db.tree_names() {
                let tree = store.db.open_tree(&name)?;
                for entry in tree.iter() {
                    let (k, v) = entry?;
                    let value = if crate::seal::is_sealed(&v) {
                        v.to_vec()
                    } else {
                        store.seal_value(&tree, &k, v.to_vec())?
                    };
                    entries.push((name.to_vec(), k.to_vec(), value));
                }
            }
            entries
        };
        {
            let db = sled::Config::new()
                .path(&fresh)
                .cache_capacity(CACHE_BYTES)
                .flush_every_ms(None)
                .open()?;
            for (tree, k, v) in &entries {
                db.open_tree(tree)?.insert(k.as_slice(), v.as_slice())?;
            }
            db.open_tree("meta")?.insert("sealed", "1")?;
            db.flush()?;
        }
        std::fs::rename(&path, &old).map_err(io)?;
        std::fs::rename(&fresh, &path).map_err(io)?;
        std::fs::remove_dir_all(&old).map_err(io)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(true)
    }

    async fn flush(&self) -> Result<(), StoreError> {
        self.db.flush_async().await?;
        Ok(())
    }

    /// Flushes everything; called on shutdown.
    pub fn flush_blocking(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    fn decode<T: DeserializeOwned>(key: &str, raw: &[u8]) -> Result<T, StoreError> {
        let v: Versioned<T> = serde_json::from_slice(raw).map_err(|e| StoreError::Corrupt {
            key: key.to_string(),
            message: e.to_string(),
        })?;
        Ok(v.data)
    }

    fn encode<T: Serialize>(data: &T) -> Vec<u8> {
        serde_json::to_vec(&Versioned {
            v: SCHEMA_VERSION,
            data,
        })
        .expect("records serialise")
    }

    pub fn server(&self, name: &ServerName) -> Result<Option<ServerRecord>, StoreError> {
        self.servers
            .get(name.as_str())?
            .map(|raw| Self::decode(name.as_str(), &raw))
            .transpose()
    }

    /// Every server record, by name. Unreadable records are reported, not
    /// skipped: silently dropping state is how grants get lost.
    pub fn servers(&self) -> Result<Vec<(String, ServerRecord)>, StoreError> {
        self.servers
            .iter()
            .map(|entry| {
                let (k, v) = entry?;
                let key = String::from_utf8_lossy(&k).into_owned();
                let record = Self::decode(&key, &v)?;
                Ok((key, record))
            })
            .collect()
    }

    pub async fn put_server(
        &self,
        guard: &ServerGuard,
        record: &ServerRecord,
    ) -> Result<(), StoreError> {
        self.servers
            .insert(guard.name().as_str(), Self::encode(record))?;
        self.flush().await
    }

    /// Deletes every trace of a server: its record and, in every other
    /// tree, the keys under the prefix `<name>\0`.
    pub async fn delete_server(&self, guard: &ServerGuard) -> Result<(), StoreError> {
        self.delete_prefix(guard.name().as_str()).await
    }

    /// Deletes the state stored under a name that is no longer a valid
    /// server name (it can have no lock, and no writer).
    pub async fn purge_invalid(&self, name: &str) -> Result<(), StoreError> {
        if ServerName::parse(name).is_ok() {
            return Ok(());
        }
        self.delete_prefix(name).await
    }

    async fn delete_prefix(&self, name: &str) -> Result<(), StoreError> {
        let result = self.delete_prefix_uncached(name).await;
        // After the write, not before: a fill (which reads sled under the
        // cache's lock) that ran before the delete is undone here, and one
        // that runs after it reads nothing.
        self.grant_cache
            .write()
            .unwrap()
            .retain(|cached, _| cached.as_str() != name);
        result
    }

    async fn delete_prefix_uncached(&self, name: &str) -> Result<(), StoreError> {
        self.servers.remove(name)?;
        let mut prefix = name.as_bytes().to_vec();
        prefix.push(0);
        for tree_name in self.db.tree_names() {
            if tree_name == b"meta"
                || tree_name == b"servers"
                || tree_name == b"identities"
                || tree_name == b"__sled__default"
            {
                continue;
            }
            let tree = self.db.open_tree(&tree_name)?;
            for key in tree.scan_prefix(&prefix).keys() {
                tree.remove(key?)?;
            }
        }
        self.flush().await
    }

    fn get<T: DeserializeOwned>(
        &self,
        tree: &sled::Tree,
        key: &[u8],
    ) -> Result<Option<T>, StoreError> {
        let Some(raw) = tree.get(key)? else {
            return Ok(None);
        };
        let plain = self.open_value(tree, key, &raw)?;
        Self::decode(&String::from_utf8_lossy(key).replace('\0', "/"), &plain).map(Some)
    }

    async fn put<T: Serialize>(
        &self,
        tree: &sled::Tree,
        key: Vec<u8>,
        value: &T,
    ) -> Result<(), StoreError> {
        let value = self.seal_value(tree, &key, Self::encode(value))?;
        tree.insert(key, value)?;
        self.flush().await
    }

    async fn remove(&self, tree: &sled::Tree, key: Vec<u8>) -> Result<(), StoreError> {
        tree.remove(key)?;
        self.flush().await
    }

    /// What is held for an identity provider.
    pub fn identity(&self, name: &ServerName) -> Result<Option<IdentityRecord>, StoreError> {
        self.get(&self.identities, name.as_str().as_bytes())
    }

    pub async fn put_identity(
        &self,
        guard: &IdpGuard,
        record: &IdentityRecord,
    ) -> Result<(), StoreError> {
        self.put(
            &self.identities,
            guard.name().as_str().as_bytes().to_vec(),
            record,
        )
        .await
    }

    pub async fn delete_identity(&self, guard: &IdpGuard) -> Result<(), StoreError> {
        self.remove(&self.identities, guard.name().as_str().as_bytes().to_vec())
            .await
    }

    pub fn grant(&self, name: &ServerName) -> Result<Option<Grant>, StoreError> {
        if let Some(cached) = self.grant_cache.read().unwrap().get(name) {
            return Ok(cached.clone());
        }
        self.fill_grant(name)
    }

    /// Reads a grant from sled into the cache. Under the cache's write
    /// lock, and only where no entry exists: an entry put meanwhile is
    /// newer than what was read, and stays.
    fn fill_grant(&self, name: &ServerName) -> Result<Option<Grant>, StoreError> {
        let mut cache = self.grant_cache.write().unwrap();
        if let Some(cached) = cache.get(name) {
            return Ok(cached.clone());
        }
        let mut grant: Option<Grant> = self.get(&self.grants, &server_key(name, ""))?;
        // A grant from before grants named their URL: a record's state
        // never outlives its URL, so the record's URL is the grant's.
        if let Some(g) = grant.as_mut().filter(|g| g.server_url.is_empty())
            && let Some(record) =
                self.get::<ServerRecord>(&self.servers, name.as_str().as_bytes())?
        {
            g.server_url = record.url;
        }
        cache.insert(name.clone(), grant.clone());
        Ok(grant)
    }

    /// The one way a grant is written: the grant and the server's record
    /// (which carries the generation high-water mark) in one transaction,
    /// flushed before it returns, then cached. Called only by
    /// `Installer::install_grant`.
    pub async fn install_grant(
        &self,
        guard: &ServerGuard,
        grant: &Grant,
        record: &ServerRecord,
    ) -> Result<(), StoreError> {
        use sled::Transactional;
        let name = guard.name();
        // The durable value stays cached while the new one is written, so
        // no reader can fill the cache with the unflushed one.
        self.fill_grant(name)?;
        let key = server_key(name, "");
        let grant_bytes = self.seal_value(&self.grants, &key, Self::encode(grant))?;
        let record_bytes = Self::encode(record);
        let written = (&self.grants, &self.servers).transaction(|(grants, servers)| {
            grants.insert(key.as_slice(), grant_bytes.as_slice())?;
            servers.insert(name.as_str().as_bytes(), record_bytes.as_slice())?;
            Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
        });
        let result = match written {
            Ok(()) => self.flush().await,
            Err(e) => Err(StoreError::Io(format!("{e:?}"))),
        };
        let mut cache = self.grant_cache.write().unwrap();
        match result {
            Ok(()) => {
                cache.insert(name.clone(), Some(grant.clone()));
                Ok(())
            }
            Err(e) => {
                // What is on disk is unknown now: read it again next time.
                cache.remove(name);
                Err(e)
            }
        }
    }

    pub async fn delete_grant(&self, guard: &ServerGuard) -> Result<(), StoreError> {
        let name = guard.name();
        self.fill_grant(name)?;
        let result = self.remove(&self.grants, server_key(name, "")).await;
        let mut cache = self.grant_cache.write().unwrap();
        match result {
            Ok(()) => cache.insert(name.clone(), None),
            Err(_) => cache.remove(name),
        };
        result
    }

    pub fn registration(
        &self,
        name: &ServerName,
        issuer: &str,
    ) -> Result<Option<Registration>, StoreError> {
        self.get(&self.registrations, &server_key(name, issuer))
    }

    pub async fn put_registration(
        &self,
        guard: &ServerGuard,
        registration: &Registration,
    ) -> Result<(), StoreError> {
        self.put(
            &self.registrations,
            server_key(guard.name(), &registration.issuer),
            registration,
        )
        .await
    }

    pub async fn delete_registration(
        &self,
        guard: &ServerGuard,
        issuer: &str,
    ) -> Result<(), StoreError> {
        self.remove(&self.registrations, server_key(guard.name(), issuer))
            .await
    }

    /// Deletes every registration of a server (all issuers).
    pub async fn delete_registrations(&self, guard: &ServerGuard) -> Result<(), StoreError> {
        for key in self
            .registrations
            .scan_prefix(server_key(guard.name(), ""))
            .keys()
        {
            self.registrations.remove(key?)?;
        }
        self.flush().await
    }

    pub fn flow(&self, name: &ServerName) -> Result<Option<PendingFlow>, StoreError> {
        self.get(&self.flows, &server_key(name, ""))
    }

    pub async fn put_flow(
        &self,
        guard: &ServerGuard,
        flow: &PendingFlow,
    ) -> Result<(), StoreError> {
        self.put(&self.flows, server_key(guard.name(), ""), flow)
            .await
    }

    pub async fn delete_flow(&self, guard: &ServerGuard) -> Result<(), StoreError> {
        self.remove(&self.flows, server_key(guard.name(), "")).await
    }

    pub fn last_good_config(&self) -> Result<Option<String>, StoreError> {
        let Some(raw) = self.meta.get("last_good_config")? else {
            return Ok(None);
        };
        let plain = self.open_value(&self.meta, b"last_good_config", &raw)?;
        Ok(Some(String::from_utf8_lossy(&plain).into_owned()))
    }

    /// Keeps the text of the config in force. While the store key is not
    /// at hand it is not kept (it may hold a client secret): the previous
    /// one stays.
    pub async fn set_last_good_config(&self, text: &str) -> Result<(), StoreError> {
        if !self.has_key() {
            return Ok(());
        }
        if self.last_good_config()?.as_deref() == Some(text) {
            return Ok(());
        }
        let value = self.seal_value(&self.meta, b"last_good_config", text.as_bytes().to_vec())?;
        self.meta.insert("last_good_config", value)?;
        self.flush().await
    }

    /// The whole state as JSON: `{"schema_version": N, "servers": {...}}`.
    /// It holds whatever secrets the state holds; the caller decides where
    /// it goes.
    pub fn export(&self) -> Result<serde_json::Value, StoreError> {
        let mut servers = serde_json::Map::new();
        for (name, record) in self.servers()? {
            servers.insert(
                name,
                serde_json::to_value(Versioned {
                    v: SCHEMA_VERSION,
                    data: record,
                })
                .expect("records serialise"),
            );
        }
        let mut trees = serde_json::Map::new();
        for (name, tree) in [
            ("grants", &self.grants),
            ("registrations", &self.registrations),
            ("flows", &self.flows),
            ("identities", &self.identities),
        ] {
            let mut entries = serde_json::Map::new();
            for entry in tree.iter() {
                let (k, v) = entry?;
                let key = String::from_utf8_lossy(&k).replace('\0', "/");
                let value: serde_json::Value = match self.open_value(tree, &k, &v) {
                    Ok(plain) => {
                        serde_json::from_slice(&plain).map_err(|e| StoreError::Corrupt {
                            key: key.clone(),
                            message: e.to_string(),
                        })?
                    }
                    Err(StoreError::KeyMissing(_)) => serde_json::json!("[sealed]"),
                    Err(e) => return Err(e),
                };
                entries.insert(key, value);
            }
            trees.insert(name.to_string(), serde_json::Value::Object(entries));
        }
        let mut out = serde_json::json!({
            "schema_version": SCHEMA_VERSION,
            "servers": servers,
        });
        out.as_object_mut().expect("object").extend(trees);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store with the tests' key.
    fn keyed(dir: &Path) -> Store {
        // Waiting: sled lets go of a dropped store's lock a moment later.
        let store = Store::open_waiting(dir, std::time::Duration::from_secs(5)).unwrap();
        store.set_key(test_key());
        store
    }

    fn test_key() -> StoreKey {
        StoreKey::from_bytes(&[7; 32]).unwrap()
    }

    fn name(s: &str) -> ServerName {
        ServerName::parse(s).unwrap()
    }

    async fn guard(s: &str) -> ServerGuard {
        crate::locks::ServerLocks::default().lock(&name(s)).await
    }

    #[tokio::test]
    async fn records_survive_reopen_and_carry_a_version() {
        let dir = tempfile::tempdir().unwrap();
        let url = url::Url::parse("https://a.example/mcp").unwrap();
        {
            let store = keyed(dir.path());
            store
                .put_server(&guard("a").await, &ServerRecord::new(&url, 42))
                .await
                .unwrap();
            store.set_last_good_config("x = 1").await.unwrap();
        }
        let store = keyed(dir.path());
        let record = store.server(&name("a")).unwrap().unwrap();
        assert_eq!(record.added_at_ms, 42);
        assert_eq!(record.url, "https://a.example/mcp");
        assert_eq!(store.last_good_config().unwrap().as_deref(), Some("x = 1"));
        let export = store.export().unwrap();
        assert_eq!(export["schema_version"], SCHEMA_VERSION);
        assert_eq!(export["servers"]["a"]["v"], SCHEMA_VERSION);
        assert_eq!(export["servers"]["a"]["added_at_ms"], 42);
    }

    #[tokio::test]
    async fn secrets_are_sealed_on_disk_and_unreadable_without_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let n = name("a");
        {
            let store = keyed(dir.path());
            let g = guard("a").await;
            let record = ServerRecord::new(&url::Url::parse("https://a.example/").unwrap(), 0);
            let grant = crate::state::Grant {
                account: None,
                issuer: "i".into(),
                client_id: "c".into(),
                resource: "r".into(),
                access_token: crate::secret::Secret::new("at-in-the-clear-1"),
                token_type: "Bearer".into(),
                refresh_token: Some(crate::secret::Secret::new("rt-in-the-clear-1")),
                expires_at_ms: None,
                scopes: vec![],
                obtained_at_ms: 0,
                generation: 1,
                server_url: String::new(),
            };
            store.install_grant(&g, &grant, &record).await.unwrap();
            store
                .set_last_good_config("client_secret = \"cs-in-the-clear-1\"")
                .await
                .unwrap();
            store.flush_blocking().unwrap();
        }
        for secret in [
            "at-in-the-clear-1",
            "rt-in-the-clear-1",
            "cs-in-the-clear-1",
        ] {
            for file in walk(dir.path()) {
                let bytes = std::fs::read(&file).unwrap();
                assert!(
                    !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                    "{secret} in {}",
                    file.display()
                );
            }
        }
        // Without the key: no secret, and why.
        let store = Store::open_waiting(dir.path(), std::time::Duration::from_secs(5)).unwrap();
        store.key_missing("the keyring is locked".into());
        assert!(matches!(store.grant(&n), Err(StoreError::KeyMissing(w)) if w.contains("locked")));
        assert!(
            store.server(&n).unwrap().is_some(),
            "metadata stays readable"
        );
        // With another key: refused, never garbage.
        store.set_key(StoreKey::generate());
        assert!(matches!(store.grant(&n), Err(StoreError::Corrupt { .. })));
        store.set_key(test_key());
        let grant = store.grant(&n).unwrap().unwrap();
        assert_eq!(grant.access_token.expose(), "at-in-the-clear-1");
    }

    #[tokio::test]
    async fn a_plain_store_is_rewritten_sealed_once_and_keeps_everything() {
        let dir = tempfile::tempdir().unwrap();
        let n = name("a");
        {
            // A store from before sealing: plain values, no `sealed` mark.
            let store = keyed(dir.path());
            store.meta.remove("sealed").unwrap();
            store
                .grants
                .insert(
                    server_key(&n, ""),
                    Store::encode(&serde_json::json!({
                        "issuer": "i", "client_id": "c", "resource": "r",
                        "access_token": "at-plain-1", "token_type": "Bearer",
                        "refresh_token": "rt-plain-1", "obtained_at_ms": 0, "generation": 4
                    })),
                )
                .unwrap();
            store.flush_blocking().unwrap();
        }
        assert!(Store::rewrite_sealed(dir.path(), &test_key()).unwrap());
        assert!(
            !Store::rewrite_sealed(dir.path(), &test_key()).unwrap(),
            "once"
        );
        for file in walk(dir.path()) {
            let bytes = std::fs::read(&file).unwrap();
            assert!(
                !bytes.windows(10).any(|w| w == b"at-plain-1"),
                "{}",
                file.display()
            );
        }
        let store = keyed(dir.path());
        let grant = store.grant(&n).unwrap().unwrap();
        assert_eq!(
            (grant.access_token.expose(), grant.generation),
            ("at-plain-1", 4)
        );
        assert!(store.is_sealed().unwrap());
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path);
            }
        }
        out
    }

    #[tokio::test]
    async fn delete_removes_every_trace_by_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let store = keyed(dir.path());
        let url = url::Url::parse("https://a.example/").unwrap();
        store
            .put_server(&guard("a").await, &ServerRecord::new(&url, 1))
            .await
            .unwrap();
        store
            .put_server(&guard("ab").await, &ServerRecord::new(&url, 1))
            .await
            .unwrap();
        let other = store.db.open_tree("grants").unwrap();
        other.insert(b"a\0issuer", b"x").unwrap();
        other.insert(b"ab\0issuer", b"y").unwrap();
        store.delete_server(&guard("a").await).await.unwrap();
        assert!(store.server(&name("a")).unwrap().is_none());
        assert!(store.server(&name("ab")).unwrap().is_some());
        assert!(other.get(b"a\0issuer").unwrap().is_none());
        assert!(other.get(b"ab\0issuer").unwrap().is_some());
    }

    #[tokio::test]
    async fn grants_are_served_from_memory_and_follow_writes() {
        let dir = tempfile::tempdir().unwrap();
        let store = keyed(dir.path());
        let n = name("a");
        let g = guard("a").await;
        let record = ServerRecord::new(&url::Url::parse("https://a.example/").unwrap(), 0);
        assert!(store.grant(&n).unwrap().is_none());
        let mut grant = crate::state::Grant {
            account: None,
            issuer: "i".into(),
            client_id: "c".into(),
            resource: "r".into(),
            access_token: crate::secret::Secret::new("t1"),
            token_type: "Bearer".into(),
            refresh_token: None,
            expires_at_ms: None,
            scopes: vec![],
            obtained_at_ms: 0,
            generation: 1,
            server_url: String::new(),
        };
        store.install_grant(&g, &grant, &record).await.unwrap();
        assert_eq!(store.grant(&n).unwrap().unwrap().generation, 1);
        assert!(
            store.server(&n).unwrap().is_some(),
            "record written with it"
        );
        grant.generation = 2;
        store.install_grant(&g, &grant, &record).await.unwrap();
        assert_eq!(store.grant(&n).unwrap().unwrap().generation, 2);
        store.delete_server(&g).await.unwrap();
        assert!(
            store.grant(&n).unwrap().is_none(),
            "deleted with its server"
        );
        store.install_grant(&g, &grant, &record).await.unwrap();
        store.delete_grant(&g).await.unwrap();
        assert!(store.grant(&n).unwrap().is_none());
        drop(store);
        // What the cache served is what is on disk.
        store_roundtrip(dir.path(), &n).await;
    }

    async fn store_roundtrip(dir: &std::path::Path, n: &ServerName) {
        let store = Store::open(dir).unwrap();
        assert!(store.grant(n).unwrap().is_none());
    }

    #[tokio::test]
    async fn refuses_state_from_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = keyed(dir.path());
            store
                .meta
                .insert("schema_version", &(SCHEMA_VERSION + 1).to_be_bytes())
                .unwrap();
            store.flush_blocking().unwrap();
        }
        assert!(matches!(
            Store::open(dir.path()),
            Err(StoreError::TooNew { .. })
        ));
    }

    #[test]
    fn a_second_open_is_refused_while_the_first_holds_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let first = keyed(dir.path());
        let err = Store::open(dir.path()).err().expect("second open fails");
        assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");
        // A waiting open gets it once the holder lets go.
        let path = dir.path().to_path_buf();
        let waiter = std::thread::spawn(move || {
            Store::open_waiting(&path, std::time::Duration::from_secs(10)).map(|_| ())
        });
        std::thread::sleep(std::time::Duration::from_millis(200));
        drop(first);
        waiter
            .join()
            .unwrap()
            .expect("opened once the first let go");
    }

    /// Readers filling the cache race a writer: once `install_grant`
    /// returns, no reader may see an older grant (a fill that read sled
    /// before the write must not overwrite the newer entry).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cache_fill_never_replaces_a_newer_grant() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(keyed(dir.path()));
        let n = name("a");
        let g = guard("a").await;
        let record = ServerRecord::new(&url::Url::parse("https://a.example/").unwrap(), 0);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut readers = Vec::new();
        for _ in 0..2 {
            let store = store.clone();
            let stop = stop.clone();
            let n = n.clone();
            readers.push(std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    // Empty the cache so every read is a fill.
                    store.grant_cache.write().unwrap().clear();
                    let _ = store.grant(&n);
                }
            }));
        }
        for generation in 1..=300u64 {
            let grant = crate::state::Grant {
                account: None,
                issuer: "i".into(),
                client_id: "c".into(),
                resource: "r".into(),
                access_token: crate::secret::Secret::new(format!("t{generation}")),
                token_type: "Bearer".into(),
                refresh_token: None,
                expires_at_ms: None,
                scopes: vec![],
                obtained_at_ms: 0,
                generation,
                server_url: String::new(),
            };
            store.install_grant(&g, &grant, &record).await.unwrap();
            let seen = store.grant(&n).unwrap().unwrap().generation;
            assert!(seen >= generation, "read {seen} after writing {generation}");
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for r in readers {
            r.join().unwrap();
        }
    }
}
