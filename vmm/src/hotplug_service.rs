//! The VMM's side of the hotplug framework: feeds API requests and the guest's register
//! accesses to the [`hotplug::Engine`], keeps the API callers that wait for an outcome, and
//! turns outcomes into HTTP answers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::timerfd::TimerFd;

use hotplug::{Clock, Completion, Directive, Engine, GuestEvent, Report, Request, TxId, TxStatus};
use serde_json::json;

use crate::api::{ApiResponse, RequestError, Responder};
use crate::counters::HotplugCounters;
use crate::events::EventLog;
pub use crate::guest_observations::{
    observation, observation_queue, observer, offer_again, EjectHook, GuestObservation,
    ObservationReceiver, ObservationSender,
};
use crate::journal_stream::{failure, tx_span, JournalStream};
use crate::metrics::{self, Refusal, SharedMetrics};

/// Refused guest ejects logged before the log goes quiet (then every 1024th): a guest that
/// hammers the eject bit must not flood the host's log.
const REFUSED_EJECT_LOG_BURST: u64 = 16;

/// The engine plus the API callers waiting on it. It is an event-loop subscriber: guest
/// observations and a timer armed at the next deadline wake it, and it always drains the
/// observations before it judges a deadline, so a guest answer the loop has received wins
/// over a deadline that expires in the same instant.
pub struct HotplugService {
    engine: Engine,
    clock: Arc<dyn Clock>,
    observations: ObservationReceiver,
    timer: TimerFd,
    waiters: BTreeMap<TxId, Vec<Responder>>,
    eject_hooks: Vec<EjectHook>,
    refused_eject_hooks: Vec<EjectHook>,
    refused_ejects: u64,
    paused: bool,
    counters: HotplugCounters,
    journal: JournalStream,
    metrics: Option<SharedMetrics>,
}

impl std::fmt::Debug for HotplugService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HotplugService")
            .field("waiters", &self.waiters.len())
            .field("paused", &self.paused)
            .finish_non_exhaustive()
    }
}

impl HotplugService {
    /// Wraps `engine`; guest observations arrive on `observations`.
    pub fn new(
        engine: Engine,
        clock: Arc<dyn Clock>,
        observations: ObservationReceiver,
    ) -> std::io::Result<Self> {
        Ok(HotplugService {
            engine,
            clock,
            observations,
            timer: TimerFd::new().map_err(std::io::Error::from)?,
            waiters: BTreeMap::new(),
            eject_hooks: Vec::new(),
            refused_eject_hooks: Vec::new(),
            refused_ejects: 0,
            paused: false,
            counters: HotplugCounters::default(),
            journal: JournalStream::new(),
            metrics: None,
        })
    }

    /// The engine (for `vm.info` and tests).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Adds a hook told of every device the guest ejects.
    pub fn on_guest_eject(&mut self, hook: EjectHook) {
        self.eject_hooks.push(hook);
    }

    /// Adds a hook told of every guest eject the engine refused.
    pub fn on_refused_eject(&mut self, hook: EjectHook) {
        self.refused_eject_hooks.push(hook);
    }

    /// Publishes every change of the journal (transactions starting and ending, phases, the
    /// guest's answers, errors) to `log`, from now on.
    pub fn stream_to(&mut self, log: Arc<EventLog>) {
        self.journal.log = Some(log);
    }

    /// Tallies every transaction that ends, and every request refused before one started,
    /// into `metrics` (see [`crate::metrics`]), from now on.
    pub fn record_metrics(&mut self, metrics: SharedMetrics) {
        self.metrics = Some(metrics);
    }

    fn count_refused(&self, request: &Request, why: Refusal) {
        if let Some(m) = &self.metrics {
            metrics::lock(m).count_refused(request, why);
        }
    }

    /// Logs, and publishes to the event log if there is one, what the journal gained.
    fn publish_journal(&mut self) {
        self.journal.follow(&self.engine);
    }

    /// Cumulative hotplug counters per device.
    pub fn counters(&self) -> &HotplugCounters {
        &self.counters
    }

    /// Observations dropped because the queue was full.
    pub fn dropped_observations(&self) -> u64 {
        self.observations.dropped()
    }

    /// Whether a transaction waits for the guest.
    pub fn in_flight(&self) -> bool {
        self.engine.next_deadline().is_some()
    }

    /// While paused, hotplug requests are refused (the guest could not answer them).
    pub fn set_paused(&mut self, paused: bool) {
        self.paused = paused;
    }

    /// Starts `request`. With `wait`, `respond` gets the outcome when the transaction ends;
    /// without, it gets 202 and the transaction id at once.
    pub fn request(&mut self, request: Request, wait: bool, respond: impl Into<Responder>) {
        let respond = respond.into();
        tracing::info!(?request, "hotplug request");
        if self.paused {
            self.count_refused(&request, Refusal::Paused);
            let _ = respond.send(
                RequestError::WrongVmState(
                    "The VM is paused: resume it (vm.resume) before hotplugging.".into(),
                )
                .into(),
            );
            return;
        }
        let begun = match self.engine.begin(request.clone()) {
            Ok(b) => b,
            Err(e) => {
                self.count_refused(&request, Refusal::of(&e));
                tracing::info!(?request, "hotplug request refused: {e}");
                self.journal.publish(
                    "hotplug",
                    "refused",
                    None,
                    json!({ "request": request, "error": e.to_string() }),
                );
                let _ = respond.send(RequestError::HotplugRefused(e).into());
                return;
            }
        };
        match begun.completed {
            Some(done) => {
                let _ = respond.send(self.answer(&done));
                self.tally(&done);
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
        self.publish_journal();
        self.arm_timer();
    }

    /// Feeds every queued guest observation to the engine, then ends the transactions whose
    /// deadline has passed, then arms the timer for the next deadline.
    pub fn step(&mut self) {
        let pending = self.observations.drain();
        for obs in pending {
            let GuestObservation {
                device,
                event,
                refused,
            } = obs;
            tracing::debug!(%device, ?event, refused, "guest hotplug event");
            let report = self.engine.guest_event(device, event);
            // The device is leaving only if the engine took the eject: a removal of it is in
            // flight or just committed, and the engine did not refuse it.
            let engine_refused = report.directives.iter().any(
                |d| matches!(d, Directive::RefuseEject { device: refused, .. } if *refused == device),
            );
            let leaving = matches!(
                self.engine.machine().presence(device),
                Some(hotplug::Presence::Removing(_) | hotplug::Presence::Absent)
            );
            if event == GuestEvent::Eject && !refused && !engine_refused && leaving {
                for hook in &mut self.eject_hooks {
                    hook(device);
                }
            }
            self.finish(report);
        }
        let report = self.engine.tick();
        self.finish(report);
        self.publish_journal();
        self.arm_timer();
    }

    /// How long until the next deadline, if a transaction is in flight.
    pub fn time_to_deadline(&self) -> Option<Duration> {
        let deadline = self.engine.next_deadline()?;
        Some(Duration::from_micros(
            deadline.micros_since(self.clock.now()),
        ))
    }

    fn arm_timer(&mut self) {
        let result = match self.time_to_deadline() {
            // A zero duration would disarm the timer: a deadline due now fires in 1 µs.
            Some(d) => self.timer.reset(d.max(Duration::from_micros(1)), None),
            None => self.timer.clear(),
        };
        if let Err(e) = result {
            tracing::error!("cannot arm the hotplug deadline timer: {e}");
        }
    }

    /// The VM is ending: every caller still waiting for a transaction gets 503 and the
    /// transaction's record as it stands.
    pub fn abandon_waiters(&mut self, why: &str) {
        for (id, waiters) in std::mem::take(&mut self.waiters) {
            let mut response: ApiResponse =
                RequestError::VmmUnavailable(format!("{id} did not finish: {why}")).into();
            if let Some(body) = response.body.as_object_mut() {
                body.insert("transaction".into(), self.record_json(id));
            }
            for w in waiters {
                let _ = w.send(response.clone());
            }
        }
    }

    fn finish(&mut self, report: Report) {
        for directive in &report.directives {
            match directive {
                Directive::RefuseEject { device, tx, status } => {
                    self.counters.count_refused_eject(*device);
                    self.refused_ejects += 1;
                    let n = self.refused_ejects;
                    if n <= REFUSED_EJECT_LOG_BURST || n.is_multiple_of(1024) {
                        let span = self
                            .engine
                            .transaction(*tx)
                            .map(|r| tx_span(*tx, &r.request))
                            .unwrap_or_else(tracing::Span::none);
                        let _span = span.entered();
                        tracing::warn!(%device, %tx, ?status, refused_so_far = n, "guest-initiated eject refused by policy; the device stays");
                    }
                    for hook in &mut self.refused_eject_hooks {
                        hook(*device);
                    }
                }
            }
        }
        // The waiting callers first: counting is the loop's own business, and nothing the
        // client asks next is handled before this returns (the loop is one thread), so the
        // counts it reads are already up to date. The journal's follower logs how each
        // transaction ended, in its span.
        for done in &report.completed {
            if let Some(waiters) = self.waiters.remove(&done.id) {
                let answer = self.answer(done);
                for w in waiters {
                    let _ = w.send(answer.clone());
                }
            }
            self.tally(done);
        }
    }

    /// Counts a finished transaction in the counters and the metrics, from its journal record.
    fn tally(&mut self, done: &Completion) {
        let record = self.engine.transaction(done.id);
        self.counters.count_completion(done, record);
        if let Some(m) = &self.metrics {
            metrics::lock(m).count_completion(done, record);
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
        match done.outcome.status {
            TxStatus::Committed | TxStatus::PartiallyCommitted => {
                /// `{"transaction": record}`, serialized without a JSON tree in between.
                #[derive(serde::Serialize)]
                struct Committed<'a> {
                    transaction: Option<&'a hotplug::TxRecord>,
                }
                let transaction = self.engine.transaction(done.id);
                ApiResponse::json_of(200, &Committed { transaction })
            }
            TxStatus::RolledBack | TxStatus::Rejected => {
                let record = self.record_json(done.id);
                let error = match failure(&done.outcome) {
                    Some((device, reason)) => RequestError::HotplugFailed {
                        reason: Some(reason.clone()),
                        message: format!("{} {device}: {reason}", done.id),
                    },
                    None => RequestError::HotplugFailed {
                        reason: None,
                        message: format!("{} ended without committing", done.id),
                    },
                };
                let mut response = ApiResponse::from(error);
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
            None => RequestError::NoSuchTransaction(format!("no transaction {id} in the journal"))
                .into(),
        }
    }
}

impl MutEventSubscriber for HotplugService {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        // The timer is not read: `step` re-arms (or clears) it, and timerfd_settime resets
        // its expiry count, so it stops being readable. Reading it could block when another
        // subscriber re-armed it after epoll reported it.
        let _ = self.observations.wake().read();
        self.step();
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(self.observations.wake(), EventSet::IN)) {
            tracing::error!("cannot watch guest hotplug observations: {e:?}");
        }
        if let Err(e) = ops.add(Events::new(&self.timer, EventSet::IN)) {
            tracing::error!("cannot watch the hotplug deadline timer: {e:?}");
        }
    }
}

/// 2 boot vCPUs of 4 and 512 MiB without memory hotplug; for tests.
#[cfg(test)]
pub(crate) fn test_machine() -> hotplug::MachineConfig {
    hotplug::MachineConfig {
        max_cpus: 4,
        boot_cpus: 2,
        boot_memory: 512 << 20,
        block_size: 128 << 20,
        hotplug_region_size: 0,
        memory_slots: 0,
    }
}

/// A service over an engine of [`test_machine`], with no participants, on a fake clock; for
/// tests.
#[cfg(test)]
pub(crate) fn test_service() -> (HotplugService, ObservationSender, Arc<hotplug::FakeClock>) {
    let machine = test_machine();
    let clock = Arc::new(hotplug::FakeClock::new());
    let engine = Engine::new(machine, hotplug::EngineConfig::default(), clock.clone())
        .expect("the test engine");
    let (tx, rx) = observation_queue().expect("the observation queue");
    let service = HotplugService::new(engine, clock.clone(), rx).expect("the test service");
    (service, tx, clock)
}

#[cfg(test)]
#[path = "hotplug_service_tests.rs"]
mod tests;
