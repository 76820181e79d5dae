//! Guest memory: boot RAM laid out around the 32-bit MMIO hole, the hotplug region above it,
//! and the KVM memory slots that back the RAM.

use acpi::layout::{MMIO_HOLE_END, MMIO_HOLE_START};
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    GuestRegionMmap,
};

use crate::memory_backing::Backing;

/// The guest's memory block size for hotplug when boot RAM ends below 64 GiB: Linux x86_64
/// onlines and offlines memory in 128 MiB blocks then. The hotplug region starts on a multiple
/// of the block size and every slot is a multiple of it.
pub const HOTPLUG_ALIGNMENT: u64 = 128 << 20;
/// Linux picks larger memory blocks (up to 2 GiB, the largest power of two that divides the
/// end of boot memory) once boot memory ends at or above 64 GiB.
pub const LARGE_BLOCK_BOOT_END: u64 = 64 << 30;
/// The largest memory block size Linux x86_64 uses.
pub const MAX_BLOCK_SIZE: u64 = 2 << 30;

/// Errors creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// mmap of guest RAM failed.
    #[error("cannot allocate {size} bytes of guest memory: {why}")]
    Allocate {
        /// Bytes asked for.
        size: u64,
        /// What failed, said for the user.
        why: String,
    },
    /// A size does not fit the host's address width.
    #[error("memory size {0} does not fit this host")]
    TooLarge(u64),
    /// KVM refused a memory slot.
    #[error("KVM_SET_USER_MEMORY_REGION for slot {slot}: {source}")]
    Slot {
        /// Slot index.
        slot: u32,
        /// Cause.
        source: kvm_ioctls::Error,
    },
}

/// A guest physical range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestRange {
    /// First address.
    pub base: u64,
    /// Length in bytes.
    pub size: u64,
}

impl GuestRange {
    /// First address past the range.
    pub fn end(&self) -> u64 {
        self.base + self.size
    }
}

/// Where boot RAM and the hotplug region lie.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryLayout {
    /// Boot RAM: below the MMIO hole, and above 4 GiB for what does not fit below it.
    pub ram: Vec<GuestRange>,
    /// The hotplug region, if any.
    pub hotplug: Option<GuestRange>,
}

impl MemoryLayout {
    /// Lays out `size` bytes of boot RAM and a `hotplug_size` hotplug region.
    pub fn new(size: u64, hotplug_size: u64) -> Self {
        let low = size.min(MMIO_HOLE_START);
        let mut ram = vec![GuestRange { base: 0, size: low }];
        if size > low {
            ram.push(GuestRange {
                base: MMIO_HOLE_END,
                size: size - low,
            });
        }
        let ram_end = ram.last().map_or(0, GuestRange::end).max(MMIO_HOLE_END);
        let block = Self::block_size_for(ram.last().map_or(0, GuestRange::end));
        let hotplug = (hotplug_size > 0).then(|| GuestRange {
            base: ram_end.next_multiple_of(block),
            size: hotplug_size,
        });
        MemoryLayout { ram, hotplug }
    }

    fn block_size_for(boot_end: u64) -> u64 {
        if boot_end < LARGE_BLOCK_BOOT_END {
            HOTPLUG_ALIGNMENT
        } else {
            // The largest power of two up to 2 GiB that divides the end of boot memory.
            (boot_end & boot_end.wrapping_neg()).clamp(HOTPLUG_ALIGNMENT, MAX_BLOCK_SIZE)
        }
    }

    /// The guest's memory block size: hotplug slots are multiples of it.
    pub fn block_size(&self) -> u64 {
        Self::block_size_for(self.ram.last().map_or(0, GuestRange::end))
    }

    /// Boot RAM below 4 GiB.
    pub fn low_ram_end(&self) -> u64 {
        self.ram.first().map_or(0, GuestRange::end)
    }

    /// Total boot RAM.
    pub fn ram_size(&self) -> u64 {
        self.ram.iter().map(|r| r.size).sum()
    }
}

/// Allocates boot RAM, one mapping per range of `layout`, backed as `backing` says.
pub fn create_guest_memory(
    layout: &MemoryLayout,
    backing: Backing,
) -> Result<GuestMemoryMmap, MemoryError> {
    let allocate = |why: String| MemoryError::Allocate {
        size: layout.ram_size(),
        why,
    };
    let regions = layout
        .ram
        .iter()
        .map(|r| {
            let size = usize::try_from(r.size).map_err(|_| MemoryError::TooLarge(r.size))?;
            let mapping = backing
                .map(size)
                .map_err(|e| allocate(format!("{}: {e}", backing.describe_failure(size, &e))))?;
            GuestRegionMmap::new(mapping, GuestAddress(r.base))
                .ok_or_else(|| allocate(format!("invalid guest range {r:x?}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    GuestMemoryMmap::from_regions(regions).map_err(|e| allocate(e.to_string()))
}

/// Registers every region of `mem` as a KVM memory slot, numbered from 0.
pub fn register_memory_slots(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<u32, MemoryError> {
    let mut slot = 0u32;
    for region in mem.iter() {
        let host = mem
            .get_host_address(region.start_addr())
            .map_err(|_| MemoryError::TooLarge(region.len()))?;
        let region_desc = kvm_userspace_memory_region {
            slot,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
            flags: 0,
        };
        // SAFETY: the host range is a live mapping owned by `mem`, which the VM keeps alive
        // for as long as the slot exists (until the process ends).
        unsafe { vm.set_user_memory_region(region_desc) }
            .map_err(|source| MemoryError::Slot { slot, source })?;
        slot += 1;
    }
    Ok(slot)
}

/// A hotplug controller's window of the status page ([`acpi::layout::status_page`]), in boot
/// RAM, which lives as long as the VM (the clone of the boot memory keeps its mapping).
pub struct StatusPageWindow {
    mem: GuestMemoryMmap,
    base: GuestAddress,
}

impl StatusPageWindow {
    /// The window at guest address `base` of `mem`.
    pub fn new(mem: &GuestMemoryMmap, base: u64) -> Self {
        StatusPageWindow {
            mem: mem.clone(),
            base: GuestAddress(base),
        }
    }
}

impl devices::StatusWindow for StatusPageWindow {
    /// Stores `bytes` as naturally aligned 8-, 4- and 1-byte atomic stores: the guest may
    /// read a field (the event word, a slot's base or length) while it changes, and must see
    /// its old or its new value, never a mix.
    fn write(&self, offset: u64, bytes: &[u8]) {
        use std::sync::atomic::Ordering::Release;
        let mut at = offset;
        let mut rest = bytes;
        while !rest.is_empty() {
            let addr = self.base.unchecked_add(at);
            let (n, done) = if let (true, Some(v)) = (at.is_multiple_of(8), rest.first_chunk()) {
                (8, self.mem.store(u64::from_le_bytes(*v), addr, Release))
            } else if let (true, Some(v)) = (at.is_multiple_of(4), rest.first_chunk()) {
                (4, self.mem.store(u32::from_le_bytes(*v), addr, Release))
            } else {
                (1, self.mem.store(rest[0], addr, Release))
            };
            if let Err(e) = done {
                tracing::error!(addr = addr.0, "hotplug status page not written: {e}");
                return;
            }
            at += n as u64;
            rest = &rest[n..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_page_window_writes_what_it_is_given_in_guest_ram() {
        use devices::StatusWindow;
        let l = MemoryLayout::new(128 << 20, 0);
        let mem = create_guest_memory(&l, Backing::default()).unwrap();
        let base = acpi::layout::memory_hotplug::WINDOW;
        let w = StatusPageWindow::new(&mem, base);
        // Unaligned start and odd length: the 1-, 4- and 8-byte paths all run.
        let bytes: Vec<u8> = (1..=29).collect();
        w.write(0x13, &bytes);
        w.write(0x40, &0x1122_3344_5566_7788u64.to_le_bytes());
        w.write(0, &0xdead_beefu32.to_le_bytes());
        let mut back = vec![0u8; 29];
        mem.read_slice(&mut back, GuestAddress(base + 0x13))
            .unwrap();
        assert_eq!(back, bytes);
        assert_eq!(
            mem.read_obj::<u64>(GuestAddress(base + 0x40)).unwrap(),
            0x1122_3344_5566_7788
        );
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress(base)).unwrap(),
            0xdead_beef
        );
        // Outside guest memory: logged, nothing written, no panic.
        StatusPageWindow::new(&mem, 1 << 40).write(0, &[1, 2, 3]);
    }

    #[test]
    fn small_ram_stays_below_the_hole() {
        let l = MemoryLayout::new(512 << 20, 0);
        assert_eq!(
            l.ram,
            vec![GuestRange {
                base: 0,
                size: 512 << 20
            }]
        );
        assert_eq!(l.hotplug, None);
        assert_eq!(l.low_ram_end(), 512 << 20);
    }

    #[test]
    fn large_ram_splits_around_the_hole() {
        let l = MemoryLayout::new(4 << 30, 1 << 30);
        assert_eq!(
            l.ram[0],
            GuestRange {
                base: 0,
                size: MMIO_HOLE_START
            }
        );
        assert_eq!(
            l.ram[1],
            GuestRange {
                base: MMIO_HOLE_END,
                size: (4 << 30) - MMIO_HOLE_START
            }
        );
        assert_eq!(l.ram_size(), 4 << 30);
        let h = l.hotplug.unwrap();
        assert_eq!(h.base, MMIO_HOLE_END + (1 << 30));
        assert_eq!(h.base % HOTPLUG_ALIGNMENT, 0);
    }

    #[test]
    fn hotplug_region_starts_above_4g_and_aligned() {
        let l = MemoryLayout::new(300 << 20, 256 << 20);
        let h = l.hotplug.unwrap();
        assert_eq!(h.base, MMIO_HOLE_END);
        assert_eq!(h.size, 256 << 20);
    }

    #[test]
    fn block_size_follows_linux() {
        assert_eq!(MemoryLayout::new(512 << 20, 0).block_size(), 128 << 20);
        // 62 GiB of RAM ends at 63 GiB, below the 64 GiB threshold.
        assert_eq!(MemoryLayout::new(62 << 30, 0).block_size(), 128 << 20);
        assert_eq!(MemoryLayout::new(63 << 30, 0).block_size(), 2 << 30);
        // 96 GiB of RAM ends at 97 GiB (the hole moves 1 GiB above 4 GiB): 1 GiB blocks.
        let l = MemoryLayout::new(96 << 30, 4 << 30);
        assert_eq!(l.block_size(), 1 << 30);
        assert_eq!(l.hotplug.unwrap().base % (1 << 30), 0);
        assert_eq!(MemoryLayout::new(127 << 30, 0).block_size(), 2 << 30);
    }

    #[test]
    fn guest_memory_matches_layout() {
        let l = MemoryLayout::new(64 << 20, 0);
        let mem = create_guest_memory(&l, Backing::default()).unwrap();
        assert_eq!(mem.num_regions(), 1);
        assert_eq!(mem.last_addr(), GuestAddress((64 << 20) - 1));
    }
}
