//! `\_SB_.CPUS`: the processor container, the CPU hotplug controller's registers and
//! methods, and one `ACPI0007` processor device per possible CPU.
//!
//! ```text
//! CSTA(uid)            select uid, read CPEN                 -> 0xF or 0
//! CEJ0(uid)            select uid, write the eject bit
//! COST(uid, ev, st)    select uid, write OST_EVENT, OST_STATUS
//! CTFY(uid, code)      Notify(Cxxx, code) for the CPU with that uid
//! CSCN()               Local0 = NEXT_EVENT
//!                      while Local0 != NO_EVENT (bounded):
//!                          insert pending -> CTFY(Local0, 1), ack insert
//!                          remove pending -> CTFY(Local0, 3), ack remove
//!                          neither        -> break (device and AML disagree)
//!                          Local0 = NEXT_EVENT
//! ```
//!
//! All of them hold the `CPLK` mutex because the selector is shared state. `Notify` only
//! queues work in Linux (the hotplug work then evaluates `_STA`/`_MAT`/`_OST`, which wait
//! for `CPLK`), so notifying under the mutex cannot deadlock. Reading NEXT_EVENT lets the
//! device select the next CPU with a pending event, so a hot-add costs four register
//! accesses whatever `max_cpus` is (read NEXT_EVENT, read status, ack, read NEXT_EVENT).

use acpi_tables::aml::{
    Acquire, Arg, BufferData, Device, EISAName, Else, Equal, FieldAccessType, FieldUpdateRule, If,
    LessThan, Local, Method, MethodCall, Mutex, Name, NotEqual, Notify, OpRegion, OpRegionSpace,
    Release, Return, Store, While, ONE, ZERO,
};
use acpi_tables::Aml;

use super::fields::{field, FieldUnit};
use crate::aml_ext::{bytes, path, Break, Increment, LAnd, Raw};
use crate::layout::cpu_hotplug as regs;
use crate::machine::MachineDescription;
use crate::madt::{processor_entry, LAPIC_ENABLED};
use crate::Error;

/// Path of the scan method, called by the GED.
pub(crate) const SCAN_METHOD: &str = "\\_SB_.CPUS.CSCN";

/// `_STA` value of a present CPU: present, enabled, shown in UI, functioning.
const STA_PRESENT: u8 = 0x0f;
/// Notify code: device check (a CPU was inserted).
const NOTIFY_DEVICE_CHECK: u8 = 1;
/// Notify code: eject request (the VMM asks the guest to remove a CPU).
const NOTIFY_EJECT_REQUEST: u8 = 3;
/// Mutex timeout meaning "wait forever" (no timeout result to check).
const FOREVER: u16 = 0xffff;

/// Name of the processor device for `cpu`: `C` and three hex digits.
pub(crate) fn cpu_device_name(cpu: u32) -> Result<String, Error> {
    if cpu > 0xfff {
        return Err(Error::InvalidName(format!("C{cpu:X}")));
    }
    Ok(format!("C{cpu:03X}"))
}

/// The register block: one region, a DWORD field for the 32-bit registers and a BYTE
/// field for the status flags, all offsets and bits from [`crate::layout::cpu_hotplug`].
fn registers() -> Result<Vec<u8>, Error> {
    let region = OpRegion::new(
        path("PRST")?,
        OpRegionSpace::SystemMemory,
        &regs::MMIO_BASE,
        &regs::MMIO_SIZE,
    );
    let dwords = field(
        "PRST",
        FieldAccessType::DWord,
        FieldUpdateRule::WriteAsZeroes,
        regs::MMIO_SIZE,
        &[
            FieldUnit::register("CSEL", regs::SELECTOR, 4),
            FieldUnit::register("OEVT", regs::OST_EVENT, 4),
            FieldUnit::register("OSTS", regs::OST_STATUS, 4),
            FieldUnit::register("CNXT", regs::NEXT_EVENT, 4),
        ],
    )?;
    // Byte access so that an acknowledge writes exactly one status byte; WriteAsZeros so
    // that writing one flag does not write back (and acknowledge) the others.
    let flags = field(
        "PRST",
        FieldAccessType::Byte,
        FieldUpdateRule::WriteAsZeroes,
        regs::MMIO_SIZE,
        &[
            FieldUnit::flag("CPEN", regs::STATUS, regs::STATUS_ENABLED)?,
            FieldUnit::flag("CINS", regs::STATUS, regs::STATUS_INSERTING)?,
            FieldUnit::flag("CRMV", regs::STATUS, regs::STATUS_REMOVING)?,
            // The eject bit is not "CEJ0": that is the method's name in the same scope.
            FieldUnit::flag("CEJF", regs::STATUS, regs::STATUS_EJECT)?,
        ],
    )?;
    let mut b = bytes(&region);
    dwords.to_aml_bytes(&mut b);
    flags.to_aml_bytes(&mut b);
    Ok(b)
}

/// `Method (name, args) { Acquire (CPLK); CSEL = Arg0; body...; Release (CPLK); tail }`.
fn locked_method(
    name: &str,
    args: u8,
    body: &[&dyn Aml],
    tail: Option<&dyn Aml>,
) -> Result<Vec<u8>, Error> {
    let acquire = Acquire::new(path("CPLK")?, FOREVER);
    let csel = Name::new_field_name("CSEL");
    let select = Store::new(&csel, &Arg(0));
    let release = Release::new(path("CPLK")?);
    let mut children: Vec<&dyn Aml> = vec![&acquire, &select];
    children.extend_from_slice(body);
    children.push(&release);
    children.extend(tail);
    Ok(bytes(&Method::new(path(name)?, args, false, children)))
}

/// `CSTA (uid)`: 0xF if the CPU is present, else 0.
fn csta() -> Result<Vec<u8>, Error> {
    let cpen = Name::new_field_name("CPEN");
    let present = Equal::new(&cpen, &ONE);
    let set = Store::new(&Local(0), &STA_PRESENT);
    let check = If::new(&present, vec![&set]);
    let clear = Store::new(&Local(0), &ZERO);
    // Return after Release: the value is in Local0, the lock must not be held on return.
    let ret = Return::new(&Local(0));
    locked_method("CSTA", 1, &[&clear, &check], Some(&ret))
}

/// `CEJ0 (uid)`: eject the CPU.
fn cej0() -> Result<Vec<u8>, Error> {
    let cejf = Name::new_field_name("CEJF");
    locked_method("CEJ0", 1, &[&Store::new(&cejf, &ONE)], None)
}

/// `COST (uid, event, status)`: record an `_OST` evaluation.
fn cost() -> Result<Vec<u8>, Error> {
    let oevt = Name::new_field_name("OEVT");
    let osts = Name::new_field_name("OSTS");
    let event = Store::new(&oevt, &Arg(1));
    let status = Store::new(&osts, &Arg(2));
    locked_method("COST", 3, &[&event, &status], None)
}

/// `CTFY (uid, code)`: one `If` per possible CPU, since `Notify` needs a static object.
fn ctfy(desc: &MachineDescription) -> Result<Vec<u8>, Error> {
    let paths = (0..desc.max_cpus)
        .map(|cpu| path(&cpu_device_name(cpu)?))
        .collect::<Result<Vec<_>, _>>()?;
    let uids: Vec<u32> = (0..desc.max_cpus).collect();
    let notifies: Vec<Notify> = paths.iter().map(|p| Notify::new(p, &Arg(1))).collect();
    let conds: Vec<Equal> = uids.iter().map(|u| Equal::new(&Arg(0), u)).collect();
    let ifs: Vec<If> = conds
        .iter()
        .zip(&notifies)
        .map(|(c, n)| If::new(c, vec![n]))
        .collect();
    let children: Vec<&dyn Aml> = ifs.iter().map(|i| i as &dyn Aml).collect();
    Ok(bytes(&Method::new(path("CTFY")?, 2, false, children)))
}

/// `CSCN ()`: notify every CPU with a pending event, acknowledging as it goes.
fn cscn(desc: &MachineDescription) -> Result<Vec<u8>, Error> {
    let cins = Name::new_field_name("CINS");
    let crmv = Name::new_field_name("CRMV");
    let cnxt = Name::new_field_name("CNXT");
    // The bound only guards against a device that never runs out of events; a CPU can
    // have an insert and a remove pending, hence two per CPU.
    let bound = desc.max_cpus.saturating_mul(2);
    let no_event = regs::NO_EVENT;

    let notify_insert = MethodCall::new(path("CTFY")?, vec![&Local(0), &NOTIFY_DEVICE_CHECK]);
    let ack_insert = Store::new(&cins, &ONE);
    let notify_remove = MethodCall::new(path("CTFY")?, vec![&Local(0), &NOTIFY_EJECT_REQUEST]);
    let ack_remove = Store::new(&crmv, &ONE);
    let removing = Equal::new(&crmv, &ONE);
    let is_remove = If::new(&removing, vec![&notify_remove, &ack_remove]);
    let else_break = Else::new(vec![&Break]);
    let else_remove = Else::new(vec![&is_remove, &else_break]);
    let inserting = Equal::new(&cins, &ONE);
    let is_insert = If::new(&inserting, vec![&notify_insert, &ack_insert]);

    let next = Store::new(&Local(0), &cnxt);
    let count = Increment::new(&Local(1));
    let more = NotEqual::new(&Local(0), &no_event);
    let bounded = LessThan::new(&Local(1), &bound);
    let cond = LAnd::new(&more, &bounded);
    let scan = While::new(&cond, vec![&count, &is_insert, &else_remove, &next]);

    let acquire = Acquire::new(path("CPLK")?, FOREVER);
    let zero_count = Store::new(&Local(1), &ZERO);
    let release = Release::new(path("CPLK")?);
    Ok(bytes(&Method::new(
        path("CSCN")?,
        0,
        false,
        vec![&acquire, &zero_count, &next, &scan, &release],
    )))
}

fn methods(desc: &MachineDescription) -> Result<Vec<u8>, Error> {
    let mut b = bytes(&Mutex::new(path("CPLK")?, 0));
    b.extend(csta()?);
    b.extend(cej0()?);
    b.extend(cost()?);
    b.extend(ctfy(desc)?);
    b.extend(cscn(desc)?);
    Ok(b)
}

/// `Device (Cxxx)` for `cpu`.
fn processor_device(cpu: u32) -> Result<Vec<u8>, Error> {
    let name = cpu_device_name(cpu)?;
    let hid = Name::new(path("_HID")?, &"ACPI0007");
    let uid = Name::new(path("_UID")?, &cpu);
    let csta = MethodCall::new(path("CSTA")?, vec![&cpu]);
    let ret = Return::new(&csta);
    let sta = Method::new(path("_STA")?, 0, false, vec![&ret]);
    // _MAT: the MADT entry, but enabled: Linux maps a hot-added CPU's APIC id from it
    // and rejects entries without the Enabled flag.
    let mat = Name::new(
        path("_MAT")?,
        &BufferData::new(processor_entry(cpu, LAPIC_ENABLED)),
    );
    let cej0 = MethodCall::new(path("CEJ0")?, vec![&cpu]);
    let ej0 = Method::new(path("_EJ0")?, 1, false, vec![&cej0]);
    let cost = MethodCall::new(path("COST")?, vec![&cpu, &Arg(0), &Arg(1)]);
    let ost = Method::new(path("_OST")?, 3, false, vec![&cost]);
    let mut children: Vec<&dyn Aml> = vec![&hid, &uid, &sta, &mat];
    // CPU 0 is the boot processor: Linux cannot offline it, and without _EJ0 nothing can
    // eject it even if an eject request for it were sent.
    if cpu != 0 {
        children.push(&ej0);
    }
    children.push(&ost);
    Ok(bytes(&Device::new(path(&name)?, children)))
}

/// `Device (CPUS)` for `desc` (already validated).
pub(crate) fn build(desc: &MachineDescription) -> Result<Vec<u8>, Error> {
    let hid = Name::new(path("_HID")?, &"ACPI0010");
    let cid = Name::new(path("_CID")?, &EISAName::new("PNP0A05"));
    let mut inner = bytes(&hid);
    cid.to_aml_bytes(&mut inner);
    inner.extend(registers()?);
    inner.extend(methods(desc)?);
    for cpu in 0..desc.max_cpus {
        inner.extend(processor_device(cpu)?);
    }
    Ok(bytes(&Device::new(path("CPUS")?, vec![&Raw(inner)])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names() {
        assert_eq!(cpu_device_name(0).unwrap(), "C000");
        assert_eq!(cpu_device_name(0x1f).unwrap(), "C01F");
        assert_eq!(cpu_device_name(0xfff).unwrap(), "CFFF");
        assert!(cpu_device_name(0x1000).is_err());
    }

    #[test]
    fn processor_device_matches_iasl() {
        // Device (C001)
        // {
        //     Name (_HID, "ACPI0007")
        //     Name (_UID, One)
        //     Method (_STA, 0, NotSerialized) { Return (CSTA (One)) }
        //     Name (_MAT, Buffer (0x08) { 0x00, 0x08, 0x01, 0x01, 0x01, 0x00, 0x00, 0x00 })
        //     Method (_EJ0, 1, NotSerialized) { CEJ0 (One) }
        //     Method (_OST, 3, NotSerialized) { COST (One, Arg0, Arg1) }
        // }
        let iasl = [
            0x5b, 0x82, 0x43, 0x05, 0x43, 0x30, 0x30, 0x31, 0x08, 0x5f, 0x48, 0x49, 0x44, 0x0d,
            0x41, 0x43, 0x50, 0x49, 0x30, 0x30, 0x30, 0x37, 0x00, 0x08, 0x5f, 0x55, 0x49, 0x44,
            0x01, 0x14, 0x0c, 0x5f, 0x53, 0x54, 0x41, 0x00, 0xa4, 0x43, 0x53, 0x54, 0x41, 0x01,
            0x08, 0x5f, 0x4d, 0x41, 0x54, 0x11, 0x0b, 0x0a, 0x08, 0x00, 0x08, 0x01, 0x01, 0x01,
            0x00, 0x00, 0x00, 0x14, 0x0b, 0x5f, 0x45, 0x4a, 0x30, 0x01, 0x43, 0x45, 0x4a, 0x30,
            0x01, 0x14, 0x0d, 0x5f, 0x4f, 0x53, 0x54, 0x03, 0x43, 0x4f, 0x53, 0x54, 0x01, 0x68,
            0x69,
        ];
        assert_eq!(processor_device(1).unwrap(), iasl);
    }
}
