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
use crate::outcome::{DeviceResult, FailureReason, StepError, MAX_NOTES, MAX_NOTE_LEN};

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
    /// At most [`MAX_NOTES`]: the guest decides how many notes it causes.
    pub(crate) notes: Vec<String>,
    pub(crate) dropped_notes: u64,
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
            dropped_notes: 0,
            step_errors: Vec::new(),
        }
    }

    /// Keeps a note, cut to [`MAX_NOTE_LEN`] bytes, unless [`MAX_NOTES`] are kept already or
    /// it repeats a kept one (a guest repeating the same `_OST` says nothing new); dropped
    /// notes are counted.
    pub(crate) fn note(&mut self, text: String) {
        let text = bounded_note(text);
        if self.notes.len() >= MAX_NOTES || self.notes.contains(&text) {
            self.dropped_notes += 1;
            return;
        }
        self.notes.push(text);
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
                    self.note(format!("ignored {ost} during an add"));
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
                    self.note(format!("ignored {ost} during a remove"));
                    Verdict::Pending
                } else if ost.status.is_pending() {
                    Verdict::Pending
                } else if self.ejected {
                    if !ost.status.is_success() {
                        self.note(format!(
                            "{ost} after _EJ0: the guest had already released the device"
                        ));
                    }
                    Verdict::Accept
                } else if ost.status.is_success() {
                    self.note(format!("{ost} without _EJ0 is not a commit: still waiting"));
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
            self.note("deadline passed after _EJ0 without a final _OST: committed".into());
            return Verdict::Accept;
        }
        Verdict::Refuse(FailureReason::Timeout {
            guest_touched: self.touched,
            last_ost: self.last_ost,
        })
    }
}

/// `text` cut to at most [`MAX_NOTE_LEN`] bytes, on a character boundary, ending in `...`
/// when cut.
fn bounded_note(mut text: String) -> String {
    const ELLIPSIS: &str = "...";
    if text.len() <= MAX_NOTE_LEN {
        return text;
    }
    let mut end = MAX_NOTE_LEN - ELLIPSIS.len();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str(ELLIPSIS);
    text
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

    #[test]
    fn notes_stop_at_the_cap_and_the_overflow_is_counted() {
        // 255 distinct ignored _OSTs during an add: a note each, until the cap.
        let mut d = dev(OpKind::AddCpu);
        for status in 0..255 {
            assert_eq!(d.on_event(GuestEvent::ost(3, status)), Verdict::Pending);
        }
        assert_eq!(d.notes.len(), MAX_NOTES);
        assert_eq!(d.dropped_notes, 255 - MAX_NOTES as u64);
        // The first ones are kept.
        assert!(d.notes[0].starts_with("ignored _OST(0x3 eject_request, 0x0 success)"));

        // A repeated _OST says nothing new: one note, the repeats counted.
        let mut d = dev(OpKind::RemoveCpu);
        for _ in 0..100 {
            d.on_event(GuestEvent::ost(1, 0));
        }
        assert_eq!(d.notes.len(), 1);
        assert_eq!(d.dropped_notes, 99);
    }

    #[test]
    fn note_texts_are_bounded() {
        // The longest guest-provided values there are: every note still fits.
        let mut d = dev(OpKind::RemoveMemory);
        d.on_event(GuestEvent::ost(u32::MAX, u32::MAX));
        d.on_event(GuestEvent::ost(3, 0));
        d.on_event(GuestEvent::Eject);
        d.on_event(GuestEvent::ost(0x103, u32::MAX));
        assert_eq!(d.notes.len(), 3);
        assert!(
            d.notes.iter().all(|n| n.len() <= MAX_NOTE_LEN),
            "{:?}",
            d.notes
        );

        let mut d = dev(OpKind::AddCpu);
        d.note("é".repeat(MAX_NOTE_LEN));
        assert!(d.notes[0].len() <= MAX_NOTE_LEN);
        assert!(d.notes[0].ends_with("..."));
        assert!(d.notes[0].starts_with("éé"));
        let exact = "x".repeat(MAX_NOTE_LEN);
        assert_eq!(bounded_note(exact.clone()), exact);
    }
}
