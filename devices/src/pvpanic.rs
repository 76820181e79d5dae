//! QEMU's pvpanic ISA device (`QEMU0001`): lets the guest kernel say it panicked, so plugvm
//! can end with a panic exit code instead of mistaking the following reset for a reboot.

use std::sync::Arc;

use acpi::layout::pvpanic as regs;
use vm_device::bus::{PioAddress, PioAddressOffset};
use vm_device::DevicePio;

use crate::exit::{ExitReason, ExitSignal};
use crate::guest_log::{guest_warn, GuestLog};

/// The pvpanic port.
#[derive(Debug)]
pub struct PvPanicDevice {
    exit: Arc<ExitSignal>,
    bad_access: GuestLog,
}

impl PvPanicDevice {
    /// A device that reports guest panics through `exit`.
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        PvPanicDevice {
            exit,
            bad_access: GuestLog::new(),
        }
    }
}

impl DevicePio for PvPanicDevice {
    fn pio_read(&self, _base: PioAddress, _offset: PioAddressOffset, data: &mut [u8]) {
        // The guest reads the events the device supports.
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = regs::PANICKED | regs::CRASH_LOADED;
        }
    }

    fn pio_write(&self, _base: PioAddress, _offset: PioAddressOffset, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        if value & regs::PANICKED != 0 {
            tracing::error!("the guest kernel panicked");
            self.exit.request(ExitReason::GuestPanic);
        } else if value & regs::CRASH_LOADED != 0 {
            tracing::warn!("the guest kernel is taking a crash dump");
        } else {
            guest_warn!(self.bad_access, "pvpanic: write {value:#x} ignored");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    #[test]
    fn panic_write_requests_panic_exit() {
        let exit = Arc::new(ExitSignal::new(EventFd::new(EFD_NONBLOCK).unwrap()));
        let dev = PvPanicDevice::new(exit.clone());
        let mut caps = [0u8; 1];
        dev.pio_read(PioAddress(regs::PORT), 0, &mut caps);
        assert_eq!(caps[0] & regs::PANICKED, regs::PANICKED);
        dev.pio_write(PioAddress(regs::PORT), 0, &[0]);
        dev.pio_write(PioAddress(regs::PORT), 0, &[]);
        assert_eq!(exit.reason(), None);
        dev.pio_write(PioAddress(regs::PORT), 0, &[regs::PANICKED]);
        assert_eq!(exit.reason(), Some(ExitReason::GuestPanic));
    }
}
