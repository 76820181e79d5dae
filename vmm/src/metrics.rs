//! Prometheus metrics for `GET /metrics`, in the text exposition format 0.0.4.
//!
//! [`Metrics`] is the VMM's registry of cumulative tallies, kept for the VMM's whole life (a
//! VM booted again after `vm.shutdown` keeps counting): the [`HotplugService`] tallies every
//! finished transaction into it (durations, phases, the guest's `_OST` verdicts, devices rolled
//! back or rejected) and every request refused before a transaction started. What belongs to
//! one VM (register accesses, dropped console bytes and guest observations) is read from the
//! running VM at scrape time ([`VmSample`]) and folded into the registry when the VM ends
//! ([`Metrics::retire`]), so that those counters never go backwards either.
//!
//! [`Metrics::render`] writes the exposition text; the gauges (vCPUs and memory present, the
//! VM's state) come from the caller's view at that moment, and are zero while no VM runs.
//!
//! [`HotplugService`]: crate::hotplug_service::HotplugService

use std::collections::BTreeMap;
use std::fmt::{Display, Write};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use hotplug::{Completion, DeviceResult, FailureReason, GuestEventKind, OstStatus};
use hotplug::{Request, TxRecord, TxStatus};

use crate::info::VmState;

/// The content type of the exposition format [`Metrics::render`] writes.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Upper bounds (seconds) of the transaction-duration histogram: 1 ms to 30 s, which spans a
/// vCPU add on a fast host to a transaction that ran into its guest deadline (10 s by default).
pub const TRANSACTION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Upper bounds (seconds) of the phase-duration histogram: those of
/// [`TRANSACTION_BUCKETS`] and three below them, since the host-side phases (validate,
/// prepare, publish, commit) take well under a millisecond.
pub const PHASE_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// The registry shared by the VMM, each VM's hotplug service and its request handler.
pub type SharedMetrics = Arc<Mutex<Metrics>>;

/// Locks `metrics`; a panic elsewhere while it was held leaves tallies that are still worth
/// showing, so a poisoned lock is taken as it is.
pub fn lock(metrics: &Mutex<Metrics>) -> MutexGuard<'_, Metrics> {
    metrics.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A histogram with fixed bucket bounds; durations are counted in whole microseconds (the
/// journal's unit), so that bucket boundaries and the sum are exact.
#[derive(Debug, Clone)]
struct Histogram {
    /// Upper bounds, in microseconds, ascending.
    bounds_us: Vec<u64>,
    /// The bounds as written in the `le` label.
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative); one more than the bounds, for `+Inf`.
    counts: Vec<u64>,
    sum_us: u64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            // The bounds are small multiples of 1e-4 s: rounding gives their exact microseconds.
            bounds_us: bounds.iter().map(|b| (b * 1e6).round() as u64).collect(),
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum_us: 0,
            count: 0,
        }
    }

    fn observe_us(&mut self, us: u64) {
        let bucket = self.bounds_us.partition_point(|&bound| bound < us);
        self.counts[bucket] += 1;
        self.sum_us = self.sum_us.saturating_add(us);
        self.count += 1;
    }
}

/// Counters of one VM that the VM keeps itself (its devices, its console, its observation
/// queue) and that start from zero with each VM.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct VmCounters {
    /// Guest accesses to the CPU hotplug controller's registers.
    pub cpu_register_accesses: u64,
    /// Guest accesses to the memory hotplug controller's registers (0 without one).
    pub memory_register_accesses: u64,
    /// Console output dropped because its reader did not keep up, in bytes.
    pub console_dropped_bytes: u64,
    /// Guest observations dropped because their queue was full.
    pub guest_observations_dropped: u64,
}

impl VmCounters {
    fn add(&mut self, other: &VmCounters) {
        self.cpu_register_accesses += other.cpu_register_accesses;
        self.memory_register_accesses += other.memory_register_accesses;
        self.console_dropped_bytes += other.console_dropped_bytes;
        self.guest_observations_dropped += other.guest_observations_dropped;
    }
}

/// The running VM as a scrape sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmSample {
    /// Running or paused.
    pub state: VmState,
    /// vCPUs present (a device being added or removed counts, as in `vm.info`).
    pub vcpus_present: u32,
    /// vCPUs possible (`--cpus max`).
    pub vcpus_max: u32,
    /// RAM present: boot RAM and plugged slots, in bytes.
    pub memory_present_bytes: u64,
    /// The VM's own counters so far.
    pub counters: VmCounters,
}

/// The VMM's cumulative metrics. See the module docs.
#[derive(Debug, Default, Clone)]
pub struct Metrics {
    /// Finished transactions by (request kind, outcome).
    transactions: BTreeMap<(&'static str, &'static str), Histogram>,
    /// Journaled phases by phase.
    phases: BTreeMap<&'static str, Histogram>,
    /// `_OST` verdicts by status name.
    ost: BTreeMap<&'static str, u64>,
    /// Devices rolled back or rejected, by cause.
    rollbacks: BTreeMap<&'static str, u64>,
    /// Requests refused before a transaction started, by (request kind, reason).
    refused: BTreeMap<(&'static str, &'static str), u64>,
    /// The counters of the VMs that have ended.
    retired: VmCounters,
}

/// Why a request was refused before any transaction started (label `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The request is invalid for this machine (422).
    Invalid,
    /// A device of the request is busy with another transaction (429).
    Conflict,
    /// The VM is paused (409).
    Paused,
    /// The engine could not take it (500).
    Internal,
}

impl Refusal {
    /// The label value.
    pub fn name(self) -> &'static str {
        match self {
            Refusal::Invalid => "invalid",
            Refusal::Conflict => "conflict",
            Refusal::Paused => "paused",
            Refusal::Internal => "internal",
        }
    }

    /// The refusal of an engine error.
    pub fn of(error: &hotplug::Error) -> Self {
        match error {
            hotplug::Error::Invalid(_) => Refusal::Invalid,
            hotplug::Error::Conflict { .. } => Refusal::Conflict,
            hotplug::Error::RegisterInFlight { .. } => Refusal::Internal,
        }
    }
}

/// The request's kind as serialized (`add_cpu`, `remove_cpu`, `add_memory`, `remove_memory`,
/// `resize`).
pub fn request_kind(request: &Request) -> &'static str {
    match request {
        Request::AddCpu { .. } => "add_cpu",
        Request::RemoveCpu { .. } => "remove_cpu",
        Request::AddMemory { .. } => "add_memory",
        Request::RemoveMemory { .. } => "remove_memory",
        Request::Resize { .. } => "resize",
    }
}

/// The transaction's status as serialized (`committed`, `partially_committed`, `rolled_back`,
/// `rejected`).
pub fn outcome_name(status: TxStatus) -> &'static str {
    match status {
        TxStatus::Committed => "committed",
        TxStatus::PartiallyCommitted => "partially_committed",
        TxStatus::RolledBack => "rolled_back",
        TxStatus::Rejected => "rejected",
    }
}

/// The failure's `kind` as serialized (`timeout`, `guest_refused`, `batch_aborted`, ...).
pub fn cause_name(reason: &FailureReason) -> &'static str {
    match reason {
        FailureReason::Invalid { .. } => "invalid",
        FailureReason::Vetoed { .. } => "vetoed",
        FailureReason::PrepareFailed { .. } => "prepare_failed",
        FailureReason::PublishFailed { .. } => "publish_failed",
        FailureReason::GuestRefused { .. } => "guest_refused",
        FailureReason::GuestEjectedDuringAdd => "guest_ejected_during_add",
        FailureReason::Timeout { .. } => "timeout",
        FailureReason::BatchAborted { .. } => "batch_aborted",
        FailureReason::GuestEjectDenied => "guest_eject_denied",
    }
}

/// Every cause [`cause_name`] gives, so that each counter exists from the start.
const CAUSES: &[&str] = &[
    "invalid",
    "vetoed",
    "prepare_failed",
    "publish_failed",
    "guest_refused",
    "guest_ejected_during_add",
    "timeout",
    "batch_aborted",
    "guest_eject_denied",
];

/// Every `_OST` status name, so that each counter exists from the start.
const OST_STATUSES: &[OstStatus] = &[
    OstStatus::Success,
    OstStatus::Failure,
    OstStatus::UnrecognizedNotify,
    OstStatus::EjectNotSupported,
    OstStatus::DeviceInUse,
    OstStatus::DeviceBusy,
    OstStatus::EjectDependencyBusy,
    OstStatus::EjectInProgress,
    OstStatus::InsertionInProgress,
    OstStatus::DriverLoadFailure,
    OstStatus::InsertionNotSupported,
    OstStatus::Other(0),
];

/// The label values of `plugvm_vm_state`.
const VM_STATES: &[&str] = &["not_created", "created", "running", "paused"];

fn state_name(state: Option<VmState>) -> &'static str {
    match state {
        None => "not_created",
        Some(VmState::Created) => "created",
        Some(VmState::Running) => "running",
        Some(VmState::Paused) => "paused",
    }
}

impl Metrics {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// A new registry to share.
    pub fn shared() -> SharedMetrics {
        Arc::new(Mutex::new(Self::new()))
    }

    /// Tallies a finished transaction: its duration by request kind and outcome, each phase
    /// of it, the guest's `_OST` verdicts and each device rolled back or rejected by cause.
    /// `record` is the journal's record of it; without one (evicted already) only the devices
    /// are counted.
    pub fn count_completion(&mut self, done: &Completion, record: Option<&TxRecord>) {
        for device in &done.outcome.devices {
            if let DeviceResult::RolledBack { reason } | DeviceResult::Rejected { reason } =
                &device.result
            {
                *self.rollbacks.entry(cause_name(reason)).or_default() += 1;
            }
        }
        let Some(record) = record else { return };
        let key = (
            request_kind(&record.request),
            outcome_name(done.outcome.status),
        );
        let duration = record
            .duration_us
            .or_else(|| {
                record
                    .ended_us
                    .map(|end| end.saturating_sub(record.started_us))
            })
            .unwrap_or(0);
        self.transactions
            .entry(key)
            .or_insert_with(|| Histogram::new(TRANSACTION_BUCKETS))
            .observe_us(duration);
        for phase in &record.phases {
            self.phases
                .entry(phase.phase.name())
                .or_insert_with(|| Histogram::new(PHASE_BUCKETS))
                .observe_us(phase.duration_us);
        }
        for event in &record.guest_events {
            if let GuestEventKind::Ost { ost } = event.event {
                *self.ost.entry(ost.status.name()).or_default() += 1;
            }
        }
    }

    /// Counts a request refused before a transaction started.
    pub fn count_refused(&mut self, request: &Request, why: Refusal) {
        *self
            .refused
            .entry((request_kind(request), why.name()))
            .or_default() += 1;
    }

    /// Folds the counters of a VM that has ended into the registry's totals.
    pub fn retire(&mut self, counters: &VmCounters) {
        self.retired.add(counters);
    }

    /// The exposition text: every metric with its `# HELP` and `# TYPE` lines. `state` is the
    /// VM's (`None`: no VM created), `vm` the running VM, if any (gauges are 0 without one),
    /// and `events_dropped` the events readers of the event stream have missed.
    pub fn render(
        &self,
        state: Option<VmState>,
        vm: Option<&VmSample>,
        events_dropped: u64,
    ) -> String {
        let mut out = Exposition::default();
        out.family(
            "plugvm_hotplug_transaction_duration_seconds",
            "histogram",
            "Duration of finished hotplug transactions, from the request to commit or rollback, by request kind and outcome.",
        );
        for ((kind, outcome), h) in &self.transactions {
            out.histogram(
                "plugvm_hotplug_transaction_duration_seconds",
                &[("kind", kind), ("outcome", outcome)],
                h,
            );
        }
        out.family(
            "plugvm_hotplug_phase_duration_seconds",
            "histogram",
            "Duration of the phases of finished hotplug transactions (each await_guest, commit and rollback episode counts once).",
        );
        for (phase, h) in &self.phases {
            out.histogram(
                "plugvm_hotplug_phase_duration_seconds",
                &[("phase", phase)],
                h,
            );
        }
        out.family(
            "plugvm_guest_ost_total",
            "counter",
            "_OST verdicts the guest gave in finished hotplug transactions, by status.",
        );
        for status in OST_STATUSES {
            let name = status.name();
            let n = self.ost.get(name).copied().unwrap_or(0);
            out.sample("plugvm_guest_ost_total", &[("status", name)], n);
        }
        out.family(
            "plugvm_hotplug_rollbacks_total",
            "counter",
            "Devices of finished hotplug transactions that were rolled back or rejected, by cause.",
        );
        for cause in CAUSES {
            let n = self.rollbacks.get(cause).copied().unwrap_or(0);
            out.sample("plugvm_hotplug_rollbacks_total", &[("cause", cause)], n);
        }
        out.family(
            "plugvm_hotplug_requests_refused_total",
            "counter",
            "Hotplug requests the running VM refused before any transaction started, by request kind and reason.",
        );
        for ((kind, reason), n) in &self.refused {
            out.sample(
                "plugvm_hotplug_requests_refused_total",
                &[("kind", kind), ("reason", reason)],
                n,
            );
        }
        let mut counters = self.retired;
        if let Some(vm) = vm {
            counters.add(&vm.counters);
        }
        out.family(
            "plugvm_register_accesses_total",
            "counter",
            "Guest accesses to the hotplug controllers' registers, by controller.",
        );
        for (controller, n) in [
            ("cpu_hotplug", counters.cpu_register_accesses),
            ("memory_hotplug", counters.memory_register_accesses),
        ] {
            out.sample(
                "plugvm_register_accesses_total",
                &[("controller", controller)],
                n,
            );
        }
        let gauge = |f: fn(&VmSample) -> u64| vm.map_or(0, f);
        for (name, help, value) in [
            (
                "plugvm_vcpus_present",
                "vCPUs present in the running VM (0 without one).",
                gauge(|v| u64::from(v.vcpus_present)),
            ),
            (
                "plugvm_vcpus_max",
                "vCPUs the running VM can have (0 without one).",
                gauge(|v| u64::from(v.vcpus_max)),
            ),
            (
                "plugvm_memory_present_bytes",
                "RAM present in the running VM, boot RAM and plugged slots (0 without one).",
                gauge(|v| v.memory_present_bytes),
            ),
        ] {
            out.family(name, "gauge", help);
            out.sample(name, &[], value);
        }
        out.family(
            "plugvm_vm_state",
            "gauge",
            "The VM's state: 1 for the current one, 0 for the others.",
        );
        let current = state_name(state);
        for name in VM_STATES {
            let value = u8::from(*name == current);
            out.sample("plugvm_vm_state", &[("state", name)], value);
        }
        for (name, help, value) in [
            (
                "plugvm_events_dropped_total",
                "Events that readers of the event stream missed because they fell too far behind.",
                events_dropped,
            ),
            (
                "plugvm_console_dropped_bytes_total",
                "Console output dropped because its reader did not keep up, in bytes.",
                counters.console_dropped_bytes,
            ),
            (
                "plugvm_guest_observations_dropped_total",
                "Guest register accesses not reported to the hotplug engine because its queue was full.",
                counters.guest_observations_dropped,
            ),
        ] {
            out.family(name, "counter", help);
            out.sample(name, &[], value);
        }
        out.0
    }
}

/// The text being written.
#[derive(Default)]
struct Exposition(String);

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = write!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (label, text)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let text = text
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                let _ = write!(self.0, "{label}=\"{text}\"");
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &Histogram) {
        let bucket = format!("{name}_bucket");
        let mut cumulative = 0;
        let bounds = h.bounds.iter().map(|b| b.to_string());
        for (le, n) in bounds
            .chain(std::iter::once("+Inf".to_string()))
            .zip(&h.counts)
        {
            cumulative += n;
            let mut with_le = labels.to_vec();
            with_le.push(("le", &le));
            self.sample(&bucket, &with_le, cumulative);
        }
        // Whole microseconds as seconds: exact in decimal, and never in exponent notation.
        let sum = format!("{}.{:06}", h.sum_us / 1_000_000, h.sum_us % 1_000_000);
        self.sample(&format!("{name}_sum"), labels, sum);
        self.sample(&format!("{name}_count"), labels, h.count);
    }
}

#[cfg(test)]
#[path = "metrics_tests.rs"]
mod tests;
