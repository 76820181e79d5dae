//! The CPU hotplug controller: the register block behind the processor objects' `_STA`,
//! `_EJ0` and `_OST` and the CPU scan (layout in [`acpi::layout::cpu_hotplug`]).
//!
//! The VMM drives the host side (which CPUs are present, which have an insert or a remove
//! pending); the guest reads and acknowledges through the registers. Every guest access is
//! checked: a bad selector, width or offset, or an eject of a CPU that was not asked to
//! leave, is ignored and logged (rate-limited). What the guest reports comes back to the VMM
//! as [`CpuHotplugObservation`]s.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use acpi::layout::cpu_hotplug as regs;
use vm_device::bus::{MmioAddress, MmioAddressOffset};
use vm_device::DeviceMmio;

use crate::guest_log::{guest_warn, GuestLog};

/// What the controller knows of one possible CPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuSlotState {
    /// Present: `_STA` reports it enabled.
    pub enabled: bool,
    /// An insert was published and the guest has not acknowledged it.
    pub inserting: bool,
    /// A removal was requested and the guest has not acknowledged it.
    pub removing: bool,
    /// A removal was requested and the guest may eject the CPU.
    pub eject_allowed: bool,
}

impl CpuSlotState {
    fn status_byte(&self) -> u8 {
        let mut s = 0;
        if self.enabled {
            s |= regs::STATUS_ENABLED;
        }
        if self.inserting {
            s |= regs::STATUS_INSERTING;
        }
        if self.removing {
            s |= regs::STATUS_REMOVING;
        }
        s
    }
}

/// Something the guest did that the hotplug framework needs to hear about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuHotplugObservation {
    /// The guest read the status of `cpu` (it looked at the device).
    StatusRead {
        /// CPU UID.
        cpu: u32,
    },
    /// The guest evaluated `_OST(event, status)` for `cpu`.
    Ost {
        /// CPU UID.
        cpu: u32,
        /// `_OST` source event.
        event: u32,
        /// `_OST` status code.
        status: u32,
    },
    /// The guest ejected `cpu` (`_EJ0`); it is no longer enabled.
    Ejected {
        /// CPU UID.
        cpu: u32,
    },
}

type Observer = Box<dyn Fn(CpuHotplugObservation) + Send + Sync>;

#[derive(Debug)]
struct Registers {
    selector: u32,
    ost_event: u32,
    slots: Vec<CpuSlotState>,
}

/// The controller for `max_cpus` possible CPUs.
pub struct CpuHotplugController {
    regs: Mutex<Registers>,
    observer: Option<Observer>,
    accesses: AtomicU64,
    bad_access: GuestLog,
}

impl std::fmt::Debug for CpuHotplugController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuHotplugController")
            .field("regs", &self.regs)
            .finish_non_exhaustive()
    }
}

impl CpuHotplugController {
    /// CPUs `0..boot_cpus` start present, the rest of `0..max_cpus` absent.
    pub fn new(boot_cpus: u32, max_cpus: u32) -> Self {
        let slots = (0..max_cpus)
            .map(|i| CpuSlotState {
                enabled: i < boot_cpus,
                ..Default::default()
            })
            .collect();
        CpuHotplugController {
            regs: Mutex::new(Registers {
                selector: 0,
                ost_event: 0,
                slots,
            }),
            observer: None,
            accesses: AtomicU64::new(0),
            bad_access: GuestLog::new(),
        }
    }

    /// Sends what the guest does to `observer` (called on the vCPU thread that made the
    /// access, with no controller lock held).
    pub fn set_observer(&mut self, observer: Observer) {
        self.observer = Some(observer);
    }

    /// The state of `cpu`, or `None` beyond `max_cpus`.
    pub fn slot(&self, cpu: u32) -> Option<CpuSlotState> {
        let regs = self.regs.lock().ok()?;
        regs.slots.get(cpu as usize).copied()
    }

    /// Applies `f` to the state of `cpu`; `false` if `cpu` is beyond `max_cpus`.
    pub fn update(&self, cpu: u32, f: impl FnOnce(&mut CpuSlotState)) -> bool {
        let Ok(mut regs) = self.regs.lock() else {
            return false;
        };
        match regs.slots.get_mut(cpu as usize) {
            Some(slot) => {
                f(slot);
                true
            }
            None => false,
        }
    }

    /// How many guest register accesses the controller has served (each one a VM exit).
    pub fn access_count(&self) -> u64 {
        self.accesses.load(Ordering::Relaxed)
    }

    fn observe(&self, obs: Option<CpuHotplugObservation>) {
        if let (Some(obs), Some(observer)) = (obs, &self.observer) {
            observer(obs);
        }
    }

    fn read_u32(&self, offset: u64) -> Option<(u32, Option<CpuHotplugObservation>)> {
        let mut regs = self.regs.lock().ok()?;
        match offset {
            regs::SELECTOR => Some((regs.selector, None)),
            regs::NEXT_EVENT => {
                let n = regs.slots.len();
                let start = regs.selector as usize;
                let next = (1..=n)
                    .map(|i| (start + i) % n)
                    .find(|&i| regs.slots[i].inserting || regs.slots[i].removing);
                match next {
                    Some(i) => {
                        let cpu = u32::try_from(i).ok()?;
                        regs.selector = cpu;
                        Some((cpu, None))
                    }
                    None => Some((regs::NO_EVENT, None)),
                }
            }
            _ => None,
        }
    }

    fn read_status(&self) -> Option<(u8, Option<CpuHotplugObservation>)> {
        let regs = self.regs.lock().ok()?;
        let cpu = regs.selector;
        let slot = regs.slots.get(cpu as usize)?;
        Some((
            slot.status_byte(),
            Some(CpuHotplugObservation::StatusRead { cpu }),
        ))
    }

    fn write_u32(&self, offset: u64, value: u32) -> Result<Option<CpuHotplugObservation>, String> {
        let mut regs = self
            .regs
            .lock()
            .map_err(|_| "state lock poisoned".to_string())?;
        match offset {
            regs::SELECTOR => {
                if value as usize >= regs.slots.len() {
                    return Err(format!(
                        "selector {value} beyond max CPUs {}",
                        regs.slots.len()
                    ));
                }
                regs.selector = value;
                Ok(None)
            }
            regs::OST_EVENT => {
                regs.ost_event = value;
                Ok(None)
            }
            regs::OST_STATUS => Ok(Some(CpuHotplugObservation::Ost {
                cpu: regs.selector,
                event: regs.ost_event,
                status: value,
            })),
            _ => Err(format!("write to read-only or unknown offset {offset:#x}")),
        }
    }

    fn write_status(&self, value: u8) -> Result<Option<CpuHotplugObservation>, String> {
        let mut regs = self
            .regs
            .lock()
            .map_err(|_| "state lock poisoned".to_string())?;
        let cpu = regs.selector;
        let slot = regs
            .slots
            .get_mut(cpu as usize)
            .ok_or_else(|| format!("selector {cpu} beyond max CPUs"))?;
        if value & regs::STATUS_INSERTING != 0 {
            slot.inserting = false;
        }
        if value & regs::STATUS_REMOVING != 0 {
            slot.removing = false;
        }
        if value & regs::STATUS_EJECT != 0 {
            if !slot.enabled || !slot.eject_allowed {
                return Err(format!("eject of CPU {cpu}, which was not asked to leave"));
            }
            slot.enabled = false;
            slot.eject_allowed = false;
            slot.removing = false;
            return Ok(Some(CpuHotplugObservation::Ejected { cpu }));
        }
        Ok(None)
    }
}

impl DeviceMmio for CpuHotplugController {
    fn mmio_read(&self, _base: MmioAddress, offset: MmioAddressOffset, data: &mut [u8]) {
        self.accesses.fetch_add(1, Ordering::Relaxed);
        let result = match (offset, data.len()) {
            (regs::STATUS, 1) => self.read_status().map(|(v, o)| (vec![v], o)),
            (regs::SELECTOR | regs::NEXT_EVENT, 4) => self
                .read_u32(offset)
                .map(|(v, o)| (v.to_le_bytes().to_vec(), o)),
            _ => None,
        };
        match result {
            Some((bytes, obs)) => {
                data.copy_from_slice(&bytes);
                self.observe(obs);
            }
            None => {
                guest_warn!(
                    self.bad_access,
                    "cpu-hotplug: {}-byte read at offset {offset:#x} ignored",
                    data.len()
                );
                data.fill(0);
            }
        }
    }

    fn mmio_write(&self, _base: MmioAddress, offset: MmioAddressOffset, data: &[u8]) {
        self.accesses.fetch_add(1, Ordering::Relaxed);
        let result = match (offset, data) {
            (regs::STATUS, [v]) => self.write_status(*v),
            (regs::SELECTOR | regs::OST_EVENT | regs::OST_STATUS, &[a, b, c, d]) => {
                self.write_u32(offset, u32::from_le_bytes([a, b, c, d]))
            }
            _ => Err(format!("{}-byte write at offset {offset:#x}", data.len())),
        };
        match result {
            Ok(obs) => self.observe(obs),
            Err(why) => guest_warn!(self.bad_access, "cpu-hotplug: ignored: {why}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn controller() -> (CpuHotplugController, Arc<Mutex<Vec<CpuHotplugObservation>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut c = CpuHotplugController::new(2, 8);
        let sink = seen.clone();
        c.set_observer(Box::new(move |o| sink.lock().unwrap().push(o)));
        (c, seen)
    }

    fn w32(c: &CpuHotplugController, off: u64, v: u32) {
        c.mmio_write(MmioAddress(regs::MMIO_BASE), off, &v.to_le_bytes());
    }
    fn r32(c: &CpuHotplugController, off: u64) -> u32 {
        let mut d = [0u8; 4];
        c.mmio_read(MmioAddress(regs::MMIO_BASE), off, &mut d);
        u32::from_le_bytes(d)
    }
    fn w8(c: &CpuHotplugController, off: u64, v: u8) {
        c.mmio_write(MmioAddress(regs::MMIO_BASE), off, &[v]);
    }
    fn r8(c: &CpuHotplugController, off: u64) -> u8 {
        let mut d = [0u8; 1];
        c.mmio_read(MmioAddress(regs::MMIO_BASE), off, &mut d);
        d[0]
    }

    #[test]
    fn boot_cpus_are_enabled_others_absent() {
        let (c, seen) = controller();
        w32(&c, regs::SELECTOR, 1);
        assert_eq!(r8(&c, regs::STATUS), regs::STATUS_ENABLED);
        w32(&c, regs::SELECTOR, 2);
        assert_eq!(r8(&c, regs::STATUS), 0);
        assert_eq!(
            seen.lock().unwrap().as_slice(),
            &[
                CpuHotplugObservation::StatusRead { cpu: 1 },
                CpuHotplugObservation::StatusRead { cpu: 2 }
            ]
        );
    }

    #[test]
    fn insert_scan_ack_and_ost() {
        let (c, seen) = controller();
        assert_eq!(r32(&c, regs::NEXT_EVENT), regs::NO_EVENT);
        c.update(5, |s| {
            s.enabled = true;
            s.inserting = true;
        });
        assert_eq!(r32(&c, regs::NEXT_EVENT), 5);
        assert_eq!(r32(&c, regs::SELECTOR), 5);
        assert_eq!(
            r8(&c, regs::STATUS),
            regs::STATUS_ENABLED | regs::STATUS_INSERTING
        );
        w8(&c, regs::STATUS, regs::STATUS_INSERTING);
        assert_eq!(r32(&c, regs::NEXT_EVENT), regs::NO_EVENT);
        w32(&c, regs::OST_EVENT, 1);
        w32(&c, regs::OST_STATUS, 0);
        assert!(seen.lock().unwrap().contains(&CpuHotplugObservation::Ost {
            cpu: 5,
            event: 1,
            status: 0
        }));
        assert_eq!(
            c.slot(5),
            Some(CpuSlotState {
                enabled: true,
                ..Default::default()
            })
        );
    }

    #[test]
    fn next_event_is_cyclic_from_the_selector() {
        let (c, _) = controller();
        c.update(1, |s| s.removing = true);
        c.update(6, |s| s.inserting = true);
        w32(&c, regs::SELECTOR, 3);
        assert_eq!(r32(&c, regs::NEXT_EVENT), 6);
        w8(&c, regs::STATUS, regs::STATUS_INSERTING);
        assert_eq!(r32(&c, regs::NEXT_EVENT), 1);
        assert_eq!(
            r8(&c, regs::STATUS),
            regs::STATUS_ENABLED | regs::STATUS_REMOVING
        );
    }

    #[test]
    fn eject_only_when_asked_to_leave() {
        let (c, seen) = controller();
        w32(&c, regs::SELECTOR, 1);
        w8(&c, regs::STATUS, regs::STATUS_EJECT);
        assert!(
            c.slot(1).unwrap().enabled,
            "unrequested eject must be ignored"
        );
        c.update(1, |s| {
            s.removing = true;
            s.eject_allowed = true;
        });
        w8(&c, regs::STATUS, regs::STATUS_EJECT);
        assert_eq!(c.slot(1), Some(CpuSlotState::default()));
        assert!(seen
            .lock()
            .unwrap()
            .contains(&CpuHotplugObservation::Ejected { cpu: 1 }));
    }

    #[test]
    fn hostile_accesses_are_ignored() {
        let (c, seen) = controller();
        w32(&c, regs::SELECTOR, 8);
        w32(&c, regs::SELECTOR, u32::MAX);
        assert_eq!(r32(&c, regs::SELECTOR), 0);
        c.mmio_write(MmioAddress(regs::MMIO_BASE), regs::SELECTOR, &[1, 0]);
        c.mmio_write(MmioAddress(regs::MMIO_BASE), 0x1000, &[1]);
        c.mmio_write(MmioAddress(regs::MMIO_BASE), regs::NEXT_EVENT, &[0; 4]);
        c.mmio_write(MmioAddress(regs::MMIO_BASE), regs::STATUS, &[]);
        let mut wide = [0xffu8; 8];
        c.mmio_read(MmioAddress(regs::MMIO_BASE), regs::SELECTOR, &mut wide);
        assert_eq!(wide, [0; 8]);
        let mut odd = [0xffu8; 2];
        c.mmio_read(MmioAddress(regs::MMIO_BASE), regs::STATUS, &mut odd);
        assert_eq!(odd, [0; 2]);
        assert_eq!(r32(&c, regs::SELECTOR), 0);
        assert!(seen.lock().unwrap().is_empty());
        assert!(c.access_count() >= 9);
    }

    #[test]
    fn selecting_beyond_max_cannot_reach_other_state() {
        let c = CpuHotplugController::new(1, 1);
        assert!(!c.update(1, |s| s.enabled = true));
        assert_eq!(c.slot(1), None);
        c.update(0, |s| s.inserting = true);
        let mut d = [0u8; 4];
        c.mmio_read(MmioAddress(regs::MMIO_BASE), regs::NEXT_EVENT, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0);
    }
}
