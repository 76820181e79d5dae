//! Publishing the API socket: locked, checked, bound with mode 0600 and renamed into place; and
//! removed at the end only if it is still ours.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use super::socket_lock::SocketLock;
use super::ApiError;

/// Longest socket path the kernel accepts (`sun_path` less its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Device and inode of the socket file we published, so that shutdown
/// removes only our own file.
pub(super) type FileId = (u64, u64);

/// Locks `path`, checks what is there, then binds a 0600 socket there.
///
/// The lock ([`SocketLock`]) comes first: with it, no other server can pass the check at the
/// same time and then replace this one's socket. The socket is bound inside a fresh 0700
/// directory beside `path`, chmod-ed, and renamed over `path`: no one can connect before the
/// mode is set, and a stale socket is replaced atomically. If that temporary path would be
/// too long for `sun_path`, the socket is bound in place.
pub(super) fn bind(path: &Path) -> Result<(UnixListener, FileId, SocketLock), ApiError> {
    let bind_error = |source| ApiError::Bind {
        path: path.to_path_buf(),
        source,
    };
    let lock = SocketLock::acquire(path)?;
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => match UnixStream::connect(path) {
            Ok(_) => return Err(ApiError::InUse(path.to_path_buf())),
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionRefused | ErrorKind::NotFound) => {
                tracing::info!("replacing stale API socket {}", path.display());
            }
            Err(source) => {
                return Err(ApiError::Inspect {
                    path: path.to_path_buf(),
                    source,
                })
            }
        },
        Ok(_) => return Err(ApiError::NotASocket(path.to_path_buf())),
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(source) => {
            return Err(ApiError::Inspect {
                path: path.to_path_buf(),
                source,
            })
        }
    }
    let file_name = path
        .file_name()
        .ok_or_else(|| bind_error(ErrorKind::InvalidInput.into()))?;
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = path.with_file_name(format!(
        ".{}.{}-{}",
        file_name.to_string_lossy(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let temp = dir.join("s");
    let listener = if temp.as_os_str().len() <= MAX_SOCKET_PATH {
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(bind_error)?;
        let published = bind_secured(&temp).and_then(|l| fs::rename(&temp, path).map(|()| l));
        let _ = fs::remove_file(&temp);
        let _ = fs::remove_dir(&dir);
        published.map_err(bind_error)?
    } else {
        bind_secured(path).map_err(bind_error)?
    };
    let meta = fs::symlink_metadata(path).map_err(bind_error)?;
    Ok((listener, (meta.dev(), meta.ino()), lock))
}

fn bind_secured(path: &Path) -> std::io::Result<UnixListener> {
    let listener = UnixListener::bind(path)?;
    if let Err(e) = fs::set_permissions(path, fs::Permissions::from_mode(0o600)) {
        let _ = fs::remove_file(path);
        return Err(e);
    }
    Ok(listener)
}

pub(super) fn remove_if_ours(path: &Path, file_id: FileId) {
    match fs::symlink_metadata(path) {
        Ok(meta) if (meta.dev(), meta.ino()) == file_id => {
            if let Err(e) = fs::remove_file(path) {
                tracing::warn!("cannot remove API socket {}: {e}", path.display());
            }
        }
        _ => tracing::debug!("API socket {} is no longer ours", path.display()),
    }
}
