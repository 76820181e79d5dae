//! The journal: one record per transaction (phases with times, guest events, errors,
//! outcome) in a bounded ring. Its records are what the REST API returns.

use std::collections::VecDeque;

use serde::Serialize;

use crate::clock::Timestamp;
use crate::device::{DeviceId, MemoryPlacement};
use crate::ops::{BatchMode, OpKind, Origin, Request, TxId};
use crate::ost::Ost;
use crate::outcome::{TxOutcome, TxStatus};

/// Most guest events kept per record; further ones are only counted.
pub const MAX_GUEST_EVENTS: usize = 256;

/// A transaction phase as journaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// 1: participants may veto.
    Validate,
    /// 2: host resources allocated.
    Prepare,
    /// 3: the change made visible to the guest.
    Publish,
    /// 4: waiting for the guest's verdict.
    AwaitGuest,
    /// 5: participants finalize.
    Commit,
    /// Completed steps undone in reverse.
    Rollback,
}

/// A transaction's state in its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordStatus {
    /// Not finished.
    InProgress,
    /// See [`TxStatus::Committed`].
    Committed,
    /// See [`TxStatus::PartiallyCommitted`].
    PartiallyCommitted,
    /// See [`TxStatus::RolledBack`].
    RolledBack,
    /// See [`TxStatus::Rejected`].
    Rejected,
}

impl From<TxStatus> for RecordStatus {
    fn from(s: TxStatus) -> Self {
        match s {
            TxStatus::Committed => RecordStatus::Committed,
            TxStatus::PartiallyCommitted => RecordStatus::PartiallyCommitted,
            TxStatus::RolledBack => RecordStatus::RolledBack,
            TxStatus::Rejected => RecordStatus::Rejected,
        }
    }
}

/// One device targeted by a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Target {
    /// The device.
    pub device: DeviceId,
    /// The operation.
    pub operation: OpKind,
    /// For memory: where in the hotplug region.
    pub memory: Option<MemoryPlacement>,
    /// When the guest's verdict is due (set at the end of Publish).
    pub deadline_us: Option<u64>,
}

/// One phase (or, for AwaitGuest, Commit and Rollback, one episode of it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PhaseRecord {
    /// The phase.
    pub phase: Phase,
    /// The devices it covered.
    pub devices: Vec<DeviceId>,
    /// Start, microseconds since the VMM's epoch.
    pub started_us: u64,
    /// End, microseconds since the VMM's epoch.
    pub ended_us: u64,
    /// `ended_us - started_us`.
    pub duration_us: u64,
    /// Whether it ended without error.
    pub ok: bool,
}

/// What the guest did, as journaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum GuestEventKind {
    /// `_OST(event, status)`.
    Ost {
        /// The decoded verdict.
        #[serde(flatten)]
        ost: Ost,
    },
    /// `_EJ0`.
    Eject,
    /// The guest read the device's status (only the first read per device is journaled).
    StatusRead,
}

/// A guest event received during a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GuestEventRecord {
    /// When, microseconds since the VMM's epoch.
    pub at_us: u64,
    /// Which device.
    pub device: DeviceId,
    /// What.
    #[serde(flatten)]
    pub event: GuestEventKind,
}

/// An error met during a transaction, with its chain (outermost first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorRecord {
    /// When, microseconds since the VMM's epoch.
    pub at_us: u64,
    /// The phase or step (`validate`, `prepare`, `publish`, `await_guest`, `commit`,
    /// `rollback_prepare`, `rollback_publish`).
    pub step: &'static str,
    /// The device concerned.
    pub device: Option<DeviceId>,
    /// The participant, when one failed.
    pub participant: Option<String>,
    /// The error chain.
    pub error: Vec<String>,
}

/// Everything known about one transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TxRecord {
    /// The id.
    pub id: TxId,
    /// Who started it.
    pub origin: Origin,
    /// What was asked.
    pub request: Request,
    /// All-or-nothing or best effort.
    pub mode: BatchMode,
    /// The devices, in batch order.
    pub targets: Vec<Target>,
    /// In progress, or how it ended.
    pub status: RecordStatus,
    /// Start, microseconds since the VMM's epoch.
    pub started_us: u64,
    /// End, once finished.
    pub ended_us: Option<u64>,
    /// Total duration, once finished.
    pub duration_us: Option<u64>,
    /// Phases in the order they ran.
    pub phases: Vec<PhaseRecord>,
    /// Every `_OST` and `_EJ0` (and first status read) received, with times.
    pub guest_events: Vec<GuestEventRecord>,
    /// Guest events not kept because of [`MAX_GUEST_EVENTS`].
    pub dropped_guest_events: u64,
    /// Errors, in the order they happened.
    pub errors: Vec<ErrorRecord>,
    /// The outcome, once finished.
    pub outcome: Option<TxOutcome>,
}

impl TxRecord {
    pub(crate) fn new(
        id: TxId,
        origin: Origin,
        request: Request,
        targets: Vec<Target>,
        now: Timestamp,
    ) -> Self {
        TxRecord {
            id,
            origin,
            mode: request.mode(),
            request,
            targets,
            status: RecordStatus::InProgress,
            started_us: now.as_micros(),
            ended_us: None,
            duration_us: None,
            phases: Vec::new(),
            guest_events: Vec::new(),
            dropped_guest_events: 0,
            errors: Vec::new(),
            outcome: None,
        }
    }

    pub(crate) fn phase(
        &mut self,
        phase: Phase,
        devices: Vec<DeviceId>,
        start: Timestamp,
        end: Timestamp,
        ok: bool,
    ) {
        self.phases.push(PhaseRecord {
            phase,
            devices,
            started_us: start.as_micros(),
            ended_us: end.as_micros(),
            duration_us: end.micros_since(start),
            ok,
        });
    }

    pub(crate) fn guest_event(&mut self, at: Timestamp, device: DeviceId, event: GuestEventKind) {
        if self.guest_events.len() >= MAX_GUEST_EVENTS {
            self.dropped_guest_events += 1;
            return;
        }
        self.guest_events.push(GuestEventRecord {
            at_us: at.as_micros(),
            device,
            event,
        });
    }

    pub(crate) fn error(
        &mut self,
        at: Timestamp,
        step: &'static str,
        device: Option<DeviceId>,
        participant: Option<String>,
        error: Vec<String>,
    ) {
        self.errors.push(ErrorRecord {
            at_us: at.as_micros(),
            step,
            device,
            participant,
            error,
        });
    }

    pub(crate) fn finish(&mut self, outcome: TxOutcome, now: Timestamp) {
        self.status = outcome.status.into();
        self.ended_us = Some(now.as_micros());
        self.duration_us = Some(now.as_micros().saturating_sub(self.started_us));
        self.outcome = Some(outcome);
    }

    /// Total time spent in each phase, in microseconds, in first-run order.
    pub fn phase_durations(&self) -> Vec<(Phase, u64)> {
        let mut out: Vec<(Phase, u64)> = Vec::new();
        for p in &self.phases {
            match out.iter_mut().find(|(ph, _)| *ph == p.phase) {
                Some((_, d)) => *d += p.duration_us,
                None => out.push((p.phase, p.duration_us)),
            }
        }
        out
    }
}

/// A bounded ring of finished transaction records, oldest first.
#[derive(Debug, Clone)]
pub struct Journal {
    capacity: usize,
    records: VecDeque<TxRecord>,
    evicted: u64,
}

impl Journal {
    /// An empty journal keeping at most `capacity` records (at least 1).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Journal {
            capacity,
            records: VecDeque::with_capacity(capacity),
            evicted: 0,
        }
    }

    /// Appends a finished record, evicting the oldest when full.
    pub(crate) fn push(&mut self, record: TxRecord) {
        if self.records.len() >= self.capacity {
            self.records.pop_front();
            self.evicted += 1;
        }
        self.records.push_back(record);
    }

    /// The record of `id`, if still kept.
    pub fn get(&self, id: TxId) -> Option<&TxRecord> {
        self.records.iter().find(|r| r.id == id)
    }

    pub(crate) fn get_mut(&mut self, id: TxId) -> Option<&mut TxRecord> {
        self.records.iter_mut().find(|r| r.id == id)
    }

    /// Records, oldest finished first.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &TxRecord> {
        self.records.iter()
    }

    /// Number of records kept.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether no record is kept.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Maximum number of records kept.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Records dropped to respect the capacity so far.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: u64) -> TxRecord {
        TxRecord::new(
            TxId(id),
            Origin::Host,
            Request::AddCpu { id: None },
            vec![],
            Timestamp(id * 10),
        )
    }

    #[test]
    fn ring_is_bounded_and_lookup_works() {
        let mut j = Journal::new(3);
        for id in 1..=5 {
            j.push(rec(id));
        }
        assert_eq!(j.len(), 3);
        assert_eq!(j.capacity(), 3);
        assert_eq!(j.evicted(), 2);
        assert!(j.get(TxId(2)).is_none());
        assert_eq!(j.get(TxId(4)).map(|r| r.started_us), Some(40));
        let ids: Vec<u64> = j.iter().map(|r| r.id.0).collect();
        assert_eq!(ids, vec![3, 4, 5]);
        assert_eq!(Journal::new(0).capacity(), 1);
    }

    #[test]
    fn guest_events_are_capped_and_phases_summed() {
        let mut r = rec(1);
        for i in 0..(MAX_GUEST_EVENTS as u64 + 3) {
            r.guest_event(Timestamp(i), DeviceId::cpu(1), GuestEventKind::Eject);
        }
        assert_eq!(r.guest_events.len(), MAX_GUEST_EVENTS);
        assert_eq!(r.dropped_guest_events, 3);
        r.phase(Phase::Commit, vec![], Timestamp(0), Timestamp(5), true);
        r.phase(Phase::Prepare, vec![], Timestamp(5), Timestamp(6), true);
        r.phase(Phase::Commit, vec![], Timestamp(10), Timestamp(12), true);
        assert_eq!(
            r.phase_durations(),
            vec![(Phase::Commit, 7), (Phase::Prepare, 1)]
        );
    }
}
