//! Generic Event Device (ACPI0013): one event register and one edge-triggered interrupt that
//! tells the guest to run its hotplug scans or that the power button was pressed (see
//! [`acpi::layout::ged`]).

use std::sync::atomic::{AtomicU32, Ordering};

use acpi::layout::ged as regs;
use vm_device::bus::{MmioAddress, MmioAddressOffset};
use vm_device::DeviceMmio;
use vmm_sys_util::eventfd::EventFd;

use crate::guest_log::{guest_warn, GuestLog};

/// An event class the GED can signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GedEvent {
    /// Run the CPU hotplug scan.
    Cpu,
    /// Run the memory hotplug scan.
    Memory,
    /// The power button was pressed: the guest's `_EVT` notifies the PNP0C0C device, which
    /// Linux reports as a `KEY_POWER` input event (an orderly shutdown, if the guest's
    /// userspace acts on it).
    PowerButton,
}

impl GedEvent {
    fn bit(self) -> u32 {
        match self {
            GedEvent::Cpu => regs::EVENT_CPU,
            GedEvent::Memory => regs::EVENT_MEMORY,
            GedEvent::PowerButton => regs::EVENT_POWER_BUTTON,
        }
    }
}

/// The GED: events accumulate in the register until the guest's `_EVT` reads (and so clears) it.
#[derive(Debug)]
pub struct Ged {
    events: AtomicU32,
    irq: EventFd,
    bad_access: GuestLog,
}

impl Ged {
    /// A GED raising its interrupt through `irq` (an irqfd on [`regs::IRQ`]).
    pub fn new(irq: EventFd) -> Self {
        Ged {
            events: AtomicU32::new(0),
            irq,
            bad_access: GuestLog::new(),
        }
    }

    /// Latches `event` and interrupts the guest.
    pub fn notify(&self, event: GedEvent) -> std::io::Result<()> {
        self.events.fetch_or(event.bit(), Ordering::SeqCst);
        self.irq.write(1)
    }

    /// Events latched and not yet read by the guest.
    pub fn pending(&self) -> u32 {
        self.events.load(Ordering::SeqCst)
    }
}

impl DeviceMmio for Ged {
    fn mmio_read(&self, _base: MmioAddress, offset: MmioAddressOffset, data: &mut [u8]) {
        if offset != regs::EVENT || data.len() != 4 {
            guest_warn!(
                self.bad_access,
                "ged: {}-byte read at offset {offset:#x} ignored",
                data.len()
            );
            data.fill(0);
            return;
        }
        let events = self.events.swap(0, Ordering::SeqCst);
        tracing::trace!(events, "ged: guest read");
        data.copy_from_slice(&events.to_le_bytes());
    }

    fn mmio_write(&self, _base: MmioAddress, offset: MmioAddressOffset, data: &[u8]) {
        guest_warn!(
            self.bad_access,
            "ged: {}-byte write at offset {offset:#x} ignored",
            data.len()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    fn read(ged: &Ged, offset: u64, len: usize) -> Vec<u8> {
        let mut data = vec![0xaa; len];
        ged.mmio_read(MmioAddress(regs::MMIO_BASE), offset, &mut data);
        data
    }

    #[test]
    fn events_latch_interrupt_and_clear_on_read() {
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let ged = Ged::new(irq.try_clone().unwrap());
        ged.notify(GedEvent::Cpu).unwrap();
        ged.notify(GedEvent::Memory).unwrap();
        assert_eq!(irq.read().unwrap(), 2);
        let v = read(&ged, regs::EVENT, 4);
        assert_eq!(
            u32::from_le_bytes(v.try_into().unwrap()),
            regs::EVENT_CPU | regs::EVENT_MEMORY
        );
        assert_eq!(read(&ged, regs::EVENT, 4), vec![0; 4]);
    }

    #[test]
    fn power_button_latches_its_own_bit() {
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let ged = Ged::new(irq.try_clone().unwrap());
        ged.notify(GedEvent::PowerButton).unwrap();
        assert_eq!(irq.read().unwrap(), 1);
        assert_eq!(ged.pending(), regs::EVENT_POWER_BUTTON);
        // A press that races a hotplug event is delivered by the same `_EVT`.
        ged.notify(GedEvent::Cpu).unwrap();
        let v = read(&ged, regs::EVENT, 4);
        assert_eq!(
            u32::from_le_bytes(v.try_into().unwrap()),
            regs::EVENT_POWER_BUTTON | regs::EVENT_CPU
        );
        assert_eq!(ged.pending(), 0);
    }

    #[test]
    fn every_event_has_a_bit_of_its_own() {
        let bits = [GedEvent::Cpu, GedEvent::Memory, GedEvent::PowerButton].map(GedEvent::bit);
        let mut seen = 0;
        for bit in bits {
            assert_eq!(bit.count_ones(), 1, "{bit:#x}");
            assert_eq!(seen & bit, 0, "{bit:#x} shared");
            seen |= bit;
        }
    }

    #[test]
    fn odd_accesses_do_not_clear_events() {
        let ged = Ged::new(EventFd::new(EFD_NONBLOCK).unwrap());
        ged.notify(GedEvent::Cpu).unwrap();
        assert_eq!(read(&ged, regs::EVENT, 1), vec![0]);
        assert_eq!(read(&ged, 2, 4), vec![0; 4]);
        ged.mmio_write(MmioAddress(regs::MMIO_BASE), 0, &[0, 0, 0, 0]);
        assert_eq!(ged.pending(), regs::EVENT_CPU);
    }
}
