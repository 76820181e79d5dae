//! `--serial stdio|file=PATH|socket=PATH|null`: where the guest's COM1 goes.

use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The longest path a Unix socket can be bound at: `sun_path` is 108 bytes including the NUL.
pub const MAX_SOCKET_PATH_LEN: usize = 107;

/// The syntax of `--serial`, for help and error messages.
pub(crate) const SERIAL_SYNTAX: &str = "stdio, null, file=PATH or socket=PATH";

/// Where the guest's serial port (COM1, `ttyS0`) is connected.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub enum SerialConfig {
    /// plugvm's own stdin and stdout (the default).
    #[default]
    Stdio,
    /// Output appended to a file (created if missing); no input.
    File(PathBuf),
    /// A Unix socket plugvm listens on; one client at a time gets the console.
    Socket(PathBuf),
    /// Output discarded, no input.
    Null,
}

/// Why a `--serial` value was rejected (a usage error: exit code 2).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SerialError {
    /// Not one of the modes.
    #[error("unknown mode {0:?} (expected {SERIAL_SYNTAX})")]
    UnknownMode(String),
    /// `file=` or `socket=` with nothing after it.
    #[error("{0}= needs a path")]
    EmptyPath(&'static str),
    /// `socket=PATH` longer than a Unix socket address can hold.
    #[error(transparent)]
    SocketPath(#[from] SocketPathError),
}

/// A Unix socket path that cannot be bound (shared by `--serial socket=` and `--api-socket`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "socket path {} is {len} bytes long; a Unix socket path can have at most {MAX_SOCKET_PATH_LEN}",
    path.display()
)]
pub struct SocketPathError {
    /// The path.
    pub path: PathBuf,
    /// Its length in bytes.
    pub len: usize,
}

/// Checks that `path` fits in `sockaddr_un.sun_path`.
pub(crate) fn check_socket_path(path: &Path) -> Result<(), SocketPathError> {
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH_LEN {
        return Err(SocketPathError {
            path: path.to_owned(),
            len,
        });
    }
    Ok(())
}

impl SerialConfig {
    /// Parses one of `stdio`, `null`, `file=PATH`, `socket=PATH`. Paths may be any bytes
    /// (not only UTF-8).
    pub fn parse(value: &OsStr) -> Result<Self, SerialError> {
        let bytes = value.as_bytes();
        let path = |rest: &[u8], mode| {
            if rest.is_empty() {
                Err(SerialError::EmptyPath(mode))
            } else {
                Ok(PathBuf::from(OsStr::from_bytes(rest)))
            }
        };
        match bytes {
            b"stdio" => Ok(SerialConfig::Stdio),
            b"null" => Ok(SerialConfig::Null),
            _ => {
                if let Some(rest) = bytes.strip_prefix(b"file=") {
                    path(rest, "file").map(SerialConfig::File)
                } else if let Some(rest) = bytes.strip_prefix(b"socket=") {
                    let path = path(rest, "socket")?;
                    check_socket_path(&path)?;
                    Ok(SerialConfig::Socket(path))
                } else {
                    Err(SerialError::UnknownMode(
                        value.to_string_lossy().into_owned(),
                    ))
                }
            }
        }
    }
}

impl fmt::Display for SerialConfig {
    /// The `--serial` syntax (paths shown lossily if they are not UTF-8).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SerialConfig::Stdio => f.write_str("stdio"),
            SerialConfig::Null => f.write_str("null"),
            SerialConfig::File(p) => write!(f, "file={}", p.display()),
            SerialConfig::Socket(p) => write!(f, "socket={}", p.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<SerialConfig, SerialError> {
        SerialConfig::parse(OsStr::new(s))
    }

    #[test]
    fn default_is_stdio() {
        assert_eq!(SerialConfig::default(), SerialConfig::Stdio);
    }

    #[test]
    fn accepted_values() {
        let cases = [
            ("stdio", SerialConfig::Stdio),
            ("null", SerialConfig::Null),
            ("file=/tmp/x.log", SerialConfig::File("/tmp/x.log".into())),
            ("file=rel=ative", SerialConfig::File("rel=ative".into())),
            (
                "socket=/run/s.sock",
                SerialConfig::Socket("/run/s.sock".into()),
            ),
        ];
        for (text, want) in cases {
            assert_eq!(parse(text), Ok(want.clone()), "{text}");
            assert_eq!(want.to_string(), text);
        }
        let long = format!("socket=/{}", "a".repeat(MAX_SOCKET_PATH_LEN - 1));
        assert!(parse(&long).is_ok());
        // Non-UTF-8 paths survive.
        let raw = OsStr::from_bytes(b"file=/tmp/\xff");
        assert_eq!(
            SerialConfig::parse(raw),
            Ok(SerialConfig::File(PathBuf::from(OsStr::from_bytes(
                b"/tmp/\xff"
            ))))
        );
    }

    #[test]
    fn rejected_values() {
        for text in [
            "",
            "STDIO",
            "tty",
            "pty",
            "off",
            "file",
            "socket",
            "stdio,null",
            " stdio",
        ] {
            assert_eq!(
                parse(text),
                Err(SerialError::UnknownMode(text.into())),
                "{text}"
            );
        }
        assert_eq!(parse("file="), Err(SerialError::EmptyPath("file")));
        assert_eq!(parse("socket="), Err(SerialError::EmptyPath("socket")));
        let long = format!("/{}", "a".repeat(MAX_SOCKET_PATH_LEN));
        assert_eq!(
            parse(&format!("socket={long}")),
            Err(SerialError::SocketPath(SocketPathError {
                path: long.into(),
                len: MAX_SOCKET_PATH_LEN + 1
            }))
        );
    }

    #[test]
    fn messages() {
        assert_eq!(
            parse("tty").unwrap_err().to_string(),
            "unknown mode \"tty\" (expected stdio, null, file=PATH or socket=PATH)"
        );
        assert_eq!(
            parse("file=").unwrap_err().to_string(),
            "file= needs a path"
        );
    }
}
