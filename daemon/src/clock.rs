//! Wall-clock time, injectable.
//!
//! Token expiries are wall-clock times (Unix ms), but waiting is done with
//! tokio timers. [`TokioClock`] ties the two together, so a test that
//! pauses tokio's clock (`tokio::time::pause`, `advance`) moves both.

use std::sync::Arc;

pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
}

/// The real clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        crate::state::unix_ms_now()
    }
}

/// Wall time that advances with tokio's (possibly paused) clock.
pub struct TokioClock {
    base_ms: i64,
    start: tokio::time::Instant,
}

impl TokioClock {
    pub fn starting_at(base_ms: i64) -> Arc<Self> {
        Arc::new(Self {
            base_ms,
            start: tokio::time::Instant::now(),
        })
    }
}

impl Clock for TokioClock {
    fn now_ms(&self) -> i64 {
        self.base_ms + self.start.elapsed().as_millis() as i64
    }
}
