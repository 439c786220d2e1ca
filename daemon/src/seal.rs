//! Secrets at rest: every value the store keeps that holds a secret
//! (grants, client registrations, pending logins, identity providers' ID
//! tokens, the last good config text) is sealed with XChaCha20-Poly1305
//! before it reaches sled, under one 256-bit store key.
//!
//! A sealed value is `MAGIC || nonce (24 bytes) || ciphertext+tag`; the
//! associated data is the tree's name and the entry's key, so a value
//! cannot be moved to another server or tree unnoticed. `MAGIC` starts
//! with a byte no JSON text starts with, so a plain value written before
//! sealing existed is told apart (and sealed at the next start).
//!
//! Where the key lives ([`KeySource`]), chosen at the first start and kept
//! in the store's `meta` tree:
//! - the OS keyring (the Secret Service on the session's D-Bus), created
//!   there at first start and never written to disk in the clear;
//! - where there is none (a headless server), a 0600 file in its own 0700
//!   directory, `$XDG_DATA_HOME/mcpauth/store-key` (not the state
//!   directory, so a copy of the state alone reveals nothing).
//!
//! A keyring that is locked (or unreachable) when the key lives there
//! leaves the store locked: nothing that needs a secret is served, each
//! such call says why, and the daemon picks the key up as soon as the
//! keyring opens, without a restart.

use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use zeroize::Zeroizing;

/// The first bytes of a sealed value (0xff never starts JSON).
pub const MAGIC: &[u8; 4] = b"\xffMS1";
const NONCE_LEN: usize = 24;
pub const KEY_LEN: usize = 32;

/// The store key. Never shown; zeroed on drop.
#[derive(Clone)]
pub struct StoreKey(Zeroizing<[u8; KEY_LEN]>);

impl std::fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreKey([redacted])")
    }
}

impl StoreKey {
    /// A new random key.
    pub fn generate() -> Self {
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        rand::RngCore::fill_bytes(&mut rand::rng(), key.as_mut());
        Self(key)
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let bytes: [u8; KEY_LEN] = bytes.try_into().ok()?;
        Some(Self(Zeroizing::new(bytes)))
    }

    /// The key as lowercase hex (how it is kept in the keyring or file).
    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(self.0.iter().map(|b| format!("{b:02x}")).collect())
    }

    pub fn from_hex(text: &str) -> Option<Self> {
        let text = text.trim();
        if text.len() != KEY_LEN * 2 || !text.is_ascii() {
            return None;
        }
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Self(bytes))
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(self.0.as_ref().into())
    }
}

/// Whether `raw` is a sealed value.
pub fn is_sealed(raw: &[u8]) -> bool {
    raw.starts_with(MAGIC)
}

fn aad(tree: &str, key: &[u8]) -> Vec<u8> {
    let mut aad = tree.as_bytes().to_vec();
    aad.push(0);
    aad.extend_from_slice(key);
    aad
}

/// Seals `plain` as the value of `key` in `tree`.
pub fn seal(store_key: &StoreKey, tree: &str, key: &[u8], plain: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_LEN];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut nonce);
    let sealed = store_key
        .cipher()
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: plain,
                aad: &aad(tree, key),
            },
        )
        .expect("XChaCha20-Poly1305 seals any length the store writes");
    let mut out = Vec::with_capacity(MAGIC.len() + NONCE_LEN + sealed.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    out
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("not a sealed value")]
    NotSealed,
    #[error("it does not open with the store key (another key, or altered)")]
    Forged,
}

/// Opens a value sealed by [`seal`] for the same tree and key.
pub fn open(
    store_key: &StoreKey,
    tree: &str,
    key: &[u8],
    raw: &[u8],
) -> Result<Zeroizing<Vec<u8>>, SealError> {
    let body = raw.strip_prefix(MAGIC).ok_or(SealError::NotSealed)?;
    if body.len() < NONCE_LEN {
        return Err(SealError::Forged);
    }
    let (nonce, sealed) = body.split_at(NONCE_LEN);
    store_key
        .cipher()
        .decrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: sealed,
                aad: &aad(tree, key),
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| SealError::Forged)
}

/// Where the store key lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    /// The OS keyring (the Secret Service).
    Keyring,
    /// A private file: there was no OS keyring when the store was made.
    File(PathBuf),
}

impl KeySource {
    /// How it is recorded in the store's `meta` tree.
    pub fn tag(&self) -> &'static str {
        match self {
            KeySource::Keyring => "keyring",
            KeySource::File(_) => "file",
        }
    }
}

/// The store key's state, for `status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyState {
    /// Secrets are sealed and served.
    Ready(KeySource),
    /// The key is not at hand: nothing that needs a secret is served.
    Locked { reason: String },
}

/// The key file's place: its own private directory under
/// `$XDG_DATA_HOME` (default `~/.local/share`).
pub fn key_file(home: &Path, xdg_data_home: Option<&Path>) -> PathBuf {
    xdg_data_home
        .map(Path::to_path_buf)
        .unwrap_or_else(|| home.join(".local/share"))
        .join("mcpauth")
        .join("store-key")
}

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read the store key file {path}: {reason}")]
    Read { path: String, reason: String },
    #[error(
        "the store key file {path} is mode {mode:04o}; it must be readable by you alone (chmod 600 it)"
    )]
    Open { path: String, mode: u32 },
    #[error("the store key file {path} does not hold a key")]
    Malformed { path: String },
}

/// Reads the key file, or creates it (with a new key) when `create`.
pub fn load_key_file(path: &Path, create: bool) -> Result<Option<StoreKey>, KeyFileError> {
    use std::os::unix::fs::MetadataExt;
    let shown = path.display().to_string();
    match std::fs::symlink_metadata(path) {
        Ok(meta) => {
            if !meta.file_type().is_file() || meta.uid() != nix::unistd::getuid().as_raw() {
                return Err(KeyFileError::Read {
                    path: shown,
                    reason: "not a regular file of yours".into(),
                });
            }
            if meta.mode() & 0o077 != 0 {
                return Err(KeyFileError::Open {
                    path: shown,
                    mode: meta.mode() & 0o7777,
                });
            }
            let text =
                Zeroizing::new(
                    std::fs::read_to_string(path).map_err(|e| KeyFileError::Read {
                        path: shown.clone(),
                        reason: e.to_string(),
                    })?,
                );
            StoreKey::from_hex(&text)
                .map(Some)
                .ok_or(KeyFileError::Malformed { path: shown })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
            let key = StoreKey::generate();
            let dir = path.parent().expect("the key file has a directory");
            crate::fsutil::create_private_dir(dir)
                .and_then(|()| {
                    crate::fsutil::write_atomically(path, key.to_hex().as_bytes(), 0o600)
                })
                .map_err(|e| KeyFileError::Read {
                    path: shown,
                    reason: e.to_string(),
                })?;
            Ok(Some(key))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(KeyFileError::Read {
            path: shown,
            reason: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_opens_only_with_its_key_tree_and_entry() {
        let key = StoreKey::generate();
        let sealed = seal(&key, "grants", b"s\0", b"{\"access_token\":\"at-1\"}");
        assert!(is_sealed(&sealed));
        assert!(!sealed.windows(4).any(|w| w == b"at-1"));
        assert_eq!(
            open(&key, "grants", b"s\0", &sealed).unwrap().as_slice(),
            b"{\"access_token\":\"at-1\"}"
        );
        assert_eq!(
            open(&key, "grants", b"t\0", &sealed),
            Err(SealError::Forged)
        );
        assert_eq!(open(&key, "flows", b"s\0", &sealed), Err(SealError::Forged));
        assert_eq!(
            open(&StoreKey::generate(), "grants", b"s\0", &sealed),
            Err(SealError::Forged)
        );
        let mut altered = sealed.clone();
        *altered.last_mut().unwrap() ^= 1;
        assert_eq!(
            open(&key, "grants", b"s\0", &altered),
            Err(SealError::Forged)
        );
        assert_eq!(
            open(&key, "grants", b"s\0", b"{}"),
            Err(SealError::NotSealed)
        );
        // Two seals of one value differ (a fresh nonce each time).
        assert_ne!(
            sealed,
            seal(&key, "grants", b"s\0", b"{\"access_token\":\"at-1\"}")
        );
    }

    #[test]
    fn keys_round_trip_through_hex_and_never_show() {
        let key = StoreKey::generate();
        let again = StoreKey::from_hex(&key.to_hex()).unwrap();
        assert_eq!(key.to_hex(), again.to_hex());
        assert_eq!(format!("{key:?}"), "StoreKey([redacted])");
        assert!(StoreKey::from_hex("zz").is_none());
    }

    #[test]
    fn the_key_file_is_made_private_and_an_open_one_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mcpauth/store-key");
        assert!(load_key_file(&path, false).unwrap().is_none());
        let made = load_key_file(&path, true).unwrap().unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        assert_eq!(
            load_key_file(&path, false).unwrap().unwrap().to_hex(),
            made.to_hex()
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_key_file(&path, false).unwrap_err().to_string();
        assert!(e.contains("0644") && e.contains("chmod 600"), "{e}");
    }
}
