//! The VMM's side of the hotplug framework: feeds API requests and the guest's register
//! accesses to the [`hotplug::Engine`], keeps the API callers that wait for an outcome, and
//! turns outcomes into HTTP answers.

use std::collections::BTreeMap;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::Duration;

use devices::HotplugObservation;
use hotplug::{
    Clock, Completion, DeviceId, DeviceResult, Directive, Engine, FailureReason, GuestEvent,
    Report, Request, TxId, TxStatus,
};
use serde_json::json;

use crate::api::ApiResponse;

/// A guest access the engine must hear about.
pub type GuestObservation = (DeviceId, GuestEvent);

/// Maps a controller observation to the engine's terms; `device` names the device kind
/// from its UID (`DeviceId::cpu` or `DeviceId::memory_slot`). A refused eject is not the
/// engine's business (the controller already kept the device and offered it again).
pub fn observation(
    obs: HotplugObservation,
    device: fn(u32) -> DeviceId,
) -> Option<GuestObservation> {
    match obs {
        HotplugObservation::StatusRead { uid } => Some((device(uid), GuestEvent::StatusRead)),
        HotplugObservation::Ost { uid, event, status } => {
            Some((device(uid), GuestEvent::ost(event, status)))
        }
        HotplugObservation::Ejected { uid } => Some((device(uid), GuestEvent::Eject)),
        HotplugObservation::EjectRefused { .. } => None,
    }
}

/// Sends controller observations to the engine, and answers a refused eject by raising the
/// GED so that the guest rescans and adds the device back.
pub fn observer(
    tx: std::sync::mpsc::Sender<GuestObservation>,
    wake: vmm_sys_util::eventfd::EventFd,
    ged: Arc<devices::Ged>,
    event: devices::GedEvent,
    device: fn(u32) -> DeviceId,
) -> Box<dyn Fn(HotplugObservation) + Send + Sync> {
    Box::new(move |obs| {
        if let HotplugObservation::EjectRefused { uid } = obs {
            tracing::warn!(device = %device(uid), "guest ejected a device nobody asked to leave; offering it again");
            if let Err(e) = ged.notify(event) {
                tracing::error!("cannot raise the GED interrupt: {e}");
            }
            return;
        }
        // The event loop may be gone when the VM ends; nothing to report then.
        if let Some(o) = observation(obs, device) {
            if tx.send(o).is_ok() {
                let _ = wake.write(1);
            }
        }
    })
}

/// The engine plus the API callers waiting on it.
pub struct HotplugService {
    engine: Engine,
    clock: Arc<dyn Clock>,
    observations: Receiver<GuestObservation>,
    waiters: BTreeMap<TxId, Vec<Sender<ApiResponse>>>,
}

impl HotplugService {
    /// Wraps `engine`; guest observations arrive on `observations`.
    pub fn new(
        engine: Engine,
        clock: Arc<dyn Clock>,
        observations: Receiver<GuestObservation>,
    ) -> Self {
        HotplugService {
            engine,
            clock,
            observations,
            waiters: BTreeMap::new(),
        }
    }

    /// The engine (for `vm.info` and tests).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Starts `request`. With `wait`, `respond` gets the outcome when the transaction ends;
    /// without, it gets 202 and the transaction id at once.
    pub fn request(&mut self, request: Request, wait: bool, respond: Sender<ApiResponse>) {
        tracing::info!(?request, "hotplug request");
        let begun = match self.engine.begin(request) {
            Ok(b) => b,
            Err(e) => {
                let status = match e {
                    hotplug::Error::Conflict { .. } => 409,
                    hotplug::Error::Invalid(_) => 422,
                    hotplug::Error::RegisterInFlight { .. } => 500,
                };
                let _ = respond.send(ApiResponse::error(status, e.to_string()));
                return;
            }
        };
        match begun.completed {
            Some(done) => {
                let _ = respond.send(self.answer(&done));
            }
            None if wait => self.waiters.entry(begun.id).or_default().push(respond),
            None => {
                let record = self.record_json(begun.id);
                let mut response =
                    ApiResponse::ok(json!({ "id": begun.id.0, "transaction": record }));
                response.status = 202;
                let _ = respond.send(response);
            }
        }
    }

    /// Feeds every pending guest observation to the engine.
    pub fn process_observations(&mut self) {
        let pending: Vec<GuestObservation> = self.observations.try_iter().collect();
        for (device, event) in pending {
            tracing::debug!(%device, ?event, "guest hotplug event");
            let report = self.engine.guest_event(device, event);
            self.finish(report);
        }
    }

    /// Ends transactions whose deadline passed.
    pub fn tick(&mut self) {
        let report = self.engine.tick();
        self.finish(report);
    }

    /// How long until the next deadline, if a transaction is in flight.
    pub fn time_to_deadline(&self) -> Option<Duration> {
        let deadline = self.engine.next_deadline()?;
        Some(Duration::from_micros(
            deadline.micros_since(self.clock.now()),
        ))
    }

    fn finish(&mut self, report: Report) {
        for directive in &report.directives {
            match directive {
                Directive::RefuseEject { device, tx, status } => {
                    tracing::warn!(%device, %tx, ?status, "guest-initiated eject refused by policy");
                }
            }
        }
        for done in &report.completed {
            tracing::info!(tx = %done.id, status = ?done.outcome.status, "hotplug transaction ended");
            if let Some(waiters) = self.waiters.remove(&done.id) {
                let answer = self.answer(done);
                for w in waiters {
                    let _ = w.send(answer.clone());
                }
            }
        }
    }

    fn record_json(&self, id: TxId) -> serde_json::Value {
        self.engine
            .transaction(id)
            .and_then(|r| serde_json::to_value(r).ok())
            .unwrap_or(serde_json::Value::Null)
    }

    /// The HTTP answer for a finished transaction.
    pub fn answer(&self, done: &Completion) -> ApiResponse {
        let record = self.record_json(done.id);
        match done.outcome.status {
            TxStatus::Committed | TxStatus::PartiallyCommitted => {
                ApiResponse::ok(json!({ "transaction": record }))
            }
            TxStatus::RolledBack | TxStatus::Rejected => {
                let failure =
                    done.outcome
                        .devices
                        .iter()
                        .filter_map(|d| match &d.result {
                            DeviceResult::Committed => None,
                            DeviceResult::RolledBack { reason }
                            | DeviceResult::Rejected { reason } => Some((d.device, reason)),
                        })
                        // The device that caused a batch abort explains it best.
                        .min_by_key(|(_, r)| matches!(r, FailureReason::BatchAborted { .. }));
                let (status, message) = match failure {
                    Some((device, reason)) => (
                        status_for(reason),
                        format!("{} {device}: {reason}", done.id),
                    ),
                    None => (500, format!("{} ended without committing", done.id)),
                };
                let mut response = ApiResponse::error(status, message);
                if let Some(body) = response.body.as_object_mut() {
                    body.insert("transaction".into(), record);
                }
                response
            }
        }
    }

    /// `GET hotplug/transactions`.
    pub fn transactions(&self) -> ApiResponse {
        let records: Vec<serde_json::Value> = self
            .engine
            .records()
            .filter_map(|r| serde_json::to_value(r).ok())
            .collect();
        ApiResponse::ok(json!({ "transactions": records }))
    }

    /// `GET hotplug/transactions/{id}`.
    pub fn transaction(&self, id: u64) -> ApiResponse {
        match self.engine.transaction(TxId(id)) {
            Some(r) => ApiResponse::ok(json!({ "transaction": r })),
            None => ApiResponse::error(404, format!("no transaction {id} in the journal")),
        }
    }
}

/// The HTTP status that tells the caller why a device did not commit.
pub fn status_for(reason: &FailureReason) -> u16 {
    match reason {
        FailureReason::Invalid { .. }
        | FailureReason::Vetoed { .. }
        | FailureReason::GuestEjectDenied => 422,
        FailureReason::GuestRefused { .. } | FailureReason::GuestEjectedDuringAdd => 502,
        FailureReason::Timeout { .. } => 504,
        FailureReason::PrepareFailed { .. } | FailureReason::PublishFailed { .. } => 500,
        FailureReason::BatchAborted { .. } => 409,
    }
}
