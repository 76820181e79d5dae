//! `\_SB_.MHPC`: the memory hotplug container (generic container `PNP0A06`), the memory
//! hotplug controller's registers, status page window and methods, and one `PNP0C80` memory
//! device per hotplug slot (`M001`..`Mnnn`, UID = slot id, hex like the CPU names).
//!
//! ```text
//! MOST(uid, ev, st) MTFY(uid, code) MSCN()   as for CPUs (slots.rs)
//! MCRS(base, len)   fill MR64 from the arguments, return a copy of it
//! Mnnn._STA         Return (Snnn)                   the slot's bytes in the status page:
//! Mnnn._CRS         Return (MCRS (Bnnn, Lnnn))      base, length,
//! Mnnn._PXM         Return (Pnnn)                   proximity domain
//! Mnnn._EJ0         MEJR = nnn
//! Mnnn._OST         MOST(nnn, Arg0, Arg1)
//! ```
//!
//! `_CRS` uses one resource template at container scope (`MR64`, a `QWordMemory`
//! consumer range) with `CreateQWordField`s over its min, max and length: `MCRS` is
//! serialized and returns a copy (a `Store` to a local copies a buffer), so concurrent
//! `_CRS` evaluations cannot see each other's range. Keeping the template out of the method
//! avoids creating named objects at run time.

use acpi_tables::aml::{
    Add, Arg, CreateQWordField, Device, EISAName, FieldAccessType, If, Local, MethodCall, Name,
    NotEqual, ResourceTemplate, Return, Store, Subtract, ONE, ZERO,
};
use acpi_tables::Aml;

use super::fields::FieldUnit;
use super::slots::Controller;
use crate::aml_ext::{bytes, path, QWordMemory, Raw};
use crate::layout::memory_hotplug as regs;
use crate::machine::MachineDescription;
use crate::Error;

/// Path of the scan method, called by the GED.
pub(crate) const SCAN_METHOD: &str = "\\_SB_.MHPC.MSCN";

/// The memory controller's shared field and method names.
const CONTROLLER: Controller = Controller {
    region: "MHPR",
    mmio_base: regs::MMIO_BASE,
    ack_insert: "MAKI",
    ack_remove: "MAKR",
    eject: "MEJR",
    ost_register: "MOSR",
    window_region: "MPGE",
    window: regs::WINDOW,
    window_size: regs::WINDOW_SIZE,
    event: "MEVT",
    ost: "MOST",
    notify: "MTFY",
    scan: "MSCN",
};

/// `_CRS` back end.
const CRS_METHOD: &str = "MCRS";
/// The `_CRS` template and its fields.
const TEMPLATE: &str = "MR64";
const TEMPLATE_MIN: &str = "MMIN";
const TEMPLATE_MAX: &str = "MMAX";
const TEMPLATE_LEN: &str = "MLEN";

/// Name of the memory device of hotplug slot `slot` (1-based): `M` and three hex digits.
pub(crate) fn slot_device_name(slot: u32) -> Result<String, Error> {
    slot_name('M', slot)
}

/// `prefix` and the slot's three hex digits: the device (`M`) and its status page fields
/// (`B`ase, `L`ength, `P`roximity, `S`tatus).
fn slot_name(prefix: char, slot: u32) -> Result<String, Error> {
    if slot == 0 || slot > 0xfff {
        return Err(Error::InvalidName(format!("{prefix}{slot:X}")));
    }
    Ok(format!("{prefix}{slot:03X}"))
}

/// The slots' fields over the window, one field list per access width.
fn slot_fields(slots: u32) -> Result<Vec<u8>, Error> {
    let entry = |slot: u32| {
        regs::slot_entry(slot).ok_or_else(|| Error::InvalidLayout(format!("slot {slot}")))
    };
    // (prefix, entry offset, bytes) of each field of an entry, and which list it goes to.
    let layout = [
        ('B', regs::SLOT_BASE, 8),
        ('L', regs::SLOT_LENGTH, 8),
        ('P', regs::SLOT_PROXIMITY, 4),
        ('S', regs::SLOT_STA, 1),
    ];
    let (mut qwords, mut dwords, mut sta) = (Vec::new(), Vec::new(), Vec::new());
    for slot in 1..=slots {
        let at = entry(slot)?;
        for (prefix, offset, bytes) in layout {
            let unit = FieldUnit::register(slot_name(prefix, slot)?, at + offset, bytes);
            match bytes {
                8 => qwords.push(unit),
                4 => dwords.push(unit),
                _ => sta.push(unit),
            }
        }
    }
    let mut b = CONTROLLER.window_field(FieldAccessType::QWord, &qwords)?;
    b.extend(CONTROLLER.window_field(FieldAccessType::DWord, &dwords)?);
    b.extend(CONTROLLER.window_field(FieldAccessType::Byte, &sta)?);
    Ok(b)
}

/// `Name (MR64, ResourceTemplate () { QWordMemory (...) })` and its three
/// `CreateQWordField`s. The placeholder range is overwritten by every `MCRS`.
fn crs_template() -> Result<Vec<u8>, Error> {
    let placeholder = QWordMemory::new(0, 1)
        .ok_or_else(|| Error::InvalidLayout("placeholder memory range".into()))?;
    let template = path(TEMPLATE)?;
    let mut b = bytes(&Name::new(
        path(TEMPLATE)?,
        &ResourceTemplate::new(vec![&placeholder]),
    ));
    for (name, offset) in [
        (TEMPLATE_MIN, QWordMemory::MIN_OFFSET),
        (TEMPLATE_MAX, QWordMemory::MAX_OFFSET),
        (TEMPLATE_LEN, QWordMemory::LEN_OFFSET),
    ] {
        let field = path(name)?;
        CreateQWordField::new(&field, &template, &offset).to_aml_bytes(&mut b);
    }
    Ok(b)
}

/// `MCRS (base, length)`, serialized: the range as a resource template.
///
/// ```text
/// MMIN = Arg0
/// MLEN = Arg1
/// MMAX = MMIN
/// If (MLEN != 0) { MMAX = MMIN + MLEN - 1 }      // an empty slot: min = max, length 0
/// Local0 = MR64                                    // a copy
/// ```
fn mcrs() -> Result<Vec<u8>, Error> {
    let (min, max, len) = (
        Name::new_field_name(TEMPLATE_MIN),
        Name::new_field_name(TEMPLATE_MAX),
        Name::new_field_name(TEMPLATE_LEN),
    );
    let set_min = Store::new(&min, &Arg(0));
    let set_len = Store::new(&len, &Arg(1));
    let max_is_min = Store::new(&max, &min);
    let end = Add::new(&ZERO, &min, &len);
    let set_max = Subtract::new(&max, &end, &ONE);
    let nonempty = NotEqual::new(&len, &ZERO);
    let if_nonempty = If::new(&nonempty, vec![&set_max]);
    let template = Name::new_field_name(TEMPLATE);
    let copy = Store::new(&Local(0), &template);
    let ret = Return::new(&Local(0));
    Ok(bytes(&acpi_tables::aml::Method::new(
        path(CRS_METHOD)?,
        2,
        true,
        vec![&set_min, &set_len, &max_is_min, &if_nonempty, &copy, &ret],
    )))
}

/// `Method (name) { Return (value) }`.
fn returning(name: &str, value: &dyn Aml) -> Result<Vec<u8>, Error> {
    let ret = Return::new(value);
    Ok(bytes(&acpi_tables::aml::Method::new(
        path(name)?,
        0,
        false,
        vec![&ret],
    )))
}

/// `Device (Mnnn)` for hotplug slot `slot`.
fn memory_device(slot: u32) -> Result<Vec<u8>, Error> {
    let name = slot_device_name(slot)?;
    let hid = Name::new(path("_HID")?, &EISAName::new("PNP0C80"));
    let uid = Name::new(path("_UID")?, &slot);
    let sta = Raw(CONTROLLER.device_sta(&slot_name('S', slot)?)?);
    let base = Name::new_field_name(&slot_name('B', slot)?);
    let length = Name::new_field_name(&slot_name('L', slot)?);
    let range = MethodCall::new(path(CRS_METHOD)?, vec![&base, &length]);
    let crs = Raw(returning("_CRS", &range)?);
    let pxm = Raw(returning(
        "_PXM",
        &Name::new_field_name(&slot_name('P', slot)?),
    )?);
    let ej0 = Raw(CONTROLLER.device_ej0(slot)?);
    let ost = Raw(CONTROLLER.device_ost(slot)?);
    Ok(bytes(&Device::new(
        path(&name)?,
        vec![&hid, &uid, &sta, &crs, &pxm, &ej0, &ost],
    )))
}

/// `Device (MHPC)` for `desc` (already validated), or nothing without hotplug slots.
pub(crate) fn build(desc: &MachineDescription) -> Result<Vec<u8>, Error> {
    if desc.hotplug_slots == 0 {
        return Ok(Vec::new());
    }
    let hid = Name::new(path("_HID")?, &EISAName::new("PNP0A06"));
    let mut inner = bytes(&hid);
    let devices = (1..=desc.hotplug_slots)
        .map(|slot| Ok((slot, slot_device_name(slot)?)))
        .collect::<Result<Vec<_>, Error>>()?;
    inner.extend(CONTROLLER.methods(&devices)?);
    inner.extend(slot_fields(desc.hotplug_slots)?);
    inner.extend(crs_template()?);
    inner.extend(mcrs()?);
    for &(slot, _) in &devices {
        inner.extend(memory_device(slot)?);
    }
    Ok(bytes(&Device::new(path("MHPC")?, vec![&Raw(inner)])))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{count, desc, desc_with_hotplug_memory};

    #[test]
    fn device_names() {
        assert_eq!(slot_device_name(1).unwrap(), "M001");
        assert_eq!(slot_device_name(64).unwrap(), "M040");
        assert_eq!(slot_device_name(0xfff).unwrap(), "MFFF");
        assert!(slot_device_name(0).is_err());
        assert!(slot_device_name(0x1000).is_err());
    }

    #[test]
    fn nothing_without_slots() {
        assert!(build(&desc(2, 8)).unwrap().is_empty());
    }

    #[test]
    fn one_memory_device_per_slot() {
        // EISAID("PNP0C80") is DWordConst 0x800cd041.
        let pnp0c80 = [0x0c, 0x41, 0xd0, 0x0c, 0x80];
        for slots in [1, 8, 64] {
            let mut d = desc_with_hotplug_memory(2, 8);
            d.hotplug_slots = slots;
            let b = build(&d).unwrap();
            assert_eq!(count(&b, &pnp0c80), slots as usize);
            for slot in 1..=slots {
                let name = slot_device_name(slot).unwrap();
                let opened = b
                    .windows(8)
                    .any(|w| w[0] == 0x5b && w[1] == 0x82 && &w[4..8] == name.as_bytes());
                assert!(opened, "no Device ({name})");
            }
            let extra = slot_device_name(slots + 1).unwrap();
            assert_eq!(count(&b, extra.as_bytes()), 0);
        }
    }

    #[test]
    fn registers_and_window_cover_the_layout() {
        // OperationRegion (MHPR, SystemMemory, DWordConst MMIO_BASE, ByteConst MMIO_SIZE)
        let mut want = vec![0x5b, 0x80];
        want.extend_from_slice(CONTROLLER.region.as_bytes());
        want.extend([0x00, 0x0c]);
        want.extend(u32::try_from(regs::MMIO_BASE).unwrap().to_le_bytes());
        want.extend([
            0x0a,
            u8::try_from(crate::layout::hotplug_registers::MMIO_SIZE).unwrap(),
        ]);
        let b = build(&desc_with_hotplug_memory(2, 8)).unwrap();
        assert_eq!(count(&b, &want), 1, "{b:x?}");
        // Every register and every slot's entry has a field (offsets: tests/acpica.rs).
        for name in ["MAKI", "MAKR", "MEJR", "MOSR", "MEVT", "MPGE"] {
            assert!(count(&b, name.as_bytes()) >= 1, "{name}");
        }
        let slots = desc_with_hotplug_memory(2, 8).hotplug_slots;
        for slot in 1..=slots {
            for prefix in ['B', 'L', 'P', 'S'] {
                let name = slot_name(prefix, slot).unwrap();
                assert!(count(&b, name.as_bytes()) >= 2, "{name}: field and use");
            }
        }
    }

    #[test]
    fn memory_device_matches_iasl() {
        // Device (M001)
        // {
        //     Name (_HID, EisaId ("PNP0C80"))
        //     Name (_UID, One)
        //     Method (_STA, 0, NotSerialized) { Return (S001) }
        //     Method (_CRS, 0, NotSerialized) { Return (MCRS (B001, L001)) }
        //     Method (_PXM, 0, NotSerialized) { Return (P001) }
        //     Method (_EJ0, 1, NotSerialized) { MEJR = One }
        //     Method (_OST, 3, NotSerialized) { MOST (One, Arg0, Arg1) }
        // }
        // compiled with iasl 20200925
        let iasl = [
            0x5b, 0x82, 0x4d, 0x05, 0x4d, 0x30, 0x30, 0x31, 0x08, 0x5f, 0x48, 0x49, 0x44, 0x0c,
            0x41, 0xd0, 0x0c, 0x80, 0x08, 0x5f, 0x55, 0x49, 0x44, 0x01, 0x14, 0x0b, 0x5f, 0x53,
            0x54, 0x41, 0x00, 0xa4, 0x53, 0x30, 0x30, 0x31, 0x14, 0x13, 0x5f, 0x43, 0x52, 0x53,
            0x00, 0xa4, 0x4d, 0x43, 0x52, 0x53, 0x42, 0x30, 0x30, 0x31, 0x4c, 0x30, 0x30, 0x31,
            0x14, 0x0b, 0x5f, 0x50, 0x58, 0x4d, 0x00, 0xa4, 0x50, 0x30, 0x30, 0x31, 0x14, 0x0c,
            0x5f, 0x45, 0x4a, 0x30, 0x01, 0x70, 0x01, 0x4d, 0x45, 0x4a, 0x52, 0x14, 0x0d, 0x5f,
            0x4f, 0x53, 0x54, 0x03, 0x4d, 0x4f, 0x53, 0x54, 0x01, 0x68, 0x69,
        ];
        assert_eq!(memory_device(1).unwrap(), iasl);
    }
}
