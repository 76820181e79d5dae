//! `\_SB_.MHPC`: the memory hotplug container (generic container `PNP0A06`), the memory
//! hotplug controller's registers and methods, and one `PNP0C80` memory device per hotplug
//! slot (`M001`..`Mnnn`, UID = slot id, hex like the CPU names).
//!
//! ```text
//! MSTA(uid) MEJ0(uid) MOST(uid, ev, st) MTFY(uid, code) MSCN()   as for CPUs (slots.rs)
//! MCRS(uid)      select uid, fill MR64 from base/length, return a copy of it
//! MPRX(uid)      select uid, return the proximity register
//! ```
//!
//! `_CRS` uses one resource template at container scope (`MR64`, a `QWordMemory`
//! consumer range) with `CreateQWordField`s over its min, max and length: `MCRS` fills
//! them under `MLCK` and returns a copy made before releasing the lock (a `Store` to a
//! local copies a buffer), so concurrent `_CRS` evaluations cannot see each other's range.
//! Keeping the template out of the method avoids creating named objects at run time
//! (iasl remarks on that, and it would need a serialized method).

use acpi_tables::aml::{
    Add, CreateQWordField, Device, EISAName, FieldAccessType, FieldUpdateRule, If, Local, Name,
    NotEqual, OpRegion, OpRegionSpace, Or, ResourceTemplate, Return, ShiftLeft, Store, Subtract,
    ONE, ZERO,
};
use acpi_tables::Aml;

use super::fields::{field, FieldUnit};
use super::slots::{forward, Controller};
use crate::aml_ext::{bytes, path, QWordMemory, Raw};
use crate::layout::memory_hotplug as regs;
use crate::machine::MachineDescription;
use crate::Error;

/// Path of the scan method, called by the GED.
pub(crate) const SCAN_METHOD: &str = "\\_SB_.MHPC.MSCN";

/// The memory controller's shared field and method names.
const CONTROLLER: Controller = Controller {
    lock: "MLCK",
    select: "MSEL",
    enabled: "MPEN",
    inserting: "MINS",
    removing: "MRMV",
    eject: "MEJF",
    ost_event: "MOEV",
    ost_status: "MOSS",
    next: "MNXT",
    sta: "MSTA",
    ej0: "MEJ0",
    ost: "MOST",
    notify: "MTFY",
    scan: "MSCN",
    no_event: regs::NO_EVENT,
};

/// Region over the register block.
const REGION: &str = "MHPR";
/// Fields only the memory controller has: base and length halves, proximity.
const BASE_LOW: &str = "MBAL";
const BASE_HIGH: &str = "MBAH";
const LENGTH_LOW: &str = "MLNL";
const LENGTH_HIGH: &str = "MLNH";
const PROXIMITY: &str = "MPXM";
/// `_CRS` and `_PXM` back ends.
const CRS_METHOD: &str = "MCRS";
const PXM_METHOD: &str = "MPRX";
/// The `_CRS` template and its fields.
const TEMPLATE: &str = "MR64";
const TEMPLATE_MIN: &str = "MMIN";
const TEMPLATE_MAX: &str = "MMAX";
const TEMPLATE_LEN: &str = "MLEN";

/// Name of the memory device of hotplug slot `slot` (1-based): `M` and three hex digits.
pub(crate) fn slot_device_name(slot: u32) -> Result<String, Error> {
    if slot == 0 || slot > 0xfff {
        return Err(Error::InvalidName(format!("M{slot:X}")));
    }
    Ok(format!("M{slot:03X}"))
}

/// The register block: a DWORD field for the 32-bit registers and a BYTE field for the
/// status flags, all offsets and bits from [`crate::layout::memory_hotplug`].
fn registers() -> Result<Vec<u8>, Error> {
    let region = OpRegion::new(
        path(REGION)?,
        OpRegionSpace::SystemMemory,
        &regs::MMIO_BASE,
        &regs::MMIO_SIZE,
    );
    let c = &CONTROLLER;
    let dwords = field(
        REGION,
        FieldAccessType::DWord,
        FieldUpdateRule::WriteAsZeroes,
        regs::MMIO_SIZE,
        &[
            FieldUnit::register(c.select, regs::SELECTOR, 4),
            FieldUnit::register(BASE_LOW, regs::BASE_LOW, 4),
            FieldUnit::register(BASE_HIGH, regs::BASE_HIGH, 4),
            FieldUnit::register(LENGTH_LOW, regs::LENGTH_LOW, 4),
            FieldUnit::register(LENGTH_HIGH, regs::LENGTH_HIGH, 4),
            FieldUnit::register(PROXIMITY, regs::PROXIMITY, 4),
            FieldUnit::register(c.ost_event, regs::OST_EVENT, 4),
            FieldUnit::register(c.ost_status, regs::OST_STATUS, 4),
            FieldUnit::register(c.next, regs::NEXT_EVENT, 4),
        ],
    )?;
    // As for CPUs: byte access so that an acknowledge writes one status byte, WriteAsZeros
    // so that writing one flag does not write back (and acknowledge) the others.
    let flags = field(
        REGION,
        FieldAccessType::Byte,
        FieldUpdateRule::WriteAsZeroes,
        regs::MMIO_SIZE,
        &[
            FieldUnit::flag(c.enabled, regs::STATUS, regs::STATUS_ENABLED)?,
            FieldUnit::flag(c.inserting, regs::STATUS, regs::STATUS_INSERTING)?,
            FieldUnit::flag(c.removing, regs::STATUS, regs::STATUS_REMOVING)?,
            FieldUnit::flag(c.eject, regs::STATUS, regs::STATUS_EJECT)?,
        ],
    )?;
    let mut b = bytes(&region);
    dwords.to_aml_bytes(&mut b);
    flags.to_aml_bytes(&mut b);
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

/// `MCRS (uid)`: the slot's range as a resource template.
///
/// ```text
/// MMIN = (MBAH << 32) | MBAL
/// MLEN = (MLNH << 32) | MLNL
/// MMAX = MMIN
/// If (MLEN != 0) { MMAX = MMIN + MLEN - 1 }      // an empty slot: min = max, length 0
/// Local0 = MR64                                    // copy, under the lock
/// ```
fn mcrs() -> Result<Vec<u8>, Error> {
    let (min, max, len) = (
        Name::new_field_name(TEMPLATE_MIN),
        Name::new_field_name(TEMPLATE_MAX),
        Name::new_field_name(TEMPLATE_LEN),
    );
    let (bal, bah, lnl, lnh) = (
        Name::new_field_name(BASE_LOW),
        Name::new_field_name(BASE_HIGH),
        Name::new_field_name(LENGTH_LOW),
        Name::new_field_name(LENGTH_HIGH),
    );
    let bah_shifted = ShiftLeft::new(&ZERO, &bah, &32u8);
    let set_min = Or::new(&min, &bah_shifted, &bal);
    let lnh_shifted = ShiftLeft::new(&ZERO, &lnh, &32u8);
    let set_len = Or::new(&len, &lnh_shifted, &lnl);
    let max_is_min = Store::new(&max, &min);
    let end = Add::new(&ZERO, &min, &len);
    let set_max = Subtract::new(&max, &end, &ONE);
    let nonempty = NotEqual::new(&len, &ZERO);
    let if_nonempty = If::new(&nonempty, vec![&set_max]);
    let template = Name::new_field_name(TEMPLATE);
    let copy = Store::new(&Local(0), &template);
    let ret = Return::new(&Local(0));
    CONTROLLER.locked_method(
        CRS_METHOD,
        1,
        false,
        &[&set_min, &set_len, &max_is_min, &if_nonempty, &copy],
        Some(&ret),
    )
}

/// `MPRX (uid)`: the slot's proximity domain.
fn mprx() -> Result<Vec<u8>, Error> {
    let pxm = Name::new_field_name(PROXIMITY);
    let read = Store::new(&Local(0), &pxm);
    let ret = Return::new(&Local(0));
    CONTROLLER.locked_method(PXM_METHOD, 1, false, &[&read], Some(&ret))
}

/// `Device (Mnnn)` for hotplug slot `slot`.
fn memory_device(slot: u32) -> Result<Vec<u8>, Error> {
    let name = slot_device_name(slot)?;
    let hid = Name::new(path("_HID")?, &EISAName::new("PNP0C80"));
    let uid = Name::new(path("_UID")?, &slot);
    let sta = Raw(CONTROLLER.device_sta(slot)?);
    let crs = Raw(forward(CRS_METHOD, "_CRS", 0, slot, true)?);
    let pxm = Raw(forward(PXM_METHOD, "_PXM", 0, slot, true)?);
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
    inner.extend(registers()?);
    inner.extend(crs_template()?);
    let devices = (1..=desc.hotplug_slots)
        .map(|slot| Ok((slot, slot_device_name(slot)?)))
        .collect::<Result<Vec<_>, Error>>()?;
    inner.extend(CONTROLLER.methods(&devices)?);
    inner.extend(mcrs()?);
    inner.extend(mprx()?);
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
    fn region_covers_the_layout_block() {
        // OperationRegion (MHPR, SystemMemory, DWordConst MMIO_BASE, ByteConst MMIO_SIZE)
        let mut want = vec![0x5b, 0x80];
        want.extend_from_slice(REGION.as_bytes());
        want.extend([0x00, 0x0c]);
        want.extend(u32::try_from(regs::MMIO_BASE).unwrap().to_le_bytes());
        want.extend([0x0a, u8::try_from(regs::MMIO_SIZE).unwrap()]);
        let b = registers().unwrap();
        assert!(b.starts_with(&want), "{b:x?}");
        // Every register and flag of the layout has a field (offsets: tests/acpica.rs).
        for name in [
            "MSEL",
            BASE_LOW,
            BASE_HIGH,
            LENGTH_LOW,
            LENGTH_HIGH,
            PROXIMITY,
            "MOEV",
            "MOSS",
            "MNXT",
            "MPEN",
            "MINS",
            "MRMV",
            "MEJF",
        ] {
            assert_eq!(count(&b, name.as_bytes()), 1, "{name}");
        }
    }

    #[test]
    fn memory_device_matches_iasl() {
        // Device (M001)
        // {
        //     Name (_HID, EisaId ("PNP0C80"))
        //     Name (_UID, One)
        //     Method (_STA, 0, NotSerialized) { Return (MSTA (One)) }
        //     Method (_CRS, 0, NotSerialized) { Return (MCRS (One)) }
        //     Method (_PXM, 0, NotSerialized) { Return (MPRX (One)) }
        //     Method (_EJ0, 1, NotSerialized) { MEJ0 (One) }
        //     Method (_OST, 3, NotSerialized) { MOST (One, Arg0, Arg1) }
        // }
        // compiled with iasl 20200925
        let iasl = [
            0x5b, 0x82, 0x47, 0x05, 0x4d, 0x30, 0x30, 0x31, 0x08, 0x5f, 0x48, 0x49, 0x44, 0x0c,
            0x41, 0xd0, 0x0c, 0x80, 0x08, 0x5f, 0x55, 0x49, 0x44, 0x01, 0x14, 0x0c, 0x5f, 0x53,
            0x54, 0x41, 0x00, 0xa4, 0x4d, 0x53, 0x54, 0x41, 0x01, 0x14, 0x0c, 0x5f, 0x43, 0x52,
            0x53, 0x00, 0xa4, 0x4d, 0x43, 0x52, 0x53, 0x01, 0x14, 0x0c, 0x5f, 0x50, 0x58, 0x4d,
            0x00, 0xa4, 0x4d, 0x50, 0x52, 0x58, 0x01, 0x14, 0x0b, 0x5f, 0x45, 0x4a, 0x30, 0x01,
            0x4d, 0x45, 0x4a, 0x30, 0x01, 0x14, 0x0d, 0x5f, 0x4f, 0x53, 0x54, 0x03, 0x4d, 0x4f,
            0x53, 0x54, 0x01, 0x68, 0x69,
        ];
        assert_eq!(memory_device(1).unwrap(), iasl);
    }
}
