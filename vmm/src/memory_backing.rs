//! How the host backs guest memory: anonymous private mappings, with transparent huge pages
//! advised (the default) or from the host's huge page pool (`hugepages=on`). Boot RAM and
//! every hotplugged slot are mapped the same way, here.

use vm_memory::mmap::MmapRegionError;
use vm_memory::MmapRegion;

use crate::config::MemoryConfig;

/// How guest memory is mapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backing {
    /// Advise transparent huge pages (`MADV_HUGEPAGE`); off advises against them
    /// (`MADV_NOHUGEPAGE`).
    pub thp: bool,
    /// Map from the huge page pool (`MAP_HUGETLB`).
    pub hugepages: bool,
}

impl Default for Backing {
    /// Small pages with THP advised, as `--memory` without `thp` or `hugepages`.
    fn default() -> Self {
        Backing::of(&MemoryConfig::default())
    }
}

impl Backing {
    /// The backing `config` asks for.
    pub fn of(config: &MemoryConfig) -> Self {
        Backing {
            thp: config.thp,
            hugepages: config.hugepages,
        }
    }

    /// Maps `size` bytes for the guest.
    ///
    /// Small pages are mapped `MAP_NORESERVE`: the host commits memory only where the guest
    /// touches it. Huge pages are reserved from the pool when mapped, so a pool too small
    /// fails here (`ENOMEM`), where a hotplug can still be rolled back, rather than with a
    /// `SIGBUS` in a vCPU thread when the guest first touches a page the pool lacks.
    pub fn map(&self, size: usize) -> Result<MmapRegion<()>, MmapRegionError> {
        let base = libc::MAP_ANONYMOUS | libc::MAP_PRIVATE;
        let flags = if self.hugepages {
            base | libc::MAP_HUGETLB
        } else {
            base | libc::MAP_NORESERVE
        };
        let region =
            MmapRegion::<()>::build(None, size, libc::PROT_READ | libc::PROT_WRITE, flags)?;
        if !self.hugepages {
            // Off means off: a host whose THP is `always` would back the guest with huge pages
            // unless told not to, as the test bed's hosts do.
            let advice = if self.thp {
                libc::MADV_HUGEPAGE
            } else {
                libc::MADV_NOHUGEPAGE
            };
            advise(&region, advice);
        }
        Ok(region)
    }

    /// What a failed [`map`](Self::map) of `size` bytes means for the user.
    pub fn describe_failure(&self, size: usize, e: &MmapRegionError) -> String {
        let out_of_memory =
            matches!(e, MmapRegionError::Mmap(io) if io.raw_os_error() == Some(libc::ENOMEM));
        if self.hugepages && out_of_memory {
            format!(
                "cannot map {size} bytes from the host's huge pages: too few free (HugePages_Free in /proc/meminfo)"
            )
        } else {
            format!("cannot map {size} bytes")
        }
    }
}

/// Advises `MADV_HUGEPAGE` or `MADV_NOHUGEPAGE` on `region`. A host without THP still runs
/// the guest, on small pages: a failure is logged, not returned.
fn advise(region: &MmapRegion<()>, advice: libc::c_int) {
    // SAFETY: the range is exactly the live mapping `region` owns; these two advices only
    // change whether the kernel may back it with huge pages, never its contents or validity.
    let rc = unsafe { libc::madvise(region.as_ptr().cast(), region.size(), advice) };
    if rc != 0 {
        tracing::warn!(
            size = region.size(),
            advice,
            "madvise on guest memory failed, the host's THP default applies: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `VmFlags` line of the smaps entry of the mapping that starts at `addr`.
    fn vm_flags(addr: usize) -> String {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
        let start = format!("{addr:x}-");
        smaps
            .split_inclusive('\n')
            .skip_while(|l| !l.starts_with(&start))
            .find(|l| l.starts_with("VmFlags:"))
            .unwrap_or_default()
            .to_string()
    }

    #[test]
    fn thp_is_advised_by_default_and_not_when_off() {
        let on = Backing::default().map(8 << 20).unwrap();
        // `hg`: the mapping carries VM_HUGEPAGE, what MADV_HUGEPAGE sets.
        assert!(
            vm_flags(on.as_ptr() as usize).contains(" hg"),
            "{}",
            vm_flags(on.as_ptr() as usize)
        );
        let off = Backing {
            thp: false,
            hugepages: false,
        }
        .map(8 << 20)
        .unwrap();
        // `nh`: VM_NOHUGEPAGE, what MADV_NOHUGEPAGE sets, so that a host whose THP is
        // `always` keeps this memory on small pages too.
        let flags = vm_flags(off.as_ptr() as usize);
        assert!(flags.contains(" nh") && !flags.contains(" hg"), "{flags}");
    }

    #[test]
    fn huge_pages_without_a_pool_fail_clearly() {
        let huge = Backing {
            thp: true,
            hugepages: true,
        };
        let free = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find(|l| l.starts_with("HugePages_Free:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            })
            .unwrap_or(0);
        if free >= 64 {
            // This host has a pool: the mapping works, and is hugetlb-backed.
            let region = huge.map(2 << 20).unwrap();
            assert!(vm_flags(region.as_ptr() as usize).contains(" ht"));
            return;
        }
        // No pool (the usual host): 1 GiB cannot be reserved, and the message says why.
        let e = huge.map(1 << 30).unwrap_err();
        assert_eq!(
            huge.describe_failure(1 << 30, &e),
            "cannot map 1073741824 bytes from the host's huge pages: too few free (HugePages_Free in /proc/meminfo)"
        );
    }
}
