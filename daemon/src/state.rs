//! Runtime state of a server: what the daemon learned, as opposed to what
//! the user declared in `config.toml`. These are the domain records the
//! store persists; they know nothing of sled or of the wire.

use serde::{Deserialize, Serialize};

/// Everything the daemon keeps about one server, persisted per name.
///
/// Later revisions add the grant (tokens), the discovered metadata and the
/// client registration; each arrives behind `#[serde(default)]` so older
/// records stay readable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerRecord {
    /// The URL this state belongs to. State is never reused for another URL:
    /// when the configured URL changes, the record starts afresh.
    pub url: String,
    /// When the daemon first saw this server (Unix ms).
    pub added_at_ms: i64,
    /// Last successful token refresh (Unix ms).
    #[serde(default)]
    pub last_refresh_ms: Option<i64>,
    /// The last error met for this server, shown by `status`. Never holds a
    /// secret: it is built from typed errors whose messages carry none.
    #[serde(default)]
    pub last_error: Option<String>,
}

impl ServerRecord {
    pub fn new(url: &url::Url, now_ms: i64) -> Self {
        Self {
            url: url.to_string(),
            added_at_ms: now_ms,
            last_refresh_ms: None,
            last_error: None,
        }
    }
}

/// Milliseconds since the Unix epoch, from the wall clock.
pub fn unix_ms_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
