//! Checks of a parsed [`VmConfig`] against the host: KVM's vCPU limit, the host's memory, and
//! the files and sockets the configuration names. These are runtime errors (exit code 1),
//! unlike the usage errors of parsing (exit code 2).
//!
//! [`VmConfig::validate_host`] is pure (no I/O: test it with any [`HostLimits`]);
//! [`VmConfig::validate_files`] looks at the file system.
//!
//! This file holds what both kinds of check share: the error type and [`VmConfig::validate`].
//! `limits` holds [`HostLimits`] and [`VmConfig::validate_host`]; `files` holds
//! [`VmConfig::validate_files`] and the file and socket checks behind it.

use std::io;
use std::path::{Path, PathBuf};

use plugvm_remote::size::{ApproxSize, ByteSize};

use super::cpus::PLUGVM_MAX_VCPUS;
use super::{one_line, VmConfig};

mod files;
mod limits;
#[cfg(test)]
mod tests;

pub use limits::{HostLimits, HugePages};

/// Which file of the configuration an error is about; displays as its flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileRole {
    /// `--kernel`.
    Kernel,
    /// `--initramfs`.
    Initramfs,
    /// `--serial file=`.
    SerialFile,
    /// `--serial socket=`.
    SerialSocket,
    /// `--api-socket`.
    ApiSocket,
}

impl std::fmt::Display for FileRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FileRole::Kernel => "--kernel",
            FileRole::Initramfs => "--initramfs",
            FileRole::SerialFile => "--serial file=",
            FileRole::SerialSocket => "--serial socket=",
            FileRole::ApiSocket => "--api-socket",
        })
    }
}

/// A configuration that parses but that this host cannot run (exit code 1). Messages name the
/// flag and the value, without a `plugvm:` prefix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `--cpus max` above what KVM and plugvm allow.
    #[error(
        "--cpus: max={max} exceeds the vCPU limit of {} (KVM on this host allows {kvm_max_vcpus}, plugvm supports {PLUGVM_MAX_VCPUS})",
        (*kvm_max_vcpus).min(PLUGVM_MAX_VCPUS)
    )]
    TooManyVcpus {
        /// The requested maximum.
        max: u32,
        /// KVM's `KVM_CAP_MAX_VCPUS`.
        kvm_max_vcpus: u32,
    },
    /// Boot RAM plus the hotplug area exceeds the host's memory.
    #[error(
        "--memory: {} exceeds the host's memory ({})",
        describe_memory(*size, *hotplug_size),
        ApproxSize(*host_memory)
    )]
    MemoryExceedsHost {
        /// Boot RAM in bytes.
        size: u64,
        /// Hotplug area in bytes.
        hotplug_size: u64,
        /// The host's memory in bytes.
        host_memory: u64,
    },
    /// `hugepages=on` on a host without huge pages.
    #[error("--memory: hugepages=on, but this host has no huge pages (no Hugepagesize in /proc/meminfo)")]
    NoHugePages,
    /// `hugepages=on` with boot RAM or hotplug blocks that are not whole huge pages.
    #[error(
        "--memory: hugepages=on needs size={} and the 128 MiB hotplug blocks to be multiples of the host's huge page size ({})",
        ByteSize(*size),
        ByteSize(*page)
    )]
    HugePageSize {
        /// Boot RAM in bytes.
        size: u64,
        /// The host's huge page size in bytes.
        page: u64,
    },
    /// `hugepages=on` and the host has fewer free huge pages than the boot RAM needs.
    #[error(
        "--memory: hugepages=on needs {needed} free huge pages of {} for size={}, and the host has {free} (HugePages_Free less HugePages_Rsvd in /proc/meminfo; reserve more in /proc/sys/vm/nr_hugepages)",
        ByteSize(*page),
        ByteSize(*size)
    )]
    TooFewHugePages {
        /// Boot RAM in bytes.
        size: u64,
        /// The host's huge page size in bytes.
        page: u64,
        /// Pages the boot RAM needs.
        needed: u64,
        /// Pages free on the host.
        free: u64,
    },
    /// The path does not exist.
    #[error("{}: no such file", shown(*role, path))]
    NotFound {
        /// Which option.
        role: FileRole,
        /// The path given.
        path: PathBuf,
    },
    /// The path is a symbolic link whose target does not exist.
    #[error("{}: dangling symbolic link (to {})", shown(*role, path), one_line(target.display()))]
    DanglingSymlink {
        /// Which option.
        role: FileRole,
        /// The path given.
        path: PathBuf,
        /// Where the link points.
        target: PathBuf,
    },
    /// The path is a directory, device, socket...: not a regular file.
    #[error("{}: not a regular file ({kind})", shown(*role, path))]
    NotAFile {
        /// Which option.
        role: FileRole,
        /// The path given.
        path: PathBuf,
        /// What it is instead (`a directory`, ...).
        kind: &'static str,
    },
    /// The file exists but cannot be opened for reading.
    #[error("{}: cannot be read: {source}", shown(*role, path))]
    Unreadable {
        /// Which option.
        role: FileRole,
        /// The path given.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The initramfs is larger than the guest's boot RAM, so it cannot be loaded.
    #[error(
        "{}: {} does not fit in the guest's boot memory ({})",
        shown(FileRole::Initramfs, path),
        ByteSize(*size),
        ByteSize(*memory)
    )]
    InitramfsTooLarge {
        /// The initramfs.
        path: PathBuf,
        /// Its size in bytes.
        size: u64,
        /// `--memory size` in bytes.
        memory: u64,
    },
    /// The directory a file or socket is to be created in does not exist.
    #[error("{}: directory {} does not exist", shown(*role, path), one_line(dir.display()))]
    NoParentDir {
        /// Which option.
        role: FileRole,
        /// The path given.
        path: PathBuf,
        /// Its missing directory.
        dir: PathBuf,
    },
    /// A socket path where something other than a socket exists.
    #[error("{}: exists and is not a socket ({kind})", shown(*role, path))]
    NotASocket {
        /// Which option.
        role: FileRole,
        /// The path given.
        path: PathBuf,
        /// What it is instead.
        kind: &'static str,
    },
    /// A socket path on which another process is listening.
    #[error("{}: socket is in use by another process", shown(*role, path))]
    SocketInUse {
        /// Which option.
        role: FileRole,
        /// The path given.
        path: PathBuf,
    },
}

/// `--kernel PATH` or `--serial file=PATH`: the flag and the value as typed, on one line.
fn shown(role: FileRole, path: &Path) -> String {
    let path = one_line(path.display());
    match role {
        FileRole::SerialFile | FileRole::SerialSocket => format!("{role}{path}"),
        FileRole::Kernel | FileRole::Initramfs | FileRole::ApiSocket => format!("{role} {path}"),
    }
}

fn describe_memory(size: u64, hotplug_size: u64) -> String {
    if hotplug_size == 0 {
        format!("size={}", ByteSize(size))
    } else {
        format!(
            "size={} plus hotplug_size={} ({})",
            ByteSize(size),
            ByteSize(hotplug_size),
            ByteSize(size.saturating_add(hotplug_size))
        )
    }
}

impl VmConfig {
    /// [`validate_host`](Self::validate_host), then [`validate_files`](Self::validate_files).
    pub fn validate(&self, host: &HostLimits) -> Result<(), ConfigError> {
        self.validate_host(host)?;
        self.validate_files()
    }
}
