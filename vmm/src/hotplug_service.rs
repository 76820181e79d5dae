//! The VMM's side of the hotplug framework: feeds API requests and the guest's register
//! accesses to the [`hotplug::Engine`], keeps the API callers that wait for an outcome, and
//! turns outcomes into HTTP answers.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::timerfd::TimerFd;

use devices::{CpuHotplugController, Ged, GedEvent, HotplugObservation, MemoryHotplugController};
use hotplug::{
    Clock, Completion, DeviceId, Directive, Engine, FailureReason, GuestEvent, Report, Request,
    TxId, TxStatus,
};
use serde_json::json;

use crate::api::ApiResponse;
use crate::counters::HotplugCounters;
use crate::events::EventLog;
use crate::journal_stream::{failure, tx_span, JournalStream};
use crate::metrics::{self, Refusal, SharedMetrics};

/// A guest access the engine must hear about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestObservation {
    /// The device.
    pub device: DeviceId,
    /// What the guest did.
    pub event: GuestEvent,
    /// An `_EJ0` the controller did not carry out (the engine's policy, as projected into
    /// the controller, refused it): the device stays and is offered again.
    pub refused: bool,
}

impl GuestObservation {
    /// An observation of `event` on `device`.
    pub fn new(device: DeviceId, event: GuestEvent) -> Self {
        GuestObservation {
            device,
            event,
            refused: false,
        }
    }
}

/// Observations that may wait for the event loop at once. A guest that makes more register
/// accesses than this before the loop drains them loses the excess (counted); only its own
/// transactions can suffer from that.
pub const OBSERVATION_QUEUE: usize = 1024;

/// The vCPU threads' end of the observation queue.
#[derive(Debug)]
pub struct ObservationSender {
    tx: SyncSender<GuestObservation>,
    wake: EventFd,
    dropped: Arc<AtomicU64>,
}

impl ObservationSender {
    /// Another sender on the same queue.
    pub fn try_clone(&self) -> std::io::Result<Self> {
        Ok(ObservationSender {
            tx: self.tx.clone(),
            wake: self.wake.try_clone()?,
            dropped: self.dropped.clone(),
        })
    }

    /// Queues `obs` and wakes the loop; never blocks. A full queue drops it (counted).
    pub fn send(&self, obs: GuestObservation) {
        match self.tx.try_send(obs) {
            Ok(()) => {
                let _ = self.wake.write(1);
            }
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            // The event loop is gone (the VM is ending): nothing to report to.
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

/// A bounded observation queue: the sender for the devices, the receiver for the service.
pub fn observation_queue() -> std::io::Result<(ObservationSender, ObservationReceiver)> {
    let (tx, rx) = std::sync::mpsc::sync_channel(OBSERVATION_QUEUE);
    let wake = EventFd::new(EFD_NONBLOCK)?;
    let dropped = Arc::new(AtomicU64::new(0));
    Ok((
        ObservationSender {
            tx,
            wake: wake.try_clone()?,
            dropped: dropped.clone(),
        },
        ObservationReceiver { rx, wake, dropped },
    ))
}

/// The service's end of the observation queue.
#[derive(Debug)]
pub struct ObservationReceiver {
    rx: Receiver<GuestObservation>,
    wake: EventFd,
    dropped: Arc<AtomicU64>,
}

/// Maps a controller observation to the engine's terms; `device` names the device kind
/// from its UID (`DeviceId::cpu` or `DeviceId::memory_slot`). Every `_EJ0` reaches the engine,
/// the refused ones too: the engine judges and journals it.
pub fn observation(obs: HotplugObservation, device: fn(u32) -> DeviceId) -> GuestObservation {
    match obs {
        HotplugObservation::StatusRead { uid } => {
            GuestObservation::new(device(uid), GuestEvent::StatusRead)
        }
        HotplugObservation::Ost { uid, event, status } => {
            GuestObservation::new(device(uid), GuestEvent::ost(event, status))
        }
        HotplugObservation::Ejected { uid } => {
            GuestObservation::new(device(uid), GuestEvent::Eject)
        }
        HotplugObservation::EjectRefused { uid } => GuestObservation {
            refused: true,
            ..GuestObservation::new(device(uid), GuestEvent::Eject)
        },
    }
}

/// Sends controller observations to the engine.
pub fn observer(
    queue: ObservationSender,
    device: fn(u32) -> DeviceId,
) -> Box<dyn Fn(HotplugObservation) + Send + Sync> {
    Box::new(move |obs| queue.send(observation(obs, device)))
}

/// Called with a device the guest has just ejected (`_EJ0` carried out by its controller and
/// taken by the engine: a removal of it is in flight or has just committed): the vCPU manager
/// starts parking the CPU's thread then, so that Commit finds it parked. Also the type of the hook told of an eject the
/// engine refused (the device is offered to the guest again: raise its GED event).
pub type EjectHook = Box<dyn FnMut(DeviceId) + Send>;

/// The controller's half of a refused guest eject: the device stays, so its removal is
/// withdrawn in its controller (plugged back in if the guest already let it go under `allow`)
/// and the GED event of its kind is raised, so that the guest's next scan finds it again.
pub fn offer_again(
    cpu: Arc<CpuHotplugController>,
    memory: Option<Arc<MemoryHotplugController>>,
    ged: Arc<Ged>,
) -> EjectHook {
    Box::new(move |device| {
        let event = match device {
            DeviceId::Cpu(id) => {
                cpu.withdraw_removal(id.0);
                GedEvent::Cpu
            }
            DeviceId::MemorySlot(slot) => {
                if let Some(c) = &memory {
                    c.withdraw_removal(slot.0);
                }
                GedEvent::Memory
            }
        };
        if let Err(e) = ged.notify(event) {
            tracing::error!("cannot raise the GED interrupt: {e}");
        }
    })
}

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
    waiters: BTreeMap<TxId, Vec<Sender<ApiResponse>>>,
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
        self.observations.dropped.load(Ordering::Relaxed)
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
    pub fn request(&mut self, request: Request, wait: bool, respond: Sender<ApiResponse>) {
        tracing::info!(?request, "hotplug request");
        if self.paused {
            self.count_refused(&request, Refusal::Paused);
            let _ = respond.send(ApiResponse::error(
                409,
                "The VM is paused: resume it (vm.resume) before hotplugging.",
            ));
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
                let status = match e {
                    // Cloud Hypervisor's answer to a resize while a change is pending, and the
                    // one Kata Containers retries on.
                    hotplug::Error::Conflict { .. } => 429,
                    hotplug::Error::Invalid(_) => 422,
                    hotplug::Error::RegisterInFlight { .. } => 500,
                };
                let _ = respond.send(ApiResponse::error(status, e.to_string()));
                return;
            }
        };
        match begun.completed {
            Some(done) => {
                self.tally(&done);
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
        self.publish_journal();
        self.arm_timer();
    }

    /// Feeds every queued guest observation to the engine, then ends the transactions whose
    /// deadline has passed, then arms the timer for the next deadline.
    pub fn step(&mut self) {
        let pending: Vec<GuestObservation> = self.observations.rx.try_iter().collect();
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
            let mut response = ApiResponse::error(503, format!("{id} did not finish: {why}"));
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
        // The journal's follower logs how each transaction ended, in its span.
        for done in &report.completed {
            self.tally(done);
            if let Some(waiters) = self.waiters.remove(&done.id) {
                let answer = self.answer(done);
                for w in waiters {
                    let _ = w.send(answer.clone());
                }
            }
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
        let record = self.record_json(done.id);
        match done.outcome.status {
            TxStatus::Committed | TxStatus::PartiallyCommitted => {
                ApiResponse::ok(json!({ "transaction": record }))
            }
            TxStatus::RolledBack | TxStatus::Rejected => {
                let (status, message) = match failure(&done.outcome) {
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

impl MutEventSubscriber for HotplugService {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        // The timer is not read: `step` re-arms (or clears) it, and timerfd_settime resets
        // its expiry count, so it stops being readable. Reading it could block when another
        // subscriber re-armed it after epoll reported it.
        let _ = self.observations.wake.read();
        self.step();
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.observations.wake, EventSet::IN)) {
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
mod tests {
    use super::*;
    use hotplug::CpuId;
    use std::sync::mpsc::channel;
    use std::sync::Mutex;

    fn cpu1() -> DeviceId {
        DeviceId::Cpu(CpuId(1))
    }

    /// Linux's answer to an eject request: `_OST(3, 0x84)`, `_EJ0`, `_OST(3, 0)`.
    fn guest_ejects(tx: &ObservationSender) {
        tx.send(GuestObservation::new(cpu1(), GuestEvent::ost(3, 0x84)));
        tx.send(GuestObservation::new(cpu1(), GuestEvent::Eject));
        tx.send(GuestObservation::new(cpu1(), GuestEvent::ost(3, 0)));
    }

    #[test]
    fn an_ej0_received_before_the_deadline_is_judged_wins() {
        let (mut s, tx, clock) = test_service();
        let (respond, answer) = channel();
        s.request(Request::RemoveCpu { id: 1 }, true, respond);
        let deadline = s.time_to_deadline().unwrap();
        // The guest answers; then, before the loop runs, the deadline passes too: the timer
        // and the observations wake the loop in the same instant.
        guest_ejects(&tx);
        clock.advance(deadline + Duration::from_millis(1));
        s.step();
        let response = answer.try_recv().unwrap();
        assert_eq!(response.status, 200, "{:?}", response.body);
        assert!(!s.in_flight());
    }

    #[test]
    fn a_deadline_judged_before_the_ej0_arrived_wins() {
        let (mut s, tx, clock) = test_service();
        let (respond, answer) = channel();
        s.request(Request::RemoveCpu { id: 1 }, true, respond);
        clock.advance(s.time_to_deadline().unwrap() + Duration::from_millis(1));
        s.step();
        assert_eq!(answer.try_recv().unwrap().status, 504);
        // Too late: the removal was rolled back, and a late `_EJ0` does not revive it.
        guest_ejects(&tx);
        s.step();
        assert!(answer.try_recv().is_err());
        assert!(!s.in_flight());
    }

    #[test]
    fn the_eject_hook_hears_of_an_ej0_before_the_engine_commits() {
        let (mut s, tx, _) = test_service();
        let heard = Arc::new(Mutex::new(Vec::new()));
        let h = heard.clone();
        s.on_guest_eject(Box::new(move |d| h.lock().unwrap().push(d)));
        let (respond, answer) = channel();
        s.request(Request::RemoveCpu { id: 1 }, true, respond);
        guest_ejects(&tx);
        s.step();
        assert_eq!(answer.try_recv().unwrap().status, 200);
        assert_eq!(*heard.lock().unwrap(), [cpu1()]);
    }

    /// Every event of `log` so far, as its SSE data line would carry it.
    fn events(log: &EventLog) -> Vec<serde_json::Value> {
        log.read_from(1, Duration::ZERO)
            .map(|b| b.events.iter().map(|e| json!(e.as_ref())).collect())
            .unwrap_or_default()
    }

    #[test]
    fn the_journal_becomes_events_in_order_with_why_a_transaction_failed() {
        let (mut s, tx, clock) = test_service();
        let log = Arc::new(EventLog::new(clock.clone()));
        s.stream_to(log.clone());
        // Added and accepted by the guest.
        let (respond, answer) = channel();
        s.request(Request::AddCpu { id: Some(2) }, true, respond);
        clock.advance(Duration::from_millis(3));
        tx.send(GuestObservation::new(
            DeviceId::cpu(2),
            GuestEvent::StatusRead,
        ));
        tx.send(GuestObservation::new(
            DeviceId::cpu(2),
            GuestEvent::ost(1, 0),
        ));
        s.step();
        assert_eq!(answer.try_recv().unwrap().status, 200);
        // Removed, refused by the guest: device busy.
        let (respond, answer) = channel();
        s.request(Request::RemoveCpu { id: 1 }, true, respond);
        clock.advance(Duration::from_millis(5));
        tx.send(GuestObservation::new(cpu1(), GuestEvent::ost(3, 0x82)));
        s.step();
        assert_eq!(answer.try_recv().unwrap().status, 502);
        // Refused before it began.
        let (respond, _answer) = channel();
        s.request(Request::RemoveCpu { id: 0 }, true, respond);

        let events = events(&log);
        if std::env::var_os("PLUGVM_PRINT_EVENTS").is_some() {
            for e in &events {
                println!("{e}");
            }
        }
        let names: Vec<String> = events
            .iter()
            .map(|e| format!("{} {} {}", e["tx"], e["source"], e["event"]).replace('"', ""))
            .collect();
        assert_eq!(
            names,
            [
                "1 hotplug started",
                "1 hotplug phase",
                "1 hotplug phase",
                "1 hotplug phase",
                "1 guest status_read",
                "1 guest ost",
                "1 hotplug phase",
                "1 hotplug phase",
                "1 hotplug ended",
                "2 hotplug started",
                "2 hotplug phase",
                "2 hotplug phase",
                "2 hotplug phase",
                "2 guest ost",
                "2 hotplug error",
                "2 hotplug phase",
                "2 hotplug phase",
                "2 hotplug ended",
                "null hotplug refused",
            ]
        );
        let phases: Vec<&str> = events
            .iter()
            .filter(|e| e["event"] == "phase")
            .filter_map(|e| e["data"]["phase"].as_str())
            .collect();
        assert_eq!(
            phases,
            [
                "validate",
                "prepare",
                "publish",
                "await_guest",
                "commit",
                "validate",
                "prepare",
                "publish",
                "await_guest",
                "rollback"
            ]
        );
        let ost = &events[5]["data"];
        assert_eq!(events[5]["at_us"], 3000);
        assert_eq!(ost["device"], json!({"cpu": 2}));
        assert_eq!(ost["kind"], "ost");
        assert_eq!(ost["status"]["name"], "success");
        assert_eq!(events[8]["data"]["status"], "committed");
        assert!(events[8]["data"].get("reason").is_none(), "{}", events[8]);
        assert_eq!(events[17]["data"]["status"], "rolled_back");
        assert_eq!(
            events[17]["data"]["reason"],
            "cpu 1: guest refused: _OST(0x3 eject_request, 0x82 device_busy)"
        );
    }

    #[test]
    fn a_transactions_log_lines_are_in_its_span() {
        let lines = crate::logging::capture::json_lines("info", || {
            let (mut s, tx, _clock) = test_service();
            let (respond, _answer) = channel();
            s.request(Request::RemoveCpu { id: 1 }, true, respond);
            guest_ejects(&tx);
            s.step();
        });
        let in_tx: Vec<&serde_json::Value> =
            lines.iter().filter(|l| l["span"]["name"] == "tx").collect();
        let messages: Vec<&str> = in_tx
            .iter()
            .filter_map(|l| l["fields"]["message"].as_str())
            .collect();
        assert_eq!(
            messages,
            [
                "hotplug transaction started",
                "the guest answered",
                "the guest ejected the device (_EJ0)",
                "the guest answered",
                "hotplug transaction ended"
            ],
            "{lines:?}"
        );
        for line in in_tx {
            assert_eq!(line["span"]["id"], 1, "{line}");
            assert_eq!(line["span"]["kind"], "remove_cpu", "{line}");
        }
    }

    #[test]
    fn a_guest_ejecting_again_and_again_does_not_flood_the_log() {
        let lines = crate::logging::capture::json_lines("warn", || {
            let (mut s, tx, _clock) = test_service();
            for _ in 0..200 {
                tx.send(GuestObservation::new(cpu1(), GuestEvent::Eject));
                s.step();
            }
        });
        // Only the rate-limited warning of `finish`, in each refused transaction's span.
        assert_eq!(lines.len(), REFUSED_EJECT_LOG_BURST as usize, "{lines:?}");
        for line in &lines {
            assert_eq!(line["span"]["kind"], "remove_cpu", "{line}");
        }
    }

    #[test]
    fn the_observation_queue_is_bounded_and_counts_what_it_drops() {
        let (s, tx, _) = test_service();
        for _ in 0..OBSERVATION_QUEUE + 10 {
            tx.send(GuestObservation::new(cpu1(), GuestEvent::StatusRead));
        }
        assert_eq!(s.dropped_observations(), 10);
    }

    #[test]
    fn paused_refuses_and_shutdown_answers_every_waiter() {
        let (mut s, _tx, _) = test_service();
        s.set_paused(true);
        let (respond, answer) = channel();
        s.request(Request::AddCpu { id: None }, true, respond);
        let refused = answer.try_recv().unwrap();
        assert_eq!(refused.status, 409);
        assert!(
            refused.body.to_string().contains("paused"),
            "{:?}",
            refused.body
        );
        s.set_paused(false);

        let (respond, answer) = channel();
        s.request(Request::AddCpu { id: None }, true, respond);
        assert!(s.in_flight());
        assert!(answer.try_recv().is_err(), "answered before the guest did");
        s.abandon_waiters("the VM is shutting down");
        let r = answer.try_recv().unwrap();
        assert_eq!(r.status, 503);
        assert!(r.body["transaction"]["id"].is_u64(), "{:?}", r.body);
    }
}
