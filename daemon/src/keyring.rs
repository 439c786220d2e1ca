//! Logins another tool keeps in the OS keyring, read for `mcpauthctl
//! import`: on Linux and the BSDs, the desktop's Secret Service (GNOME
//! Keyring, KWallet, KeePassXC) on the session's D-Bus.
//!
//! Read only: the broker never writes there, and never unlocks a locked
//! keyring (that would put a password prompt in front of a person who
//! asked for an import). Secrets cross the bus encrypted (the service's
//! Diffie-Hellman session) and are wrapped in [`Secret`] at once.
//!
//! The tools that keep logins there use keyring-rs, which labels each
//! entry with the attributes `service` and `username`; Codex uses the
//! service `Codex MCP Credentials` and its `NAME|HASH` key as username.

use std::collections::HashMap;
use std::time::Duration;

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

/// The error's text, bounded. (These errors carry D-Bus names and
/// messages, never an entry's value.)
fn short(e: &secret_service::Error) -> String {
    e.to_string().chars().take(160).collect()
}
