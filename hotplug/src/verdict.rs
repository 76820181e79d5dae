//! Phase 4, per device: turning the guest's events and the deadline into a verdict.
//!
//! Add: `_OST(1|0|0x200, 0)` accepts; a pending status (insertion in progress) waits; any
//! other status refuses; `_EJ0` refuses. Remove: `_OST(3|0x103, 0x84)` waits; `_EJ0` marks
//! the device gone; a success `_OST` after `_EJ0` accepts (without `_EJ0` it is only noted);
//! a failure `_OST` before `_EJ0` refuses; after `_EJ0` it is noted and accepts (the guest
//! has already let the device go). Deadline: an add is refused (withdrawn); a remove is
//! refused unless `_EJ0` came, in which case it accepts.

use crate::clock::Timestamp;
use crate::ops::{DeviceOp, Direction};
use crate::ost::{GuestEvent, Ost};
use crate::outcome::{DeviceResult, FailureReason, StepError};

/// A device's verdict after an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Keep waiting.
    Pending,
    /// The guest accepted: commit.
    Accept,
    /// The guest refused, or time ran out: roll back.
    Refuse(FailureReason),
}

/// Where a device stands inside its transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DevState {
    /// Going through Validate, Prepare, Publish.
    Live,
    /// Published; waiting for the guest.
    Awaiting,
    /// The guest accepted; waiting for the rest of the batch.
    Accepted,
    /// Finished.
    Done(DeviceResult),
}

/// One device of a transaction.
#[derive(Debug, Clone)]
pub(crate) struct DeviceTx {
    pub(crate) op: DeviceOp,
    pub(crate) state: DevState,
    pub(crate) deadline: Option<Timestamp>,
    pub(crate) touched: bool,
    pub(crate) ejected: bool,
    pub(crate) status_read_seen: bool,
    pub(crate) last_ost: Option<Ost>,
    pub(crate) notes: Vec<String>,
    pub(crate) step_errors: Vec<StepError>,
}

impl DeviceTx {
    pub(crate) fn new(op: DeviceOp) -> Self {
        DeviceTx {
            op,
            state: DevState::Live,
            deadline: None,
            touched: false,
            ejected: false,
            status_read_seen: false,
            last_ost: None,
            notes: Vec::new(),
            step_errors: Vec::new(),
        }
    }

    pub(crate) fn is_done(&self) -> bool {
        matches!(self.state, DevState::Done(_))
    }

    /// Applies a guest event received while awaiting the verdict.
    pub(crate) fn on_event(&mut self, event: GuestEvent) -> Verdict {
        self.touched = true;
        let ost = match event {
            GuestEvent::StatusRead => return Verdict::Pending,
            GuestEvent::Eject => {
                return match self.op.direction() {
                    Direction::Add => Verdict::Refuse(FailureReason::GuestEjectedDuringAdd),
                    Direction::Remove => {
                        self.ejected = true;
                        Verdict::Pending
                    }
                };
            }
            GuestEvent::Ost { event, status } => Ost::from_raw(event, status),
        };
        self.last_ost = Some(ost);
        match self.op.direction() {
            Direction::Add => {
                if !ost.event.is_insertion() {
                    self.notes.push(format!("ignored {ost} during an add"));
                    Verdict::Pending
                } else if ost.status.is_success() {
                    Verdict::Accept
                } else if ost.status.is_pending() {
                    Verdict::Pending
                } else {
                    Verdict::Refuse(FailureReason::GuestRefused { ost })
                }
            }
            Direction::Remove => {
                if !ost.event.is_ejection() {
                    self.notes.push(format!("ignored {ost} during a remove"));
                    Verdict::Pending
                } else if ost.status.is_pending() {
                    Verdict::Pending
                } else if self.ejected {
                    if !ost.status.is_success() {
                        self.notes.push(format!(
                            "{ost} after _EJ0: the guest had already released the device"
                        ));
                    }
                    Verdict::Accept
                } else if ost.status.is_success() {
                    self.notes
                        .push(format!("{ost} without _EJ0 is not a commit: still waiting"));
                    Verdict::Pending
                } else {
                    Verdict::Refuse(FailureReason::GuestRefused { ost })
                }
            }
        }
    }

    /// The deadline passed without a verdict.
    pub(crate) fn on_deadline(&mut self) -> Verdict {
        if self.op.direction() == Direction::Remove && self.ejected {
            self.notes
                .push("deadline passed after _EJ0 without a final _OST: committed".into());
            return Verdict::Accept;
        }
        Verdict::Refuse(FailureReason::Timeout {
            guest_touched: self.touched,
            last_ost: self.last_ost,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{OpKind, Origin, TxId};
    use crate::ost::{OstEvent, OstStatus};
    use crate::DeviceId;

    fn dev(kind: OpKind) -> DeviceTx {
        DeviceTx::new(DeviceOp {
            tx: TxId(1),
            kind,
            device: DeviceId::cpu(1),
            memory: None,
            origin: Origin::Host,
        })
    }

    fn refused(v: Verdict) -> Ost {
        match v {
            Verdict::Refuse(FailureReason::GuestRefused { ost }) => ost,
            other => panic!("expected a guest refusal, got {other:?}"),
        }
    }

    #[test]
    fn add_verdicts() {
        let mut d = dev(OpKind::AddCpu);
        assert_eq!(d.on_event(GuestEvent::StatusRead), Verdict::Pending);
        assert!(d.touched);
        assert_eq!(d.on_event(GuestEvent::ost(0x200, 0x80)), Verdict::Pending);
        assert_eq!(d.on_event(GuestEvent::ost(3, 0)), Verdict::Pending);
        assert_eq!(d.notes.len(), 1);
        assert_eq!(d.on_event(GuestEvent::ost(1, 0)), Verdict::Accept);
        assert_eq!(d.on_event(GuestEvent::ost(0, 0)), Verdict::Accept);

        for (ev, st, want) in [
            (1, 1, OstStatus::Failure),
            (1, 2, OstStatus::UnrecognizedNotify),
            (0x200, 0x81, OstStatus::DriverLoadFailure),
            (0x200, 0x82, OstStatus::InsertionNotSupported),
            (1, 0x80, OstStatus::Other(0x80)),
        ] {
            let mut d = dev(OpKind::AddMemory);
            assert_eq!(refused(d.on_event(GuestEvent::ost(ev, st))).status, want);
        }
        let mut d = dev(OpKind::AddCpu);
        assert_eq!(
            d.on_event(GuestEvent::Eject),
            Verdict::Refuse(FailureReason::GuestEjectedDuringAdd)
        );
    }

    #[test]
    fn linux_cpu_eject_order_commits_only_after_ej0_and_success() {
        let mut d = dev(OpKind::RemoveCpu);
        assert_eq!(d.on_event(GuestEvent::ost(3, 0x84)), Verdict::Pending);
        assert_eq!(d.on_event(GuestEvent::Eject), Verdict::Pending);
        assert!(d.ejected);
        assert_eq!(d.on_event(GuestEvent::ost(3, 0)), Verdict::Accept);
        assert!(d.notes.is_empty());
    }

    #[test]
    fn remove_success_without_ej0_is_not_a_commit() {
        let mut d = dev(OpKind::RemoveMemory);
        assert_eq!(d.on_event(GuestEvent::ost(3, 0)), Verdict::Pending);
        assert!(d.notes[0].contains("without _EJ0"));
        assert_eq!(d.on_event(GuestEvent::ost(1, 0)), Verdict::Pending);
    }

    #[test]
    fn remove_failures_before_ej0_refuse_with_the_guest_reason() {
        for (st, want) in [
            (1, OstStatus::Failure),
            (0x80, OstStatus::EjectNotSupported),
            (0x81, OstStatus::DeviceInUse),
            (0x82, OstStatus::DeviceBusy),
            (0x83, OstStatus::EjectDependencyBusy),
        ] {
            let mut d = dev(OpKind::RemoveCpu);
            d.on_event(GuestEvent::ost(3, 0x84));
            let ost = refused(d.on_event(GuestEvent::ost(3, st)));
            assert_eq!(ost.event, OstEvent::EjectRequest);
            assert_eq!(ost.status, want);
        }
    }

    #[test]
    fn failure_after_ej0_accepts_with_a_note() {
        let mut d = dev(OpKind::RemoveCpu);
        d.on_event(GuestEvent::Eject);
        assert_eq!(d.on_event(GuestEvent::ost(3, 0x82)), Verdict::Accept);
        assert!(d.notes[0].contains("after _EJ0"));
    }

    #[test]
    fn deadlines() {
        let mut add = dev(OpKind::AddCpu);
        assert_eq!(
            add.on_deadline(),
            Verdict::Refuse(FailureReason::Timeout {
                guest_touched: false,
                last_ost: None
            })
        );
        let mut add = dev(OpKind::AddCpu);
        add.on_event(GuestEvent::ost(0x200, 0x80));
        match add.on_deadline() {
            Verdict::Refuse(FailureReason::Timeout {
                guest_touched: true,
                last_ost: Some(o),
            }) => assert_eq!(o.status, OstStatus::InsertionInProgress),
            other => panic!("{other:?}"),
        }
        let mut rm = dev(OpKind::RemoveCpu);
        rm.on_event(GuestEvent::ost(3, 0x84));
        assert!(matches!(
            rm.on_deadline(),
            Verdict::Refuse(FailureReason::Timeout {
                guest_touched: true,
                ..
            })
        ));
        let mut rm = dev(OpKind::RemoveCpu);
        rm.on_event(GuestEvent::Eject);
        assert_eq!(rm.on_deadline(), Verdict::Accept);
        assert!(rm.notes[0].contains("deadline"));
    }
}
