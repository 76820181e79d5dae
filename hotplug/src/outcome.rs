//! What a finished transaction reports, per device, and what the engine tells the VMM to do.

use std::fmt;

use serde::Serialize;

use crate::device::DeviceId;
use crate::machine::ValidationError;
use crate::ops::{OpKind, TxId};
use crate::ost::{Ost, OstStatus};

/// How a transaction ended, as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TxStatus {
    /// Every device committed (also: an empty batch).
    Committed,
    /// Some devices committed, others were rolled back or rejected (best effort only).
    PartiallyCommitted,
    /// Nothing changed: at least one device got past Validate and was undone.
    RolledBack,
    /// Nothing changed: refused in Validate (veto, or a refused guest eject).
    Rejected,
}

/// Why a device did not commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FailureReason {
    /// The model refused a guest-initiated eject (e.g. vCPU 0, boot memory).
    Invalid {
        /// The validation error.
        error: ValidationError,
    },
    /// A participant vetoed in Validate.
    Vetoed {
        /// The participant's name.
        participant: String,
        /// Its error chain.
        error: Vec<String>,
    },
    /// A participant failed in Prepare.
    PrepareFailed {
        /// The participant's name.
        participant: String,
        /// Its error chain.
        error: Vec<String>,
    },
    /// A participant failed in Publish.
    PublishFailed {
        /// The participant's name.
        participant: String,
        /// Its error chain.
        error: Vec<String>,
    },
    /// The guest answered with a failure `_OST`; the device stays as it was.
    GuestRefused {
        /// The guest's verdict (its reason).
        ost: Ost,
    },
    /// The guest evaluated `_EJ0` on a device being added.
    GuestEjectedDuringAdd,
    /// No verdict before the deadline: the change was withdrawn.
    Timeout {
        /// Whether the guest looked at the device at all (status read, any `_OST` or `_EJ0`).
        guest_touched: bool,
        /// The last `_OST` the guest gave, if any (e.g. a pending status).
        last_ost: Option<Ost>,
    },
    /// Undone because another device of the all-or-nothing batch failed.
    BatchAborted {
        /// The device whose failure aborted the batch.
        cause: DeviceId,
    },
    /// A guest-initiated eject refused by the `deny` policy.
    GuestEjectDenied,
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailureReason::Invalid { error } => write!(f, "invalid: {error}"),
            FailureReason::Vetoed { participant, error } => {
                write!(f, "vetoed by {participant}: {}", error.join(": "))
            }
            FailureReason::PrepareFailed { participant, error } => {
                write!(f, "prepare failed in {participant}: {}", error.join(": "))
            }
            FailureReason::PublishFailed { participant, error } => {
                write!(f, "publish failed in {participant}: {}", error.join(": "))
            }
            FailureReason::GuestRefused { ost } => write!(f, "guest refused: {ost}"),
            FailureReason::GuestEjectedDuringAdd => write!(f, "guest ejected the device"),
            FailureReason::Timeout { guest_touched, .. } => write!(
                f,
                "no guest verdict before the deadline (guest {} the device)",
                if *guest_touched {
                    "had looked at"
                } else {
                    "never looked at"
                }
            ),
            FailureReason::BatchAborted { cause } => write!(f, "batch aborted by {cause}"),
            FailureReason::GuestEjectDenied => write!(f, "guest-initiated eject denied by policy"),
        }
    }
}

/// A device's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum DeviceResult {
    /// The operation is done.
    Committed,
    /// The device went back to where it was.
    RolledBack {
        /// Why.
        reason: FailureReason,
    },
    /// Refused before anything changed.
    Rejected {
        /// Why.
        reason: FailureReason,
    },
}

impl DeviceResult {
    /// Whether the operation took effect.
    pub fn is_committed(&self) -> bool {
        matches!(self, DeviceResult::Committed)
    }

    /// The failure reason, if any.
    pub fn reason(&self) -> Option<&FailureReason> {
        match self {
            DeviceResult::Committed => None,
            DeviceResult::RolledBack { reason } | DeviceResult::Rejected { reason } => Some(reason),
        }
    }
}

/// A participant's error recorded without interrupting the transaction (commit, rollback).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepError {
    /// The participant's name.
    pub participant: String,
    /// The step: `commit`, `rollback_prepare`, `rollback_publish`.
    pub step: &'static str,
    /// The error chain.
    pub error: Vec<String>,
}

/// One device's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceOutcome {
    /// The device.
    pub device: DeviceId,
    /// What was asked.
    pub operation: OpKind,
    /// What happened.
    #[serde(flatten)]
    pub result: DeviceResult,
    /// Whether the guest looked at the device during the transaction.
    pub guest_touched: bool,
    /// Errors of commit or rollback steps (logged; they did not change the result).
    pub step_errors: Vec<StepError>,
    /// Anomalies worth knowing (e.g. a success `_OST` without `_EJ0`): at most
    /// [`MAX_NOTES`], each at most [`MAX_NOTE_LEN`] bytes.
    pub notes: Vec<String>,
    /// Notes not kept: beyond [`MAX_NOTES`], or repeating one already kept.
    pub dropped_notes: u64,
}

/// Most notes kept per device of a transaction (8); further notes, and notes repeating one
/// already kept, are only counted in [`DeviceOutcome::dropped_notes`].
///
/// Why: the guest causes most notes (e.g. each `_OST` ignored during an add), as many as it
/// likes. A normal exchange makes at most 2 notes per device.
pub const MAX_NOTES: usize = 8;

/// Longest note kept, in bytes (160); longer ones are cut at a character boundary and end
/// in `...`. Notes embed guest-provided values (`_OST` codes); these are `u32`s today, so
/// this is a guard for texts added later rather than a limit met in practice.
pub const MAX_NOTE_LEN: usize = 160;

/// A finished transaction's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TxOutcome {
    /// Overall status.
    pub status: TxStatus,
    /// Per device, in batch order.
    pub devices: Vec<DeviceOutcome>,
}

/// A transaction that finished during an engine call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Completion {
    /// The transaction.
    pub id: TxId,
    /// How it ended.
    pub outcome: TxOutcome,
}

/// Something the VMM must do in answer to a guest event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Directive {
    /// Refuse a guest-initiated eject: keep the device present and usable (an `_EJ0` for it
    /// must not tear it down; the controller keeps reporting it enabled), report `status` as
    /// the eject's failure status, and raise a Device Check so the guest re-enumerates it.
    RefuseEject {
        /// The device the guest tried to eject.
        device: DeviceId,
        /// The journal record of the refusal.
        tx: TxId,
        /// The failure status to answer with.
        status: OstStatus,
    },
}

/// What finished during an engine call, and what the VMM must do.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Transactions that ended (answer their API waiters).
    pub completed: Vec<Completion>,
    /// Orders for the VMM.
    pub directives: Vec<Directive>,
}

impl Report {
    /// Nothing happened.
    pub fn is_empty(&self) -> bool {
        self.completed.is_empty() && self.directives.is_empty()
    }

    pub(crate) fn merge(&mut self, other: Report) {
        self.completed.extend(other.completed);
        self.directives.extend(other.directives);
    }
}
