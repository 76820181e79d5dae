use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;

use socket2::{Domain, SockAddr, Socket, Type};

use super::super::cpus::PLUGVM_MAX_VCPUS;
use super::super::serial::SerialConfig;
use super::super::{CpusConfig, KernelCacheConfig, MemoryConfig, PayloadConfig, VmConfig};
use super::limits::parse_meminfo_total;
use super::*;
use plugvm_remote::size::{GIB, MIB};

const HOST: HostLimits = HostLimits {
    max_vcpus: 1024,
    host_memory: 8 * GIB,
    huge_pages: HugePages { size: 0, free: 0 },
};

fn config() -> VmConfig {
    VmConfig {
        cpus: CpusConfig::default(),
        memory: MemoryConfig::default(),
        payload: None,
        serial: SerialConfig::Stdio,
        api_socket: None,
        guest_eject: hotplug::GuestEjectPolicy::Deny,
        event_monitor: None,
        kernel_cache: KernelCacheConfig::Default,
        inject_faults: Vec::new(),
    }
}

/// A fresh directory under the system temp dir, removed on drop.
struct Scratch(PathBuf);
impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("plugvm-config-{name}-{}", std::process::id()));
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
}

#[test]
fn vcpu_limit_is_the_lower_of_kvm_and_plugvm() {
    let limit = |max_vcpus| {
        HostLimits {
            max_vcpus,
            host_memory: 0,
            huge_pages: HugePages::default(),
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
            ..MemoryConfig::default()
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

#[test]
fn socket_with_a_full_backlog_is_in_use_without_waiting() {
    // A blocking connect here would wait for an accept that never comes.
    let dir = Scratch::new("backlog");
    let path = dir.0.join("busy.sock");
    let listener = Socket::new(Domain::UNIX, Type::STREAM, None).expect("socket");
    listener
        .bind(&SockAddr::unix(&path).expect("address"))
        .expect("bind");
    // Backlog 0 holds one pending connection; nobody accepts it.
    listener.listen(0).expect("listen");
    let _pending = UnixStream::connect(&path).expect("first connect");
    let with_api = VmConfig {
        api_socket: Some(path.clone()),
        ..config()
    };
    assert!(matches!(
        with_api.validate_files(),
        Err(ConfigError::SocketInUse {
            role: FileRole::ApiSocket,
            ..
        })
    ));
}

#[test]
fn huge_pages_from_meminfo() {
    let meminfo = "MemTotal: 100 kB\nHugePages_Total:     512\nHugePages_Free:      300\nHugePages_Rsvd:       20\nHugepagesize:       2048 kB\n";
    assert_eq!(
        HugePages::from_meminfo(meminfo),
        HugePages {
            size: 2 * MIB,
            free: 280
        }
    );
    assert_eq!(
        HugePages::from_meminfo("MemTotal: 1 kB\n"),
        HugePages::default()
    );
}

#[test]
fn validate_host_huge_pages() {
    let huge = |size| VmConfig {
        memory: MemoryConfig {
            size,
            hugepages: true,
            ..MemoryConfig::default()
        },
        ..config()
    };
    let with_pages = |size, free| HostLimits {
        huge_pages: HugePages { size, free },
        ..HOST
    };
    assert!(huge(512 * MIB)
        .validate_host(&with_pages(2 * MIB, 256))
        .is_ok());
    let err = |c: VmConfig, h| c.validate_host(&h).unwrap_err().to_string();
    assert_eq!(
        err(huge(512 * MIB), HOST),
        "--memory: hugepages=on, but this host has no huge pages (no Hugepagesize in /proc/meminfo)"
    );
    assert_eq!(
        err(huge(512 * MIB), with_pages(2 * MIB, 255)),
        "--memory: hugepages=on needs 256 free huge pages of 2 MiB for size=512 MiB, and the host has 255 (HugePages_Free less HugePages_Rsvd in /proc/meminfo; reserve more in /proc/sys/vm/nr_hugepages)"
    );
    assert_eq!(
        err(huge(513 * MIB), with_pages(2 * MIB, 1000)),
        "--memory: hugepages=on needs size=513 MiB and the 128 MiB hotplug blocks to be multiples of the host's huge page size (2 MiB)"
    );
    // 1 GiB pages cannot back 128 MiB hotplug blocks.
    assert!(matches!(
        huge(GIB).validate_host(&with_pages(GIB, 4)),
        Err(ConfigError::HugePageSize { .. })
    ));
    // Without hugepages=on the pool is not looked at.
    assert!(config().validate_host(&HOST).is_ok());
}
