//! `--event-monitor path=FILE|fd=N`: where the event stream goes in Cloud Hypervisor's
//! event-monitor format (see [`crate::events`]).

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// The syntax, for messages.
pub(crate) const EVENT_MONITOR_SYNTAX: &str = "path=FILE or fd=N";

/// Where the event monitor writes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum EventMonitorConfig {
    /// A file, created or appended to.
    Path(PathBuf),
    /// A descriptor plugvm inherited (a pipe or a file).
    Fd(u32),
}

/// A bad `--event-monitor`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventMonitorError {
    /// Neither `path=` nor `fd=`.
    #[error("expected {EVENT_MONITOR_SYNTAX}, got {0:?}")]
    Syntax(String),
    /// `fd=` with something other than a descriptor number.
    #[error("fd={0:?} is not a file descriptor number")]
    NotAnFd(String),
}

impl EventMonitorConfig {
    /// Parses `path=FILE` or `fd=N`.
    pub fn parse(value: &OsStr) -> Result<Self, EventMonitorError> {
        let bytes = value.as_bytes();
        if let Some(path) = bytes.strip_prefix(b"path=").filter(|p| !p.is_empty()) {
            return Ok(EventMonitorConfig::Path(PathBuf::from(OsStr::from_bytes(
                path,
            ))));
        }
        if let Some(fd) = bytes.strip_prefix(b"fd=") {
            let text = String::from_utf8_lossy(fd).into_owned();
            return match text.parse::<u32>() {
                Ok(n) if text.bytes().all(|b| b.is_ascii_digit()) => Ok(EventMonitorConfig::Fd(n)),
                _ => Err(EventMonitorError::NotAnFd(text)),
            };
        }
        Err(EventMonitorError::Syntax(
            value.to_string_lossy().into_owned(),
        ))
    }

    /// Opens the output. A descriptor is reopened through `/proc/self/fd`, which works for
    /// files and pipes (not sockets) and needs no `unsafe`.
    pub fn open(&self) -> io::Result<Box<dyn Write + Send>> {
        let file: File = match self {
            EventMonitorConfig::Path(path) => {
                OpenOptions::new().create(true).append(true).open(path)?
            }
            EventMonitorConfig::Fd(fd) => OpenOptions::new()
                .write(true)
                .open(format!("/proc/self/fd/{fd}"))?,
        };
        Ok(Box::new(file))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_forms_and_refuses_others() {
        assert_eq!(
            EventMonitorConfig::parse(OsStr::new("path=/tmp/e.json")),
            Ok(EventMonitorConfig::Path("/tmp/e.json".into()))
        );
        assert_eq!(
            EventMonitorConfig::parse(OsStr::new("fd=3")),
            Ok(EventMonitorConfig::Fd(3))
        );
        assert!(EventMonitorConfig::parse(OsStr::new("fd=-1")).is_err());
        assert!(EventMonitorConfig::parse(OsStr::new("fd=")).is_err());
        assert!(EventMonitorConfig::parse(OsStr::new("path=")).is_err());
        assert!(EventMonitorConfig::parse(OsStr::new("/tmp/e.json")).is_err());
    }
}
