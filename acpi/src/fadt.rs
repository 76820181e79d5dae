//! The FADT: a hardware-reduced ACPI 6.5 platform with sleep and reset registers.
//!
//! Hardware-reduced means no PM1/GPE blocks, no SCI and no FACS: events reach the guest
//! through the Generic Event Device, poweroff goes through the sleep control register and
//! reboot through the reset register (all I/O ports from [`crate::layout::power`]).

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::Aml;

use crate::layout::power;
use crate::sdt::{OEM_ID, OEM_REVISION, OEM_TABLE_ID};

/// Size of an ACPI 6.5 FADT (it ends with the hypervisor vendor identity).
pub(crate) const FADT_LEN: usize = 276;

/// IAPC_BOOT_ARCH bit: no VGA hardware, do not probe it.
pub(crate) const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;
/// IAPC_BOOT_ARCH bit: no CMOS RTC (Linux then registers no RTC platform device).
pub(crate) const IAPC_CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;
/// IAPC_BOOT_ARCH bit 1 (8042 present) stays clear: the machine has no keyboard
/// controller, and Linux's i8042 driver then does not probe the ports.
pub(crate) const IAPC_BOOT_ARCH: u16 = IAPC_VGA_NOT_PRESENT | IAPC_CMOS_RTC_NOT_PRESENT;

/// Hypervisor vendor identity (FADT 6.2+), eight bytes.
pub(crate) const HYPERVISOR_VENDOR: [u8; 8] = *b"PLUGVM\0\0";

/// An 8-bit I/O port register.
fn io_port_u8(port: u16) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(port),
    )
}

/// The FADT pointing at the DSDT at `dsdt_addr` (64-bit X_DSDT only).
pub(crate) fn build(dsdt_addr: u64) -> Vec<u8> {
    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        // Power and sleep buttons are not fixed-feature hardware (hardware-reduced has
        // none); set, Linux creates no fixed button devices that would fail to probe.
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    fadt.iapc_boot_arch = IAPC_BOOT_ARCH.into();
    fadt.reset_reg = io_port_u8(power::RESET_PORT);
    fadt.reset_value = power::RESET_VALUE;
    fadt.sleep_control_reg = io_port_u8(power::SLEEP_CONTROL_PORT);
    fadt.sleep_status_reg = io_port_u8(power::SLEEP_STATUS_PORT);
    fadt.hypervisor_vendor_identity = u64::from_le_bytes(HYPERVISOR_VENDOR).into();
    let mut bytes = Vec::with_capacity(FADT_LEN);
    fadt.finalize().to_aml_bytes(&mut bytes);
    bytes
}

/// Offsets of the FADT fields the tests and the docs refer to.
#[cfg(test)]
pub(crate) mod offsets {
    pub const FLAGS: usize = 112;
    pub const RESET_REG: usize = 116;
    pub const RESET_VALUE: usize = 128;
    pub const MINOR_VERSION: usize = 131;
    pub const X_DSDT: usize = 140;
    pub const IAPC_BOOT_ARCH: usize = 109;
    pub const SLEEP_CONTROL: usize = 244;
    pub const SLEEP_STATUS: usize = 256;
    pub const HYPERVISOR_ID: usize = 268;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{le16, le32, le64, sum};

    fn gas_io8(bytes: &[u8], at: usize) -> u16 {
        // space id 1 (I/O), 8 bits wide, offset 0, byte access
        assert_eq!(&bytes[at..at + 4], &[1, 8, 0, 1], "GAS at {at}");
        u16::try_from(le64(bytes, at + 4)).unwrap()
    }

    #[test]
    fn hardware_reduced_with_power_registers() {
        let f = build(0xe1000);
        assert_eq!(f.len(), FADT_LEN);
        assert_eq!(f.len(), acpi_tables::fadt::FADT::len());
        assert_eq!(&f[0..4], b"FACP");
        assert_eq!(sum(&f), 0);
        assert_eq!((f[8], f[offsets::MINOR_VERSION]), (6, 5), "FADT 6.5");
        let flags = le32(&f, offsets::FLAGS);
        assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
        assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
        assert_eq!(le32(&f, 40), 0, "no 32-bit DSDT pointer");
        assert_eq!(le64(&f, offsets::X_DSDT), 0xe1000);
        assert_eq!(le32(&f, 36), 0, "no FACS");
        assert_eq!(gas_io8(&f, offsets::RESET_REG), power::RESET_PORT);
        assert_eq!(f[offsets::RESET_VALUE], power::RESET_VALUE);
        assert_eq!(
            gas_io8(&f, offsets::SLEEP_CONTROL),
            power::SLEEP_CONTROL_PORT
        );
        assert_eq!(gas_io8(&f, offsets::SLEEP_STATUS), power::SLEEP_STATUS_PORT);
        let boot = le16(&f, offsets::IAPC_BOOT_ARCH);
        assert_eq!(boot & (1 << 1), 0, "no 8042");
        assert_ne!(boot & (1 << 2), 0, "VGA not present");
        assert_ne!(boot & (1 << 5), 0, "CMOS RTC not present");
        assert_eq!(
            &f[offsets::HYPERVISOR_ID..offsets::HYPERVISOR_ID + 8],
            b"PLUGVM\0\0"
        );
    }
}
