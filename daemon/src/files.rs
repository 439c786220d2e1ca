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
//!   never imported back. The watching and adopting is `file_watch.rs`'s.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use sha2::{Digest, Sha256};
use tracing::{debug, warn};

use crate::config::{ServerName, TokenFileFormat};
use crate::context::Context;
use crate::secret::Secret;
use crate::state::Grant;

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

/// The export side of token files: writes each new grant to its
/// server's export file, and remembers what it wrote so the import side
/// never reads it back.
///
/// Lock: `own_writes` (`std::sync::Mutex`), the hash of the last content
/// written per path; held only to read or record one, never across I/O.
pub struct TokenFiles {
    ctx: Arc<Context>,
    own_writes: Mutex<HashMap<PathBuf, [u8; 32]>>,
}

impl TokenFiles {
    pub fn new(ctx: Arc<Context>) -> Self {
        Self {
            ctx,
            own_writes: Mutex::default(),
        }
    }

    /// Whether `bytes` at `path` are what the broker wrote there last.
    pub(crate) fn wrote(&self, path: &Path, bytes: &[u8]) -> bool {
        self.own_writes.lock().unwrap().get(path) == Some(&digest(bytes))
    }

    /// Writes the server's export file with the grant held, if any.
    pub(crate) async fn export_current(&self, name: &ServerName) {
        if let Ok(Some(grant)) = self.ctx.store().grant(name) {
            self.export_token_file(name, &grant).await;
        }
    }

    /// Writes the server's export file, if it has one, with `grant`.
    pub(crate) async fn export_token_file(&self, name: &ServerName, grant: &Grant) {
        let Some(export) = self
            .ctx
            .config()
            .servers
            .get(name)
            .and_then(|s| s.export.clone())
        else {
            return;
        };
        let bytes = render(
            export.format,
            grant,
            export.refresh_token,
            self.ctx.now_ms(),
        );
        // Recorded first: the watcher may fire before the write returns.
        self.own_writes
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
