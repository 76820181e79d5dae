//! Checks of a parsed [`VmConfig`] against the host: KVM's vCPU limit, the host's memory, and
//! the files and sockets the configuration names. These are runtime errors (exit code 1),
//! unlike the usage errors of parsing (exit code 2).
//!
//! [`VmConfig::validate_host`] is pure (no I/O: test it with any [`HostLimits`]);
//! [`VmConfig::validate_files`] looks at the file system.

use std::ffi::CString;
use std::io;
use std::mem;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use plugvm_remote::size::{ApproxSize, ByteSize};

use super::cpus::PLUGVM_MAX_VCPUS;
use super::serial::SerialConfig;
use super::{one_line, VmConfig};

/// What the host can give a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostLimits {
    /// KVM's `KVM_CAP_MAX_VCPUS`.
    pub max_vcpus: u32,
    /// The host's physical memory in bytes (`MemTotal`).
    pub host_memory: u64,
}

impl HostLimits {
    /// Limits of this host. `kvm_max_vcpus` is `Kvm::get_max_vcpus()` (the caller owns the
    /// KVM handle); the memory comes from `/proc/meminfo`'s `MemTotal`, else `sysinfo(2)`,
    /// else it is taken as unlimited (`u64::MAX`) rather than failing.
    pub fn probe(kvm_max_vcpus: u32) -> HostLimits {
        let host_memory = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|text| parse_meminfo_total(&text))
            .or_else(sysinfo_total_ram)
            .unwrap_or(u64::MAX);
        HostLimits {
            max_vcpus: kvm_max_vcpus,
            host_memory,
        }
    }

    /// The most vCPUs a VM may have here: the lower of KVM's limit and [`PLUGVM_MAX_VCPUS`].
    pub fn vcpu_limit(&self) -> u32 {
        self.max_vcpus.min(PLUGVM_MAX_VCPUS)
    }
}

/// `MemTotal` of a `/proc/meminfo` text, in bytes.
fn parse_meminfo_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut words = line.split_whitespace().skip(1);
    let value: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => value.checked_mul(1024),
        None => Some(value),
        Some(_) => None,
    }
}

fn sysinfo_total_ram() -> Option<u64> {
    // SAFETY: `sysinfo` is a plain C struct for which all-zero bytes are a valid value.
    let mut info: libc::sysinfo = unsafe { mem::zeroed() };
    // SAFETY: `info` is a valid, writable `struct sysinfo` that outlives the call.
    if unsafe { libc::sysinfo(&mut info) } != 0 {
        return None;
    }
    // `totalram` is a C `unsigned long`: u64 here, u32 on 32-bit hosts.
    #[allow(clippy::useless_conversion)]
    u64::from(info.totalram).checked_mul(u64::from(info.mem_unit))
}

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
    /// Checks the configuration against the host's limits, without any I/O:
    /// `cpus.max <= host.vcpu_limit()` and `memory.size + memory.hotplug_size <=
    /// host.host_memory`.
    pub fn validate_host(&self, host: &HostLimits) -> Result<(), ConfigError> {
        if self.cpus.max > host.vcpu_limit() {
            return Err(ConfigError::TooManyVcpus {
                max: self.cpus.max,
                kvm_max_vcpus: host.max_vcpus,
            });
        }
        if self.memory.total() > host.host_memory {
            return Err(ConfigError::MemoryExceedsHost {
                size: self.memory.size,
                hotplug_size: self.memory.hotplug_size,
                host_memory: host.host_memory,
            });
        }
        Ok(())
    }

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

    /// [`validate_host`](Self::validate_host), then [`validate_files`](Self::validate_files).
    pub fn validate(&self, host: &HostLimits) -> Result<(), ConfigError> {
        self.validate_host(host)?;
        self.validate_files()
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

/// Whether a process listens on the Unix socket at `path`, found with a non-blocking
/// `connect` (so a listener with a full backlog answers "in use" instead of hanging us).
fn socket_has_listener(path: &Path) -> io::Result<bool> {
    let bytes = path.as_os_str().as_bytes();
    // Rejects interior NULs, which a path from argv cannot have anyway.
    CString::new(bytes).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `sockaddr_un` is a plain C struct for which all-zero bytes are a valid value.
    let mut addr: libc::sockaddr_un = unsafe { mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: plain syscall with constant arguments; the result is checked below.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a freshly created descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: `addr` is a valid, NUL-terminated `sockaddr_un` (zeroed beyond the path, whose
    // length was checked) of `len` bytes that outlives the call; `fd` is a valid socket.
    let rc = unsafe {
        libc::connect(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            std::ptr::addr_of!(addr).cast::<libc::sockaddr>(),
            len,
        )
    };
    if rc == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EINPROGRESS) => Ok(true),
        Some(libc::ECONNREFUSED) | Some(libc::ENOENT) => Ok(false),
        _ => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;

    use plugvm_remote::size::{GIB, MIB};

    use super::super::{CpusConfig, MemoryConfig, PayloadConfig};
    use super::*;

    const HOST: HostLimits = HostLimits {
        max_vcpus: 1024,
        host_memory: 8 * GIB,
    };

    fn config() -> VmConfig {
        VmConfig {
            cpus: CpusConfig::default(),
            memory: MemoryConfig::default(),
            payload: None,
            serial: SerialConfig::Stdio,
            api_socket: None,
        }
    }

    /// A fresh directory under the system temp dir, removed on drop.
    struct Scratch(PathBuf);
    impl Scratch {
        fn new(name: &str) -> Scratch {
            let dir =
                std::env::temp_dir().join(format!("plugvm-config-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("create scratch dir");
            Scratch(dir)
        }
        fn file(&self, name: &str, len: u64) -> PathBuf {
            let path = self.0.join(name);
            let file = std::fs::File::create(&path).expect("create file");
            file.set_len(len).expect("set_len");
            path
        }
    }
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn with_payload(kernel: PathBuf, initramfs: Option<PathBuf>) -> VmConfig {
        VmConfig {
            payload: Some(PayloadConfig {
                kernel,
                initramfs,
                cmdline: String::new(),
            }),
            ..config()
        }
    }

    #[test]
    fn meminfo_parsing() {
        let text = "MemTotal:       24684092 kB\nMemFree:        23433660 kB\n";
        assert_eq!(parse_meminfo_total(text), Some(24_684_092 * 1024));
        assert_eq!(
            parse_meminfo_total("MemFree: 1 kB\nMemTotal: 2 kB\n"),
            Some(2048)
        );
        assert_eq!(parse_meminfo_total("MemTotal: 7\n"), Some(7));
        for bad in [
            "",
            "MemFree: 1 kB",
            "MemTotal:",
            "MemTotal: x kB",
            "MemTotal: 1 MB",
        ] {
            assert_eq!(parse_meminfo_total(bad), None, "{bad:?}");
        }
        assert_eq!(
            parse_meminfo_total("MemTotal: 18446744073709551615 kB"),
            None
        );
    }

    #[test]
    fn probe_reads_this_host() {
        let host = HostLimits::probe(7);
        assert_eq!(host.max_vcpus, 7);
        assert!(host.host_memory >= 64 * MIB, "{host:?}");
        assert!(sysinfo_total_ram().is_some());
    }

    #[test]
    fn vcpu_limit_is_the_lower_of_kvm_and_plugvm() {
        let limit = |max_vcpus| {
            HostLimits {
                max_vcpus,
                host_memory: 0,
            }
            .vcpu_limit()
        };
        assert_eq!(limit(1024), PLUGVM_MAX_VCPUS);
        assert_eq!(limit(8), 8);
        assert_eq!(limit(0), 0);
    }

    #[test]
    fn validate_host_cpus() {
        let with_max = |max| VmConfig {
            cpus: CpusConfig { boot: 1, max },
            ..config()
        };
        assert!(with_max(PLUGVM_MAX_VCPUS).validate_host(&HOST).is_ok());
        let err = with_max(PLUGVM_MAX_VCPUS + 1)
            .validate_host(&HOST)
            .unwrap_err();
        assert!(matches!(
            err,
            ConfigError::TooManyVcpus {
                max: 255,
                kvm_max_vcpus: 1024
            }
        ));
        assert_eq!(
            err.to_string(),
            "--cpus: max=255 exceeds the vCPU limit of 254 (KVM on this host allows 1024, plugvm supports 254)"
        );
        let small = HostLimits {
            max_vcpus: 4,
            ..HOST
        };
        assert!(with_max(4).validate_host(&small).is_ok());
        assert_eq!(
            with_max(100_000).validate_host(&small).unwrap_err().to_string(),
            "--cpus: max=100000 exceeds the vCPU limit of 4 (KVM on this host allows 4, plugvm supports 254)"
        );
    }

    #[test]
    fn validate_host_memory() {
        let with_mem = |size, hotplug_size| VmConfig {
            memory: MemoryConfig {
                size,
                hotplug_size,
                hotplug_slots: if hotplug_size == 0 { 0 } else { 8 },
            },
            ..config()
        };
        assert!(with_mem(8 * GIB, 0).validate_host(&HOST).is_ok());
        assert!(with_mem(4 * GIB, 4 * GIB).validate_host(&HOST).is_ok());
        let err = with_mem(100_000 * GIB, 0).validate_host(&HOST).unwrap_err();
        assert!(matches!(err, ConfigError::MemoryExceedsHost { .. }));
        assert_eq!(
            err.to_string(),
            "--memory: size=100000 GiB exceeds the host's memory (8 GiB)"
        );
        assert_eq!(
            with_mem(4 * GIB, 4 * GIB + 128 * MIB)
                .validate_host(&HOST)
                .unwrap_err()
                .to_string(),
            "--memory: size=4 GiB plus hotplug_size=4224 MiB (8320 MiB) exceeds the host's memory (8 GiB)"
        );
    }

    #[test]
    fn validate_files_without_payload_checks_nothing_on_disk() {
        assert!(config().validate_files().is_ok());
        assert!(config().validate(&HOST).is_ok());
    }

    #[test]
    fn kernel_and_initramfs_checks() {
        let dir = Scratch::new("files");
        let kernel = dir.file("vmlinux", 4096);
        let initrd = dir.file("initrd", 4096);
        assert!(with_payload(kernel.clone(), Some(initrd.clone()))
            .validate_files()
            .is_ok());

        let missing = dir.0.join("nope");
        let err = with_payload(missing.clone(), None)
            .validate_files()
            .unwrap_err();
        assert!(matches!(
            err,
            ConfigError::NotFound {
                role: FileRole::Kernel,
                ..
            }
        ));
        assert_eq!(
            err.to_string(),
            format!("--kernel {}: no such file", missing.display())
        );

        let link = dir.0.join("link");
        std::os::unix::fs::symlink(&missing, &link).expect("symlink");
        let err = with_payload(link.clone(), None)
            .validate_files()
            .unwrap_err();
        assert!(matches!(err, ConfigError::DanglingSymlink { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            format!(
                "--kernel {}: dangling symbolic link (to {})",
                link.display(),
                missing.display()
            )
        );

        let err = with_payload(dir.0.clone(), None)
            .validate_files()
            .unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::NotAFile {
                    kind: "a directory",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err
            .to_string()
            .ends_with(": not a regular file (a directory)"));

        let err = with_payload("/dev/null".into(), None)
            .validate_files()
            .unwrap_err();
        assert!(matches!(
            err,
            ConfigError::NotAFile {
                kind: "a character device",
                ..
            }
        ));

        let err = with_payload(kernel.clone(), Some(missing.clone()))
            .validate_files()
            .unwrap_err();
        assert!(matches!(
            err,
            ConfigError::NotFound {
                role: FileRole::Initramfs,
                ..
            }
        ));
    }

    #[test]
    fn initramfs_must_fit_in_boot_memory() {
        let dir = Scratch::new("initrd");
        let kernel = dir.file("vmlinux", 4096);
        // Sparse: no disk space is used.
        let exact = dir.file("exact", 512 * MIB);
        let big = dir.file("big", 512 * MIB + 1);
        assert!(with_payload(kernel.clone(), Some(exact))
            .validate_files()
            .is_ok());
        let err = with_payload(kernel, Some(big.clone()))
            .validate_files()
            .unwrap_err();
        assert!(matches!(
            err,
            ConfigError::InitramfsTooLarge { size, memory, .. } if size == 512 * MIB + 1 && memory == 512 * MIB
        ));
        assert_eq!(
            err.to_string(),
            format!(
                "--initramfs {}: 536870913 bytes does not fit in the guest's boot memory (512 MiB)",
                big.display()
            )
        );
    }

    #[test]
    fn serial_file_checks() {
        let dir = Scratch::new("serial");
        let with_serial = |serial| VmConfig { serial, ..config() };
        assert!(with_serial(SerialConfig::File(dir.0.join("new.log")))
            .validate_files()
            .is_ok());
        assert!(with_serial(SerialConfig::File(dir.file("old.log", 1)))
            .validate_files()
            .is_ok());
        assert!(with_serial(SerialConfig::File("bare-name.log".into()))
            .validate_files()
            .is_ok());
        assert!(matches!(
            with_serial(SerialConfig::File(dir.0.clone())).validate_files(),
            Err(ConfigError::NotAFile {
                role: FileRole::SerialFile,
                ..
            })
        ));
        let err = with_serial(SerialConfig::File(dir.0.join("no/such.log")))
            .validate_files()
            .unwrap_err();
        assert!(matches!(err, ConfigError::NoParentDir { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            format!(
                "--serial file={}/no/such.log: directory {}/no does not exist",
                dir.0.display(),
                dir.0.display()
            )
        );
    }

    #[test]
    fn socket_checks() {
        let dir = Scratch::new("sock");
        let with_api = |path: PathBuf| VmConfig {
            api_socket: Some(path),
            ..config()
        };
        // Absent: fine.
        let path = dir.0.join("api.sock");
        assert!(with_api(path.clone()).validate_files().is_ok());
        // Listened on: in use.
        let listener = UnixListener::bind(&path).expect("bind");
        let err = with_api(path.clone()).validate_files().unwrap_err();
        assert!(matches!(
            err,
            ConfigError::SocketInUse {
                role: FileRole::ApiSocket,
                ..
            }
        ));
        assert_eq!(
            err.to_string(),
            format!(
                "--api-socket {}: socket is in use by another process",
                path.display()
            )
        );
        // The same through --serial socket=.
        let serial = VmConfig {
            serial: SerialConfig::Socket(path.clone()),
            ..config()
        };
        assert!(matches!(
            serial.validate_files(),
            Err(ConfigError::SocketInUse {
                role: FileRole::SerialSocket,
                ..
            })
        ));
        // Stale (listener gone, file left): fine, the caller unlinks it.
        drop(listener);
        assert!(path.exists());
        assert!(with_api(path.clone()).validate_files().is_ok());
        // Something else: refused, never deleted.
        let file = dir.file("regular", 0);
        assert!(matches!(
            with_api(file.clone()).validate_files(),
            Err(ConfigError::NotASocket {
                kind: "a regular file",
                ..
            })
        ));
        assert!(file.exists());
        assert!(matches!(
            with_api(dir.0.join("no/api.sock")).validate_files(),
            Err(ConfigError::NoParentDir { .. })
        ));
    }
}
