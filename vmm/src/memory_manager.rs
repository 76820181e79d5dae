//! Memory hotplug on the host side: the hotplug region's slots, their backing memory and
//! KVM memory slots, the guest memory map, and the two hotplug participants.
//!
//! * [`MemoryBackingParticipant`] owns host resources: Prepare of an add maps anonymous
//!   memory (`MAP_NORESERVE`: nothing is committed until the guest touches it), registers
//!   it as a KVM memory slot and inserts it into the guest memory map; Commit of a remove
//!   (after the guest's `_EJ0`) deletes the KVM slot and unmaps the memory, so the host
//!   gets it back.
//! * [`MemoryControllerParticipant`] publishes the slot to the guest: its range and bits in
//!   the memory hotplug controller and the GED interrupt.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use devices::{Ged, GedEvent, HotplugSlotState, MemoryHotplugController, MemoryLayout, SlotRange};
use hotplug::{
    DeviceId, DeviceParticipant, Direction, Engine, GuestEjectPolicy, KindOp, MemoryKind,
    MemoryPlacement, Orders, Origin, ParticipantError, Role,
};
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{
    GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap, GuestRegionMmap,
};

use crate::host_faults::{HostCall, HostFaults};
use crate::memory::GuestRange;
use crate::memory_backing::Backing;
use crate::slot_publisher::SlotPublisher;

/// The guest memory map, shared with whoever needs to read guest memory.
pub type GuestMemoryMap = GuestMemoryAtomic<GuestMemoryMmap>;

/// The guest range of a slot placed at `p` in the hotplug `region`.
pub fn placed(region: GuestRange, p: MemoryPlacement) -> GuestRange {
    GuestRange {
        base: region.base + p.offset,
        size: p.size,
    }
}

/// A hotplugged slot's host resources.
#[derive(Debug)]
struct BackedSlot {
    kvm_slot: u32,
    range: GuestRange,
}

/// The hotplug region and the memory behind its slots.
pub struct HotplugMemory {
    vm: Arc<VmFd>,
    map: GuestMemoryMap,
    region: GuestRange,
    first_kvm_slot: u32,
    backed: BTreeMap<u32, BackedSlot>,
    faults: Arc<HostFaults>,
    backing: Backing,
}

impl std::fmt::Debug for HotplugMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HotplugMemory")
            .field("region", &self.region)
            .field("backed", &self.backed)
            .finish_non_exhaustive()
    }
}

impl HotplugMemory {
    /// Memory for the hotplug `region`; hotplug slot `s` uses KVM slot `first_kvm_slot + s`.
    pub fn new(
        vm: Arc<VmFd>,
        map: GuestMemoryMap,
        region: GuestRange,
        first_kvm_slot: u32,
    ) -> Self {
        HotplugMemory {
            vm,
            map,
            region,
            first_kvm_slot,
            backed: BTreeMap::new(),
            faults: Arc::default(),
            backing: Backing::default(),
        }
    }

    /// Host faults to inject from now on (tests; see [`HostFaults`]).
    pub fn set_faults(&mut self, faults: Arc<HostFaults>) {
        self.faults = faults;
    }

    /// How the slots hotplugged from now on are mapped (the boot RAM's backing, normally).
    pub fn set_backing(&mut self, backing: Backing) {
        self.backing = backing;
    }

    /// Guest range of a placement.
    pub fn range_of(&self, p: MemoryPlacement) -> GuestRange {
        placed(self.region, p)
    }

    /// Slots that have memory behind them, with their ranges.
    pub fn backed_slots(&self) -> Vec<(u32, GuestRange)> {
        self.backed.iter().map(|(s, b)| (*s, b.range)).collect()
    }

    fn set_kvm_slot(
        &self,
        kvm_slot: u32,
        range: GuestRange,
        host: u64,
    ) -> Result<(), ParticipantError> {
        let call = if host == 0 {
            HostCall::KvmMemorySlotDelete
        } else {
            HostCall::KvmMemorySlotAdd
        };
        self.faults.check(call).map_err(|e| {
            ParticipantError::with_source(format!("KVM memory slot {kvm_slot} for {range:x?}"), e)
        })?;
        let region = kvm_userspace_memory_region {
            slot: kvm_slot,
            guest_phys_addr: range.base,
            memory_size: if host == 0 { 0 } else { range.size },
            userspace_addr: host,
            flags: 0,
        };
        // SAFETY: when adding, `host` is the start of a live mapping of `range.size` bytes
        // owned by the guest memory map, which keeps it until the slot is deleted (size 0)
        // below, before the mapping is dropped. Deleting a slot passes no memory.
        unsafe { self.vm.set_user_memory_region(region) }.map_err(|e| {
            ParticipantError::with_source(format!("KVM memory slot {kvm_slot} for {range:x?}"), e)
        })
    }

    /// Maps, registers and publishes in the memory map the memory of `slot`.
    pub fn back(&mut self, slot: u32, placement: MemoryPlacement) -> Result<(), ParticipantError> {
        if self.backed.contains_key(&slot) {
            // Left from a removal whose KVM slot deletion failed (the engine has the slot
            // absent): delete it now, or refuse rather than collide with it.
            tracing::warn!(
                slot,
                "memory slot still backed from a failed release: releasing it"
            );
            self.release(slot)?;
        }
        let range = self.range_of(placement);
        let size = usize::try_from(range.size)
            .map_err(|_| ParticipantError::new(format!("slot size {} too large", range.size)))?;
        self.faults
            .check(HostCall::Mmap)
            .map_err(|e| ParticipantError::with_source(format!("cannot map {size} bytes"), e))?;
        let started = Instant::now();
        let mapping = self.backing.map(size).map_err(|e| {
            ParticipantError::with_source(self.backing.describe_failure(size, &e), e)
        })?;
        let mmap_us = micros(started);
        let host = mapping.as_ptr() as u64;
        let region = GuestRegionMmap::new(mapping, GuestAddress(range.base))
            .ok_or_else(|| ParticipantError::new(format!("invalid guest range {range:x?}")))?;
        let kvm_slot = self.first_kvm_slot + slot;
        let kvm_us;
        {
            let map = self
                .map
                .lock()
                .map_err(|_| ParticipantError::new("guest memory map lock poisoned"))?;
            let new_map = self
                .map
                .memory()
                .insert_region(Arc::new(region))
                .map_err(|e| {
                    ParticipantError::with_source("cannot extend the guest memory map", e)
                })?;
            let started = Instant::now();
            self.set_kvm_slot(kvm_slot, range, host)?;
            kvm_us = micros(started);
            map.replace(new_map);
        }
        // The benchmark's breakdown of a hot-add reads these (resources/bench/hotplug.sh).
        tracing::info!(
            slot,
            kvm_slot,
            base = format_args!("{:#x}", range.base),
            size = range.size,
            mmap_us,
            kvm_us,
            "memory slot backed"
        );
        self.backed.insert(slot, BackedSlot { kvm_slot, range });
        Ok(())
    }

    /// Deletes the KVM slot of `slot` and unmaps its memory. `false` if it was not backed.
    pub fn release(&mut self, slot: u32) -> Result<bool, ParticipantError> {
        let Some(b) = self.backed.get(&slot) else {
            return Ok(false);
        };
        let (kvm_slot, range) = (b.kvm_slot, b.range);
        // Forgotten only once KVM has let go of it: a slot whose deletion failed stays backed
        // (KVM still maps it), so a later add of it is refused instead of colliding with it,
        // and a later release tries again.
        let started = Instant::now();
        self.set_kvm_slot(kvm_slot, range, 0)?;
        let kvm_us = micros(started);
        let Some(b) = self.backed.remove(&slot) else {
            return Ok(false);
        };
        let map = self
            .map
            .lock()
            .map_err(|_| ParticipantError::new("guest memory map lock poisoned"))?;
        let (new_map, region) = self
            .map
            .memory()
            .remove_region(GuestAddress(b.range.base), b.range.size)
            .map_err(|e| ParticipantError::with_source("cannot shrink the guest memory map", e))?;
        map.replace(new_map);
        // The mapping goes when the last reference does: this one, unless a reader still
        // holds an old snapshot of the map.
        let started = Instant::now();
        drop(region);
        let unmap_us = micros(started);
        tracing::info!(
            slot,
            base = format_args!("{:#x}", b.range.base),
            size = b.range.size,
            kvm_us,
            unmap_us,
            "memory slot released"
        );
        Ok(true)
    }

    /// Bytes currently hotplugged.
    pub fn plugged_bytes(&self) -> u64 {
        self.backed.values().map(|b| b.range.size).sum()
    }

    /// The guest memory map.
    pub fn map(&self) -> &GuestMemoryMap {
        &self.map
    }

    /// Regions of the current memory map (base, size).
    pub fn map_regions(&self) -> Vec<(u64, u64)> {
        use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
        self.map
            .memory()
            .iter()
            .map(|r| (r.start_addr().0, r.len()))
            .collect()
    }
}

fn locked<R>(
    m: &Mutex<HotplugMemory>,
    f: impl FnOnce(&mut HotplugMemory) -> Result<R, ParticipantError>,
) -> Result<R, ParticipantError> {
    let mut g = m
        .lock()
        .map_err(|_| ParticipantError::new("hotplug memory lock poisoned"))?;
    f(&mut g)
}

/// What the memory participants work on, for [`register`].
pub struct MemoryParts {
    /// The memory hotplug controller the guest's AML reads.
    pub controller: Arc<MemoryHotplugController>,
    /// The GED whose memory event tells the guest to scan the controller.
    pub ged: Arc<Ged>,
    /// The hotplug region the slots are placed in.
    pub region: GuestRange,
    /// The memory behind the slots; `None` where there is no KVM (the fuzz rig), which
    /// leaves the controller alone to carry memory hotplugs.
    pub backing: Option<Arc<Mutex<HotplugMemory>>>,
}

/// Registers the memory participants with `engine`: `memory-controller` (ACPI resources
/// order) and, given backing memory, `memory` (memory order). The controller carries out
/// the engine's guest-eject policy at the guest's `_EJ0`.
pub fn register(engine: &mut Engine, parts: MemoryParts) -> Result<(), hotplug::Error> {
    let guest_eject = engine.config().guest_eject;
    engine.register_for::<MemoryKind>(
        "memory-controller",
        Orders::standard(Role::AcpiResources),
        MemoryControllerParticipant::new(parts.controller, parts.ged, parts.region, guest_eject),
    )?;
    if let Some(memory) = parts.backing {
        engine.register_for::<MemoryKind>(
            "memory",
            Orders::standard(Role::Memory),
            MemoryBackingParticipant::new(memory),
        )?;
    }
    Ok(())
}

/// A memory slot's part of a transaction (its detail is the slot's placement).
type MemoryOp = KindOp<MemoryKind>;

/// Host memory behind a slot.
#[derive(Debug)]
pub struct MemoryBackingParticipant {
    memory: Arc<Mutex<HotplugMemory>>,
}

impl MemoryBackingParticipant {
    /// A participant managing `memory`.
    pub fn new(memory: Arc<Mutex<HotplugMemory>>) -> Self {
        MemoryBackingParticipant { memory }
    }
}

impl DeviceParticipant<MemoryKind> for MemoryBackingParticipant {
    fn prepare(&mut self, op: &MemoryOp) -> Result<(), ParticipantError> {
        if op.direction != Direction::Add {
            return Ok(());
        }
        locked(&self.memory, |m| m.back(op.id.0, op.detail))
    }

    fn rollback_prepare(&mut self, op: &MemoryOp) -> Result<(), ParticipantError> {
        if op.direction != Direction::Add {
            return Ok(());
        }
        locked(&self.memory, |m| m.release(op.id.0).map(|_| ()))
    }

    fn commit(&mut self, op: &MemoryOp) -> Result<(), ParticipantError> {
        // A removal gives the memory back only once the guest has let go of it (`_EJ0`).
        if op.direction != Direction::Remove {
            return Ok(());
        }
        locked(&self.memory, |m| m.release(op.id.0).map(|_| ()))
    }
}

/// What the guest sees of a memory slot: the controller's range and bits, and the GED.
#[derive(Debug)]
pub struct MemoryControllerParticipant {
    slots: SlotPublisher<MemoryLayout>,
    region: GuestRange,
}

impl MemoryControllerParticipant {
    /// A participant publishing through `controller` and `ged` for the hotplug `region`.
    pub fn new(
        controller: Arc<MemoryHotplugController>,
        ged: Arc<Ged>,
        region: GuestRange,
        guest_eject: GuestEjectPolicy,
    ) -> Self {
        // The controller carries out the engine's policy at the guest's `_EJ0`.
        controller.set_guest_eject(guest_eject == GuestEjectPolicy::Allow);
        MemoryControllerParticipant {
            slots: SlotPublisher::new(controller, ged, GedEvent::Memory, DeviceId::memory_slot),
            region,
        }
    }

    /// Empties slot `slot`: no bits, no range.
    fn clear(&self, slot: u32) -> Result<(), ParticipantError> {
        self.slots
            .update(slot, |s| *s = HotplugSlotState::default())?;
        self.slots.controller().set_range(slot, None);
        Ok(())
    }
}

impl DeviceParticipant<MemoryKind> for MemoryControllerParticipant {
    fn publish(&mut self, op: &MemoryOp) -> Result<(), ParticipantError> {
        // A guest-initiated eject has nothing to tell the guest.
        if op.origin == Origin::Guest {
            return Ok(());
        }
        let slot = op.id.0;
        match op.direction {
            Direction::Add => {
                let placed = placed(self.region, op.detail);
                let range = SlotRange {
                    base: placed.base,
                    length: placed.size,
                    proximity: 0,
                };
                if !self.slots.controller().set_range(slot, Some(range)) {
                    return Err(ParticipantError::new(format!("no memory slot {slot}")));
                }
                self.slots.update(slot, |s| {
                    *s = HotplugSlotState {
                        enabled: true,
                        inserting: true,
                        ..Default::default()
                    }
                })?;
            }
            Direction::Remove => self.slots.update(slot, |s| {
                s.removing = true;
                s.eject_allowed = true;
            })?,
        }
        self.slots.notify()
    }

    fn rollback_publish(&mut self, op: &MemoryOp) -> Result<(), ParticipantError> {
        if op.origin == Origin::Guest {
            return Ok(());
        }
        match op.direction {
            Direction::Add => self.clear(op.id.0),
            Direction::Remove => self.slots.withdraw_removal(op.id.0),
        }
    }

    fn commit(&mut self, op: &MemoryOp) -> Result<(), ParticipantError> {
        match op.direction {
            Direction::Add => self.slots.update(op.id.0, |s| s.inserting = false),
            Direction::Remove => self.clear(op.id.0),
        }
    }
}

/// Microseconds since `started`, for the log.
fn micros(started: Instant) -> u64 {
    crate::logging::micros_between(started, Instant::now())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host_faults::HostCall;

    const MIB: u64 = 1 << 20;

    /// A hotplug region of 256 MiB at 4 GiB on a real KVM VM (this runs on any /dev/kvm,
    /// PVM's included: no vCPU runs). `None` without /dev/kvm.
    fn memory(faults: &[HostCall]) -> Option<HotplugMemory> {
        let kvm = kvm_ioctls::Kvm::new().ok()?;
        let vm = Arc::new(kvm.create_vm().ok()?);
        let boot = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 * MIB as usize)]).ok()?;
        let region = GuestRange {
            base: 4 << 30,
            size: 256 * MIB,
        };
        let mut m = HotplugMemory::new(vm, GuestMemoryAtomic::new(boot), region, 1);
        m.set_faults(Arc::new(HostFaults::new(faults)));
        Some(m)
    }

    fn slot(offset: u64) -> MemoryPlacement {
        MemoryPlacement {
            offset,
            size: 128 * MIB,
        }
    }

    #[test]
    fn a_failed_map_or_slot_add_leaves_nothing_behind() {
        let Some(mut m) = memory(&[HostCall::Mmap, HostCall::KvmMemorySlotAdd]) else {
            eprintln!("skipped: no /dev/kvm");
            return;
        };
        let e = m.back(1, slot(0)).unwrap_err().chain();
        assert_eq!(e, ["cannot map 134217728 bytes", "injected fault: mmap"]);
        let e = m.back(1, slot(0)).unwrap_err().chain();
        assert_eq!(e[1], "injected fault: kvm-memory-slot-add", "{e:?}");
        assert!(m.backed_slots().is_empty());
        assert_eq!(m.map_regions().len(), 1, "only the boot memory is mapped");
        m.back(1, slot(0)).unwrap();
        assert_eq!(m.plugged_bytes(), 128 * MIB);
    }

    /// A slot whose KVM deletion failed is not forgotten: KVM still maps it, so a later add of
    /// the slot deletes it first instead of colliding with it, and a later release retries.
    #[test]
    fn a_failed_slot_deletion_keeps_the_slot_until_it_is_deleted() {
        let Some(mut m) = memory(&[HostCall::KvmMemorySlotDelete, HostCall::KvmMemorySlotDelete])
        else {
            eprintln!("skipped: no /dev/kvm");
            return;
        };
        m.back(1, slot(0)).unwrap();
        let e = m.release(1).unwrap_err().chain();
        assert_eq!(e[1], "injected fault: kvm-memory-slot-delete", "{e:?}");
        assert_eq!(m.backed_slots().len(), 1, "the slot KVM still maps is kept");
        // Adding it again first deletes what was left: once more injected to fail, so the add
        // is refused rather than registering over a live KVM slot.
        assert!(m.back(1, slot(128 * MIB)).is_err());
        assert_eq!(m.backed_slots().len(), 1);
        // Now the deletion works: the add goes through at the new place.
        m.back(1, slot(128 * MIB)).unwrap();
        assert_eq!(
            m.backed_slots(),
            [(
                1,
                GuestRange {
                    base: (4 << 30) + 128 * MIB,
                    size: 128 * MIB
                }
            )]
        );
        assert!(m.release(1).unwrap());
        assert!(m.backed_slots().is_empty());
        assert!(!m.release(1).unwrap());
    }
}
