//! A transaction's guest side: the guest's events and the deadlines for each device, the
//! verdicts they give, and what a verdict does to the batch (commit, or roll back the device
//! or the whole batch).

use tracing::debug;

use super::{Ctx, Transaction};
use crate::clock::Timestamp;
use crate::device::DeviceId;
use crate::journal::{GuestEventKind, Phase};
use crate::ops::BatchMode;
use crate::ost::{GuestEvent, Ost};
use crate::verdict::{DevState, Verdict};

impl Transaction {
    /// Applies a verdict to device `d`.
    fn apply(&mut self, ctx: &mut Ctx<'_>, d: usize, verdict: Verdict) {
        let now = ctx.clock.now();
        let Some(device) = self.devices.get(d).map(|x| x.op.device) else {
            return;
        };
        match verdict {
            Verdict::Pending => return,
            Verdict::Accept => {
                if let Some(dev) = self.devices.get_mut(d) {
                    dev.state = DevState::Accepted;
                }
                self.record
                    .phase(Phase::AwaitGuest, vec![device], self.await_start, now, true);
            }
            Verdict::Refuse(reason) => {
                self.record.phase(
                    Phase::AwaitGuest,
                    vec![device],
                    self.await_start,
                    now,
                    false,
                );
                self.record.error(
                    now,
                    "await_guest",
                    Some(device),
                    None,
                    vec![reason.to_string()],
                );
                match self.mode {
                    BatchMode::AllOrNothing => self.abort_all(ctx, d, reason),
                    BatchMode::BestEffort => self.fail_device(ctx, d, reason),
                }
            }
        }
        self.resolve(ctx);
    }

    /// Commits what can be committed.
    pub(super) fn resolve(&mut self, ctx: &mut Ctx<'_>) {
        let accepted: Vec<usize> = (0..self.devices.len())
            .filter(|&i| {
                self.devices
                    .get(i)
                    .is_some_and(|d| d.state == DevState::Accepted)
            })
            .collect();
        if accepted.is_empty() {
            return;
        }
        let waiting = self
            .devices
            .iter()
            .any(|d| matches!(d.state, DevState::Awaiting | DevState::Live));
        if self.mode == BatchMode::BestEffort || !waiting {
            self.commit(ctx, &accepted);
        }
    }

    /// A guest event for one of this transaction's devices.
    pub(crate) fn on_guest(&mut self, ctx: &mut Ctx<'_>, device: DeviceId, event: GuestEvent) {
        let now = ctx.clock.now();
        let Some(d) = self.index_of(device) else {
            return;
        };
        let Some(dev) = self.devices.get_mut(d) else {
            return;
        };
        let kind = match event {
            GuestEvent::Ost { event, status } => Some(GuestEventKind::Ost {
                ost: Ost::from_raw(event, status),
            }),
            GuestEvent::Eject => Some(GuestEventKind::Eject),
            GuestEvent::StatusRead if !dev.status_read_seen => {
                dev.status_read_seen = true;
                Some(GuestEventKind::StatusRead)
            }
            GuestEvent::StatusRead => None,
        };
        if let Some(kind) = kind {
            self.record.guest_event(now, device, kind);
        }
        let Some(dev) = self.devices.get_mut(d) else {
            return;
        };
        if dev.state != DevState::Awaiting {
            debug!(tx = %self.id, %device, ?event, "guest event after the verdict: recorded only");
            return;
        }
        let verdict = dev.on_event(event);
        self.apply(ctx, d, verdict);
    }

    /// Applies every passed deadline.
    pub(crate) fn on_tick(&mut self, ctx: &mut Ctx<'_>, now: Timestamp) {
        for d in 0..self.devices.len() {
            let Some(dev) = self.devices.get_mut(d) else {
                continue;
            };
            if dev.state == DevState::Awaiting && dev.deadline.is_some_and(|t| t <= now) {
                let verdict = dev.on_deadline();
                self.apply(ctx, d, verdict);
            }
        }
    }

    /// The earliest pending deadline.
    pub(crate) fn next_deadline(&self) -> Option<Timestamp> {
        self.devices
            .iter()
            .filter(|d| d.state == DevState::Awaiting)
            .filter_map(|d| d.deadline)
            .min()
    }
}
