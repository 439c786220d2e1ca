//! Watches `config.toml` with `notify` and has the config editor reload it.
//!
//! It watches parent directories, not the files: editors and atomic writers
//! replace a file by renaming a new one over it, which a watch on the old
//! inode would never see. Bursts of events are coalesced (debounced) into
//! one reload.

use std::collections::HashSet;
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

/// Which events on a watched directory name one of the files.
#[derive(Clone, Copy)]
pub enum Naming {
    /// An event for the file itself.
    TheFile,
    /// An event for anything in the file's directory (files rotated by
    /// renaming a new one, or a new directory as Kubernetes' `..data`
    /// link, into place).
    ItsDirectory,
}

/// Watches the directories of `files` (writers replace files by rename,
/// so the directory, not the file) and sends each file an event names on
/// `tx`; with `create`, a missing directory is made (private) first.
/// `None` with nothing to watch; what cannot be watched is logged as
/// `what`'s.
pub fn watch_files(
    files: HashSet<PathBuf>,
    naming: Naming,
    create: bool,
    tx: &mpsc::Sender<PathBuf>,
    what: &str,
) -> Option<notify::RecommendedWatcher> {
    if files.is_empty() {
        return None;
    }
    let tx = tx.clone();
    let wanted = files.clone();
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let Ok(event) = res else { return };
        for path in event.paths {
            for file in wanted.iter().filter(|f| match naming {
                Naming::TheFile => **f == path,
                Naming::ItsDirectory => **f == path || f.parent() == path.parent(),
            }) {
                let _ = tx.try_send(file.clone());
            }
        }
    });
    let mut watcher = match watcher {
        Ok(w) => w,
        Err(e) => {
            warn!(error = %e, "cannot watch {what}");
            return None;
        }
    };
    let dirs: HashSet<&Path> = files.iter().filter_map(|f| f.parent()).collect();
    for dir in dirs {
        let made = if create {
            crate::fsutil::create_private_dir(dir).map_err(notify::Error::io)
        } else {
            Ok(())
        };
        if let Err(e) = made.and_then(|()| watcher.watch(dir, RecursiveMode::NonRecursive)) {
            warn!(dir = %dir.display(), error = %e, "cannot watch the directory of {what}");
        }
    }
    Some(watcher)
}
