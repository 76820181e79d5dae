//! The CPU and memory hotplug controllers: the registers behind the hotplug devices'
//! `_EJ0` and `_OST` and the guest's scans, and the windows of the status page behind their
//! `_STA`, `_CRS` and `_PXM` (layouts in [`acpi::layout::hotplug_registers`],
//! [`acpi::layout::cpu_hotplug`] and [`acpi::layout::memory_hotplug`]).
//!
//! The VMM drives the host side (which slots are present, which have an insert or a remove
//! pending, where a memory slot lies); the controller publishes it in its window of the
//! status page, which the guest reads without a VM exit, and the guest acknowledges, ejects
//! and reports `_OST` through the registers. Every guest write is checked: a bad UID, width
//! or offset, or an eject of a slot that was not asked to leave, is ignored and logged
//! (rate-limited). What the guest reports comes back to the VMM as [`HotplugObservation`]s.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use acpi::layout::{
    cpu_hotplug as cpu, ged, hotplug_registers as regs, memory_hotplug as mem, status_page as page,
};
use vm_device::bus::{MmioAddress, MmioAddressOffset};
use vm_device::DeviceMmio;

use crate::guest_log::{guest_warn, GuestLog};
use crate::slot_registers::{HotplugObservation, HotplugSlotState, RegisterError, SlotRegisters};

/// Why a guest write to a controller was ignored (logged, rate-limited, as `NAME: ignored:
/// <this>`).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ControllerError {
    /// Another thread panicked while holding the controller's state; the state may be
    /// half-updated, so the guest gets no more writes through.
    #[error("state lock poisoned")]
    Poisoned,
    /// A write to an offset that is no register.
    #[error("write to unknown offset {offset:#x}")]
    UnknownOffset {
        /// The offset in the register block.
        offset: u64,
    },
    /// A write of a width the register at `offset` does not have (`_OST` is eight bytes,
    /// the others four).
    #[error("{len}-byte write at offset {offset:#x}")]
    BadWidth {
        /// The offset in the register block.
        offset: u64,
        /// The width the guest used, in bytes.
        len: usize,
    },
    /// The register model refused the value (an unknown UID or a bad eject).
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

/// Where a controller publishes its window of the hotplug status page: guest RAM at the
/// window's address ([`acpi::layout::cpu_hotplug::WINDOW`], ...), which the VMM provides.
pub trait StatusWindow: Send + Sync {
    /// Writes `bytes` at `offset` in the window. Every naturally aligned 4- or 8-byte field
    /// in them must be stored at once (the guest may read the event word or a slot's range
    /// while the VMM updates it).
    fn write(&self, offset: u64, bytes: &[u8]);
}

/// How one controller kind lays out its window of the status page.
pub trait ControllerLayout: Send + Sync + 'static {
    /// Name for logs.
    const NAME: &'static str;
    /// Size of the window.
    const WINDOW_SIZE: u64;

    /// The window offset of slot `uid`'s entry and the entry's bytes.
    #[doc(hidden)]
    fn entry(uid: u32, slot: HotplugSlotState, range: SlotRange) -> Option<(u64, Vec<u8>)>;
}

/// `bytes` into `window` at `offset`, if it fits (the layouts' const assertions show that it
/// does).
fn put(window: &mut [u8], offset: u64, bytes: &[u8]) {
    let Ok(at) = usize::try_from(offset) else {
        return;
    };
    if let Some(dst) = window.get_mut(at..at.saturating_add(bytes.len())) {
        dst.copy_from_slice(bytes);
    }
}

/// The CPU controller's layout.
#[derive(Debug)]
pub struct CpuLayout;

impl ControllerLayout for CpuLayout {
    const NAME: &'static str = "cpu-hotplug";
    const WINDOW_SIZE: u64 = cpu::WINDOW_SIZE;

    fn entry(uid: u32, slot: HotplugSlotState, _: SlotRange) -> Option<(u64, Vec<u8>)> {
        Some((cpu::STA + u64::from(uid), vec![slot.sta()]))
    }
}

/// The memory controller's layout.
#[derive(Debug)]
pub struct MemoryLayout;

impl ControllerLayout for MemoryLayout {
    const NAME: &'static str = "memory-hotplug";
    const WINDOW_SIZE: u64 = mem::WINDOW_SIZE;

    fn entry(uid: u32, slot: HotplugSlotState, range: SlotRange) -> Option<(u64, Vec<u8>)> {
        let at = mem::slot_entry(uid)?;
        let mut entry = vec![0u8; usize::try_from(mem::SLOT_STA).ok()? + 1];
        put(&mut entry, mem::SLOT_BASE, &range.base.to_le_bytes());
        put(&mut entry, mem::SLOT_LENGTH, &range.length.to_le_bytes());
        put(
            &mut entry,
            mem::SLOT_PROXIMITY,
            &range.proximity.to_le_bytes(),
        );
        put(&mut entry, mem::SLOT_STA, &[slot.sta()]);
        Some((at, entry))
    }
}

// The windows hold every device a machine may have, inside the page and apart (the GED's
// between the CPUs' and the memory's), and start with the event word (`publish` writes it as
// the first four bytes, last).
const _: () = {
    assert!(page::EVENT == 0);
    assert!(cpu::STA >= 4 && mem::SLOTS >= 4);
    assert!(cpu::STA + acpi::MAX_CPUS as u64 <= cpu::WINDOW_SIZE);
    match mem::slot_entry(acpi::MAX_HOTPLUG_SLOTS) {
        Some(last) => assert!(last + mem::SLOT_STRIDE <= mem::WINDOW_SIZE),
        None => panic!("no last slot"),
    }
    assert!(mem::SLOT_STA < mem::SLOT_STRIDE && mem::SLOT_PROXIMITY + 4 <= mem::SLOT_STA);
    assert!(cpu::WINDOW >= page::ADDR && cpu::WINDOW + cpu::WINDOW_SIZE <= ged::WINDOW);
    assert!(ged::WINDOW + ged::WINDOW_SIZE <= mem::WINDOW);
    assert!(ged::POWER_BUTTON_PRESSES + 4 <= ged::WINDOW_SIZE);
    assert!(mem::WINDOW + mem::WINDOW_SIZE <= page::ADDR + page::SIZE);
};

type Observer = Box<dyn Fn(HotplugObservation) + Send + Sync>;

#[derive(Debug)]
struct State {
    regs: SlotRegisters,
    /// One per slot, indexed as `regs`' slots.
    ranges: Vec<Option<SlotRange>>,
}

impl State {
    fn range(&self, uid: u32) -> Option<SlotRange> {
        self.ranges.get(self.regs.index(uid)?).copied().flatten()
    }

    /// The window as the guest should see it now.
    fn image<L: ControllerLayout>(&self) -> Vec<u8> {
        let mut window = vec![0u8; usize::try_from(L::WINDOW_SIZE).unwrap_or(0)];
        put(
            &mut window,
            page::EVENT,
            &self.regs.event_word().to_le_bytes(),
        );
        for (uid, slot) in self.regs.slots() {
            if let Some((at, entry)) = L::entry(uid, slot, self.range(uid).unwrap_or_default()) {
                put(&mut window, at, &entry);
            }
        }
        window
    }
}

/// A hotplug controller of layout `L`.
pub struct HotplugController<L: ControllerLayout> {
    state: Mutex<State>,
    observer: Option<Observer>,
    window: Option<Box<dyn StatusWindow>>,
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
                regs: SlotRegisters::new(first_uid, slots),
                ranges: vec![None; n],
            }),
            observer: None,
            window: None,
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

    /// Publishes the controller's state in `window` from now on, starting with the whole
    /// window (the guest must find it filled in before its first look, at boot).
    pub fn set_window(&mut self, window: Box<dyn StatusWindow>) {
        if let Ok(state) = self.state.lock() {
            let image = state.image::<L>();
            // The event word is the window's first four bytes (a const assertion ties this to
            // the layout): the entries first, then the word.
            if let (Some(entries), Some(word)) = (image.get(4..), image.get(..4)) {
                window.write(4, entries);
                window.write(page::EVENT, word);
            }
        }
        self.window = Some(window);
    }

    /// Writes what changed with slot `uid`: its entry, then the event word, so that a guest
    /// that sees an event also sees the entry it refers to. Called with the state locked, so
    /// two publications cannot interleave.
    fn publish(&self, state: &State, uid: u32) {
        let Some(window) = &self.window else {
            return;
        };
        if let Some(slot) = state.regs.slot(uid) {
            let range = state.range(uid).unwrap_or_default();
            if let Some((at, entry)) = L::entry(uid, slot, range) {
                window.write(at, &entry);
            }
        }
        window.write(page::EVENT, &state.regs.event_word().to_le_bytes());
    }

    /// The window as the guest sees it (for tests and diagnostics).
    pub fn window_image(&self) -> Vec<u8> {
        self.state
            .lock()
            .map(|s| s.image::<L>())
            .unwrap_or_default()
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

    /// Applies `f` to the state of slot `uid` and publishes the result; `false` if there is
    /// no such slot.
    pub fn update(&self, uid: u32, f: impl FnOnce(&mut HotplugSlotState)) -> bool {
        let Ok(mut state) = self.state.lock() else {
            return false;
        };
        match state.regs.slot_mut(uid) {
            Some(slot) => {
                f(slot);
                self.publish(&state, uid);
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
        self.state.lock().ok()?.range(uid)
    }

    /// Sets (or clears) where memory slot `uid` lies and publishes it; `false` if there is
    /// no such slot.
    pub fn set_range(&self, uid: u32, range: Option<SlotRange>) -> bool {
        let Ok(mut state) = self.state.lock() else {
            return false;
        };
        let Some(i) = state.regs.index(uid) else {
            return false;
        };
        match state.ranges.get_mut(i) {
            Some(r) => {
                *r = range;
                self.publish(&state, uid);
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

    fn write(
        &self,
        offset: u64,
        data: &[u8],
    ) -> Result<Option<HotplugObservation>, ControllerError> {
        let mut state = self.state.lock().map_err(|_| ControllerError::Poisoned)?;
        let bad_width = || ControllerError::BadWidth {
            offset,
            len: data.len(),
        };
        let (uid, obs) = match offset {
            regs::ACK_INSERT | regs::ACK_REMOVE | regs::EJECT => {
                let uid = u32::from_le_bytes(data.try_into().map_err(|_| bad_width())?);
                let obs = match offset {
                    regs::ACK_INSERT => state.regs.acknowledge(uid, false)?,
                    regs::ACK_REMOVE => state.regs.acknowledge(uid, true)?,
                    _ => Some(state.regs.eject(uid)?),
                };
                (uid, obs)
            }
            regs::OST => {
                let value = u64::from_le_bytes(data.try_into().map_err(|_| bad_width())?);
                // _OST changes nothing the guest reads: no need to publish.
                return Ok(Some(state.regs.ost(value)?));
            }
            _ => return Err(ControllerError::UnknownOffset { offset }),
        };
        // Before the write's VM exit returns: the guest's next read sees its own write.
        self.publish(&state, uid);
        Ok(obs)
    }
}

impl<L: ControllerLayout> DeviceMmio for HotplugController<L> {
    /// The registers are write-only: reads return zero.
    fn mmio_read(&self, _base: MmioAddress, offset: MmioAddressOffset, data: &mut [u8]) {
        self.accesses.fetch_add(1, Ordering::Relaxed);
        tracing::trace!(controller = L::NAME, offset, len = data.len(), "guest read");
        data.fill(0);
    }

    fn mmio_write(&self, _base: MmioAddress, offset: MmioAddressOffset, data: &[u8]) {
        self.accesses.fetch_add(1, Ordering::Relaxed);
        tracing::trace!(controller = L::NAME, offset, value = ?data, "guest write");
        let _order = self.order.lock().unwrap_or_else(|e| e.into_inner());
        match self.write(offset, data) {
            Ok(obs) => self.observe(obs),
            Err(why) => guest_warn!(self.bad_access, "{}: ignored: {why}", L::NAME),
        }
    }
}

#[cfg(test)]
mod tests;
