//! The journal: one record per transaction (phases with times, guest events, errors,
//! outcome) in a bounded ring. Its records are what the REST API returns.
//!
//! Everything a guest can make the journal keep is bounded: guest-initiated records have
//! their own quota ([`MAX_GUEST_RECORDS`]) so that a guest cannot evict the host's records,
//! and each record keeps at most [`MAX_GUEST_EVENTS`] guest events. What the bounds drop is
//! counted ([`Journal::stats`], [`TxRecord::dropped_guest_events`]).

use std::collections::VecDeque;

use serde::Serialize;

use crate::clock::Timestamp;
use crate::device::{DeviceId, MemoryPlacement};
use crate::ops::{BatchMode, OpKind, Origin, Request, TxId};
use crate::ost::Ost;
use crate::outcome::{TxOutcome, TxStatus};

/// Most guest events kept per record (64); further ones are only counted in
/// [`TxRecord::dropped_guest_events`].
///
/// A guest can send events to every transaction in flight on its devices, without limit.
/// A normal single-device exchange takes at most 4 events (status read, pending `_OST`,
/// `_EJ0`, final `_OST`), so 64 leaves room for a batch of ~16 devices while keeping a
/// record's guest events to a few kilobytes of JSON.
pub const MAX_GUEST_EVENTS: usize = 64;

/// Most guest-initiated ([`Origin::Guest`]) records the journal keeps (32), on top of the
/// host-initiated ones (`EngineConfig::journal_capacity`). When the quota is full, a new
/// guest record evicts the oldest guest record; it never evicts a host record. The quota is
/// lowered to the host capacity when that is smaller.
///
/// Why: a guest can start any number of (refused) ejects; with one shared ring it could
/// flush every host record, the API's audit trail, out of the journal.
pub const MAX_GUEST_RECORDS: usize = 32;

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

impl Phase {
    /// The name it is journaled under: `validate`, `await_guest`...
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Validate => "validate",
            Phase::Prepare => "prepare",
            Phase::Publish => "publish",
            Phase::AwaitGuest => "await_guest",
            Phase::Commit => "commit",
            Phase::Rollback => "rollback",
        }
    }
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
    /// The guest saw the device's event: its scan acknowledged the pending insert or remove
    /// (only the first per device is journaled; the name is from when that was a status
    /// register read).
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

/// The journal's fill and what its bounds dropped, for the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct JournalStats {
    /// Host-initiated records kept.
    pub host_records: usize,
    /// Guest-initiated records kept.
    pub guest_records: usize,
    /// Most host-initiated records kept ([`Journal::capacity`]).
    pub host_capacity: usize,
    /// Most guest-initiated records kept ([`Journal::guest_capacity`]).
    pub guest_capacity: usize,
    /// Host-initiated records evicted by newer host-initiated ones.
    pub evicted_host: u64,
    /// Guest-initiated records evicted by newer guest-initiated ones.
    pub evicted_guest: u64,
}

/// A bounded ring of finished transaction records, oldest first, with separate quotas for
/// host- and guest-initiated records (see [`MAX_GUEST_RECORDS`]).
#[derive(Debug, Clone)]
pub struct Journal {
    capacity: usize,
    guest_capacity: usize,
    /// Both origins in finishing order, so that listings stay chronological.
    records: VecDeque<TxRecord>,
    evicted_host: u64,
    evicted_guest: u64,
}

impl Journal {
    /// An empty journal keeping at most `capacity` host-initiated records (at least 1) and
    /// at most `min(capacity, MAX_GUEST_RECORDS)` guest-initiated ones.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        let guest_capacity = capacity.min(MAX_GUEST_RECORDS);
        Journal {
            capacity,
            guest_capacity,
            records: VecDeque::with_capacity(capacity + guest_capacity),
            evicted_host: 0,
            evicted_guest: 0,
        }
    }

    /// Appends a finished record. When its origin's quota is full, the oldest record of the
    /// same origin is evicted: a guest record never pushes out a host record.
    pub(crate) fn push(&mut self, record: TxRecord) {
        let origin = record.origin;
        let quota = match origin {
            Origin::Host => self.capacity,
            Origin::Guest => self.guest_capacity,
        };
        // A linear scan: the ring holds a few hundred records at most.
        if self.count(origin) >= quota {
            if let Some(pos) = self.records.iter().position(|r| r.origin == origin) {
                self.records.remove(pos);
                match origin {
                    Origin::Host => self.evicted_host += 1,
                    Origin::Guest => self.evicted_guest += 1,
                }
            }
        }
        self.records.push_back(record);
    }

    fn count(&self, origin: Origin) -> usize {
        self.records.iter().filter(|r| r.origin == origin).count()
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

    /// Maximum number of host-initiated records kept (`EngineConfig::journal_capacity`).
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Maximum number of guest-initiated records kept: [`MAX_GUEST_RECORDS`], or
    /// [`Journal::capacity`] if smaller.
    pub fn guest_capacity(&self) -> usize {
        self.guest_capacity
    }

    /// Records dropped to respect the quotas so far, host- and guest-initiated.
    pub fn evicted(&self) -> u64 {
        self.evicted_host + self.evicted_guest
    }

    /// Guest-initiated records dropped to respect the guest quota so far.
    pub fn evicted_guest(&self) -> u64 {
        self.evicted_guest
    }

    /// Fill and eviction counters.
    pub fn stats(&self) -> JournalStats {
        let guest_records = self.count(Origin::Guest);
        JournalStats {
            host_records: self.records.len() - guest_records,
            guest_records,
            host_capacity: self.capacity,
            guest_capacity: self.guest_capacity,
            evicted_host: self.evicted_host,
            evicted_guest: self.evicted_guest,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: u64) -> TxRecord {
        rec_from(id, Origin::Host)
    }

    fn rec_from(id: u64, origin: Origin) -> TxRecord {
        TxRecord::new(
            TxId(id),
            origin,
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
        assert_eq!(Journal::new(0).guest_capacity(), 1);
        assert_eq!(Journal::new(256).guest_capacity(), MAX_GUEST_RECORDS);
    }

    #[test]
    fn guest_records_never_evict_host_records() {
        let mut j = Journal::new(256);
        let mut id = 0;
        for _ in 0..19 {
            id += 1;
            j.push(rec(id));
        }
        for _ in 0..600 {
            id += 1;
            j.push(rec_from(id, Origin::Guest));
        }
        let stats = j.stats();
        assert_eq!(
            stats,
            JournalStats {
                host_records: 19,
                guest_records: MAX_GUEST_RECORDS,
                host_capacity: 256,
                guest_capacity: MAX_GUEST_RECORDS,
                evicted_host: 0,
                evicted_guest: 600 - MAX_GUEST_RECORDS as u64,
            }
        );
        assert_eq!(j.len(), 19 + MAX_GUEST_RECORDS);
        assert_eq!(j.evicted(), 600 - MAX_GUEST_RECORDS as u64);
        assert_eq!(j.evicted_guest(), j.evicted());
        for host in 1..=19 {
            assert!(j.get(TxId(host)).is_some(), "host record {host} evicted");
        }
        // The newest guest records are the ones kept, after the host ones.
        let guests: Vec<u64> = j
            .iter()
            .filter(|r| r.origin == Origin::Guest)
            .map(|r| r.id.0)
            .collect();
        let want: Vec<u64> = (id - MAX_GUEST_RECORDS as u64 + 1..=id).collect();
        assert_eq!(guests, want);
    }

    #[test]
    fn host_records_evict_only_host_records_and_order_is_kept() {
        let mut j = Journal::new(3);
        j.push(rec_from(1, Origin::Guest));
        for id in 2..=6 {
            j.push(rec(id));
        }
        j.push(rec_from(7, Origin::Guest));
        let ids: Vec<u64> = j.iter().map(|r| r.id.0).collect();
        assert_eq!(ids, vec![1, 4, 5, 6, 7]);
        let s = j.stats();
        assert_eq!((s.evicted_host, s.evicted_guest), (2, 0));
        // The guest quota is the host capacity when that is smaller.
        for id in 8..=10 {
            j.push(rec_from(id, Origin::Guest));
        }
        let ids: Vec<u64> = j.iter().map(|r| r.id.0).collect();
        assert_eq!(ids, vec![4, 5, 6, 8, 9, 10]);
        assert_eq!(j.evicted_guest(), 2);
        assert_eq!(j.evicted(), 4);
    }

    #[test]
    fn guest_events_are_capped_and_phases_summed() {
        let mut r = rec(1);
        for i in 0..(MAX_GUEST_EVENTS as u64 + 3) {
            r.guest_event(Timestamp(i), DeviceId::cpu(1), GuestEventKind::Eject);
        }
        assert_eq!(r.guest_events.len(), MAX_GUEST_EVENTS);
        assert_eq!(r.dropped_guest_events, 3);
        for phase in [Phase::Validate, Phase::AwaitGuest, Phase::Rollback] {
            assert_eq!(serde_json::json!(phase), phase.name());
        }
        r.phase(Phase::Commit, vec![], Timestamp(0), Timestamp(5), true);
        r.phase(Phase::Prepare, vec![], Timestamp(5), Timestamp(6), true);
        r.phase(Phase::Commit, vec![], Timestamp(10), Timestamp(12), true);
        assert_eq!(
            r.phase_durations(),
            vec![(Phase::Commit, 7), (Phase::Prepare, 1)]
        );
    }
}
