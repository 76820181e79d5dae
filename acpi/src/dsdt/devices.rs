//! The fixed devices: `\_S5_`, the COM1 serial port, pvpanic, the power button and the
//! motherboard resources device that reserves the platform's register blocks.

use acpi_tables::aml::{
    Device, EISAName, Interrupt, Memory32Fixed, Name, Package, ResourceTemplate, IO, ONE, ZERO,
};
use acpi_tables::Aml;

use crate::aml_ext::{bytes, path};
use crate::layout::{self, power, pvpanic, serial};
use crate::machine::MachineDescription;
use crate::Error;

/// `Name (\_S5_, Package { SLP_TYP, 0, 0, 0 })`: Linux writes `SLP_TYP << 2 | SLP_EN` to
/// the sleep control register to power off (the second value is for PM1b, which a
/// hardware-reduced platform does not have).
pub(crate) fn s5() -> Result<Vec<u8>, Error> {
    let typ = power::S5_SLP_TYP;
    Ok(bytes(&Name::new(
        path("\\_S5_")?,
        &Package::new(vec![&typ, &ZERO, &ZERO, &ZERO]),
    )))
}

/// `Device (COM1)`: the 16550 at 0x3f8, ISA IRQ 4.
pub(crate) fn com1() -> Result<Vec<u8>, Error> {
    let io = IO::new(serial::PORT, serial::PORT, 1, port_len(serial::PORT_LEN)?);
    let irq = Interrupt::new(true, true, false, false, serial::IRQ);
    Ok(bytes(&Device::new(
        path("COM1")?,
        vec![
            &Name::new(path("_HID")?, &EISAName::new("PNP0501")),
            &Name::new(path("_UID")?, &ZERO),
            &Name::new(path("_CRS")?, &ResourceTemplate::new(vec![&io, &irq])),
        ],
    )))
}

/// `Device (PEVT)`: QEMU's pvpanic ISA device, so that Linux's pvpanic driver reports
/// guest panics to the VMM.
pub(crate) fn pvpanic() -> Result<Vec<u8>, Error> {
    let io = IO::new(pvpanic::PORT, pvpanic::PORT, 1, 1);
    Ok(bytes(&Device::new(
        path("PEVT")?,
        vec![
            &Name::new(path("_HID")?, &"QEMU0001"),
            &Name::new(path("_CRS")?, &ResourceTemplate::new(vec![&io])),
            &Name::new(path("_STA")?, &0x0fu8),
        ],
    )))
}

/// Path of the power button device, for the GED's `Notify`.
pub(crate) const POWER_BUTTON: &str = "\\_SB_.PWRB";
/// Notify code 0x80 on a power button device: the button was pressed.
pub(crate) const NOTIFY_BUTTON_PRESSED: u8 = 0x80;

/// `Device (PWRB)` (PNP0C0C): a control-method power button. A hardware-reduced platform
/// has no fixed power button, so the GED's `_EVT` notifies this device instead, which
/// Linux's ACPI button driver turns into a `KEY_POWER` input event. No `_STA`: an absent
/// `_STA` means present and enabled.
pub(crate) fn power_button() -> Result<Vec<u8>, Error> {
    Ok(bytes(&Device::new(
        path("PWRB")?,
        vec![
            &Name::new(path("_HID")?, &EISAName::new("PNP0C0C")),
            &Name::new(path("_UID")?, &ZERO),
        ],
    )))
}

/// `Device (MBRD)` (PNP0C02): claims the CPU hotplug MMIO block, the memory hotplug block
/// when the machine has hotplug slots, and the power ports, so that Linux marks them busy
/// instead of handing them to a driver. (The GED has no registers.)
pub(crate) fn motherboard(desc: &MachineDescription) -> Result<Vec<u8>, Error> {
    let cpu = mmio(
        layout::cpu_hotplug::MMIO_BASE,
        layout::hotplug_registers::MMIO_SIZE,
    )?;
    let memory = mmio(
        layout::memory_hotplug::MMIO_BASE,
        layout::hotplug_registers::MMIO_SIZE,
    )?;
    let ports = IO::new(
        power::SLEEP_CONTROL_PORT,
        power::SLEEP_CONTROL_PORT,
        1,
        port_len(power::PORT_LEN)?,
    );
    let mut resources: Vec<&dyn Aml> = vec![&cpu];
    if desc.hotplug_slots > 0 {
        resources.push(&memory);
    }
    resources.push(&ports);
    Ok(bytes(&Device::new(
        path("MBRD")?,
        vec![
            &Name::new(path("_HID")?, &EISAName::new("PNP0C02")),
            &Name::new(path("_UID")?, &ONE),
            &Name::new(path("_CRS")?, &ResourceTemplate::new(resources)),
        ],
    )))
}

fn mmio(base: u64, size: u64) -> Result<Memory32Fixed, Error> {
    let base32 = u32::try_from(base)
        .map_err(|_| Error::InvalidLayout(format!("MMIO block {base:#x} above 4 GiB")))?;
    let size32 = u32::try_from(size)
        .map_err(|_| Error::InvalidLayout(format!("MMIO block size {size:#x}")))?;
    Ok(Memory32Fixed::new(true, base32, size32))
}

fn port_len(len: u16) -> Result<u8, Error> {
    u8::try_from(len).map_err(|_| Error::InvalidLayout(format!("{len} I/O ports in one range")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn power_button_matches_iasl() {
        // Device (PWRB) { Name (_HID, EisaId ("PNP0C0C")) Name (_UID, Zero) }
        let iasl = [
            0x5b, 0x82, 0x15, 0x50, 0x57, 0x52, 0x42, 0x08, 0x5f, 0x48, 0x49, 0x44, 0x0c, 0x41,
            0xd0, 0x0c, 0x0c, 0x08, 0x5f, 0x55, 0x49, 0x44, 0x00,
        ];
        assert_eq!(power_button().unwrap(), iasl);
    }
}
