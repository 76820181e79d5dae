//! Hardware-reduced ACPI power management: the FADT's sleep control, sleep status and reset
//! registers, as I/O ports (see [`acpi::layout::power`]).

use std::sync::Arc;

use acpi::layout::power as regs;
use vm_device::bus::{PioAddress, PioAddressOffset};
use vm_device::DevicePio;

use crate::exit::{ExitReason, ExitSignal};
use crate::guest_log::{guest_warn, GuestLog};

/// Ends the VM when the guest enters S5 or writes the reset value.
#[derive(Debug)]
pub struct AcpiPowerDevice {
    exit: Arc<ExitSignal>,
    bad_access: GuestLog,
}

impl AcpiPowerDevice {
    /// A device that reports power-off and reset through `exit`.
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        AcpiPowerDevice {
            exit,
            bad_access: GuestLog::new(),
        }
    }
}

impl DevicePio for AcpiPowerDevice {
    fn pio_read(&self, _base: PioAddress, _offset: PioAddressOffset, data: &mut [u8]) {
        // Sleep status (WAK_STS) never becomes set: plugvm does not resume from sleep.
        data.fill(0);
    }

    fn pio_write(&self, _base: PioAddress, offset: PioAddressOffset, data: &[u8]) {
        let port = regs::SLEEP_CONTROL_PORT.wrapping_add(offset);
        let [value] = data else {
            guest_warn!(
                self.bad_access,
                "power: {}-byte write to port {port:#x} ignored",
                data.len()
            );
            return;
        };
        match port {
            regs::SLEEP_CONTROL_PORT => {
                let slp_typ = (value >> regs::SLP_TYP_SHIFT) & regs::SLP_TYP_MASK;
                if value & regs::SLP_EN != 0 && slp_typ == regs::S5_SLP_TYP {
                    tracing::info!("guest entered S5 (power off)");
                    self.exit.request(ExitReason::PowerOff);
                } else if value & regs::SLP_EN != 0 {
                    guest_warn!(
                        self.bad_access,
                        "power: unsupported sleep type {slp_typ} ignored"
                    );
                }
            }
            // The guest clears WAK_STS (bit 7) before sleeping; there is nothing to clear.
            regs::SLEEP_STATUS_PORT => {}
            regs::RESET_PORT if *value == regs::RESET_VALUE => {
                tracing::info!("guest reset the machine");
                self.exit.request(ExitReason::Reset);
            }
            _ => {
                guest_warn!(
                    self.bad_access,
                    "power: write {value:#x} to port {port:#x} ignored"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    fn device() -> (AcpiPowerDevice, Arc<ExitSignal>) {
        let exit = Arc::new(ExitSignal::new(EventFd::new(EFD_NONBLOCK).unwrap()));
        (AcpiPowerDevice::new(exit.clone()), exit)
    }

    fn write(dev: &AcpiPowerDevice, port: u16, data: &[u8]) {
        dev.pio_write(
            PioAddress(regs::SLEEP_CONTROL_PORT),
            port - regs::SLEEP_CONTROL_PORT,
            data,
        );
    }

    #[test]
    fn s5_powers_off() {
        let (dev, exit) = device();
        write(
            &dev,
            regs::SLEEP_CONTROL_PORT,
            &[(regs::S5_SLP_TYP << regs::SLP_TYP_SHIFT) | regs::SLP_EN],
        );
        assert_eq!(exit.reason(), Some(ExitReason::PowerOff));
    }

    #[test]
    fn reset_value_resets() {
        let (dev, exit) = device();
        write(&dev, regs::RESET_PORT, &[regs::RESET_VALUE]);
        assert_eq!(exit.reason(), Some(ExitReason::Reset));
    }

    #[test]
    fn other_writes_are_ignored() {
        let (dev, exit) = device();
        write(
            &dev,
            regs::SLEEP_CONTROL_PORT,
            &[regs::S5_SLP_TYP << regs::SLP_TYP_SHIFT],
        );
        write(
            &dev,
            regs::SLEEP_CONTROL_PORT,
            &[(3 << regs::SLP_TYP_SHIFT) | regs::SLP_EN],
        );
        write(&dev, regs::RESET_PORT, &[0x42]);
        write(&dev, regs::RESET_PORT, &[regs::RESET_VALUE, 0]);
        write(&dev, regs::SLEEP_STATUS_PORT, &[0x80]);
        write(&dev, regs::RESET_PORT, &[]);
        assert_eq!(exit.reason(), None);
        assert_eq!(dev.bad_access.count(), 4);
    }

    #[test]
    fn sleep_status_reads_zero() {
        let (dev, _) = device();
        let mut data = [0xffu8; 1];
        dev.pio_read(PioAddress(regs::SLEEP_CONTROL_PORT), 1, &mut data);
        assert_eq!(data, [0]);
    }
}
