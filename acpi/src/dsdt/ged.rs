//! `\_SB_.GED_`: the Generic Event Device (ACPI0013). Its interrupt makes Linux evaluate
//! `_EVT`, which runs every hotplug scan and reports a power button press, reading only the
//! status page (see [`crate::layout::ged`]):
//!
//! ```text
//! Name (PBSN, Zero)                      the press counter _EVT saw last
//! Method (_EVT, 1, Serialized)
//!     \_SB_.CPUS.CSCN ()
//!     \_SB_.MHPC.MSCN ()                 only with hotplug slots
//!     Local0 = PBPC                      the press counter in the status page
//!     If (Local0 != PBSN) { PBSN = Local0; Notify (\_SB_.PWRB, 0x80) }
//! ```

use acpi_tables::aml::{
    Device, FieldAccessType, FieldUpdateRule, If, Interrupt, Local, Method, MethodCall, Name,
    NotEqual, Notify, OpRegion, OpRegionSpace, ResourceTemplate, Store, ZERO,
};
use acpi_tables::Aml;

use super::devices::{NOTIFY_BUTTON_PRESSED, POWER_BUTTON};
use super::fields::{field, FieldUnit};
use crate::aml_ext::{bytes, path};
use crate::layout::ged;
use crate::machine::MachineDescription;
use crate::Error;

/// Region over the GED's window of the status page.
const REGION: &str = "GDPG";
/// The power button's press counter (in the window).
const PRESSES: &str = "PBPC";
/// The press counter `_EVT` saw last.
const SEEN: &str = "PBSN";

/// `Device (GED_)` for `desc` (already validated).
pub(crate) fn build(desc: &MachineDescription) -> Result<Vec<u8>, Error> {
    let hid = Name::new(path("_HID")?, &"ACPI0013");
    let uid = Name::new(path("_UID")?, &ZERO);
    // Only the interrupt: Linux's GED driver fails to probe on any other resource type in
    // _CRS ("unable to parse IRQ resource").
    let irq = Interrupt::new(true, true, false, false, ged::IRQ);
    let crs = Name::new(path("_CRS")?, &ResourceTemplate::new(vec![&irq]));
    let region = OpRegion::new(
        path(REGION)?,
        OpRegionSpace::SystemMemory,
        &ged::WINDOW,
        &ged::WINDOW_SIZE,
    );
    let fields = field(
        REGION,
        FieldAccessType::DWord,
        FieldUpdateRule::Preserve,
        ged::WINDOW_SIZE,
        &[FieldUnit::register(PRESSES, ged::POWER_BUTTON_PRESSES, 4)],
    )?;
    let seen = Name::new(path(SEEN)?, &ZERO);

    let cpu_scan = MethodCall::new(path(super::cpu::SCAN_METHOD)?, vec![]);
    let memory_scan = MethodCall::new(path(super::memory::SCAN_METHOD)?, vec![]);
    let presses = Name::new_field_name(PRESSES);
    let read = Store::new(&Local(0), &presses);
    let seen_field = Name::new_field_name(SEEN);
    let remember = Store::new(&seen_field, &Local(0));
    let button_path = path(POWER_BUTTON)?;
    let notify = Notify::new(&button_path, &NOTIFY_BUTTON_PRESSED);
    let pressed = NotEqual::new(&Local(0), &seen_field);
    let button = If::new(&pressed, vec![&remember, &notify]);
    let mut body: Vec<&dyn Aml> = vec![&cpu_scan];
    // The memory scan only exists when the machine has hotplug slots.
    if desc.hotplug_slots > 0 {
        body.push(&memory_scan);
    }
    body.extend([&read as &dyn Aml, &button]);
    // Serialized: two evaluations must not both notify one press.
    let evt = Method::new(path("_EVT")?, 1, true, body);

    Ok(bytes(&Device::new(
        path("GED_")?,
        vec![&hid, &uid, &crs, &region, &fields, &seen, &evt],
    )))
}
