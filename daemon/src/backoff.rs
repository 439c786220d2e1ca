//! When a refresh request goes: the [`Freshness`] a caller asks for, and
//! the refresher's backoffs, per server: the refresh that failed for a
//! reason that may pass, and when the next request may go.
//!
//! Until its time, no caller but a person (`Freshness::Force`) sends
//! another request for that grant, so a thousand clients of a failing
//! authorization server do not become a thousand requests. The backoff
//! belongs to one grant generation: installing a new grant ends it
//! (`install.rs`), as do a logout, a removal and a changed assertion file.
//!
//! Lock: `all` (`std::sync::Mutex`), held only to read or replace an
//! entry, never across an await.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::config::ServerName;

pub use crate::scheduler::Backoff;

/// The delay after `failures` consecutive failures when the AS asked for
/// `asked_secs`: the larger of our backoff and its request, capped.
pub fn backoff_ms(failures: u32, asked_secs: Option<u64>) -> i64 {
    let ours = crate::scheduler::backoff(failures, 0.0);
    let asked = asked_secs.map_or(0, |s| (s.min(86_400) as i64) * 1000);
    ours.max(asked).min(crate::scheduler::MAX_BACKOFF_MS)
}

#[derive(Default)]
pub struct Backoffs {
    all: Mutex<HashMap<ServerName, Backoff>>,
}

impl Backoffs {
    /// The backoff in force for `name`'s grant of `generation`, if any:
    /// the one failure state, read by the scheduler and by `status`.
    pub fn get(&self, name: &ServerName, generation: u64) -> Option<Backoff> {
        self.all
            .lock()
            .unwrap()
            .get(name)
            .filter(|b| b.generation == generation)
            .cloned()
    }

    /// Ends the backoff of `name` (a new grant, a logout, a removal).
    pub fn end(&self, name: &ServerName) {
        self.all.lock().unwrap().remove(name);
    }

    /// Records a failed refresh of `generation` at `now_ms`: one more
    /// consecutive failure, and no request before the backoff is over.
    pub fn start(
        &self,
        name: &ServerName,
        generation: u64,
        asked_secs: Option<u64>,
        reason: String,
        now_ms: i64,
    ) -> Backoff {
        let mut all = self.all.lock().unwrap();
        let failures = all
            .get(name)
            .filter(|b| b.generation == generation)
            .map_or(0, |b| b.failures)
            + 1;
        let backoff = Backoff {
            generation,
            failures,
            retry_at_ms: now_ms + backoff_ms(failures, asked_secs),
            reason,
        };
        all.insert(name.clone(), backoff.clone());
        backoff
    }
}

/// When a refresh may be skipped because the grant is already fresh.
#[derive(Clone, Copy, Debug)]
pub enum Freshness {
    /// Always refresh (`mcpauthctl refresh`).
    Force,
    /// Skip if the grant is no longer this generation: someone else
    /// refreshed while we waited for the lock (401 reports).
    UnlessNewerThan(u64),
    /// Skip if the grant is valid for at least this many ms (GetToken).
    UnlessValidForMs(i64),
}

#[cfg(test)]
mod tests {
    use super::backoff_ms;
    use crate::scheduler::MAX_BACKOFF_MS;

    #[test]
    fn backoff_doubles_honours_retry_after_and_is_bounded() {
        assert_eq!(backoff_ms(1, None), 5_000);
        assert_eq!(backoff_ms(2, None), 10_000);
        assert_eq!(backoff_ms(3, None), 20_000);
        assert_eq!(backoff_ms(30, None), MAX_BACKOFF_MS);
        // The AS asks for longer: granted, up to the cap.
        assert_eq!(backoff_ms(1, Some(120)), 120_000);
        assert_eq!(backoff_ms(1, Some(86_400)), MAX_BACKOFF_MS);
        assert_eq!(backoff_ms(1, Some(u64::MAX)), MAX_BACKOFF_MS);
        // Or for less: our own backoff still applies.
        assert_eq!(backoff_ms(3, Some(1)), 20_000);
    }
}
