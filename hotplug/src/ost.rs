//! The guest's verdicts: `_OST` source events and status codes (ACPI 6.5, section 6.3.5),
//! decoded into typed enums with their spec names, and the guest events the VMM reports.

use std::fmt;

use serde::Serialize;

/// An `_OST` source event (the first argument of `_OST`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(into = "CodeName")]
pub enum OstEvent {
    /// 0x00: Bus Check notification.
    BusCheck,
    /// 0x01: Device Check notification (how plugvm announces an insertion).
    DeviceCheck,
    /// 0x03: Eject Request notification (how plugvm asks for a removal).
    EjectRequest,
    /// 0x100: Operating system shutdown processing.
    OsShutdown,
    /// 0x103: Ejection processing: an eject the OSPM itself initiated (e.g. sysfs `eject`).
    OspmEject,
    /// 0x200: Insertion processing.
    Insertion,
    /// Any other code, kept raw.
    Other(u32),
}

impl OstEvent {
    /// Decodes a raw source event.
    pub fn from_raw(code: u32) -> Self {
        match code {
            0x00 => OstEvent::BusCheck,
            0x01 => OstEvent::DeviceCheck,
            0x03 => OstEvent::EjectRequest,
            0x100 => OstEvent::OsShutdown,
            0x103 => OstEvent::OspmEject,
            0x200 => OstEvent::Insertion,
            other => OstEvent::Other(other),
        }
    }

    /// The raw code.
    pub fn code(&self) -> u32 {
        match self {
            OstEvent::BusCheck => 0x00,
            OstEvent::DeviceCheck => 0x01,
            OstEvent::EjectRequest => 0x03,
            OstEvent::OsShutdown => 0x100,
            OstEvent::OspmEject => 0x103,
            OstEvent::Insertion => 0x200,
            OstEvent::Other(c) => *c,
        }
    }

    /// The spec name in snake case (`"eject_request"`), `"other"` for raw codes.
    pub fn name(&self) -> &'static str {
        match self {
            OstEvent::BusCheck => "bus_check",
            OstEvent::DeviceCheck => "device_check",
            OstEvent::EjectRequest => "eject_request",
            OstEvent::OsShutdown => "os_shutdown",
            OstEvent::OspmEject => "ospm_eject",
            OstEvent::Insertion => "insertion",
            OstEvent::Other(_) => "other",
        }
    }

    /// Whether the event reports on an insertion (bus check, device check, insertion).
    pub fn is_insertion(&self) -> bool {
        matches!(
            self,
            OstEvent::BusCheck | OstEvent::DeviceCheck | OstEvent::Insertion
        )
    }

    /// Whether the event reports on an ejection (eject request or OSPM eject).
    pub fn is_ejection(&self) -> bool {
        matches!(self, OstEvent::EjectRequest | OstEvent::OspmEject)
    }
}

/// An `_OST` status code (the second argument), decoded in the context of its source event:
/// codes 0x80-0xFF mean different things for ejections and insertions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(into = "CodeName")]
pub enum OstStatus {
    /// 0: Success.
    Success,
    /// 1: Non-specific failure.
    Failure,
    /// 2: Unrecognized notify code.
    UnrecognizedNotify,
    /// Eject 0x80: Device ejection not supported by OSPM.
    EjectNotSupported,
    /// Eject 0x81: Device in use by application.
    DeviceInUse,
    /// Eject 0x82: Device busy.
    DeviceBusy,
    /// Eject 0x83: Ejection dependency is busy or not supported for ejection by OSPM.
    EjectDependencyBusy,
    /// Eject 0x84: Ejection is in progress (pending).
    EjectInProgress,
    /// Insertion 0x80: Device insertion in progress (pending).
    InsertionInProgress,
    /// Insertion 0x81: Device driver load failure.
    DriverLoadFailure,
    /// Insertion 0x82: Device insertion not supported by OSPM.
    InsertionNotSupported,
    /// Any other code (reserved, or event-specific for another event), kept raw.
    Other(u32),
}

impl OstStatus {
    /// Decodes a raw status in the context of `event`.
    pub fn from_raw(event: OstEvent, code: u32) -> Self {
        match (code, event.is_ejection(), event == OstEvent::Insertion) {
            (0, _, _) => OstStatus::Success,
            (1, _, _) => OstStatus::Failure,
            (2, _, _) => OstStatus::UnrecognizedNotify,
            (0x80, true, _) => OstStatus::EjectNotSupported,
            (0x81, true, _) => OstStatus::DeviceInUse,
            (0x82, true, _) => OstStatus::DeviceBusy,
            (0x83, true, _) => OstStatus::EjectDependencyBusy,
            (0x84, true, _) => OstStatus::EjectInProgress,
            (0x80, _, true) => OstStatus::InsertionInProgress,
            (0x81, _, true) => OstStatus::DriverLoadFailure,
            (0x82, _, true) => OstStatus::InsertionNotSupported,
            (other, _, _) => OstStatus::Other(other),
        }
    }

    /// The raw code.
    pub fn code(&self) -> u32 {
        match self {
            OstStatus::Success => 0,
            OstStatus::Failure => 1,
            OstStatus::UnrecognizedNotify => 2,
            OstStatus::EjectNotSupported | OstStatus::InsertionInProgress => 0x80,
            OstStatus::DeviceInUse | OstStatus::DriverLoadFailure => 0x81,
            OstStatus::DeviceBusy | OstStatus::InsertionNotSupported => 0x82,
            OstStatus::EjectDependencyBusy => 0x83,
            OstStatus::EjectInProgress => 0x84,
            OstStatus::Other(c) => *c,
        }
    }

    /// The spec name in snake case (`"device_busy"`), `"other"` for raw codes.
    pub fn name(&self) -> &'static str {
        match self {
            OstStatus::Success => "success",
            OstStatus::Failure => "failure",
            OstStatus::UnrecognizedNotify => "unrecognized_notify",
            OstStatus::EjectNotSupported => "eject_not_supported",
            OstStatus::DeviceInUse => "device_in_use",
            OstStatus::DeviceBusy => "device_busy",
            OstStatus::EjectDependencyBusy => "eject_dependency_busy",
            OstStatus::EjectInProgress => "eject_in_progress",
            OstStatus::InsertionInProgress => "insertion_in_progress",
            OstStatus::DriverLoadFailure => "driver_load_failure",
            OstStatus::InsertionNotSupported => "insertion_not_supported",
            OstStatus::Other(_) => "other",
        }
    }

    /// Success (0).
    pub fn is_success(&self) -> bool {
        *self == OstStatus::Success
    }

    /// A "still working on it" status: eject or insertion in progress.
    pub fn is_pending(&self) -> bool {
        matches!(
            self,
            OstStatus::EjectInProgress | OstStatus::InsertionInProgress
        )
    }

    /// Neither success nor pending: the guest gave up on the operation.
    pub fn is_failure(&self) -> bool {
        !self.is_success() && !self.is_pending()
    }
}

/// One `_OST` evaluation: source event and status, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Ost {
    /// The source event.
    pub event: OstEvent,
    /// The status, decoded for that event.
    pub status: OstStatus,
}

impl Ost {
    /// Decodes the two raw `_OST` arguments.
    pub fn from_raw(event: u32, status: u32) -> Self {
        let event = OstEvent::from_raw(event);
        Ost {
            event,
            status: OstStatus::from_raw(event, status),
        }
    }
}

impl fmt::Display for OstEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x} {}", self.code(), self.name())
    }
}

impl fmt::Display for OstStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x} {}", self.code(), self.name())
    }
}

impl fmt::Display for Ost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "_OST({}, {})", self.event, self.status)
    }
}

/// JSON shape of an `_OST` code: `{"code": 130, "name": "device_busy"}`.
#[derive(Debug, Clone, Serialize)]
pub struct CodeName {
    /// Raw code.
    pub code: u32,
    /// Spec name in snake case.
    pub name: &'static str,
}

impl From<OstEvent> for CodeName {
    fn from(e: OstEvent) -> Self {
        CodeName {
            code: e.code(),
            name: e.name(),
        }
    }
}

impl From<OstStatus> for CodeName {
    fn from(s: OstStatus) -> Self {
        CodeName {
            code: s.code(),
            name: s.name(),
        }
    }
}

/// Something the guest did to a device, as observed by the VMM's hotplug controllers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestEvent {
    /// The guest evaluated `_OST(event, status)` (raw codes; the engine decodes them).
    Ost {
        /// Source event code.
        event: u32,
        /// Status code.
        status: u32,
    },
    /// The guest evaluated `_EJ0`: from the guest's side the device is gone.
    Eject,
    /// The guest saw the device's event (its scan acknowledged the pending insert or
    /// remove): proof that it looked at the device. The name is from when that was a status
    /// register read; `_STA` itself is read from memory and costs no VM exit.
    StatusRead,
}

impl GuestEvent {
    /// Shorthand for [`GuestEvent::Ost`].
    pub fn ost(event: u32, status: u32) -> Self {
        GuestEvent::Ost { event, status }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_every_event() {
        let cases = [
            (0u32, OstEvent::BusCheck, "bus_check"),
            (1, OstEvent::DeviceCheck, "device_check"),
            (3, OstEvent::EjectRequest, "eject_request"),
            (0x100, OstEvent::OsShutdown, "os_shutdown"),
            (0x103, OstEvent::OspmEject, "ospm_eject"),
            (0x200, OstEvent::Insertion, "insertion"),
            (7, OstEvent::Other(7), "other"),
        ];
        for (code, ev, name) in cases {
            let d = OstEvent::from_raw(code);
            assert_eq!(d, ev);
            assert_eq!(d.code(), code);
            assert_eq!(d.name(), name);
        }
    }

    #[test]
    fn decodes_general_and_eject_statuses() {
        for ev in [3u32, 0x103] {
            let cases = [
                (0u32, OstStatus::Success),
                (1, OstStatus::Failure),
                (2, OstStatus::UnrecognizedNotify),
                (0x80, OstStatus::EjectNotSupported),
                (0x81, OstStatus::DeviceInUse),
                (0x82, OstStatus::DeviceBusy),
                (0x83, OstStatus::EjectDependencyBusy),
                (0x84, OstStatus::EjectInProgress),
                (0x85, OstStatus::Other(0x85)),
                (3, OstStatus::Other(3)),
            ];
            for (code, st) in cases {
                let ost = Ost::from_raw(ev, code);
                assert_eq!(ost.status, st, "event {ev:#x} status {code:#x}");
                assert_eq!(ost.status.code(), code);
            }
        }
    }

    #[test]
    fn decodes_insertion_statuses_and_keeps_others_raw() {
        let s = |c| Ost::from_raw(0x200, c).status;
        assert_eq!(s(0x80), OstStatus::InsertionInProgress);
        assert_eq!(s(0x81), OstStatus::DriverLoadFailure);
        assert_eq!(s(0x82), OstStatus::InsertionNotSupported);
        assert_eq!(s(0x83), OstStatus::Other(0x83));
        // 0x80 means nothing special for a device check.
        assert_eq!(Ost::from_raw(1, 0x80).status, OstStatus::Other(0x80));
        assert_eq!(Ost::from_raw(1, 0).status, OstStatus::Success);
    }

    #[test]
    fn classification() {
        assert!(OstStatus::Success.is_success());
        assert!(OstStatus::EjectInProgress.is_pending());
        assert!(OstStatus::InsertionInProgress.is_pending());
        for s in [
            OstStatus::Failure,
            OstStatus::UnrecognizedNotify,
            OstStatus::DeviceBusy,
            OstStatus::Other(0x99),
        ] {
            assert!(s.is_failure(), "{s}");
        }
        assert!(OstEvent::Insertion.is_insertion() && OstEvent::DeviceCheck.is_insertion());
        assert!(OstEvent::OspmEject.is_ejection() && !OstEvent::DeviceCheck.is_ejection());
    }

    #[test]
    fn display_and_json() {
        let ost = Ost::from_raw(3, 0x82);
        assert_eq!(ost.to_string(), "_OST(0x3 eject_request, 0x82 device_busy)");
        let json = serde_json::to_string(&ost).unwrap();
        assert_eq!(
            json,
            r#"{"event":{"code":3,"name":"eject_request"},"status":{"code":130,"name":"device_busy"}}"#
        );
    }
}
