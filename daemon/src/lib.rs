//! `mcpauthd`: the per-user broker that owns the OAuth state of every remote
//! MCP server and serves it over gRPC on a Unix socket.
//!
//! Layout (see ARCHITECTURE.md for the whole picture):
//! - [`listener`]: the socket: instance lock, stale socket, permissions,
//!   systemd activation, peer-uid check on every connection.
//! - [`rpc`]: the gRPC adapter; the only module that knows tonic/prost.
//! - [`broker`]: the parts, wired once at start, and the facade [`rpc`]
//!   serves; every part shares the [`context`] (config in force, store,
//!   locks, HTTP, clock, events) and fails with an [`error`] that carries
//!   a [`next_step`].
//! - [`locks`]: the per-server lock as a type (`ServerGuard`), which every
//!   write of a server's state takes.
//! - The parts: [`config_edit`] (edits and reloads of `config.toml`),
//!   [`install`] (the one place a new grant is installed), [`refresh`]
//!   (the one place a grant is refreshed; logout) with its [`backoff`],
//!   [`unattended`] (grants without a person, through the refresh path)
//!   and [`enterprise`] (ID-JAG) on top, [`login`] (browser, device and
//!   identity-provider logins; [`callback`]: the loopback HTTP server),
//!   [`tokens`] (`GetToken`, rejected-token reports) with [`step_up`],
//!   [`files`] and [`file_watch`] (token-file export and import),
//!   [`import`] (adopting the logins other tools hold, with [`keyring`]
//!   reading those kept in the OS keyring), [`desktop`] (the notification
//!   when a program needs a person's login).
//! - [`scheduler`]: proactive refresh on an injectable [`clock`].
//! - [`oauth`]: the OAuth engine (discovery, registration, flows, token
//!   endpoint); knows neither gRPC nor the store.
//! - [`config`]: `config.toml`: parsing, validation, comment-keeping edits.
//! - [`store`]: persistence in sled; the only module that knows sled.
//! - [`seal`]: sealing the stored secrets, and where their key lives (the
//!   OS keyring, through [`keyring`], or a private file); [`run`] finds
//!   the key at start and keeps looking while the keyring is locked.
//! - [`state`]: the runtime records the store persists.
//! - [`watcher`]: `notify` on the config's directory, debounced reloads.
//! - [`secret`], [`url_policy`], [`fsutil`], [`logging`], [`shutdown`]:
//!   small pieces.
//!
//! The binary (`src/main.rs`) only parses flags and calls [`run`].

pub(crate) mod backoff;
pub mod broker;
pub(crate) mod callback;
pub mod clock;
pub mod config;
pub(crate) mod config_edit;
pub mod context;
pub(crate) mod desktop;
pub(crate) mod enterprise;
pub mod error;
pub(crate) mod file_watch;
pub mod files;
pub(crate) mod fsutil;
pub(crate) mod import;
pub(crate) mod install;
pub(crate) mod keyring;
pub mod listener;
pub(crate) mod locks;
pub mod logging;
pub mod login;
pub mod next_step;
pub mod oauth;
pub(crate) mod refresh;
pub(crate) mod rpc;
pub mod scheduler;
pub mod seal;
pub mod secret;
pub mod shutdown;
pub mod state;
pub(crate) mod step_up;
pub mod store;
pub(crate) mod tokens;
pub(crate) mod unattended;
pub(crate) mod url_policy;
pub(crate) mod watcher;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::broker::Broker;
use crate::context::{BrokerOptions, Paths};
use crate::error::BrokerError;
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

/// The store key's file, used where there is no OS keyring:
/// `$XDG_DATA_HOME/mcpauth/store-key`.
pub fn store_key_file() -> PathBuf {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let data = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute());
    seal::key_file(&home, data.as_deref())
}

/// Finds the store key where the store says it lives (`recorded`), or, for
/// a new store, makes one: in the OS keyring where one answers, else in a
/// private file. `Err` says why it is not at hand and what to do.
async fn find_store_key(
    state_dir: &Path,
    recorded: Option<&str>,
) -> Result<(seal::StoreKey, seal::KeySource), String> {
    use keyring::KeyringError;
    let file = store_key_file();
    let from_file = |create: bool| match seal::load_key_file(&file, create) {
        Ok(Some(key)) => Ok((key, seal::KeySource::File(file.clone()))),
        Ok(None) => Err(format!(
            "the key that seals the stored tokens was kept in {}, which is gone: the tokens cannot be read; remove {} and log in again",
            file.display(),
            state_dir.display()
        )),
        Err(e) => Err(e.to_string()),
    };
    match recorded {
        Some("file") => from_file(false),
        Some(_) => match keyring::store_key(state_dir, false).await {
            Ok(Some(key)) => Ok((key, seal::KeySource::Keyring)),
            Ok(None) => Err(
                "the key that seals the stored tokens is gone from the OS keyring: the tokens cannot be read; log in again after removing the state directory".into(),
            ),
            Err(KeyringError::Locked) => Err(
                "the stored tokens are sealed with a key in the OS keyring, which is locked: unlock it (a desktop login does); mcpauthd picks the key up without a restart".into(),
            ),
            Err(e) => Err(format!(
                "the stored tokens are sealed with a key in the OS keyring, which does not answer ({e}); mcpauthd keeps trying"
            )),
        },
        None => match keyring::store_key(state_dir, true).await {
            Ok(Some(key)) => Ok((key, seal::KeySource::Keyring)),
            Ok(None) => unreachable!("a key is made when none exists"),
            Err(KeyringError::Unavailable(why)) => {
                warn!(reason = %why, file = %file.display(), "no OS keyring answers; the key that seals the stored tokens is kept in a private file");
                from_file(true)
            }
            Err(KeyringError::Locked) => Err(
                "the OS keyring is locked, so the key that will seal the stored tokens cannot be made there yet: unlock it (a desktop login does); mcpauthd picks it up without a restart".into(),
            ),
            Err(e) => Err(format!(
                "the OS keyring failed ({e}); mcpauthd keeps trying"
            )),
        },
    }
}

/// The key of an existing store, where `recorded` says it lives (for
/// `mcpauthd export`); never makes one.
pub async fn existing_store_key(
    state_dir: &Path,
    recorded: Option<&str>,
) -> Result<seal::StoreKey, String> {
    match recorded {
        Some(_) => find_store_key(state_dir, recorded)
            .await
            .map(|(key, _)| key),
        None => Err("the store has no key yet".into()),
    }
}

/// Opens the store with its key: a store from before sealing is rewritten
/// sealed first. Without the key, the store opens locked.
async fn open_sealed_store(dir: &Path) -> Result<Store, DaemonError> {
    let store = Store::open_waiting(dir, Duration::from_secs(5))?;
    let recorded = store.key_source()?;
    match find_store_key(dir, recorded.as_deref()).await {
        Ok((key, source)) => {
            if recorded.is_none() {
                store.set_key_source(source.tag())?;
            }
            if store.is_sealed()? {
                store.set_key(key);
                return Ok(store);
            }
            drop(store);
            if Store::rewrite_sealed(dir, &key)? {
                info!(
                    "the stored secrets are sealed now; the plain store was rewritten and removed"
                );
            }
            let store = Store::open_waiting(dir, Duration::from_secs(5))?;
            store.set_key(key);
            Ok(store)
        }
        Err(why) => {
            warn!(reason = %why, "the store is locked: no secret is served until its key is at hand");
            store.key_missing(why);
            Ok(store)
        }
    }
}

/// While the store is locked, looks for its key every two seconds; once
/// found, secrets are served (without a restart).
fn spawn_key_watch(broker: Arc<Broker>, dir: PathBuf) {
    let weak = Arc::downgrade(&broker);
    let shutdown = broker.shutdown().wait();
    tokio::spawn(async move {
        let watch = async move {
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                let Some(broker) = weak.upgrade() else { return };
                let store = broker.store();
                let recorded = store.key_source().ok().flatten();
                match find_store_key(&dir, recorded.as_deref()).await {
                    Ok((key, source)) => {
                        if recorded.is_none()
                            && let Err(e) = store.set_key_source(source.tag())
                        {
                            warn!(error = %e, "cannot record where the store key is");
                            continue;
                        }
                        match store.unlock(key).await {
                            Ok(sealed) => {
                                info!(sealed, "the store key is at hand; secrets are served");
                                broker.store_unlocked();
                                return;
                            }
                            Err(e) => warn!(error = %e, "cannot seal the stored secrets"),
                        }
                    }
                    Err(why) => store.key_missing(why),
                }
            }
        };
        tokio::select! {
            _ = watch => {}
            _ = shutdown => {}
        }
    });
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
    let store = open_sealed_store(&paths.state_dir).await?;
    if let Some(dir) = paths.config.parent()
        && let Err(e) = create_private_dir(dir)
    {
        warn!(path = %dir.display(), error = %e, "cannot create the config directory");
    }

    let shutdown = Shutdown::new();
    shutdown::on_signals(shutdown.clone()).map_err(DaemonError::Signals)?;
    let broker = Broker::start(paths.clone(), store, activated, shutdown.clone(), options).await?;
    if !broker.store().has_key() {
        spawn_key_watch(broker.clone(), paths.state_dir.clone());
    }
    broker.start_scheduler();
    broker.start_token_files();
    broker.start_assertion_watch();
    let _watcher = match watcher::watch_config(broker.config_editor(), paths.config.clone()) {
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
