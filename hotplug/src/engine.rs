//! The engine: the VMM's single entry point. Synchronous and event-driven: the VMM calls
//! [`Engine::begin`], [`Engine::guest_event`] and [`Engine::tick`]; each returns what
//! finished and what the VMM must do.

use std::collections::BTreeMap;
use std::sync::Arc;

use tracing::{debug, info};

use crate::clock::{Clock, Timestamp};
use crate::config::{EngineConfig, GuestEjectPolicy};
use crate::device::DeviceId;
use crate::journal::{GuestEventKind, Journal, Target, TxRecord};
use crate::kind::{DeviceKind, DeviceParticipant, ForKind};
use crate::machine::{
    ConfigError, Machine, MachineConfig, PlanError, PlannedOp, Presence, ValidationError,
};
use crate::ops::{Origin, Request, TxId};
use crate::ost::{GuestEvent, Ost, OstEvent, OstStatus};
use crate::outcome::{
    Completion, DeviceOutcome, DeviceResult, Directive, FailureReason, Report, TxOutcome, TxStatus,
};
use crate::participant::{HotplugParticipant, Orders, ParticipantId, Registry};
use crate::tx::{Ctx, Transaction};

/// Why the engine refused a call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The request is invalid for this machine (the API answers 422 with this message).
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// A device of the request is in flight (the API answers 429, retry later).
    #[error("{device} is busy: {tx} is in flight")]
    Conflict {
        /// The busy device.
        device: DeviceId,
        /// The transaction in flight on it.
        tx: TxId,
    },
    /// Participants can only be registered while no transaction is in flight.
    #[error("cannot register a participant while {tx} is in flight")]
    RegisterInFlight {
        /// A transaction in flight.
        tx: TxId,
    },
}

impl From<PlanError> for Error {
    fn from(e: PlanError) -> Self {
        match e {
            PlanError::Invalid(v) => Error::Invalid(v),
            PlanError::Conflict { device, tx } => Error::Conflict { device, tx },
        }
    }
}

/// A started transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Begun {
    /// Its id.
    pub id: TxId,
    /// Set when it already ended inside `begin` (a veto, a failed Prepare or Publish, or an
    /// empty batch); otherwise it is waiting for the guest.
    pub completed: Option<Completion>,
}

/// The hotplug transaction engine.
pub struct Engine {
    config: EngineConfig,
    machine: Machine,
    registry: Registry,
    clock: Arc<dyn Clock>,
    inflight: BTreeMap<TxId, Transaction>,
    /// Refused guest ejects whose episode is still open (their `_EJ0` must be refused).
    refusals: BTreeMap<DeviceId, TxId>,
    journal: Journal,
    next_id: u64,
}

impl Engine {
    /// An engine for a machine, reading time from `clock`.
    pub fn new(
        machine: MachineConfig,
        config: EngineConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ConfigError> {
        if config.journal_capacity == 0 {
            return Err(ConfigError::JournalCapacity);
        }
        Ok(Engine {
            machine: Machine::new(machine)?,
            config,
            registry: Registry::default(),
            clock,
            inflight: BTreeMap::new(),
            refusals: BTreeMap::new(),
            journal: Journal::new(config.journal_capacity),
            next_id: 1,
        })
    }

    /// Registers a participant under `name` with its order numbers.
    pub fn register(
        &mut self,
        name: impl Into<String>,
        orders: Orders,
        participant: Box<dyn HotplugParticipant>,
    ) -> Result<ParticipantId, Error> {
        if let Some(&tx) = self.inflight.keys().next() {
            return Err(Error::RegisterInFlight { tx });
        }
        Ok(self.registry.register(name.into(), orders, participant))
    }

    /// Registers a participant of one device kind under `name` with its order numbers: it is
    /// called only for ops on devices of kind `K`, as a [`KindOp<K>`](crate::KindOp).
    pub fn register_for<K: DeviceKind>(
        &mut self,
        name: impl Into<String>,
        orders: Orders,
        participant: impl DeviceParticipant<K> + 'static,
    ) -> Result<ParticipantId, Error> {
        self.register(name, orders, Box::new(ForKind::new(participant)))
    }

    /// The configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// The machine model (in-flight devices show as adding/removing).
    pub fn machine(&self) -> &Machine {
        &self.machine
    }

    /// The ring of finished transactions (its bounds and counters: [`Journal::stats`]).
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// The record of a transaction, in flight or finished (if still in the ring).
    pub fn transaction(&self, id: TxId) -> Option<&TxRecord> {
        self.inflight
            .get(&id)
            .map(|t| &t.record)
            .or_else(|| self.journal.get(id))
    }

    /// Records of the transactions in flight, by id.
    pub fn in_flight(&self) -> impl Iterator<Item = &TxRecord> {
        self.inflight.values().map(|t| &t.record)
    }

    /// Every known record: finished ones (oldest first), then those in flight.
    pub fn records(&self) -> impl Iterator<Item = &TxRecord> {
        self.journal.iter().chain(self.in_flight())
    }

    /// The earliest deadline of a transaction in flight: call [`Engine::tick`] then.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        self.inflight
            .values()
            .filter_map(Transaction::next_deadline)
            .min()
    }

    fn allocate_id(&mut self) -> TxId {
        let id = TxId(self.next_id);
        self.next_id += 1;
        id
    }

    fn targets(plan: &[PlannedOp]) -> Vec<Target> {
        plan.iter()
            .map(|p| Target {
                device: p.device,
                operation: p.kind,
                memory: p.memory,
                deadline_us: None,
            })
            .collect()
    }

    /// Starts a transaction: plans it on the model (conflicts and validation errors return
    /// at once, nothing journaled), then runs Validate, Prepare and Publish through the
    /// participants. The transaction then waits for the guest, unless it already ended.
    pub fn begin(&mut self, request: Request) -> Result<Begun, Error> {
        let plan = self.machine.plan(&request)?;
        let id = self.allocate_id();
        let now = self.clock.now();
        for p in &plan {
            self.refusals.remove(&p.device);
        }
        debug!(tx = %id, ?request, devices = plan.len(), "hotplug transaction started");
        let record = TxRecord::new(id, Origin::Host, request.clone(), Self::targets(&plan), now);
        self.machine.reserve(&plan, id);
        let mut tx = Transaction::new(id, Origin::Host, request.mode(), plan, record);
        self.ctx_run(|ctx| tx.start(ctx));
        let completed = self.settle(tx);
        Ok(Begun { id, completed })
    }

    fn ctx_run<R>(&mut self, f: impl FnOnce(&mut Ctx<'_>) -> R) -> R {
        let mut ctx = Ctx {
            registry: &mut self.registry,
            clock: &*self.clock,
            deadlines: &self.config.deadlines,
        };
        f(&mut ctx)
    }

    /// Files a finished transaction (model, journal) or puts it back in flight.
    fn settle(&mut self, tx: Transaction) -> Option<Completion> {
        if !tx.is_finished() {
            self.inflight.insert(tx.id, tx);
            return None;
        }
        let (record, completion, settled) = tx.finish(self.clock.now());
        for (op, committed) in &settled {
            self.machine.settle(op, *committed);
        }
        // The VMM logs the transaction's end, with its phases and guest answers, in the
        // transaction's span; this is the engine's own trace of it.
        debug!(
            tx = %completion.id,
            status = ?completion.outcome.status,
            us = record.duration_us.unwrap_or(0),
            "hotplug transaction ended"
        );
        self.journal.push(record);
        Some(completion)
    }

    /// Something the guest did to `device`.
    pub fn guest_event(&mut self, device: DeviceId, event: GuestEvent) -> Report {
        let mut report = Report::default();
        if let Some(id) = self.machine.in_flight(device) {
            if let Some(mut tx) = self.inflight.remove(&id) {
                // An `_EJ0` of a device this transaction keeps (its add accepted, or its
                // removal refused, while the rest of its batch is pending): the eject is
                // refused and the device offered again (under `allow` its controller already
                // let it go).
                if event == GuestEvent::Eject && tx.keeps(device) {
                    report.directives.push(Directive::RefuseEject {
                        device,
                        tx: id,
                        status: OstStatus::EjectNotSupported,
                    });
                }
                self.ctx_run(|ctx| tx.on_guest(ctx, device, event));
                report.completed.extend(self.settle(tx));
            }
            return report;
        }
        let starts_eject = match event {
            GuestEvent::Eject => !self.refusals.contains_key(&device),
            // A guest repeating its eject while the refusal is open is refused again within
            // the same episode: one record however often it asks, rather than one record
            // per attempt crowding the journal.
            GuestEvent::Ost { event, status } => {
                let ost = Ost::from_raw(event, status);
                ost.event == OstEvent::OspmEject
                    && ost.status.is_pending()
                    && !self.refusal_is_journaled(device)
            }
            GuestEvent::StatusRead => false,
        };
        if starts_eject && self.machine.presence(device) == Some(Presence::Present) {
            return self.guest_eject(device, event);
        }
        if let Some(&id) = self.refusals.get(&device) {
            self.refused_episode_event(id, device, event, &mut report);
        } else if event != GuestEvent::StatusRead {
            debug!(%device, ?event, "guest event outside any transaction: ignored");
        }
        report
    }

    /// Whether a refused guest eject of `device` is open and its record still kept (a repeat
    /// joins it; once its record is evicted, a repeat opens a new episode and record).
    fn refusal_is_journaled(&self, device: DeviceId) -> bool {
        self.refusals
            .get(&device)
            .is_some_and(|&id| self.journal.get(id).is_some())
    }

    /// A further event of a refused guest eject: journaled (within [`MAX_GUEST_EVENTS`]);
    /// `_EJ0` and a repeated `_OST(0x103, pending)` are refused again.
    ///
    /// [`MAX_GUEST_EVENTS`]: crate::MAX_GUEST_EVENTS
    fn refused_episode_event(
        &mut self,
        id: TxId,
        device: DeviceId,
        event: GuestEvent,
        report: &mut Report,
    ) {
        let now = self.clock.now();
        let kind = match event {
            GuestEvent::Eject => {
                report.directives.push(Directive::RefuseEject {
                    device,
                    tx: id,
                    status: OstStatus::EjectNotSupported,
                });
                GuestEventKind::Eject
            }
            GuestEvent::Ost { event, status } => {
                let ost = Ost::from_raw(event, status);
                if ost.event == OstEvent::OspmEject {
                    if ost.status.is_pending() {
                        report.directives.push(Directive::RefuseEject {
                            device,
                            tx: id,
                            status: OstStatus::EjectNotSupported,
                        });
                    } else {
                        self.refusals.remove(&device);
                    }
                }
                GuestEventKind::Ost { ost }
            }
            GuestEvent::StatusRead => return,
        };
        if let Some(r) = self.journal.get_mut(id) {
            r.guest_event(now, device, kind);
        }
    }

    /// A guest-initiated eject of a present device with nothing in flight.
    fn guest_eject(&mut self, device: DeviceId, event: GuestEvent) -> Report {
        let now = self.clock.now();
        let plan = match self.config.guest_eject {
            GuestEjectPolicy::Deny => Err(FailureReason::GuestEjectDenied),
            GuestEjectPolicy::Allow => match self.machine.plan_guest_eject(device) {
                Ok(op) => Ok(op),
                Err(PlanError::Invalid(error)) => Err(FailureReason::Invalid { error }),
                // Unreachable: nothing is in flight on the device.
                Err(PlanError::Conflict { .. }) => return Report::default(),
            },
        };
        let request = match device {
            DeviceId::Cpu(c) => Request::RemoveCpu { id: c.0 },
            DeviceId::MemorySlot(s) => Request::RemoveMemory { slot: s.0 },
        };
        let id = self.allocate_id();
        // A new attempt closes an earlier episode whose record is gone.
        self.refusals.remove(&device);
        info!(tx = %id, %device, policy = ?self.config.guest_eject, "guest-initiated eject");
        let op = match plan {
            Ok(op) => op,
            Err(reason) => return self.refuse_guest_eject(id, device, request, event, reason),
        };
        let record = TxRecord::new(
            id,
            Origin::Guest,
            request.clone(),
            Self::targets(&[op]),
            now,
        );
        self.machine.reserve(&[op], id);
        let mut tx = Transaction::new(id, Origin::Guest, request.mode(), vec![op], record);
        self.ctx_run(|ctx| {
            tx.start(ctx);
            if !tx.is_finished() {
                tx.on_guest(ctx, device, event);
            }
        });
        let mut report = Report::default();
        let ended_at_once = tx.is_finished();
        if let Some(c) = self.settle(tx) {
            if ended_at_once && c.outcome.status != TxStatus::Committed {
                self.refusals.insert(device, id);
                report.directives.push(Directive::RefuseEject {
                    device,
                    tx: id,
                    status: OstStatus::EjectNotSupported,
                });
            }
            report.completed.push(c);
        }
        report
    }

    fn refuse_guest_eject(
        &mut self,
        id: TxId,
        device: DeviceId,
        request: Request,
        event: GuestEvent,
        reason: FailureReason,
    ) -> Report {
        let now = self.clock.now();
        let kind = self.machine.plan_guest_eject(device).ok().map(|p| p.kind);
        let operation = kind.unwrap_or(match device {
            DeviceId::Cpu(_) => crate::ops::OpKind::RemoveCpu,
            DeviceId::MemorySlot(_) => crate::ops::OpKind::RemoveMemory,
        });
        let target = Target {
            device,
            operation,
            memory: None,
            deadline_us: None,
        };
        let mut record = TxRecord::new(id, Origin::Guest, request, vec![target], now);
        let ev = match event {
            GuestEvent::Ost { event, status } => GuestEventKind::Ost {
                ost: Ost::from_raw(event, status),
            },
            GuestEvent::Eject => GuestEventKind::Eject,
            GuestEvent::StatusRead => GuestEventKind::StatusRead,
        };
        record.guest_event(now, device, ev);
        record.error(
            now,
            "validate",
            Some(device),
            None,
            vec![reason.to_string()],
        );
        let outcome = TxOutcome {
            status: TxStatus::Rejected,
            devices: vec![DeviceOutcome {
                device,
                operation,
                result: DeviceResult::Rejected { reason },
                guest_touched: true,
                step_errors: Vec::new(),
                notes: Vec::new(),
                dropped_notes: 0,
            }],
        };
        record.finish(outcome.clone(), now);
        self.journal.push(record);
        self.refusals.insert(device, id);
        info!(tx = %id, %device, "guest-initiated eject refused");
        Report {
            completed: vec![Completion { id, outcome }],
            directives: vec![Directive::RefuseEject {
                device,
                tx: id,
                status: OstStatus::EjectNotSupported,
            }],
        }
    }

    /// Applies the deadlines that passed.
    pub fn tick(&mut self) -> Report {
        let now = self.clock.now();
        let due: Vec<TxId> = self
            .inflight
            .iter()
            .filter(|(_, t)| t.next_deadline().is_some_and(|d| d <= now))
            .map(|(id, _)| *id)
            .collect();
        let mut report = Report::default();
        for id in due {
            if let Some(mut tx) = self.inflight.remove(&id) {
                self.ctx_run(|ctx| tx.on_tick(ctx, now));
                let mut r = Report::default();
                r.completed.extend(self.settle(tx));
                report.merge(r);
            }
        }
        report
    }
}
