//! The AML both hotplug controllers share. The CPU and the memory hotplug controller have the
//! same protocol (see [`crate::layout`]): a selector picks a device by UID, a status byte
//! reads enabled/inserting/removing and, written, acknowledges or ejects, two registers
//! record `_OST`, and reading NEXT_EVENT selects the next device with a pending event.
//! Only the names differ, so the methods are generated from a [`Controller`]:
//!
//! ```text
//! xSTA(uid)            select uid, read the enabled flag          -> 0xF or 0
//! xEJ0(uid)            select uid, write the eject bit
//! xOST(uid, ev, st)    select uid, write OST_EVENT, OST_STATUS
//! xTFY(uid, code)      Notify(device with that uid, code)
//! xSCN()               Local0 = NEXT_EVENT
//!                      while Local0 != NO_EVENT (bounded):
//!                          insert pending -> xTFY(Local0, 1), ack insert
//!                          remove pending -> xTFY(Local0, 3), ack remove
//!                          neither        -> break (device and AML disagree)
//!                          Local0 = NEXT_EVENT
//! ```
//!
//! All of them hold the controller's mutex because the selector is shared state. `Notify`
//! only queues work in Linux (the hotplug work then evaluates `_STA`/`_OST`/..., which wait
//! for the mutex), so notifying under the mutex cannot deadlock.

use acpi_tables::aml::{
    Acquire, Arg, Else, Equal, If, LessThan, Local, Method, MethodCall, Mutex, Name, NotEqual,
    Notify, Release, Return, Store, While, ONE, ZERO,
};
use acpi_tables::Aml;

use crate::aml_ext::{bytes, path, Break, Increment, LAnd};
use crate::Error;

/// `_STA` value of a present device: present, enabled, shown in UI, functioning.
pub(crate) const STA_PRESENT: u8 = 0x0f;
/// Notify code: device check (a device was inserted).
pub(crate) const NOTIFY_DEVICE_CHECK: u8 = 1;
/// Notify code: eject request (the VMM asks the guest to remove a device).
pub(crate) const NOTIFY_EJECT_REQUEST: u8 = 3;
/// Mutex timeout meaning "wait forever" (no timeout result to check).
pub(crate) const FOREVER: u16 = 0xffff;

/// The AML names of one controller's fields and methods, all in the controller's scope.
pub(crate) struct Controller {
    /// Mutex serializing every use of the selector.
    pub lock: &'static str,
    /// Selector field (32 bits).
    pub select: &'static str,
    /// Enabled flag field (status bit 0).
    pub enabled: &'static str,
    /// Insert-pending flag field.
    pub inserting: &'static str,
    /// Remove-pending flag field.
    pub removing: &'static str,
    /// Eject flag field.
    pub eject: &'static str,
    /// `_OST` source event field.
    pub ost_event: &'static str,
    /// `_OST` status field.
    pub ost_status: &'static str,
    /// Next-event field.
    pub next: &'static str,
    /// Status method (`_STA` of every device forwards to it).
    pub sta: &'static str,
    /// Eject method.
    pub ej0: &'static str,
    /// `_OST` method.
    pub ost: &'static str,
    /// Notify dispatch method.
    pub notify: &'static str,
    /// Scan method (called by the GED).
    pub scan: &'static str,
    /// Value of the next-event register when nothing is pending.
    pub no_event: u32,
}

impl Controller {
    /// `Method (name, args) { Acquire (lock); select = Arg0; body...; Release (lock); tail }`.
    pub(crate) fn locked_method(
        &self,
        name: &str,
        args: u8,
        serialized: bool,
        body: &[&dyn Aml],
        tail: Option<&dyn Aml>,
    ) -> Result<Vec<u8>, Error> {
        let acquire = Acquire::new(path(self.lock)?, FOREVER);
        let sel = Name::new_field_name(self.select);
        let select = Store::new(&sel, &Arg(0));
        let release = Release::new(path(self.lock)?);
        let mut children: Vec<&dyn Aml> = vec![&acquire, &select];
        children.extend_from_slice(body);
        children.push(&release);
        children.extend(tail);
        Ok(bytes(&Method::new(path(name)?, args, serialized, children)))
    }

    /// `xSTA (uid)`: 0xF if the device is enabled, else 0.
    fn sta_method(&self) -> Result<Vec<u8>, Error> {
        let enabled = Name::new_field_name(self.enabled);
        let present = Equal::new(&enabled, &ONE);
        let set = Store::new(&Local(0), &STA_PRESENT);
        let check = If::new(&present, vec![&set]);
        let clear = Store::new(&Local(0), &ZERO);
        // Return after Release: the value is in Local0, the lock must not be held on return.
        let ret = Return::new(&Local(0));
        self.locked_method(self.sta, 1, false, &[&clear, &check], Some(&ret))
    }

    /// `xEJ0 (uid)`: eject the device.
    fn ej0_method(&self) -> Result<Vec<u8>, Error> {
        let eject = Name::new_field_name(self.eject);
        self.locked_method(self.ej0, 1, false, &[&Store::new(&eject, &ONE)], None)
    }

    /// `xOST (uid, event, status)`: record an `_OST` evaluation.
    fn ost_method(&self) -> Result<Vec<u8>, Error> {
        let oevt = Name::new_field_name(self.ost_event);
        let osts = Name::new_field_name(self.ost_status);
        let event = Store::new(&oevt, &Arg(1));
        let status = Store::new(&osts, &Arg(2));
        self.locked_method(self.ost, 3, false, &[&event, &status], None)
    }

    /// `xTFY (uid, code)`: one `If` per device, since `Notify` needs a static object.
    fn notify_method(&self, devices: &[(u32, String)]) -> Result<Vec<u8>, Error> {
        let paths = devices
            .iter()
            .map(|(_, name)| path(name))
            .collect::<Result<Vec<_>, _>>()?;
        let notifies: Vec<Notify> = paths.iter().map(|p| Notify::new(p, &Arg(1))).collect();
        let conds: Vec<Equal> = devices
            .iter()
            .map(|(uid, _)| Equal::new(&Arg(0), uid))
            .collect();
        let ifs: Vec<If> = conds
            .iter()
            .zip(&notifies)
            .map(|(c, n)| If::new(c, vec![n]))
            .collect();
        let children: Vec<&dyn Aml> = ifs.iter().map(|i| i as &dyn Aml).collect();
        Ok(bytes(&Method::new(path(self.notify)?, 2, false, children)))
    }

    /// `xSCN ()`: notify every device with a pending event, acknowledging as it goes. At
    /// most `bound` iterations, so that a device that never runs out of events cannot hang
    /// the guest's GED thread.
    fn scan_method(&self, bound: u32) -> Result<Vec<u8>, Error> {
        let ins = Name::new_field_name(self.inserting);
        let rmv = Name::new_field_name(self.removing);
        let nxt = Name::new_field_name(self.next);
        let no_event = self.no_event;

        let notify_insert =
            MethodCall::new(path(self.notify)?, vec![&Local(0), &NOTIFY_DEVICE_CHECK]);
        let ack_insert = Store::new(&ins, &ONE);
        let notify_remove =
            MethodCall::new(path(self.notify)?, vec![&Local(0), &NOTIFY_EJECT_REQUEST]);
        let ack_remove = Store::new(&rmv, &ONE);
        let removing = Equal::new(&rmv, &ONE);
        let is_remove = If::new(&removing, vec![&notify_remove, &ack_remove]);
        let else_break = Else::new(vec![&Break]);
        let else_remove = Else::new(vec![&is_remove, &else_break]);
        let inserting = Equal::new(&ins, &ONE);
        let is_insert = If::new(&inserting, vec![&notify_insert, &ack_insert]);

        let next = Store::new(&Local(0), &nxt);
        let count = Increment::new(&Local(1));
        let more = NotEqual::new(&Local(0), &no_event);
        let bounded = LessThan::new(&Local(1), &bound);
        let cond = LAnd::new(&more, &bounded);
        let scan = While::new(&cond, vec![&count, &is_insert, &else_remove, &next]);

        let acquire = Acquire::new(path(self.lock)?, FOREVER);
        let zero_count = Store::new(&Local(1), &ZERO);
        let release = Release::new(path(self.lock)?);
        Ok(bytes(&Method::new(
            path(self.scan)?,
            0,
            false,
            vec![&acquire, &zero_count, &next, &scan, &release],
        )))
    }

    /// The mutex and the five shared methods for `devices` ((UID, device name) pairs).
    /// The scan is bounded to two events per device (an insert and a remove).
    pub(crate) fn methods(&self, devices: &[(u32, String)]) -> Result<Vec<u8>, Error> {
        let count = u32::try_from(devices.len())
            .map_err(|_| Error::InvalidLayout(format!("{} devices", devices.len())))?;
        let mut b = bytes(&Mutex::new(path(self.lock)?, 0));
        b.extend(self.sta_method()?);
        b.extend(self.ej0_method()?);
        b.extend(self.ost_method()?);
        b.extend(self.notify_method(devices)?);
        b.extend(self.scan_method(count.saturating_mul(2))?);
        Ok(b)
    }

    /// A device's `Method (_STA) { Return (xSTA (uid)) }`.
    pub(crate) fn device_sta(&self, uid: u32) -> Result<Vec<u8>, Error> {
        forward(self.sta, "_STA", 0, uid, true)
    }

    /// A device's `Method (_EJ0, 1) { xEJ0 (uid) }`.
    pub(crate) fn device_ej0(&self, uid: u32) -> Result<Vec<u8>, Error> {
        forward(self.ej0, "_EJ0", 1, uid, false)
    }

    /// A device's `Method (_OST, 3) { xOST (uid, Arg0, Arg1) }`.
    pub(crate) fn device_ost(&self, uid: u32) -> Result<Vec<u8>, Error> {
        let call = MethodCall::new(path(self.ost)?, vec![&uid, &Arg(0), &Arg(1)]);
        Ok(bytes(&Method::new(path("_OST")?, 3, false, vec![&call])))
    }
}

/// `Method (name, args) { [Return] (target (uid)) }`: a per-device method forwarding to
/// the controller's shared one.
pub(crate) fn forward(
    target: &str,
    name: &str,
    args: u8,
    uid: u32,
    returns: bool,
) -> Result<Vec<u8>, Error> {
    let call = MethodCall::new(path(target)?, vec![&uid]);
    let ret = Return::new(&call);
    let body: &dyn Aml = if returns { &ret } else { &call };
    Ok(bytes(&Method::new(path(name)?, args, false, vec![body])))
}
