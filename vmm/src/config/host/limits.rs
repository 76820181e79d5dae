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
        let host_memory = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|text| parse_meminfo_total(&text))
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
pub(super) fn parse_meminfo_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
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
        Ok(())
    }
}
