//! Watches `config.toml` with `notify` and has the config editor reload it.
//!
//! It watches parent directories, not the files: editors and atomic writers
//! replace a file by renaming a new one over it, which a watch on the old
//! inode would never see. Bursts of events are coalesced (debounced) into
//! one reload.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::config_edit::ConfigEditor;

/// How long a burst of events is collected before one reload.
const DEBOUNCE: Duration = Duration::from_millis(20);

/// Keeps the watch alive; dropping it stops watching.
pub struct ConfigWatcher {
    _watcher: notify::RecommendedWatcher,
}

fn is_target(event_path: &Path, target: &Path) -> bool {
    event_path == target || event_path.file_name() == target.file_name()
}

/// Starts watching `config` (through its parent directory) and reloads the
/// broker's config on every change.
pub fn watch_config(editor: Arc<ConfigEditor>, config: PathBuf) -> notify::Result<ConfigWatcher> {
    let dir = config
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    // A signal channel: one pending "changed" is as good as many.
    let (tx, mut rx) = mpsc::channel::<()>(1);
    let target = config.clone();
    let mut watcher =
        notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
            Ok(event) => {
                if event.paths.iter().any(|p| is_target(p, &target)) {
                    let _ = tx.try_send(());
                }
            }
            Err(e) => warn!(error = %e, "file watch error"),
        })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            tokio::time::sleep(DEBOUNCE).await;
            while rx.try_recv().is_ok() {}
            debug!(path = %config.display(), "config changed on disk");
            if let Err(e) = editor.reload().await {
                warn!(error = %e, "applying the config failed");
            }
        }
    });
    Ok(ConfigWatcher { _watcher: watcher })
}
