//! One transaction in flight: runs the phases through the participants, keeps the log of
//! completed steps, and undoes them in reverse on failure. The guest's part (its events,
//! its deadlines, the verdicts they give) is in [`guest`].

mod guest;

use tracing::{debug, warn};

use crate::clock::{Clock, Timestamp};
use crate::config::Deadlines;
use crate::device::DeviceId;
use crate::journal::{Phase, TxRecord};
use crate::machine::PlannedOp;
use crate::ops::{BatchMode, Origin, TxId};
use crate::outcome::{
    Completion, DeviceOutcome, DeviceResult, FailureReason, StepError, TxOutcome, TxStatus,
};
use crate::participant::{OrderedPhase, Registry};
use crate::verdict::{DevState, DeviceTx};

/// What the phases need from the engine.
pub(crate) struct Ctx<'a> {
    pub(crate) registry: &'a mut Registry,
    pub(crate) clock: &'a dyn Clock,
    pub(crate) deadlines: &'a Deadlines,
}

/// A completed forward step that can be undone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Step {
    phase: OrderedPhase,
    device: usize,
    participant: usize,
}

/// A transaction in flight.
pub(crate) struct Transaction {
    pub(crate) id: TxId,
    mode: BatchMode,
    pub(crate) devices: Vec<DeviceTx>,
    planned: Vec<PlannedOp>,
    steps: Vec<Step>,
    await_start: Timestamp,
    pub(crate) record: TxRecord,
}

impl Transaction {
    pub(crate) fn new(
        id: TxId,
        origin: Origin,
        mode: BatchMode,
        planned: Vec<PlannedOp>,
        record: TxRecord,
    ) -> Self {
        let devices = planned
            .iter()
            .map(|p| {
                DeviceTx::new(crate::ops::DeviceOp {
                    tx: id,
                    kind: p.kind,
                    device: p.device,
                    memory: p.memory,
                    origin,
                })
            })
            .collect();
        Transaction {
            id,
            mode,
            devices,
            planned,
            steps: Vec::new(),
            await_start: Timestamp(0),
            record,
        }
    }

    fn live(&self) -> Vec<usize> {
        (0..self.devices.len())
            .filter(|&i| {
                self.devices
                    .get(i)
                    .is_some_and(|d| d.state == DevState::Live)
            })
            .collect()
    }

    fn ids(&self, idx: &[usize]) -> Vec<DeviceId> {
        idx.iter()
            .filter_map(|&i| self.devices.get(i).map(|d| d.op.device))
            .collect()
    }

    pub(crate) fn index_of(&self, device: DeviceId) -> Option<usize> {
        self.devices.iter().position(|d| d.op.device == device)
    }

    /// Whether `device` stays present once this transaction ends, though the transaction is
    /// still in flight: its add was accepted (the rest of its batch pending), or its removal
    /// was refused or rolled back. An `_EJ0` of it now cannot be carried out.
    pub(crate) fn keeps(&self, device: DeviceId) -> bool {
        use crate::ops::Direction;
        use crate::outcome::DeviceResult;
        self.devices.iter().any(|d| {
            d.op.device == device
                && matches!(
                    (d.op.direction(), &d.state),
                    (
                        Direction::Add,
                        DevState::Accepted | DevState::Done(DeviceResult::Committed)
                    ) | (
                        Direction::Remove,
                        DevState::Done(
                            DeviceResult::RolledBack { .. } | DeviceResult::Rejected { .. }
                        )
                    )
                )
        })
    }

    pub(crate) fn is_finished(&self) -> bool {
        self.devices.iter().all(DeviceTx::is_done)
    }

    fn set_done(&mut self, d: usize, result: DeviceResult) {
        if let Some(dev) = self.devices.get_mut(d) {
            dev.state = DevState::Done(result);
        }
    }

    /// Phases 1-3, then the start of phase 4.
    pub(crate) fn start(&mut self, ctx: &mut Ctx<'_>) {
        self.validate(ctx);
        self.forward(ctx, OrderedPhase::Prepare);
        self.forward(ctx, OrderedPhase::Publish);
        let now = ctx.clock.now();
        self.await_start = now;
        for d in self.live() {
            let Some(dev) = self.devices.get_mut(d) else {
                continue;
            };
            let deadline = now.saturating_add(ctx.deadlines.for_kind(dev.op.kind));
            dev.deadline = Some(deadline);
            dev.state = DevState::Awaiting;
            if let Some(t) = self.record.targets.get_mut(d) {
                t.deadline_us = Some(deadline.as_micros());
            }
        }
        self.resolve(ctx);
    }

    fn validate(&mut self, ctx: &mut Ctx<'_>) {
        let live = self.live();
        if live.is_empty() {
            return;
        }
        let start = ctx.clock.now();
        let mut ok = true;
        'devices: for &d in &live {
            let Some(op) = self.devices.get(d).map(|x| x.op) else {
                continue;
            };
            for p in ctx.registry.ordered(op.direction(), OrderedPhase::Validate) {
                let Some(part) = ctx.registry.get(p) else {
                    continue;
                };
                if let Err(e) = part.validate(&op) {
                    ok = false;
                    let name = ctx.registry.name(p).to_string();
                    let chain = e.chain();
                    debug!(tx = %self.id, device = %op.device, participant = %name, "vetoed");
                    self.record.error(
                        ctx.clock.now(),
                        "validate",
                        Some(op.device),
                        Some(name.clone()),
                        chain.clone(),
                    );
                    let reason = FailureReason::Vetoed {
                        participant: name,
                        error: chain,
                    };
                    self.set_done(d, DeviceResult::Rejected { reason });
                    if self.mode == BatchMode::AllOrNothing {
                        for &o in &live {
                            if o != d && !self.devices.get(o).is_some_and(DeviceTx::is_done) {
                                let reason = FailureReason::BatchAborted { cause: op.device };
                                self.set_done(o, DeviceResult::Rejected { reason });
                            }
                        }
                        break 'devices;
                    }
                    continue 'devices;
                }
            }
        }
        let end = ctx.clock.now();
        debug!(tx = %self.id, ok, us = end.micros_since(start), "validate");
        self.record
            .phase(Phase::Validate, self.ids(&live), start, end, ok);
    }

    /// Prepare or Publish: participants in order, each step logged for rollback.
    fn forward(&mut self, ctx: &mut Ctx<'_>, phase: OrderedPhase) {
        let live = self.live();
        if live.is_empty() {
            return;
        }
        let (jphase, step) = match phase {
            OrderedPhase::Prepare => (Phase::Prepare, "prepare"),
            _ => (Phase::Publish, "publish"),
        };
        let start = ctx.clock.now();
        let mut ok = true;
        'devices: for &d in &live {
            let Some(op) = self.devices.get(d).map(|x| x.op) else {
                continue;
            };
            for p in ctx.registry.ordered(op.direction(), phase) {
                let Some(part) = ctx.registry.get_mut(p) else {
                    continue;
                };
                let res = match phase {
                    OrderedPhase::Prepare => part.prepare(&op),
                    _ => part.publish(&op),
                };
                match res {
                    Ok(()) => self.steps.push(Step {
                        phase,
                        device: d,
                        participant: p,
                    }),
                    Err(e) => {
                        ok = false;
                        let name = ctx.registry.name(p).to_string();
                        let chain = e.chain();
                        debug!(tx = %self.id, device = %op.device, participant = %name, "{step} failed");
                        self.record.error(
                            ctx.clock.now(),
                            step,
                            Some(op.device),
                            Some(name.clone()),
                            chain.clone(),
                        );
                        let reason = match phase {
                            OrderedPhase::Prepare => FailureReason::PrepareFailed {
                                participant: name,
                                error: chain,
                            },
                            _ => FailureReason::PublishFailed {
                                participant: name,
                                error: chain,
                            },
                        };
                        if self.mode == BatchMode::AllOrNothing {
                            let end = ctx.clock.now();
                            self.record
                                .phase(jphase, self.ids(&live), start, end, false);
                            self.abort_all(ctx, d, reason);
                            return;
                        }
                        self.fail_device(ctx, d, reason);
                        continue 'devices;
                    }
                }
            }
        }
        let end = ctx.clock.now();
        debug!(tx = %self.id, ok, us = end.micros_since(start), "{step}");
        self.record.phase(jphase, self.ids(&live), start, end, ok);
    }

    /// Undoes the logged steps of `only` (or of every device), in reverse.
    fn undo(&mut self, ctx: &mut Ctx<'_>, only: Option<usize>) {
        let (mine, rest): (Vec<Step>, Vec<Step>) = self
            .steps
            .iter()
            .partition(|s| only.is_none_or(|d| s.device == d));
        self.steps = rest;
        if mine.is_empty() {
            return;
        }
        for s in mine.iter().rev() {
            let Some(op) = self.devices.get(s.device).map(|x| x.op) else {
                continue;
            };
            let Some(part) = ctx.registry.get_mut(s.participant) else {
                continue;
            };
            let (res, step) = match s.phase {
                OrderedPhase::Publish => (part.rollback_publish(&op), "rollback_publish"),
                _ => (part.rollback_prepare(&op), "rollback_prepare"),
            };
            if let Err(e) = res {
                let name = ctx.registry.name(s.participant).to_string();
                warn!(tx = %self.id, device = %op.device, participant = %name, "{step} failed: {e}");
                let chain = e.chain();
                self.record.error(
                    ctx.clock.now(),
                    step,
                    Some(op.device),
                    Some(name.clone()),
                    chain.clone(),
                );
                if let Some(dev) = self.devices.get_mut(s.device) {
                    dev.step_errors.push(StepError {
                        participant: name,
                        step,
                        error: chain,
                    });
                }
            }
        }
    }

    fn rollback_phase(&mut self, ctx: &mut Ctx<'_>, only: Option<usize>, devices: Vec<DeviceId>) {
        let start = ctx.clock.now();
        let errors_before = self.record.errors.len();
        self.undo(ctx, only);
        let end = ctx.clock.now();
        let ok = self.record.errors.len() == errors_before;
        debug!(tx = %self.id, ok, us = end.micros_since(start), "rollback");
        self.record.phase(Phase::Rollback, devices, start, end, ok);
    }

    /// Rolls back one device (best effort).
    fn fail_device(&mut self, ctx: &mut Ctx<'_>, d: usize, reason: FailureReason) {
        let devices = self.ids(&[d]);
        self.rollback_phase(ctx, Some(d), devices);
        self.set_done(d, DeviceResult::RolledBack { reason });
    }

    /// Rolls back every device of the batch: `cause` failed with `reason`.
    fn abort_all(&mut self, ctx: &mut Ctx<'_>, cause: usize, reason: FailureReason) {
        let pending: Vec<usize> = (0..self.devices.len())
            .filter(|&i| !self.devices.get(i).is_some_and(DeviceTx::is_done))
            .collect();
        let devices = self.ids(&pending);
        self.rollback_phase(ctx, None, devices);
        let cause_id = self.devices.get(cause).map(|d| d.op.device);
        for i in pending {
            let r = match (i == cause, cause_id) {
                (true, _) | (false, None) => reason.clone(),
                (false, Some(c)) => FailureReason::BatchAborted { cause: c },
            };
            self.set_done(i, DeviceResult::RolledBack { reason: r });
        }
    }

    fn commit(&mut self, ctx: &mut Ctx<'_>, idx: &[usize]) {
        let start = ctx.clock.now();
        let mut ok = true;
        for &d in idx {
            let Some(op) = self.devices.get(d).map(|x| x.op) else {
                continue;
            };
            for p in ctx.registry.ordered(op.direction(), OrderedPhase::Commit) {
                let Some(part) = ctx.registry.get_mut(p) else {
                    continue;
                };
                if let Err(e) = part.commit(&op) {
                    ok = false;
                    let name = ctx.registry.name(p).to_string();
                    warn!(tx = %self.id, device = %op.device, participant = %name, "commit failed: {e}");
                    let chain = e.chain();
                    self.record.error(
                        ctx.clock.now(),
                        "commit",
                        Some(op.device),
                        Some(name.clone()),
                        chain.clone(),
                    );
                    if let Some(dev) = self.devices.get_mut(d) {
                        dev.step_errors.push(StepError {
                            participant: name,
                            step: "commit",
                            error: chain,
                        });
                    }
                }
            }
            self.steps.retain(|s| s.device != d);
            self.set_done(d, DeviceResult::Committed);
        }
        let end = ctx.clock.now();
        debug!(tx = %self.id, ok, us = end.micros_since(start), "commit");
        self.record
            .phase(Phase::Commit, self.ids(idx), start, end, ok);
    }

    /// Ends the transaction: its record, its completion, and each planned op with whether it
    /// committed (for the machine model).
    pub(crate) fn finish(self, now: Timestamp) -> (TxRecord, Completion, Vec<(PlannedOp, bool)>) {
        let mut record = self.record;
        let mut devices = Vec::with_capacity(self.devices.len());
        let mut settled = Vec::with_capacity(self.devices.len());
        for (dev, planned) in self.devices.into_iter().zip(self.planned) {
            let result = match dev.state {
                DevState::Done(r) => r,
                // Unreachable when finished; be conservative.
                _ => DeviceResult::RolledBack {
                    reason: FailureReason::Timeout {
                        guest_touched: dev.touched,
                        last_ost: dev.last_ost,
                    },
                },
            };
            settled.push((planned, result.is_committed()));
            devices.push(DeviceOutcome {
                device: dev.op.device,
                operation: dev.op.kind,
                result,
                guest_touched: dev.touched,
                step_errors: dev.step_errors,
                notes: dev.notes,
                dropped_notes: dev.dropped_notes,
            });
        }
        let committed = devices.iter().filter(|d| d.result.is_committed()).count();
        let status = if committed == devices.len() {
            TxStatus::Committed
        } else if committed > 0 {
            TxStatus::PartiallyCommitted
        } else if devices
            .iter()
            .any(|d| matches!(d.result, DeviceResult::RolledBack { .. }))
        {
            TxStatus::RolledBack
        } else {
            TxStatus::Rejected
        };
        let outcome = TxOutcome { status, devices };
        record.finish(outcome.clone(), now);
        let completion = Completion {
            id: self.id,
            outcome,
        };
        (record, completion, settled)
    }
}
