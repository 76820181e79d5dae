//! The AML both hotplug controllers share. The CPU and the memory hotplug controller have the
//! same protocol (see [`crate::layout::hotplug_registers`] and
//! [`crate::layout::status_page`]): the guest reads what the VMM publishes from the status
//! page (plain memory, no VM exit) and tells the VMM what it did through four write-only
//! registers, each naming its device. Only the names differ, so the methods are generated
//! from a [`Controller`]:
//!
//! ```text
//! xOST(uid, ev, st)    xOSR = uid | (ev & 0xFFFF) << 16 | st << 32     (one 64-bit write)
//! xTFY(uid, code)      Notify(device with that uid, code): a balanced tree of
//!                      If (uid < pivot), at most 4 devices tested at a leaf
//! xSCN()               Local0 = xEVT                                    (status page)
//!                      while Local0 != NO_EVENT (bounded):
//!                          Local2 = Local0 & 0xFFFF
//!                          insert pending -> xTFY(Local2, 1), xAKI = Local2
//!                          remove pending -> xTFY(Local2, 3), xAKR = Local2
//!                          neither        -> break
//!                          Local0 = xEVT         (the acknowledgement updated it)
//! Device: _STA         Return (the device's status page byte)
//!         _EJ0         xEJR = uid
//!         _OST         xOST(uid, Arg0, Arg1)
//! ```
//!
//! No method holds a lock: no access depends on an earlier one (there is no selector), so
//! concurrent evaluations cannot interfere. A hot-add costs the guest two VM exits (the
//! acknowledgement and `_OST`) however many times it evaluates `_STA`.

use acpi_tables::aml::{
    And, Arg, Else, Equal, FieldAccessType, FieldUpdateRule, If, LessThan, Local, Method,
    MethodCall, Name, NotEqual, Notify, OpRegion, OpRegionSpace, Or, Path, Return, ShiftLeft,
    Store, While, ZERO,
};
use acpi_tables::Aml;

use super::fields::{field, FieldUnit};
use crate::aml_ext::{bytes, path, Break, Increment, LAnd, Raw};
use crate::layout::{hotplug_registers as regs, status_page};
use crate::Error;

/// Notify code: device check (a device was inserted).
pub(crate) const NOTIFY_DEVICE_CHECK: u8 = 1;
/// Notify code: eject request (the VMM asks the guest to remove a device).
pub(crate) const NOTIFY_EJECT_REQUEST: u8 = 3;

/// Devices a leaf of `xTFY`'s dispatch tree tests one by one.
pub(crate) const NOTIFY_LEAF: usize = 4;

/// The statements of `xTFY` for `targets` (sorted by UID): `Notify (device, Arg1)` for the
/// device whose UID is `Arg0`, nothing for a UID no device has.
fn notify_dispatch(targets: &[(u32, Path)]) -> Raw {
    if targets.len() <= NOTIFY_LEAF {
        let mut out = Vec::new();
        for (uid, device) in targets {
            let is_it = Equal::new(&Arg(0), uid);
            let notify = Notify::new(device, &Arg(1));
            out.extend(bytes(&If::new(&is_it, vec![&notify])));
        }
        return Raw(out);
    }
    let (low, high) = targets.split_at(targets.len() / 2);
    let pivot = high[0].0;
    let below = LessThan::new(&Arg(0), &pivot);
    let low_half = notify_dispatch(low);
    let high_half = notify_dispatch(high);
    let mut out = bytes(&If::new(&below, vec![&low_half]));
    out.extend(bytes(&Else::new(vec![&high_half])));
    Raw(out)
}

/// The AML names and addresses of one controller, all in the controller's scope.
pub(crate) struct Controller {
    /// Region over the register block.
    pub region: &'static str,
    /// Guest physical address of the register block.
    pub mmio_base: u64,
    /// Acknowledge-insert register field.
    pub ack_insert: &'static str,
    /// Acknowledge-remove register field.
    pub ack_remove: &'static str,
    /// Eject register field.
    pub eject: &'static str,
    /// `_OST` register field (64 bits).
    pub ost_register: &'static str,
    /// Region over the controller's window of the status page.
    pub window_region: &'static str,
    /// Guest physical address of the window.
    pub window: u64,
    /// Size of the window.
    pub window_size: u64,
    /// Event word field (in the window).
    pub event: &'static str,
    /// `_OST` method.
    pub ost: &'static str,
    /// Notify dispatch method.
    pub notify: &'static str,
    /// Scan method (called by the GED).
    pub scan: &'static str,
}

impl Controller {
    /// The register block (a DWORD field for the three 32-bit registers, a QWORD field for
    /// `_OST`) and the window's region with its event word. WriteAsZeros: a write is the
    /// register's whole value, never a read-modify-write (reading the registers gives 0).
    fn registers(&self) -> Result<Vec<u8>, Error> {
        let region = OpRegion::new(
            path(self.region)?,
            OpRegionSpace::SystemMemory,
            &self.mmio_base,
            &regs::MMIO_SIZE,
        );
        let dwords = field(
            self.region,
            FieldAccessType::DWord,
            FieldUpdateRule::WriteAsZeroes,
            regs::MMIO_SIZE,
            &[
                FieldUnit::register(self.ack_insert, regs::ACK_INSERT, 4),
                FieldUnit::register(self.ack_remove, regs::ACK_REMOVE, 4),
                FieldUnit::register(self.eject, regs::EJECT, 4),
            ],
        )?;
        let qword = field(
            self.region,
            FieldAccessType::QWord,
            FieldUpdateRule::WriteAsZeroes,
            regs::MMIO_SIZE,
            &[FieldUnit::register(self.ost_register, regs::OST, 8)],
        )?;
        let window = OpRegion::new(
            path(self.window_region)?,
            OpRegionSpace::SystemMemory,
            &self.window,
            &self.window_size,
        );
        let event = self.window_field(
            FieldAccessType::DWord,
            &[FieldUnit::register(self.event, status_page::EVENT, 4)],
        )?;
        let mut b = bytes(&region);
        dwords.to_aml_bytes(&mut b);
        qword.to_aml_bytes(&mut b);
        window.to_aml_bytes(&mut b);
        b.extend(event);
        Ok(b)
    }

    /// A field over the controller's window of the status page (read-only for the guest:
    /// Preserve, though nothing is ever written through it).
    pub(crate) fn window_field(
        &self,
        access: FieldAccessType,
        units: &[FieldUnit],
    ) -> Result<Vec<u8>, Error> {
        let f = field(
            self.window_region,
            access,
            FieldUpdateRule::Preserve,
            self.window_size,
            units,
        )?;
        Ok(bytes(&f))
    }

    /// `xOST (uid, event, status)`: one 64-bit write of all three.
    fn ost_method(&self) -> Result<Vec<u8>, Error> {
        let mask = u64::from(regs::UID_MASK);
        let event = And::new(&ZERO, &Arg(1), &mask);
        let event_shift = u64::from(regs::OST_EVENT_SHIFT);
        let status_shift = u64::from(regs::OST_STATUS_SHIFT);
        let event_at = ShiftLeft::new(&ZERO, &event, &event_shift);
        let status_at = ShiftLeft::new(&ZERO, &Arg(2), &status_shift);
        let uid_event = Or::new(&ZERO, &Arg(0), &event_at);
        let ost = Name::new_field_name(self.ost_register);
        let value = Or::new(&ost, &uid_event, &status_at);
        Ok(bytes(&Method::new(path(self.ost)?, 3, false, vec![&value])))
    }

    /// `xTFY (uid, code)`: `Notify` needs a static object, so the method picks the device by
    /// its UID, through a balanced tree of `If (Arg0 < pivot)` with at most
    /// [`NOTIFY_LEAF`] devices tested one by one at each leaf: about `log2(n / 4) + 4`
    /// comparisons for any UID (a chain of one `If` per device made every notification of a
    /// 512-CPU machine evaluate 512 of them).
    fn notify_method(&self, devices: &[(u32, String)]) -> Result<Vec<u8>, Error> {
        let mut targets = devices
            .iter()
            .map(|(uid, name)| Ok((*uid, path(name)?)))
            .collect::<Result<Vec<_>, Error>>()?;
        targets.sort_by_key(|(uid, _)| *uid);
        let body = notify_dispatch(&targets);
        Ok(bytes(&Method::new(
            path(self.notify)?,
            2,
            false,
            vec![&body],
        )))
    }

    /// `xSCN ()`: notify every device with a pending event, acknowledging as it goes. At
    /// most `bound` iterations, so that an event word that never empties cannot hang the
    /// guest's GED thread.
    fn scan_method(&self, bound: u32) -> Result<Vec<u8>, Error> {
        let evt = Name::new_field_name(self.event);
        let aki = Name::new_field_name(self.ack_insert);
        let akr = Name::new_field_name(self.ack_remove);

        let uid_mask = u64::from(regs::UID_MASK);
        let uid_of_event = And::new(&ZERO, &Local(0), &uid_mask);
        let uid = Store::new(&Local(2), &uid_of_event);
        let notify_insert =
            MethodCall::new(path(self.notify)?, vec![&Local(2), &NOTIFY_DEVICE_CHECK]);
        let ack_insert = Store::new(&aki, &Local(2));
        let notify_remove =
            MethodCall::new(path(self.notify)?, vec![&Local(2), &NOTIFY_EJECT_REQUEST]);
        let ack_remove = Store::new(&akr, &Local(2));
        let insert_bit = u64::from(status_page::EVENT_INSERT);
        let remove_bit = u64::from(status_page::EVENT_REMOVE);
        let removing = And::new(&ZERO, &Local(0), &remove_bit);
        let is_remove = If::new(&removing, vec![&notify_remove, &ack_remove]);
        let else_break = Else::new(vec![&Break]);
        let else_remove = Else::new(vec![&is_remove, &else_break]);
        let inserting = And::new(&ZERO, &Local(0), &insert_bit);
        let is_insert = If::new(&inserting, vec![&notify_insert, &ack_insert]);

        let next = Store::new(&Local(0), &evt);
        let count = Increment::new(&Local(1));
        let more = NotEqual::new(&Local(0), &status_page::NO_EVENT);
        let bounded = LessThan::new(&Local(1), &bound);
        let cond = LAnd::new(&more, &bounded);
        let scan = While::new(&cond, vec![&count, &uid, &is_insert, &else_remove, &next]);
        let zero_count = Store::new(&Local(1), &ZERO);
        Ok(bytes(&Method::new(
            path(self.scan)?,
            0,
            false,
            vec![&zero_count, &next, &scan],
        )))
    }

    /// The registers, the window's event word and the three shared methods for `devices`
    /// ((UID, device name) pairs). The scan is bounded to two events per device (an insert
    /// and a remove).
    pub(crate) fn methods(&self, devices: &[(u32, String)]) -> Result<Vec<u8>, Error> {
        let count = u32::try_from(devices.len())
            .map_err(|_| Error::InvalidLayout(format!("{} devices", devices.len())))?;
        let mut b = self.registers()?;
        b.extend(self.ost_method()?);
        b.extend(self.notify_method(devices)?);
        b.extend(self.scan_method(count.saturating_mul(2))?);
        Ok(b)
    }

    /// A device's `Method (_STA) { Return (field) }`, `field` being its status page byte.
    pub(crate) fn device_sta(&self, sta_field: &str) -> Result<Vec<u8>, Error> {
        let sta = Name::new_field_name(sta_field);
        let ret = Return::new(&sta);
        Ok(bytes(&Method::new(path("_STA")?, 0, false, vec![&ret])))
    }

    /// A device's `Method (_EJ0, 1) { xEJR = uid }`.
    pub(crate) fn device_ej0(&self, uid: u32) -> Result<Vec<u8>, Error> {
        let field = Name::new_field_name(self.eject);
        let eject = Store::new(&field, &uid);
        Ok(bytes(&Method::new(path("_EJ0")?, 1, false, vec![&eject])))
    }

    /// A device's `Method (_OST, 3) { xOST (uid, Arg0, Arg1) }`.
    pub(crate) fn device_ost(&self, uid: u32) -> Result<Vec<u8>, Error> {
        let call = MethodCall::new(path(self.ost)?, vec![&uid, &Arg(0), &Arg(1)]);
        Ok(bytes(&Method::new(path("_OST")?, 3, false, vec![&call])))
    }
}
