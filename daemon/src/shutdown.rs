//! Shutdown as one small shared value: anything may trigger it (a signal,
//! the `Shutdown` RPC), anything may wait for it (the server, streams).

use tokio::sync::watch;

#[derive(Clone)]
pub struct Shutdown {
    tx: watch::Sender<bool>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    pub fn new() -> Self {
        Self {
            tx: watch::Sender::new(false),
        }
    }

    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    pub fn is_triggered(&self) -> bool {
        *self.tx.borrow()
    }

    /// Resolves once shutdown has been triggered (at once if it was).
    pub fn wait(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.tx.subscribe();
        async move {
            let _ = rx.wait_for(|triggered| *triggered).await;
        }
    }
}

/// Triggers `shutdown` on SIGTERM or SIGINT.
pub fn on_signals(shutdown: Shutdown) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "shutting down");
        shutdown.trigger();
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Shutdown;

    #[tokio::test]
    async fn waiters_before_and_after_the_trigger_both_resolve() {
        let s = Shutdown::new();
        let early = s.wait();
        assert!(!s.is_triggered());
        s.trigger();
        early.await;
        s.wait().await;
        assert!(s.is_triggered());
    }
}
