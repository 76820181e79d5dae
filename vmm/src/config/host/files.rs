//! The files and sockets a configuration names, checked on the file system
//! ([`VmConfig::validate_files`]).

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use socket2::{Domain, SockAddr, Socket, Type};

use super::super::serial::SerialConfig;
use super::super::VmConfig;
use super::{ConfigError, FileRole};

impl VmConfig {
    /// Checks the paths of the configuration on the file system, in this order:
    ///
    /// 1. `--kernel` and `--initramfs` exist, are regular files (after following symlinks)
    ///    and can be opened for reading. Whether the kernel *is* a kernel is the loader's
    ///    business.
    /// 2. The initramfs is not larger than the boot RAM (a necessary condition only; the
    ///    loader knows the exact room left beside the kernel).
    /// 3. `--serial file=PATH` is not a directory and its directory exists.
    /// 4. `--serial socket=PATH` and `--api-socket PATH`: the directory exists, and the path is
    ///    absent or a socket nobody listens on. A *stale* socket (connection refused) passes:
    ///    the caller should remove it before binding. Another process may still take the path
    ///    in between, so `bind` errors must be reported too.
    pub fn validate_files(&self) -> Result<(), ConfigError> {
        if let Some(payload) = &self.payload {
            check_readable_file(FileRole::Kernel, &payload.kernel)?;
            if let Some(initramfs) = &payload.initramfs {
                let size = check_readable_file(FileRole::Initramfs, initramfs)?;
                if size > self.memory.size {
                    return Err(ConfigError::InitramfsTooLarge {
                        path: initramfs.clone(),
                        size,
                        memory: self.memory.size,
                    });
                }
            }
        }
        match &self.serial {
            SerialConfig::File(path) => check_output_file(FileRole::SerialFile, path)?,
            SerialConfig::Socket(path) => check_socket(FileRole::SerialSocket, path)?,
            SerialConfig::Stdio | SerialConfig::Null => {}
        }
        if let Some(path) = &self.api_socket {
            check_socket(FileRole::ApiSocket, path)?;
        }
        Ok(())
    }
}

fn kind_of(file_type: std::fs::FileType) -> &'static str {
    if file_type.is_dir() {
        "a directory"
    } else if file_type.is_file() {
        "a regular file"
    } else if file_type.is_socket() {
        "a socket"
    } else if file_type.is_fifo() {
        "a FIFO"
    } else if file_type.is_char_device() {
        "a character device"
    } else if file_type.is_block_device() {
        "a block device"
    } else if file_type.is_symlink() {
        "a symbolic link"
    } else {
        "not a regular file"
    }
}

/// An error for a path whose `metadata` failed: tells a dangling symlink from a missing file.
fn missing(role: FileRole, path: &Path, err: io::Error) -> ConfigError {
    if err.kind() != io::ErrorKind::NotFound {
        return ConfigError::Unreadable {
            role,
            path: path.to_owned(),
            source: err,
        };
    }
    match std::fs::read_link(path) {
        Ok(target) => ConfigError::DanglingSymlink {
            role,
            path: path.to_owned(),
            target,
        },
        Err(_) => ConfigError::NotFound {
            role,
            path: path.to_owned(),
        },
    }
}

/// Checks that `path` is a readable regular file; returns its size.
fn check_readable_file(role: FileRole, path: &Path) -> Result<u64, ConfigError> {
    let meta = std::fs::metadata(path).map_err(|e| missing(role, path, e))?;
    if !meta.is_file() {
        return Err(ConfigError::NotAFile {
            role,
            path: path.to_owned(),
            kind: kind_of(meta.file_type()),
        });
    }
    std::fs::File::open(path).map_err(|source| ConfigError::Unreadable {
        role,
        path: path.to_owned(),
        source,
    })?;
    Ok(meta.len())
}

/// Checks that the directory `path` will be created in exists.
fn check_parent_dir(role: FileRole, path: &Path) -> Result<(), ConfigError> {
    let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return Ok(()); // A bare name: the current directory.
    };
    if std::fs::metadata(dir).map(|m| m.is_dir()).unwrap_or(false) {
        Ok(())
    } else {
        Err(ConfigError::NoParentDir {
            role,
            path: path.to_owned(),
            dir: dir.to_owned(),
        })
    }
}

/// A file the serial output will be appended to: may exist (not as a directory) or not.
fn check_output_file(role: FileRole, path: &Path) -> Result<(), ConfigError> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => Err(ConfigError::NotAFile {
            role,
            path: path.to_owned(),
            kind: "a directory",
        }),
        Ok(_) => Ok(()),
        Err(_) => check_parent_dir(role, path),
    }
}

/// A path to bind a listening socket at.
fn check_socket(role: FileRole, path: &Path) -> Result<(), ConfigError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return check_parent_dir(role, path),
        Err(source) => {
            return Err(ConfigError::Unreadable {
                role,
                path: path.to_owned(),
                source,
            })
        }
    };
    if !meta.file_type().is_socket() {
        return Err(ConfigError::NotASocket {
            role,
            path: path.to_owned(),
            kind: kind_of(meta.file_type()),
        });
    }
    match socket_has_listener(path) {
        Ok(true) => Err(ConfigError::SocketInUse {
            role,
            path: path.to_owned(),
        }),
        // Stale (refused) or gone. Other errors (say, EACCES): leave them to `bind`.
        Ok(false) | Err(_) => Ok(()),
    }
}
/// Whether a process listens on the Unix socket at `path`.
///
/// The `connect` is non-blocking, and must be: on Linux a blocking `connect` to a listener
/// whose backlog is full waits until that process accepts, which a hung or stopped process
/// never does, so `UnixStream::connect` could hang plugvm before it starts. A non-blocking
/// one fails at once with `EAGAIN` there, which means "in use" as surely as a connection
/// does. std cannot connect a Unix socket without blocking, so socket2 makes the socket.
fn socket_has_listener(path: &Path) -> io::Result<bool> {
    // A NUL would cut the path short in `sun_path` (or make it abstract): we would probe
    // another socket. A path from argv cannot hold one anyway.
    if path.as_os_str().as_bytes().contains(&0) {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    // Fails with `InvalidInput` if the path does not fit in `sun_path`.
    let addr = SockAddr::unix(path)?;
    // socket2 creates it close-on-exec.
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    socket.set_nonblocking(true)?;
    match socket.connect(&addr) {
        Ok(()) => Ok(true),
        Err(err) => match err.raw_os_error() {
            // A full backlog. (Unix sockets never answer `EINPROGRESS`; it would mean the same.)
            Some(libc::EAGAIN | libc::EINPROGRESS) => Ok(true),
            Some(libc::ECONNREFUSED | libc::ENOENT) => Ok(false),
            _ => Err(err),
        },
    }
}
