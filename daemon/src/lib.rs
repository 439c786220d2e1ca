//! `mcpauthd`: the per-user broker that owns the OAuth state of every remote
//! MCP server and serves it over gRPC on a Unix socket.
//!
//! Layout (see ARCHITECTURE.md for the whole picture):
//! - [`listener`]: the socket: instance lock, stale socket, permissions,
//!   systemd activation, peer-uid check on every connection.
//! - [`rpc`]: the gRPC adapter; the only module that knows tonic/prost.
//! - [`broker`]: the domain core: config in force, server registry, events.
//! - [`config`]: `config.toml`: parsing, validation, comment-keeping edits.
//! - [`store`]: persistence in sled; the only module that knows sled.
//! - [`state`]: the runtime records the store persists.
//! - [`watcher`]: `notify` on the config's directory, debounced reloads.
//! - [`secret`], [`url_policy`], [`logging`], [`shutdown`]: small pieces.
//!
//! The binary (`src/main.rs`) only parses flags and calls [`run`].

pub mod broker;
pub mod callback;
pub mod clock;
pub mod config;
pub mod files;
pub mod fsutil;
pub mod listener;
pub mod logging;
pub mod login;
pub mod oauth;
pub mod refresh;
pub mod rpc;
pub mod scheduler;
pub mod secret;
pub mod shutdown;
pub mod state;
pub mod store;
pub mod tokens;
pub mod url_policy;
pub mod watcher;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tracing::{info, warn};

use crate::broker::{Broker, BrokerError, BrokerOptions, Paths};
use crate::fsutil::create_private_dir;
use crate::listener::{ListenError, Listener};
use crate::shutdown::Shutdown;
use crate::store::{Store, StoreError};

/// How long open connections get to finish after a shutdown signal before
/// they are cut, so the process always exits within a second.
const GRACE: Duration = Duration::from_millis(700);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("state directory {path}: {reason}")]
    StateDir { path: PathBuf, reason: String },
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("the gRPC server failed: {0}")]
    Serve(String),
}

/// Makes the state directory private: created 0700, a looser mode is
/// tightened (with a warning), a symlink or another owner is refused.
pub fn ensure_state_dir(dir: &Path) -> Result<(), DaemonError> {
    let fail = |reason: String| DaemonError::StateDir {
        path: dir.to_path_buf(),
        reason,
    };
    create_private_dir(dir).map_err(|e| fail(format!("cannot create it: {e}")))?;
    let meta = std::fs::symlink_metadata(dir).map_err(|e| fail(e.to_string()))?;
    if meta.file_type().is_symlink() || !meta.is_dir() {
        return Err(fail(
            "it is not a plain directory (a symlink?); refusing to use it".into(),
        ));
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(fail(format!(
            "it belongs to uid {}, not to you (uid {me}); refusing to use it",
            meta.uid()
        )));
    }
    if meta.mode() & 0o077 != 0 {
        warn!(path = %dir.display(), mode = format!("{:o}", meta.mode() & 0o7777), "state directory was readable by others; setting it to 700");
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| fail(format!("cannot chmod 700: {e}")))?;
    }
    Ok(())
}

/// Process-wide hardening, done first thing: files are created private,
/// and the process cannot be core-dumped or (on Linux) ptrace-attached by
/// other processes of the same user that are not its ancestors.
pub fn harden_process() {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0);
    #[cfg(target_os = "linux")]
    let _ = nix::sys::prctl::set_dumpable(false);
}

/// Runs the daemon until SIGTERM/SIGINT or a `Shutdown` RPC.
pub async fn run(paths: Paths, options: BrokerOptions) -> Result<(), DaemonError> {
    // The lock comes first: a second instance must not touch anything.
    let listener = Listener::bind(&paths.socket)?;
    let activated = listener.is_activated();
    ensure_state_dir(&paths.state_dir)?;
    let store = Store::open(&paths.state_dir)?;
    if let Some(dir) = paths.config.parent()
        && let Err(e) = create_private_dir(dir)
    {
        warn!(path = %dir.display(), error = %e, "cannot create the config directory");
    }

    let shutdown = Shutdown::new();
    shutdown::on_signals(shutdown.clone()).map_err(DaemonError::Signals)?;
    let broker = Broker::start(paths.clone(), store, activated, shutdown.clone(), options).await?;
    broker.start_scheduler();
    broker.start_token_files();
    let _watcher = match watcher::watch_config(broker.clone(), paths.config.clone()) {
        Ok(w) => Some(w),
        Err(e) => {
            warn!(error = %e, "cannot watch the config; edits apply on restart only");
            None
        }
    };

    let (incoming, socket_guard) = listener.incoming(shutdown.wait());
    let mut server = tokio::spawn(rpc::serve(broker.clone(), incoming, shutdown.wait()));

    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    info!(
        socket = %paths.socket.display(),
        state = %paths.state_dir.display(),
        config = %paths.config.display(),
        pid = std::process::id(),
        activated,
        "mcpauthd {} ready",
        env!("CARGO_PKG_VERSION")
    );

    let early_exit = tokio::select! {
        _ = shutdown.wait() => None,
        result = &mut server => Some(result),
    };
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    let served = match early_exit {
        Some(result) => result,
        None => match tokio::time::timeout(GRACE, &mut server).await {
            Ok(result) => result,
            Err(_) => {
                warn!("connections still open after the grace period; closing them");
                server.abort();
                Ok(Ok(()))
            }
        },
    };
    broker.store().flush_blocking()?;
    drop(socket_guard);
    match served {
        Ok(Ok(())) => {
            info!("state flushed; stopped cleanly");
            Ok(())
        }
        Ok(Err(e)) => Err(DaemonError::Serve(e)),
        Err(e) => Err(DaemonError::Serve(e.to_string())),
    }
}
