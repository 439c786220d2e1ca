//! The Unix socket: one instance per user, private, and only for its user.
//!
//! Start-up order matters:
//! 1. check the socket directory (0700, ours, not a symlink) or refuse;
//! 2. take the instance lock (`mcpauthd.lock` beside the socket), so a second
//!    daemon is refused before it touches anything;
//! 3. remove a stale socket, but only when nothing answers on it;
//! 4. bind and make the socket 0600.
//!
//! Under systemd socket activation the listening socket arrives as fd 3
//! (`LISTEN_FDS`); the directory check and the lock still apply.
//!
//! Every accepted connection's peer credentials are checked; a connection
//! from any other uid is closed at once and logged.
//!
//! At most [`connection_limit`] connections are open at once
//! ([`MAX_CONNECTIONS`], less if the file-descriptor limit is lower);
//! beyond that a new connection is closed at once (the client fails fast
//! instead of queueing), and the overload is logged once per episode.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tracing::{debug, warn};

use mcpauth_proto::paths::LOCK_FILE;

/// Connections open at once, at most. One MCP host keeps one connection
/// (gRPC multiplexes its calls) and a one-shot `mcpauthctl` holds one
/// briefly, but a 401 storm can bring a thousand callers at once (the
/// benchmark's figure 4 does), so the bound is well above that.
pub const MAX_CONNECTIONS: usize = 2048;
/// File descriptors kept for everything but connections (store, config,
/// token files, outbound HTTP).
const FD_RESERVE: u64 = 128;

/// The connection limit in force: [`MAX_CONNECTIONS`], or less when the
/// process may not open that many files (see `harden_process`, which
/// raises the soft limit as far as the hard one allows).
pub fn connection_limit() -> usize {
    let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(soft, _)| soft);
    (soft.saturating_sub(FD_RESERVE) as usize).clamp(16, MAX_CONNECTIONS)
}

/// An accepted connection from our own uid; holds one of the
/// [`MAX_CONNECTIONS`] slots until it is dropped.
pub struct Connection {
    stream: UnixStream,
    _slot: OwnedSemaphorePermit,
}

impl Connection {
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error(
        "socket directory {path} is a symlink; refusing to use it (remove it, mcpauthd will create it)"
    )]
    DirIsSymlink { path: PathBuf },
    #[error("socket directory {path} is not a directory")]
    DirNotDir { path: PathBuf },
    #[error(
        "socket directory {path} belongs to uid {owner}, not to you (uid {me}); refusing to use it"
    )]
    DirWrongOwner { path: PathBuf, owner: u32, me: u32 },
    #[error("socket directory {path} has mode {mode:o}; it must be 700 (run: chmod 700 {path})")]
    DirTooOpen { path: PathBuf, mode: u32 },
    #[error("another mcpauthd is already running{pid} (lock {lock})")]
    AlreadyRunning { lock: PathBuf, pid: String },
    #[error("a process already answers on {path}; refusing to replace its socket")]
    SocketInUse { path: PathBuf },
    #[error("{path} exists and is not a socket; refusing to remove it")]
    NotASocket { path: PathBuf },
    #[error("systemd passed {0} sockets; mcpauthd expects exactly one")]
    Activation(usize),
    #[error(
        "LISTEN_FDS announces a socket on fd 3, but fd 3 is not a socket; unset LISTEN_FDS and LISTEN_PID, or fix the systemd unit"
    )]
    ActivationNotSocket,
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ListenError + use<> {
    let path = path.to_path_buf();
    move |source| ListenError::Io { what, path, source }
}

/// A bound, locked socket ready to accept connections.
pub struct Listener {
    listener: UnixListener,
    path: PathBuf,
    activated: bool,
    /// Held for the life of the daemon; released by the kernel on exit.
    _lock: Flock<File>,
}

/// Checks that `dir` is a private directory of ours, creating it if needed.
pub fn ensure_socket_dir(dir: &Path) -> Result<(), ListenError> {
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            crate::fsutil::create_private_dir(dir).map_err(io_err("cannot create", dir))?;
        }
        Err(e) => return Err(io_err("cannot inspect", dir)(e)),
        Ok(_) => {}
    }
    let meta = std::fs::symlink_metadata(dir).map_err(io_err("cannot inspect", dir))?;
    if meta.file_type().is_symlink() {
        return Err(ListenError::DirIsSymlink {
            path: dir.to_path_buf(),
        });
    }
    if !meta.is_dir() {
        return Err(ListenError::DirNotDir {
            path: dir.to_path_buf(),
        });
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(ListenError::DirWrongOwner {
            path: dir.to_path_buf(),
            owner: meta.uid(),
            me,
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(ListenError::DirTooOpen {
            path: dir.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// How long a starting daemon waits for an instance that is shutting down
/// (it holds the lock but no longer answers) to exit.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// Takes the instance lock. While another process holds it: if that one
/// answers on the socket, it is running, and this start is refused at
/// once; if not, it is shutting down (or starting), and the lock is tried
/// again until [`SHUTDOWN_WAIT`] has passed.
fn take_lock(dir: &Path, socket: &Path) -> Result<Flock<File>, ListenError> {
    let deadline = std::time::Instant::now() + SHUTDOWN_WAIT;
    loop {
        match try_lock(dir) {
            Err(ListenError::AlreadyRunning { .. })
                if std::time::Instant::now() < deadline
                    && std::os::unix::net::UnixStream::connect(socket).is_err() =>
            {
                std::thread::sleep(Duration::from_millis(25));
            }
            other => return other,
        }
    }
}

fn try_lock(dir: &Path) -> Result<Flock<File>, ListenError> {
    let path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(&path)
        .map_err(io_err("cannot open lock file", &path))?;
    let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((file, nix::errno::Errno::EWOULDBLOCK)) => {
            let pid = std::fs::read_to_string(&path)
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .map(|p| format!(" (pid {p})"))
                .unwrap_or_default();
            drop(file);
            return Err(ListenError::AlreadyRunning { lock: path, pid });
        }
        Err((_, errno)) => {
            return Err(io_err("cannot lock", &path)(std::io::Error::from(errno)));
        }
    };
    lock.set_len(0).map_err(io_err("cannot write", &path))?;
    writeln!(&mut *lock, "{}", std::process::id()).map_err(io_err("cannot write", &path))?;
    Ok(lock)
}

/// Removes a socket file left by a dead daemon; refuses if anything answers.
fn clear_stale_socket(path: &Path) -> Result<(), ListenError> {
    let meta = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("cannot inspect", path)(e)),
        Ok(meta) => meta,
    };
    if !meta.file_type().is_socket() {
        return Err(ListenError::NotASocket {
            path: path.to_path_buf(),
        });
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(ListenError::SocketInUse {
            path: path.to_path_buf(),
        }),
        Err(_) => {
            debug!(path = %path.display(), "removing stale socket");
            std::fs::remove_file(path).map_err(io_err("cannot remove stale socket", path))
        }
    }
}

impl Listener {
    /// Binds `path`, or adopts the socket systemd passed in.
    pub fn bind(path: &Path) -> Result<Self, ListenError> {
        let dir = path.parent().unwrap_or(Path::new("/"));
        let fds: Vec<_> = sd_notify::listen_fds()
            .map(Iterator::collect)
            .unwrap_or_default();
        let activated = fds.len();
        if activated > 1 {
            return Err(ListenError::Activation(activated));
        }
        ensure_socket_dir(dir)?;
        let lock = take_lock(dir, path)?;
        let listener = if activated == 1 {
            use std::os::fd::FromRawFd;
            // LISTEN_FDS may be inherited by mistake (a shell that exports
            // it): adopt fd 3 only if it really is a socket.
            let is_socket = nix::sys::stat::fstat(unsafe {
                // SAFETY: borrowed only for the fstat call; fd 3 stays open.
                std::os::fd::BorrowedFd::borrow_raw(fds[0])
            })
            .is_ok_and(|st| st.st_mode & nix::libc::S_IFMT == nix::libc::S_IFSOCK);
            if !is_socket {
                return Err(ListenError::ActivationNotSocket);
            }
            // SAFETY: systemd hands us this fd (3, SD_LISTEN_FDS_START) as a
            // listening socket we now own; nothing else in the process uses it.
            let std_listener = unsafe { std::os::unix::net::UnixListener::from_raw_fd(fds[0]) };
            std_listener
                .set_nonblocking(true)
                .map_err(io_err("cannot use activated socket", path))?;
            UnixListener::from_std(std_listener)
                .map_err(io_err("cannot use activated socket", path))?
        } else {
            clear_stale_socket(path)?;
            let listener = UnixListener::bind(path).map_err(io_err("cannot bind", path))?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .map_err(io_err("cannot chmod", path))?;
            listener
        };
        Ok(Self {
            listener,
            path: path.to_path_buf(),
            activated: activated == 1,
            _lock: lock,
        })
    }

    pub fn is_activated(&self) -> bool {
        self.activated
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts connections until `stop` resolves, passing on only those
    /// whose peer runs as our own uid. The channel is bounded: when the
    /// server falls behind, accepting waits instead of queueing without end.
    pub fn incoming(
        self,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> (mpsc::Receiver<std::io::Result<Connection>>, ListenerGuard) {
        let (tx, rx) = mpsc::channel(64);
        let limit = connection_limit();
        let slots = Arc::new(Semaphore::new(limit));
        let mut overloaded = false;
        let me = nix::unistd::geteuid().as_raw();
        let guard = ListenerGuard {
            path: (!self.activated).then(|| self.path.clone()),
            inode: std::fs::metadata(&self.path).map(|m| m.ino()).ok(),
            lock: std::mem::ManuallyDrop::new(self._lock),
        };
        let listener = self.listener;
        tokio::spawn(async move {
            tokio::pin!(stop);
            loop {
                let accepted = tokio::select! {
                    _ = &mut stop => break,
                    accepted = listener.accept() => accepted,
                };
                match accepted {
                    Ok((stream, _)) => match stream.peer_cred() {
                        Ok(cred) if cred.uid() == me => match slots.clone().try_acquire_owned() {
                            Ok(slot) => {
                                overloaded = false;
                                let connection = Connection {
                                    stream,
                                    _slot: slot,
                                };
                                if tx.send(Ok(connection)).await.is_err() {
                                    break;
                                }
                            }
                            Err(_) => {
                                if !overloaded {
                                    warn!(
                                        limit,
                                        peer_pid = cred.pid(),
                                        "too many open connections; closing new ones until some close"
                                    );
                                }
                                overloaded = true;
                            }
                        },
                        Ok(cred) => warn!(
                            peer_uid = cred.uid(),
                            peer_pid = cred.pid(),
                            "refused connection from another user"
                        ),
                        Err(e) => {
                            warn!(error = %e, "refused connection: peer credentials unavailable")
                        }
                    },
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        });
        (rx, guard)
    }
}

/// Removes the socket file on drop if it is still the one we bound.
///
/// The instance lock is *not* released then: it is left to the process
/// exit, when the kernel releases it together with the store's own file
/// lock. Releasing it earlier would let a new daemon start while this
/// process still holds the store (the store lives as long as the tasks
/// that share the broker), and fail on it.
pub struct ListenerGuard {
    path: Option<PathBuf>,
    inode: Option<u64>,
    lock: std::mem::ManuallyDrop<Flock<File>>,
}

impl Drop for ListenerGuard {
    fn drop(&mut self) {
        if let (Some(path), Some(inode)) = (&self.path, self.inode)
            && std::fs::metadata(path).map(|m| m.ino()).ok() == Some(inode)
        {
            let _ = std::fs::remove_file(path);
        }
        // Deliberately not dropped: see the type's doc.
        let _held_until_exit: &Flock<File> = &self.lock;
    }
}
