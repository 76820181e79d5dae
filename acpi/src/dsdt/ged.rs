//! `\_SB_.GED_`: the Generic Event Device (ACPI0013). Its interrupt makes Linux evaluate
//! `_EVT`, which reads the event register (reading clears it), runs the scan of every
//! hotplug subsystem whose bit is set and reports a power button press.

use acpi_tables::aml::{
    And, Device, FieldAccessType, FieldUpdateRule, If, Interrupt, Local, Method, MethodCall, Name,
    Notify, OpRegion, OpRegionSpace, ResourceTemplate, Store, ZERO,
};
use acpi_tables::Aml;

use super::devices::{NOTIFY_BUTTON_PRESSED, POWER_BUTTON};
use super::fields::{field, FieldUnit};
use crate::aml_ext::{bytes, path, Raw};
use crate::layout::ged;
use crate::machine::MachineDescription;
use crate::Error;

/// What `_EVT` does when an event bit is set.
enum Action {
    /// Call a method without arguments (a hotplug scan).
    Call(&'static str),
    /// `Notify (device, code)`.
    Notify(&'static str, u8),
}

impl Action {
    fn aml(&self) -> Result<Raw, Error> {
        Ok(Raw(match *self {
            Action::Call(method) => bytes(&MethodCall::new(path(method)?, vec![])),
            Action::Notify(device, code) => bytes(&Notify::new(&path(device)?, &code)),
        }))
    }
}

/// What `_EVT` does per event bit. The memory scan only exists (and is only called) when
/// the machine has hotplug slots.
fn handlers(desc: &MachineDescription) -> Vec<(u32, Action)> {
    let mut h = vec![(ged::EVENT_CPU, Action::Call(super::cpu::SCAN_METHOD))];
    if desc.hotplug_slots > 0 {
        h.push((ged::EVENT_MEMORY, Action::Call(super::memory::SCAN_METHOD)));
    }
    h.push((
        ged::EVENT_POWER_BUTTON,
        Action::Notify(POWER_BUTTON, NOTIFY_BUTTON_PRESSED),
    ));
    h
}

/// `Device (GED_)` for `desc` (already validated).
pub(crate) fn build(desc: &MachineDescription) -> Result<Vec<u8>, Error> {
    let hid = Name::new(path("_HID")?, &"ACPI0013");
    let uid = Name::new(path("_UID")?, &ZERO);
    // Only the interrupt: Linux's GED driver fails to probe on any other resource type in
    // _CRS ("unable to parse IRQ resource"), so the register block is an OpRegion only.
    let irq = Interrupt::new(true, true, false, false, ged::IRQ);
    let crs = Name::new(path("_CRS")?, &ResourceTemplate::new(vec![&irq]));
    let region = OpRegion::new(
        path("GDST")?,
        OpRegionSpace::SystemMemory,
        &ged::MMIO_BASE,
        &ged::MMIO_SIZE,
    );
    let fields = field(
        "GDST",
        FieldAccessType::DWord,
        FieldUpdateRule::WriteAsZeroes,
        ged::MMIO_SIZE,
        &[FieldUnit::register("GDAT", ged::EVENT, 4)],
    )?;

    // Read the (clear-on-read) register exactly once, then test the copy.
    let gdat = Name::new_field_name("GDAT");
    let read = Store::new(&Local(0), &gdat);
    let handlers = handlers(desc);
    let actions = handlers
        .iter()
        .map(|(_, a)| a.aml())
        .collect::<Result<Vec<_>, _>>()?;
    let tests: Vec<And> = handlers
        .iter()
        .map(|(bit, _)| And::new(&ZERO, &Local(0), bit))
        .collect();
    let ifs: Vec<If> = tests
        .iter()
        .zip(&actions)
        .map(|(t, a)| If::new(t, vec![a]))
        .collect();
    let mut body: Vec<&dyn Aml> = vec![&read];
    body.extend(ifs.iter().map(|i| i as &dyn Aml));
    // Serialized: two GED interrupts must not interleave their reads of the register.
    let evt = Method::new(path("_EVT")?, 1, true, body);

    Ok(bytes(&Device::new(
        path("GED_")?,
        vec![&hid, &uid, &crs, &region, &fields, &evt],
    )))
}
