//! Private directories and atomic file writes, used for config.toml and
//! token files.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::secret::Secret;

/// Creates `dir` (and missing parents) with mode 0700.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Writes `bytes` to `path` atomically: a temporary file in the same
/// directory (never following a symlink), fsync, rename over `path`, fsync
/// of the directory. The file ends with permission bits `mode`. A reader
/// sees the old content or the new, never a mix; a crash leaves one of the
/// two.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    let tmp = dir.join(format!(
        ".{}.mcpauth-{}.tmp",
        path.file_name()
            .map_or("file".into(), |n| n.to_string_lossy()),
        std::process::id()
    ));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// A credential file named in `config.toml`, by its key there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CredentialFile {
    ClientKey,
    ClientSecret,
    Assertion,
    IdToken,
}

impl CredentialFile {
    /// The key in `config.toml` that names such a file.
    pub fn key(self) -> &'static str {
        match self {
            CredentialFile::ClientKey => "client_key_file",
            CredentialFile::ClientSecret => "client_secret_file",
            CredentialFile::Assertion => "assertion_file",
            CredentialFile::IdToken => "id_token_file",
        }
    }

    /// Whether nobody else may even read it: a key or a client secret
    /// lives for years. An assertion or ID token lives minutes and is often
    /// handed over by a platform (a Kubernetes projected token is 0644,
    /// root's), so only its writers are checked.
    fn private(self) -> bool {
        matches!(
            self,
            CredentialFile::ClientKey | CredentialFile::ClientSecret
        )
    }
}

/// Why a credential file was not read.
#[derive(Debug)]
pub enum CredentialError {
    /// It could not be opened or read.
    Io(std::io::Error),
    /// It is not safe to use; one line that names it, says why and how to
    /// fix it.
    Refused(String),
}

impl std::fmt::Display for CredentialError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CredentialError::Io(e) => e.fmt(f),
            CredentialError::Refused(line) => f.write_str(line),
        }
    }
}

/// The largest credential file read.
const MAX_CREDENTIAL: u64 = 64 * 1024;

/// Reads a credential file into a `Secret`, trailing newlines dropped, if
/// it is safe to use (as ssh refuses an unprotected private key):
/// a regular file (a FIFO or a device is refused at once: the open does
/// not block, and the refresh path that reads it holds the server's lock),
/// ours or root's, that nobody else can change and, for a key or a client
/// secret, nobody else can read. Symlinks are followed (dotfile managers,
/// Kubernetes' `..data`); the checks are on what was opened.
pub fn read_credential(path: &Path, kind: CredentialFile) -> Result<Secret, CredentialError> {
    use std::io::Read;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let key = kind.key();
    let shown = path.display();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
        .open(path)
        .map_err(CredentialError::Io)?;
    let meta = file.metadata().map_err(CredentialError::Io)?;
    let file_type = meta.file_type();
    if !file_type.is_file() {
        let what = if file_type.is_fifo() {
            "a FIFO"
        } else if file_type.is_dir() {
            "a directory"
        } else if file_type.is_socket() {
            "a socket"
        } else if file_type.is_char_device() || file_type.is_block_device() {
            "a device"
        } else {
            "not a regular file"
        };
        return Err(CredentialError::Refused(format!(
            "{key} {shown} is {what}, not a regular file; point it at a file"
        )));
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me && meta.uid() != 0 {
        return Err(CredentialError::Refused(format!(
            "{key} {shown} belongs to uid {}, not to you (uid {me}); use a file of yours",
            meta.uid()
        )));
    }
    let mode = meta.mode() & 0o7777;
    let writable = mode & 0o022 != 0;
    let readable = kind.private() && mode & 0o044 != 0;
    if writable || readable {
        let what = match (readable, writable) {
            (true, true) => "readable and writable by others",
            (true, false) => "readable by others",
            _ => "writable by others",
        };
        let fix = if kind.private() {
            "chmod 600 it"
        } else {
            "chmod go-w it"
        };
        return Err(CredentialError::Refused(format!(
            "{key} {shown} is mode {mode:04o}: {what}; {fix}"
        )));
    }
    let mut bytes = Vec::new();
    let read = file.take(MAX_CREDENTIAL + 1).read_to_end(&mut bytes);
    let result = match read {
        Err(e) => Err(CredentialError::Io(e)),
        Ok(_) if bytes.len() as u64 > MAX_CREDENTIAL => Err(CredentialError::Io(
            std::io::Error::other("larger than 64 KiB"),
        )),
        Ok(_) => match std::str::from_utf8(&bytes) {
            Ok(text) => Ok(Secret::new(text.trim_end_matches(['\n', '\r']))),
            Err(_) => Err(CredentialError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "not UTF-8 text",
            ))),
        },
    };
    zeroize::Zeroize::zeroize(&mut bytes);
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn file(dir: &Path, name: &str, mode: u32) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, "value\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    fn refusal(path: &Path, kind: CredentialFile) -> String {
        match read_credential(path, kind) {
            Err(CredentialError::Refused(line)) => line,
            Err(e) => panic!("not refused but failed: {e}"),
            Ok(_) => panic!("{} was read", path.display()),
        }
    }

    #[test]
    fn keys_and_secrets_must_be_private_and_every_credential_ours_to_change() {
        let dir = tempfile::tempdir().unwrap();
        let ok = file(dir.path(), "ok", 0o600);
        let secret = read_credential(&ok, CredentialFile::ClientSecret).unwrap();
        assert_eq!(secret.expose(), "value");
        let readable = file(dir.path(), "readable", 0o644);
        assert_eq!(
            refusal(&readable, CredentialFile::ClientKey),
            format!(
                "client_key_file {} is mode 0644: readable by others; chmod 600 it",
                readable.display()
            )
        );
        // An assertion or ID token may be read by others, not changed.
        assert!(read_credential(&readable, CredentialFile::Assertion).is_ok());
        assert!(read_credential(&readable, CredentialFile::IdToken).is_ok());
        let writable = file(dir.path(), "writable", 0o620);
        assert_eq!(
            refusal(&writable, CredentialFile::Assertion),
            format!(
                "assertion_file {} is mode 0620: writable by others; chmod go-w it",
                writable.display()
            )
        );
        let open = file(dir.path(), "open", 0o666);
        assert!(
            refusal(&open, CredentialFile::ClientSecret)
                .contains("is mode 0666: readable and writable by others; chmod 600 it")
        );
    }

    #[test]
    fn a_fifo_or_a_directory_is_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let started = std::time::Instant::now();
        assert!(refusal(&fifo, CredentialFile::Assertion).contains("is a FIFO"));
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        assert!(refusal(dir.path(), CredentialFile::IdToken).contains("is a directory"));
    }
}
