//! The lock file beside the API socket (`PATH.lock`): one server at a time owns a path.
//!
//! Publishing the socket is atomic (it is bound elsewhere and renamed over the path), but the
//! look before it (does a live server listen there?) is not: two servers started at the same
//! moment both find the path free or stale, and the later rename silently replaces the
//! earlier server's socket, leaving that VMM with no reachable API. An exclusive `flock` on a
//! file beside the socket, taken before that look and held for the server's life, lets only
//! one of them past; the other fails with [`ApiError::InUse`].
//!
//! The lock is the kernel's, on the open file: a server that dies leaves an unlocked file,
//! which the next server simply locks. A server that stops removes the file, while still
//! holding the lock; whoever opened the file just before that then holds a lock on a file
//! that is no longer at the path, so a lock counts only once the path is checked to still
//! name the locked file.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::FlockOperation;

use super::ApiError;

/// How often a lock on a file that was meanwhile removed or replaced is taken again before
/// giving up: each retry means another server stopped or started in between, so a few are
/// plenty.
const MAX_ATTEMPTS: usize = 16;

/// The lock file's path for the socket at `socket`: the same path with `.lock` added.
pub(crate) fn lock_path(socket: &Path) -> PathBuf {
    let mut path = socket.as_os_str().to_owned();
    path.push(".lock");
    PathBuf::from(path)
}

/// A held lock on `PATH.lock`. Dropping it removes the file (if it is still ours) and
/// releases the lock.
#[derive(Debug)]
pub(crate) struct SocketLock {
    path: PathBuf,
    file: File,
}

impl SocketLock {
    /// Creates (mode 0600) or opens `PATH.lock` and locks it; [`ApiError::InUse`] when another
    /// server holds it.
    pub(crate) fn acquire(socket: &Path) -> Result<SocketLock, ApiError> {
        let path = lock_path(socket);
        let lock_error = |source| ApiError::Lock {
            path: path.clone(),
            source,
        };
        for _ in 0..MAX_ATTEMPTS {
            // No symlink is followed: plugvm often runs as root, and a link planted at this
            // path must not make it create or lock a file elsewhere.
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
                .map_err(lock_error)?;
            if !file.metadata().map_err(lock_error)?.is_file() {
                return Err(lock_error(io::Error::other("not a regular file")));
            }
            match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => {}
                Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
                    return Err(ApiError::InUse(socket.to_path_buf()))
                }
                Err(e) => return Err(lock_error(e.into())),
            }
            match names(&path, &file) {
                Ok(true) => {
                    return Ok(SocketLock {
                        path: path.clone(),
                        file,
                    })
                }
                // Removed or replaced by a server that stopped or started meanwhile: this file
                // is closed (and unlocked) without being removed, and the one at the path is
                // tried.
                Ok(false) => {}
                Err(e) => return Err(lock_error(e)),
            }
        }
        Err(lock_error(io::Error::other(
            "the lock file keeps being removed or replaced",
        )))
    }
}

/// Whether `path` still names `file`.
fn names(path: &Path, file: &File) -> io::Result<bool> {
    let locked = file.metadata()?;
    match fs::symlink_metadata(path) {
        Ok(meta) => Ok((meta.dev(), meta.ino()) == (locked.dev(), locked.ino())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

impl Drop for SocketLock {
    fn drop(&mut self) {
        // Removed while still locked (the file is closed after this): see the module's doc.
        if matches!(names(&self.path, &self.file), Ok(true)) {
            if let Err(e) = fs::remove_file(&self.path) {
                tracing::warn!("cannot remove {}: {e}", self.path.display());
            }
        }
    }
}
