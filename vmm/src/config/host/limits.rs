//! What the host can give a VM ([`HostLimits`]) and the pure check of a configuration
//! against it ([`VmConfig::validate_host`]).

use super::super::cpus::PLUGVM_MAX_VCPUS;
use super::super::VmConfig;
use super::ConfigError;

/// What the host can give a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostLimits {
    /// KVM's `KVM_CAP_MAX_VCPUS`.
    pub max_vcpus: u32,
    /// The host's physical memory in bytes (`MemTotal`).
    pub host_memory: u64,
    /// The host's huge pages, for `--memory hugepages=on`.
    pub huge_pages: HugePages,
}

/// The host's pool of (default-size) huge pages, from `/proc/meminfo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HugePages {
    /// `Hugepagesize` in bytes; 0 when the host has no huge pages (no hugetlbfs).
    pub size: u64,
    /// Pages a new mapping can reserve: `HugePages_Free` less `HugePages_Rsvd` (free pages
    /// that mappings already reserved).
    pub free: u64,
}

impl HugePages {
    /// The pool as `/proc/meminfo` describes it (0 pages of size 0 when it does not).
    pub fn from_meminfo(meminfo: &str) -> HugePages {
        HugePages {
            size: meminfo_field(meminfo, "Hugepagesize:").unwrap_or(0),
            free: meminfo_field(meminfo, "HugePages_Free:")
                .unwrap_or(0)
                .saturating_sub(meminfo_field(meminfo, "HugePages_Rsvd:").unwrap_or(0)),
        }
    }
}

impl HostLimits {
    /// Limits of this host. `kvm_max_vcpus` is `Kvm::get_max_vcpus()` (the caller owns the
    /// KVM handle); the memory comes from `/proc/meminfo`'s `MemTotal`, else it is taken as
    /// unlimited (`u64::MAX`) rather than failing.
    ///
    /// There is no `sysinfo(2)` fallback: it reports the same `totalram` that the kernel
    /// prints as `MemTotal`, so it only helped on a host without procfs, and a Linux host
    /// that runs KVM guests has `/proc` mounted. It is not worth a raw FFI call for a check
    /// that is best-effort anyway: without `/proc` the memory check passes, and an oversized
    /// `--memory` fails later, when the memory is mapped or used.
    pub fn probe(kvm_max_vcpus: u32) -> HostLimits {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        HostLimits {
            max_vcpus: kvm_max_vcpus,
            host_memory: parse_meminfo_total(&meminfo).unwrap_or(u64::MAX),
            huge_pages: HugePages::from_meminfo(&meminfo),
        }
    }

    /// The most vCPUs a VM may have here: the lower of KVM's limit and [`PLUGVM_MAX_VCPUS`].
    pub fn vcpu_limit(&self) -> u32 {
        self.max_vcpus.min(PLUGVM_MAX_VCPUS)
    }
}

/// `MemTotal` of a `/proc/meminfo` text, in bytes.
pub(super) fn parse_meminfo_total(meminfo: &str) -> Option<u64> {
    meminfo_field(meminfo, "MemTotal:")
}

/// The value of the `/proc/meminfo` line that starts with `name`: bytes for a `kB` value, the
/// number itself for a count.
fn meminfo_field(meminfo: &str, name: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with(name))?;
    let mut words = line.split_whitespace().skip(1);
    let value: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => value.checked_mul(1024),
        None => Some(value),
        Some(_) => None,
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
        if self.memory.hugepages {
            check_huge_pages(self.memory.size, host.huge_pages)?;
        }
        Ok(())
    }
}

/// `hugepages=on`: the boot RAM and every hotplug slot must be whole huge pages, and the boot
/// RAM must find its pages free now (a hot-add that finds none is refused then, with the
/// transaction rolled back).
fn check_huge_pages(size: u64, pages: HugePages) -> Result<(), ConfigError> {
    use super::super::memory::HOTPLUG_BLOCK_SIZE;
    if pages.size == 0 {
        return Err(ConfigError::NoHugePages);
    }
    if !size.is_multiple_of(pages.size) || !HOTPLUG_BLOCK_SIZE.is_multiple_of(pages.size) {
        return Err(ConfigError::HugePageSize {
            size,
            page: pages.size,
        });
    }
    let needed = size / pages.size;
    if pages.free < needed {
        return Err(ConfigError::TooFewHugePages {
            size,
            page: pages.size,
            needed,
            free: pages.free,
        });
    }
    Ok(())
}
