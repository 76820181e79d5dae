//! The DSDT: `\_S5_` and the `\_SB_` devices.
//!
//! ```text
//! \_S5_                 sleep type for poweroff
//! \_SB_
//!     COM1              PNP0501, 16550 at 0x3f8, IRQ 4
//!     PEVT              QEMU0001 pvpanic at 0x505
//!     PWRB              PNP0C0C power button
//!     MBRD              PNP0C02, reserves the GED/hotplug MMIO and power ports
//!     GED_              ACPI0013, _EVT -> \_SB_.CPUS.CSCN, \_SB_.MHPC.MSCN,
//!                       Notify (\_SB_.PWRB, 0x80)
//!     CPUS              ACPI0010 processor container, hotplug registers and methods
//!         C000..Cnnn    ACPI0007, one per possible CPU
//!     MHPC              PNP0A06 container, memory hotplug registers and methods
//!         M001..Mnnn    PNP0C80, one per hotplug memory slot (only with hotplug slots)
//! ```

mod cpu;
mod devices;
mod fields;
mod ged;
mod memory;
mod slots;

use acpi_tables::aml::Scope;

use crate::aml_ext::path;
use crate::machine::MachineDescription;
use crate::sdt;
use crate::Error;

#[cfg(test)]
pub(crate) use cpu::cpu_device_name;
#[cfg(test)]
pub(crate) use memory::slot_device_name;

/// DSDT revision 2: integers are 64 bits wide.
const DSDT_REVISION: u8 = 2;

/// The AML of the DSDT body (no header), for `desc` (already validated).
pub(crate) fn aml(desc: &MachineDescription) -> Result<Vec<u8>, Error> {
    let mut sb = devices::com1()?;
    sb.extend(devices::pvpanic()?);
    sb.extend(devices::power_button()?);
    sb.extend(devices::motherboard(desc)?);
    sb.extend(ged::build(desc)?);
    sb.extend(cpu::build(desc)?);
    sb.extend(memory::build(desc)?);
    let mut body = devices::s5()?;
    body.extend(Scope::raw(path("\\_SB_")?, sb));
    Ok(body)
}

/// The complete DSDT for `desc` (already validated).
pub(crate) fn build(desc: &MachineDescription) -> Result<Vec<u8>, Error> {
    Ok(sdt::table(*b"DSDT", DSDT_REVISION, &aml(desc)?))
}
