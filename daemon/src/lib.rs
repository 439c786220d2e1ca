//! `mcpauthd`: the per-user broker that owns the OAuth state of every remote
//! MCP server and serves it over gRPC on a Unix socket.
//!
//! Layout (see ARCHITECTURE.md for the whole picture):
//! - [`listener`]: the socket: instance lock, stale socket, permissions,
//!   systemd activation, peer-uid check on every connection.
//! - [`rpc`]: the gRPC adapter; the only module that knows tonic/prost.
//! - [`broker`]: the domain core: config in force, server registry, events.
//! - [`locks`]: the per-server lock as a type (`ServerGuard`), which every
//!   write of a server's state takes.
//! - [`install`]: the one place a new grant is installed.
//! - [`login`]: the authorization-code flow; [`callback`]: its loopback
//!   HTTP server; [`device`]: the device flow (RFC 8628).
//! - [`unattended`]: grants without a person (client credentials,
//!   workload JWT bearer), obtained and renewed through the refresh path;
//!   [`enterprise`]: enterprise-managed authorization (ID-JAG) on top.
//! - [`refresh`]: the one place a grant is refreshed, the backoff, logout.
//! - [`tokens`]: `GetToken`, rejected-token reports, step-up.
//! - [`scheduler`]: proactive refresh on an injectable [`clock`].
//! - [`files`]: token-file export and import; [`import`]: adopting the
//!   logins other tools hold (`mcpauthctl import`), with [`keyring`]
//!   reading those kept in the OS keyring (the Secret Service).
//! - [`desktop`]: the notification when a program needs a person's login.
//! - [`oauth`]: the OAuth engine (discovery, registration, flows, token
//!   endpoint); knows neither gRPC nor the store.
//! - [`config`]: `config.toml`: parsing, validation, comment-keeping edits.
//! - [`store`]: persistence in sled; the only module that knows sled.
//! - [`state`]: the runtime records the store persists.
//! - [`watcher`]: `notify` on the config's directory, debounced reloads.
//! - [`secret`], [`url_policy`], [`fsutil`], [`logging`], [`shutdown`]:
//!   small pieces.
//!
//! The binary (`src/main.rs`) only parses flags and calls [`run`].

pub mod broker;
pub(crate) mod callback;
pub mod clock;
pub mod config;
pub(crate) mod desktop;
pub(crate) mod device;
pub(crate) mod enterprise;
pub mod files;
pub(crate) mod fsutil;
pub(crate) mod import;
pub(crate) mod install;
pub(crate) mod keyring;
pub mod listener;
pub(crate) mod locks;
pub mod logging;
pub mod login;
pub mod oauth;
pub(crate) mod refresh;
pub(crate) mod rpc;
pub mod scheduler;
pub mod secret;
pub mod shutdown;
pub mod state;
pub mod store;
pub(crate) mod tokens;
pub(crate) mod unattended;
pub(crate) mod url_policy;
pub(crate) mod watcher;

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
/// tightened (with a warning), a symlink or another owner is refused. The
/// same goes for everything in it (files 0600, directories 0700): a store
/// written under a looser umask, or copied from a backup, is made private
/// before it is opened.
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
    let tightened = tighten_tree(dir, me).map_err(fail)?;
    if tightened > 0 {
        warn!(path = %dir.display(), entries = tightened, "state files were readable by others; made them private (600/700)");
    }
    Ok(())
}

/// Makes every entry under `dir` private; returns how many were changed.
/// Symlinks are left alone (nothing of ours makes them, and chmod would
/// follow them); an entry of another owner is refused.
fn tighten_tree(dir: &Path, me: u32) -> Result<usize, String> {
    let mut changed = 0;
    let entries = std::fs::read_dir(dir).map_err(|e| format!("cannot list it: {e}"))?;
    for entry in entries {
        let path = entry.map_err(|e| e.to_string())?.path();
        let meta = std::fs::symlink_metadata(&path).map_err(|e| e.to_string())?;
        if meta.file_type().is_symlink() {
            continue;
        }
        if meta.uid() != me {
            return Err(format!(
                "{} belongs to uid {}, not to you (uid {me}); refusing to use it (run: chown -R {me} {})",
                path.display(),
                meta.uid(),
                dir.display()
            ));
        }
        let private = if meta.is_dir() { 0o700 } else { 0o600 };
        if meta.mode() & 0o077 != 0 {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(private))
                .map_err(|e| format!("cannot chmod {}: {e}", path.display()))?;
            changed += 1;
        }
        if meta.is_dir() {
            changed += tighten_tree(&path, me)?;
        }
    }
    Ok(changed)
}

/// Process-wide hardening, done first thing: files are created private,
/// and the process cannot be core-dumped or (on Linux) ptrace-attached by
/// other processes of the same user that are not its ancestors.
pub fn harden_process() {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    // Room for the connection limit: raise the soft file limit (often
    // 1024) as far as the hard one allows, like most servers do.
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let want = hard.min(listener::MAX_CONNECTIONS as u64 + 1024);
        if soft < want {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, want, hard);
        }
    }
    let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0);
    #[cfg(target_os = "linux")]
    let _ = nix::sys::prctl::set_dumpable(false);
}

/// Reads the hardening back and logs it (a refusal by the system shows up
/// here rather than passing silently).
fn log_hardening() {
    let core = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_CORE)
        .map(|(soft, hard)| format!("{soft}/{hard}"))
        .unwrap_or_else(|e| format!("unknown ({e})"));
    #[cfg(target_os = "linux")]
    let dumpable = nix::sys::prctl::get_dumpable()
        .map(|d| d.to_string())
        .unwrap_or_else(|e| format!("unknown ({e})"));
    #[cfg(not(target_os = "linux"))]
    let dumpable = "n/a";
    let umask = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    info!(core_limit = %core, dumpable = %dumpable, umask = %format!("{:03o}", umask.bits()), connection_limit = listener::connection_limit(), "process hardening");
}

/// Runs the daemon until SIGTERM/SIGINT or a `Shutdown` RPC.
pub async fn run(paths: Paths, options: BrokerOptions) -> Result<(), DaemonError> {
    // The lock comes first: a second instance must not touch anything.
    let listener = Listener::bind(&paths.socket)?;
    log_hardening();
    let activated = listener.is_activated();
    ensure_state_dir(&paths.state_dir)?;
    // The instance lock is ours, so the store is free or about to be: a
    // previous instance lets go of both when its process exits.
    let store = Store::open_waiting(&paths.state_dir, Duration::from_secs(5))?;
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
    broker.start_assertion_watch();
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
