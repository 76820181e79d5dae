//! The CPU and memory hotplug controllers: the register blocks behind the hotplug devices'
//! `_STA`, `_CRS`, `_EJ0` and `_OST` and the guest's scans (layouts in
//! [`acpi::layout::cpu_hotplug`] and [`acpi::layout::memory_hotplug`]).
//!
//! The VMM drives the host side (which slots are present, which have an insert or a remove
//! pending, where a memory slot lies); the guest reads and acknowledges through the
//! registers. Every guest access is checked: a bad selector, width or offset, or an eject of
//! a slot that was not asked to leave, is ignored and logged (rate-limited). What the guest
//! reports comes back to the VMM as [`HotplugObservation`]s.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use acpi::layout::{cpu_hotplug as cpu, memory_hotplug as mem};
use vm_device::bus::{MmioAddress, MmioAddressOffset};
use vm_device::DeviceMmio;

use crate::guest_log::{guest_warn, GuestLog};
use crate::slot_registers::{
    HotplugObservation, HotplugSlotState, RegisterError, SlotRegisters, StatusBits,
};

/// Why a guest write to a controller was ignored (logged, rate-limited, as `NAME: ignored:
/// <this>`).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ControllerError {
    /// Another thread panicked while holding the controller's state; the state may be
    /// half-updated, so the guest gets no more writes through.
    #[error("state lock poisoned")]
    Poisoned,
    /// A 4-byte write to an offset that is read-only or no register at all.
    #[error("write to read-only or unknown offset {offset:#x}")]
    UnknownOffset {
        /// The offset in the register block.
        offset: u64,
    },
    /// A write of a width the register at `offset` does not have (the status register is
    /// one byte, the others four).
    #[error("{len}-byte write at offset {offset:#x}")]
    BadWidth {
        /// The offset in the register block.
        offset: u64,
        /// The width the guest used, in bytes.
        len: usize,
    },
    /// The register model refused the value (a bad selector or eject).
    #[error(transparent)]
    Register(#[from] RegisterError),
}

/// Where a memory slot lies in guest physical memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotRange {
    /// Base address.
    pub base: u64,
    /// Length in bytes.
    pub length: u64,
    /// Proximity domain.
    pub proximity: u32,
}

/// The register offsets of one controller kind.
pub trait ControllerLayout: Send + Sync + 'static {
    /// Name for logs.
    const NAME: &'static str;
    /// Selector register.
    const SELECTOR: u64;
    /// Status/command byte.
    const STATUS: u64;
    /// `_OST` event register.
    const OST_EVENT: u64;
    /// `_OST` status register.
    const OST_STATUS: u64;
    /// Next-event register.
    const NEXT_EVENT: u64;
    /// Value of the next-event register when nothing is pending.
    const NO_EVENT: u32;
    /// Status bits.
    #[doc(hidden)]
    const BITS: StatusBitsDef;

    /// Layout-specific 32-bit read-only registers of the selected slot.
    fn extra_read(_offset: u64, _range: Option<SlotRange>) -> Option<u32> {
        None
    }
}

/// The status bits of a layout (a plain mirror of the private register model's type).
#[doc(hidden)]
#[derive(Clone, Copy, Debug)]
pub struct StatusBitsDef {
    enabled: u8,
    inserting: u8,
    removing: u8,
    eject: u8,
}

impl StatusBitsDef {
    fn bits(self) -> StatusBits {
        StatusBits {
            enabled: self.enabled,
            inserting: self.inserting,
            removing: self.removing,
            eject: self.eject,
        }
    }
}

/// The CPU controller's layout.
#[derive(Debug)]
pub struct CpuLayout;

impl ControllerLayout for CpuLayout {
    const NAME: &'static str = "cpu-hotplug";
    const SELECTOR: u64 = cpu::SELECTOR;
    const STATUS: u64 = cpu::STATUS;
    const OST_EVENT: u64 = cpu::OST_EVENT;
    const OST_STATUS: u64 = cpu::OST_STATUS;
    const NEXT_EVENT: u64 = cpu::NEXT_EVENT;
    const NO_EVENT: u32 = cpu::NO_EVENT;
    const BITS: StatusBitsDef = StatusBitsDef {
        enabled: cpu::STATUS_ENABLED,
        inserting: cpu::STATUS_INSERTING,
        removing: cpu::STATUS_REMOVING,
        eject: cpu::STATUS_EJECT,
    };
}

/// The memory controller's layout.
#[derive(Debug)]
pub struct MemoryLayout;

impl ControllerLayout for MemoryLayout {
    const NAME: &'static str = "memory-hotplug";
    const SELECTOR: u64 = mem::SELECTOR;
    const STATUS: u64 = mem::STATUS;
    const OST_EVENT: u64 = mem::OST_EVENT;
    const OST_STATUS: u64 = mem::OST_STATUS;
    const NEXT_EVENT: u64 = mem::NEXT_EVENT;
    const NO_EVENT: u32 = mem::NO_EVENT;
    const BITS: StatusBitsDef = StatusBitsDef {
        enabled: mem::STATUS_ENABLED,
        inserting: mem::STATUS_INSERTING,
        removing: mem::STATUS_REMOVING,
        eject: mem::STATUS_EJECT,
    };

    fn extra_read(offset: u64, range: Option<SlotRange>) -> Option<u32> {
        let r = range.unwrap_or_default();
        let lo = |v: u64| v as u32;
        let hi = |v: u64| (v >> 32) as u32;
        match offset {
            mem::BASE_LOW => Some(lo(r.base)),
            mem::BASE_HIGH => Some(hi(r.base)),
            mem::LENGTH_LOW => Some(lo(r.length)),
            mem::LENGTH_HIGH => Some(hi(r.length)),
            mem::PROXIMITY => Some(r.proximity),
            _ => None,
        }
    }
}

type Observer = Box<dyn Fn(HotplugObservation) + Send + Sync>;

#[derive(Debug)]
struct State {
    regs: SlotRegisters,
    ranges: Vec<Option<SlotRange>>,
    first_uid: u32,
}

impl State {
    fn range(&self, uid: u32) -> Option<SlotRange> {
        let i = usize::try_from(uid.checked_sub(self.first_uid)?).ok()?;
        self.ranges.get(i).copied().flatten()
    }
}

/// A hotplug controller of layout `L`.
pub struct HotplugController<L: ControllerLayout> {
    state: Mutex<State>,
    observer: Option<Observer>,
    accesses: AtomicU64,
    /// Held across an access and the observation it makes, so that observations reach the
    /// VMM in the order of the guest's accesses, even from different vCPUs.
    order: Mutex<()>,
    bad_access: GuestLog,
    layout: PhantomData<L>,
}

/// The CPU hotplug controller (UIDs = CPU ids `0..max_cpus`).
pub type CpuHotplugController = HotplugController<CpuLayout>;
/// The memory hotplug controller (UIDs = slot ids `1..=slots`).
pub type MemoryHotplugController = HotplugController<MemoryLayout>;

impl<L: ControllerLayout> std::fmt::Debug for HotplugController<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct(L::NAME)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl CpuHotplugController {
    /// CPUs `0..boot_cpus` start present, the rest of `0..max_cpus` absent.
    pub fn for_cpus(boot_cpus: u32, max_cpus: u32) -> Self {
        let slots = (0..max_cpus)
            .map(|i| HotplugSlotState {
                enabled: i < boot_cpus,
                ..Default::default()
            })
            .collect();
        Self::with_slots(0, slots)
    }
}

impl MemoryHotplugController {
    /// `slots` empty memory slots with UIDs `1..=slots`.
    pub fn for_memory_slots(slots: u32) -> Self {
        Self::with_slots(1, vec![HotplugSlotState::default(); slots as usize])
    }
}

impl<L: ControllerLayout> HotplugController<L> {
    fn with_slots(first_uid: u32, slots: Vec<HotplugSlotState>) -> Self {
        let n = slots.len();
        HotplugController {
            state: Mutex::new(State {
                regs: SlotRegisters::new(first_uid, slots, L::BITS.bits()),
                ranges: vec![None; n],
                first_uid,
            }),
            observer: None,
            accesses: AtomicU64::new(0),
            order: Mutex::new(()),
            bad_access: GuestLog::new(),
            layout: PhantomData,
        }
    }

    /// Sends what the guest does to `observer` (called on the vCPU thread that made the
    /// access, with no controller lock held).
    pub fn set_observer(&mut self, observer: Observer) {
        self.observer = Some(observer);
    }

    /// Projects the engine's guest-eject policy: whether an `_EJ0` of a device nobody asked
    /// to leave is carried out (`true`) or refused and the device offered again (`false`,
    /// the default). Either way the VMM hears of the `_EJ0` and its engine judges it.
    pub fn set_guest_eject(&self, allowed: bool) {
        if let Ok(mut state) = self.state.lock() {
            state.regs.set_guest_eject(allowed);
        }
    }

    /// The state of slot `uid`, or `None` if there is no such slot.
    pub fn slot(&self, uid: u32) -> Option<HotplugSlotState> {
        self.state.lock().ok()?.regs.slot(uid)
    }

    /// Applies `f` to the state of slot `uid`; `false` if there is no such slot.
    pub fn update(&self, uid: u32, f: impl FnOnce(&mut HotplugSlotState)) -> bool {
        let Ok(mut state) = self.state.lock() else {
            return false;
        };
        match state.regs.slot_mut(uid) {
            Some(slot) => {
                f(slot);
                true
            }
            None => false,
        }
    }

    /// Withdraws a removal request from slot `uid`. If the guest already ejected the device
    /// (an all-or-nothing batch rolled back after the guest let it go), the slot is plugged
    /// back in: enabled with an insert pending, so that the guest's next scan adds it again.
    /// Returns whether that re-insert is needed (the caller raises the GED event), or `None`
    /// if there is no such slot.
    pub fn withdraw_removal(&self, uid: u32) -> Option<bool> {
        let mut reinsert = false;
        let found = self.update(uid, |s| {
            s.removing = false;
            s.eject_allowed = false;
            if !s.enabled {
                s.enabled = true;
                s.inserting = true;
                reinsert = true;
            }
        });
        found.then_some(reinsert)
    }

    /// Where memory slot `uid` lies, as the guest reads it; `None` if unset or no such slot.
    pub fn range(&self, uid: u32) -> Option<SlotRange> {
        let state = self.state.lock().ok()?;
        let i = usize::try_from(uid.checked_sub(state.first_uid)?).ok()?;
        state.ranges.get(i).copied().flatten()
    }

    /// Sets (or clears) where memory slot `uid` lies; `false` if there is no such slot.
    pub fn set_range(&self, uid: u32, range: Option<SlotRange>) -> bool {
        let Ok(mut state) = self.state.lock() else {
            return false;
        };
        let Some(i) = uid
            .checked_sub(state.first_uid)
            .and_then(|i| usize::try_from(i).ok())
        else {
            return false;
        };
        match state.ranges.get_mut(i) {
            Some(r) => {
                *r = range;
                true
            }
            None => false,
        }
    }

    /// How many guest register accesses the controller has served (each one a VM exit).
    pub fn access_count(&self) -> u64 {
        self.accesses.load(Ordering::Relaxed)
    }

    fn observe(&self, obs: Option<HotplugObservation>) {
        if let (Some(obs), Some(observer)) = (obs, &self.observer) {
            observer(obs);
        }
    }

    fn read(&self, offset: u64, len: usize) -> Option<(Vec<u8>, Option<HotplugObservation>)> {
        let mut state = self.state.lock().ok()?;
        if offset == L::STATUS && len == 1 {
            let (v, obs) = state.regs.read_status()?;
            return Some((vec![v], Some(obs)));
        }
        if len != 4 {
            return None;
        }
        let value = match offset {
            o if o == L::SELECTOR => state.regs.selector(),
            o if o == L::NEXT_EVENT => state.regs.next_event().unwrap_or(L::NO_EVENT),
            o => {
                let range = state.range(state.regs.selector());
                L::extra_read(o, range)?
            }
        };
        Some((value.to_le_bytes().to_vec(), None))
    }

    fn write(
        &self,
        offset: u64,
        data: &[u8],
    ) -> Result<Option<HotplugObservation>, ControllerError> {
        let mut state = self.state.lock().map_err(|_| ControllerError::Poisoned)?;
        match (offset, data) {
            (o, [v]) if o == L::STATUS => Ok(state.regs.write_status(*v)?),
            (o, &[a, b, c, d]) => {
                let value = u32::from_le_bytes([a, b, c, d]);
                match o {
                    o if o == L::SELECTOR => {
                        state.regs.select(value)?;
                        Ok(None)
                    }
                    o if o == L::OST_EVENT => {
                        state.regs.set_ost_event(value);
                        Ok(None)
                    }
                    o if o == L::OST_STATUS => Ok(Some(state.regs.ost(value))),
                    _ => Err(ControllerError::UnknownOffset { offset }),
                }
            }
            _ => Err(ControllerError::BadWidth {
                offset,
                len: data.len(),
            }),
        }
    }
}

impl<L: ControllerLayout> DeviceMmio for HotplugController<L> {
    fn mmio_read(&self, _base: MmioAddress, offset: MmioAddressOffset, data: &mut [u8]) {
        self.accesses.fetch_add(1, Ordering::Relaxed);
        // The observer never blocks (a bounded queue it does not wait on), so holding this is
        // cheap.
        let _order = self.order.lock().unwrap_or_else(|e| e.into_inner());
        match self.read(offset, data.len()) {
            Some((bytes, obs)) => {
                data.copy_from_slice(&bytes);
                self.observe(obs);
            }
            None => {
                guest_warn!(
                    self.bad_access,
                    "{}: {}-byte read at offset {offset:#x} ignored",
                    L::NAME,
                    data.len()
                );
                data.fill(0);
            }
        }
    }

    fn mmio_write(&self, _base: MmioAddress, offset: MmioAddressOffset, data: &[u8]) {
        self.accesses.fetch_add(1, Ordering::Relaxed);
        let _order = self.order.lock().unwrap_or_else(|e| e.into_inner());
        match self.write(offset, data) {
            Ok(obs) => self.observe(obs),
            Err(why) => guest_warn!(self.bad_access, "{}: ignored: {why}", L::NAME),
        }
    }
}

#[cfg(test)]
mod tests;
