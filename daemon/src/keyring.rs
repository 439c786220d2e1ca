//! The OS keyring: on Linux and the BSDs, the desktop's Secret Service
//! (GNOME Keyring, KWallet, KeePassXC) on the session's D-Bus.
//!
//! Two uses:
//! - logins another tool keeps there, read for `mcpauthctl import`. Read
//!   only: the broker never writes another tool's entries;
//! - the broker's own store key ([`store_key`], see `seal.rs`): one item,
//!   created at the first start, read at every start.
//!
//! It never unlocks a locked keyring (that would put a password prompt in
//! front of a person who asked for something else). Secrets cross the bus
//! encrypted (the service's Diffie-Hellman session) and are wrapped at
//! once ([`Secret`], [`StoreKey`]).
//!
//! The tools that keep logins there use keyring-rs, which labels each
//! entry with the attributes `service` and `username`; Codex uses the
//! service `Codex MCP Credentials` and its `NAME|HASH` key as username.

use std::collections::HashMap;
use std::time::Duration;

use crate::seal::StoreKey;
use crate::secret::Secret;

/// Codex's service name for its MCP logins.
pub(crate) const CODEX_SERVICE: &str = "Codex MCP Credentials";

/// How long the Secret Service may take, in all, for one search.
const LIMIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub(crate) enum KeyringError {
    #[error("no Secret Service answers on this session's D-Bus ({0})")]
    Unavailable(String),
    #[error(
        "the keyring holding them is locked; unlock it (a desktop login does), then import again"
    )]
    Locked,
    #[error("the Secret Service failed ({0})")]
    Failed(String),
}

/// One entry: its `username` attribute and its value.
#[derive(Debug)]
pub(crate) struct Entry {
    pub username: String,
    pub value: Secret,
}

impl Entry {
    /// The value as the tool's JSON, for the import to read as it reads
    /// the tools' files; `None` if it is not JSON.
    pub(crate) fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_str(self.value.expose()).ok()
    }
}

/// Every unlocked entry of `service`.
pub(crate) async fn entries(service: &str) -> Result<Vec<Entry>, KeyringError> {
    if cfg!(target_os = "macos") {
        return Err(KeyringError::Unavailable(
            "on macOS the tools use the Keychain, which is not read".into(),
        ));
    }
    tokio::time::timeout(LIMIT, search(service))
        .await
        .map_err(|_| KeyringError::Failed("no answer in time".into()))?
}

async fn search(service: &str) -> Result<Vec<Entry>, KeyringError> {
    use secret_service::{EncryptionType, Error, SecretService};
    let ss = SecretService::connect(EncryptionType::Dh)
        .await
        .map_err(|e| KeyringError::Unavailable(short(&e)))?;
    let found = ss
        .search_items(HashMap::from([("service", service)]))
        .await
        .map_err(|e| KeyringError::Failed(short(&e)))?;
    if found.unlocked.is_empty() && !found.locked.is_empty() {
        return Err(KeyringError::Locked);
    }
    let mut entries = Vec::new();
    for item in found.unlocked {
        let attributes = item
            .get_attributes()
            .await
            .map_err(|e| KeyringError::Failed(short(&e)))?;
        let Some(username) = attributes.get("username").cloned() else {
            continue;
        };
        let value = match item.get_secret().await {
            Ok(bytes) => bytes,
            Err(Error::Locked) => return Err(KeyringError::Locked),
            Err(e) => return Err(KeyringError::Failed(short(&e))),
        };
        // Not UTF-8: not a tool's JSON; left out rather than guessed at.
        let Ok(value) = String::from_utf8(value) else {
            continue;
        };
        entries.push(Entry {
            username,
            value: Secret::new(value),
        });
    }
    Ok(entries)
}

/// The broker's store key for the state in `state_dir`, from the default
/// collection; with `create`, a new one is made there when none exists.
/// `Ok(None)`: none exists (and none was to be made).
pub(crate) async fn store_key(
    state_dir: &std::path::Path,
    create: bool,
) -> Result<Option<StoreKey>, KeyringError> {
    #[cfg(target_os = "macos")]
    {
        let state = state_dir.display().to_string();
        return tokio::task::spawn_blocking(move || macos_store_key(&state, create))
            .await
            .map_err(|e| KeyringError::Failed(e.to_string()))?;
    }
    #[cfg(not(target_os = "macos"))]
    tokio::time::timeout(LIMIT, store_key_inner(state_dir, create))
        .await
        .map_err(|_| KeyringError::Failed("no answer in time".into()))?
}

/// The store key as a generic password in the login Keychain (service
/// `mcpauth store key`, account: the state directory).
#[cfg(target_os = "macos")]
fn macos_store_key(state: &str, create: bool) -> Result<Option<StoreKey>, KeyringError> {
    use security_framework::passwords::{get_generic_password, set_generic_password};
    const SERVICE: &str = "mcpauth store key";
    /// errSecItemNotFound
    const NOT_FOUND: i32 = -25300;
    match get_generic_password(SERVICE, state) {
        Ok(bytes) => {
            let bytes = zeroize::Zeroizing::new(bytes);
            let text = std::str::from_utf8(&bytes)
                .map_err(|_| KeyringError::Failed("the store key item is not text".into()))?;
            StoreKey::from_hex(text)
                .map(Some)
                .ok_or_else(|| KeyringError::Failed("the store key item holds no key".into()))
        }
        Err(e) if e.code() == NOT_FOUND && create => {
            let key = StoreKey::generate();
            set_generic_password(SERVICE, state, key.to_hex().as_bytes())
                .map_err(|e| KeyringError::Failed(e.to_string()))?;
            Ok(Some(key))
        }
        Err(e) if e.code() == NOT_FOUND => Ok(None),
        Err(e) => Err(KeyringError::Failed(e.to_string())),
    }
}

#[cfg(not(target_os = "macos"))]
async fn store_key_inner(
    state_dir: &std::path::Path,
    create: bool,
) -> Result<Option<StoreKey>, KeyringError> {
    use secret_service::{EncryptionType, Error, SecretService};
    let state = state_dir.display().to_string();
    let attributes = HashMap::from([
        ("application", "mcpauth"),
        ("purpose", "store-key"),
        ("state", state.as_str()),
    ]);
    let ss = SecretService::connect(EncryptionType::Dh)
        .await
        .map_err(|e| KeyringError::Unavailable(short(&e)))?;
    let found = ss
        .search_items(attributes.clone())
        .await
        .map_err(|e| KeyringError::Failed(short(&e)))?;
    if let Some(item) = found.unlocked.first() {
        let value = match item.get_secret().await {
            Ok(bytes) => zeroize::Zeroizing::new(bytes),
            Err(Error::Locked) => return Err(KeyringError::Locked),
            Err(e) => return Err(KeyringError::Failed(short(&e))),
        };
        let text = std::str::from_utf8(&value)
            .map_err(|_| KeyringError::Failed("the store key item is not text".into()))?;
        return StoreKey::from_hex(text)
            .map(Some)
            .ok_or_else(|| KeyringError::Failed("the store key item holds no key".into()));
    }
    if !found.locked.is_empty() {
        return Err(KeyringError::Locked);
    }
    if !create {
        return Ok(None);
    }
    let collection = ss
        .get_default_collection()
        .await
        .map_err(|e| KeyringError::Unavailable(short(&e)))?;
    if collection
        .is_locked()
        .await
        .map_err(|e| KeyringError::Failed(short(&e)))?
    {
        return Err(KeyringError::Locked);
    }
    let key = StoreKey::generate();
    collection
        .create_item(
            "mcpauth store key",
            attributes,
            key.to_hex().as_bytes(),
            true,
            "text/plain",
        )
        .await
        .map_err(|e| match e {
            Error::Locked => KeyringError::Locked,
            e => KeyringError::Failed(short(&e)),
        })?;
    Ok(Some(key))
}

/// The error's text, bounded. (These errors carry D-Bus names and
/// messages, never an entry's value.)
fn short(e: &secret_service::Error) -> String {
    e.to_string().chars().take(160).collect()
}
