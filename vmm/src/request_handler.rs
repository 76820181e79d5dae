//! Answers the VMM's API requests on the event loop: hotplug requests go to the
//! [`HotplugService`], pause/resume to the vCPUs, and `vm.info` is built here from the parts
//! of the VM it describes.

use std::sync::{Arc, Mutex};

use devices::{
    CpuHotplugController, ExitReason, ExitSignal, Ged, GedEvent, MemoryHotplugController,
};
use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use crate::api::{ApiMessage, ApiRequest, ApiResponse, RequestError, Responder};
use crate::config::VmConfig;
use crate::console::QueuedOutput;
use crate::control::{ApiEndpoint, VmmLinks};
use crate::counters::{DeviceCounters, HotplugCounters};
use crate::cpu_manager::{VcpuSet, VCPU_ACK_TIMEOUT};
use crate::events::EventLog;
use crate::hotplug_service::HotplugService;
use crate::info::{self, DeviceView, Present, VmState};
use crate::memory::{self, MemoryLayout};
use crate::memory_manager::HotplugMemory;
use crate::metrics::{self, SharedMetrics, VmCounters, VmSample};
use crate::vcpu::VcpuState;

/// What `vm.info` describes, shared with the rest of the VM.
pub struct VmView {
    /// The configuration the VM was built from.
    pub config: VmConfig,
    /// Where its memory lies.
    pub layout: MemoryLayout,
    /// The CPU hotplug controller.
    pub cpu_hotplug: Arc<CpuHotplugController>,
    /// The memory hotplug controller, when there is a hotplug region.
    pub memory_hotplug: Option<Arc<MemoryHotplugController>>,
    /// The hotplug region's memory.
    pub hotplug_memory: Option<Arc<Mutex<HotplugMemory>>>,
    /// The console's output queue.
    pub console: QueuedOutput,
}

/// The event-loop subscriber that answers API requests while the VM runs.
pub struct RequestHandler {
    /// `None` once the VMM has taken the endpoint back (the VM has ended).
    api: Option<ApiEndpoint>,
    hotplug: Arc<Mutex<HotplugService>>,
    vcpus: Arc<Mutex<VcpuSet>>,
    exit: Arc<ExitSignal>,
    view: VmView,
    ged: Arc<Ged>,
    paused: bool,
    /// Answers given once the VM has ended (`vm.shutdown`, `vm.delete`, `vmm.shutdown`).
    deferred: Vec<Responder>,
    events: Arc<EventLog>,
    metrics: SharedMetrics,
    /// Whether this VM's own counters went into `metrics` already (the VM has ended).
    retired: bool,
}

impl RequestHandler {
    /// Answers the requests arriving at `api`; publishes to the event log of `links` and
    /// answers `GET /metrics` from its metrics.
    pub fn new(
        api: ApiEndpoint,
        hotplug: Arc<Mutex<HotplugService>>,
        vcpus: Arc<Mutex<VcpuSet>>,
        exit: Arc<ExitSignal>,
        view: VmView,
        ged: Arc<Ged>,
        links: &VmmLinks,
    ) -> Self {
        RequestHandler {
            api: Some(api),
            hotplug,
            vcpus,
            exit,
            view,
            ged,
            paused: false,
            deferred: Vec::new(),
            events: links.events.clone(),
            metrics: links.metrics.clone(),
            retired: false,
        }
    }

    /// Gives the endpoint back to the VMM, with the answers deferred to the VM's end. The VM
    /// has ended: its own counters go into the VMM's metrics, which keep counting from there.
    pub(crate) fn take_endpoint(&mut self) -> Option<(ApiEndpoint, Vec<Responder>)> {
        self.retire_metrics();
        let api = self.api.take()?;
        Some((api, std::mem::take(&mut self.deferred)))
    }

    /// Folds this VM's own counters into the VMM's metrics, once.
    fn retire_metrics(&mut self) {
        if !self.retired {
            self.retired = true;
            let counters = self.vm_counters();
            metrics::lock(&self.metrics).retire(&counters);
        }
    }

    /// Ends the VM for `reason`; the client's answer waits for the VM's end.
    fn end_vm(&mut self, reason: ExitReason, respond: Responder) {
        tracing::info!(?reason, "the API asked the VM to end");
        self.exit.request(reason);
        self.deferred.push(respond);
    }

    fn handle(&mut self, msg: ApiMessage) {
        tracing::debug!(endpoint = msg.request.endpoint(), "API request");
        // The client may have gone away by the time of the answer; nothing to do then.
        let mut respond = msg.respond;
        respond.note_taken();
        let (request, wait) = match msg.request {
            ApiRequest::Shutdown => return self.end_vm(ExitReason::Shutdown, respond),
            ApiRequest::Delete => return self.end_vm(ExitReason::Delete, respond),
            ApiRequest::VmmShutdown => return self.end_vm(ExitReason::VmmShutdown, respond),
            ApiRequest::Create(_) => {
                let _ = respond.send(
                    RequestError::WrongVmState(
                        "A VM already exists and is running; vm.delete it first.".into(),
                    )
                    .into(),
                );
                return;
            }
            ApiRequest::Boot => {
                let _ = respond
                    .send(RequestError::WrongVmState("The VM is already booted.".into()).into());
                return;
            }
            ApiRequest::PowerButton => {
                let _ = respond.send(self.power_button());
                return;
            }
            ApiRequest::Counters => {
                let _ = respond.send(ApiResponse::ok(self.counters()));
                return;
            }
            ApiRequest::VmInfo => {
                let _ = respond.send(ApiResponse::ok(self.info()));
                return;
            }
            ApiRequest::Pause => {
                let _ = respond.send(self.pause());
                return;
            }
            ApiRequest::Resume => {
                let _ = respond.send(self.resume());
                return;
            }
            ApiRequest::Transactions => {
                let _ = respond.send(self.with_hotplug(|h| h.transactions()));
                return;
            }
            ApiRequest::Transaction(id) => {
                let _ = respond.send(self.with_hotplug(|h| h.transaction(id)));
                return;
            }
            ApiRequest::Metrics => {
                let _ = respond.send(ApiResponse::text(
                    200,
                    metrics::CONTENT_TYPE,
                    self.metrics_text(),
                ));
                return;
            }
            ApiRequest::AddVcpu { id, wait } => (hotplug::Request::AddCpu { id }, wait),
            ApiRequest::RemoveVcpu { id, wait } => (hotplug::Request::RemoveCpu { id }, wait),
            ApiRequest::Resize {
                desired_vcpus,
                desired_ram,
                best_effort,
                wait,
            } => (
                hotplug::Request::Resize {
                    vcpus: desired_vcpus,
                    memory: desired_ram,
                    best_effort,
                },
                wait,
            ),
            ApiRequest::AddMemory { size, wait } => (hotplug::Request::AddMemory { size }, wait),
            ApiRequest::RemoveMemory { slot, wait } => {
                (hotplug::Request::RemoveMemory { slot }, wait)
            }
        };
        match self.hotplug.lock() {
            Ok(mut h) => h.request(request, wait, respond),
            Err(_) => {
                let _ = respond.send(hotplug_service_failed());
            }
        }
    }

    fn with_hotplug(&self, f: impl FnOnce(&HotplugService) -> ApiResponse) -> ApiResponse {
        match self.hotplug.lock() {
            Ok(h) => f(&h),
            Err(_) => hotplug_service_failed(),
        }
    }

    fn pause(&mut self) -> ApiResponse {
        if self.paused {
            return RequestError::WrongVmState("The VM is already paused.".into()).into();
        }
        let Ok(mut hotplug) = self.hotplug.lock() else {
            return hotplug_service_failed();
        };
        // The guest could not answer a transaction while paused; its deadline would expire.
        if hotplug.in_flight() {
            return RequestError::TransactionWaiting(
                "A hotplug transaction is waiting for the guest; pause once it has ended.".into(),
            )
            .into();
        }
        let Ok(vcpus) = self.vcpus.lock() else {
            return RequestError::HostFailure("The vCPU set failed.".into()).into();
        };
        hotplug.set_paused(true);
        self.paused = true;
        if let Err(e) = vcpus.pause_all(VCPU_ACK_TIMEOUT) {
            // pause_all has told every vCPU to run again: the VM is not paused.
            hotplug.set_paused(false);
            self.paused = false;
            return RequestError::HostFailure(format!("Cannot pause the VM: {e}.")).into();
        }
        tracing::info!("VM paused");
        self.events
            .publish("vm", "paused", None, serde_json::json!({}));
        ApiResponse::no_content()
    }

    fn resume(&mut self) -> ApiResponse {
        if !self.paused {
            return RequestError::WrongVmState("The VM is not paused.".into()).into();
        }
        if let Ok(vcpus) = self.vcpus.lock() {
            if let Err(e) = vcpus.resume_all(VCPU_ACK_TIMEOUT) {
                return RequestError::HostFailure(format!("Cannot resume the VM: {e}.")).into();
            }
        }
        if let Ok(mut hotplug) = self.hotplug.lock() {
            hotplug.set_paused(false);
        }
        self.paused = false;
        tracing::info!("VM resumed");
        self.events
            .publish("vm", "resumed", None, serde_json::json!({}));
        ApiResponse::no_content()
    }

    /// Presses the ACPI power button: the GED tells the guest, which decides what to do.
    fn power_button(&self) -> ApiResponse {
        if self.paused {
            return RequestError::WrongVmState(
                "vm.power-button: the VM is paused; vm.resume it first.".into(),
            )
            .into();
        }
        match self.ged.notify(GedEvent::PowerButton) {
            Ok(()) => {
                tracing::info!("power button pressed through the API");
                self.events
                    .publish("vm", "power_button", None, serde_json::json!({}));
                ApiResponse::no_content()
            }
            Err(e) => RequestError::HostFailure(format!("vm.power-button: {e}.")).into(),
        }
    }

    /// The `vm.counters` document: hotplug counters per device, register accesses per
    /// controller.
    pub fn counters(&self) -> serde_json::Value {
        let view = &self.view;
        let accesses = |n: u64| -> DeviceCounters { [("register_accesses", n)].into() };
        let mut extra = vec![(
            "cpu_hotplug_controller",
            accesses(view.cpu_hotplug.access_count()),
        )];
        if let Some(c) = &view.memory_hotplug {
            extra.push(("memory_hotplug_controller", accesses(c.access_count())));
        }
        self.hotplug
            .lock()
            .map(|h| h.counters().to_json(&extra))
            .unwrap_or_else(|_| HotplugCounters::default().to_json(&extra))
    }

    /// The VM's own counters so far: register accesses, drops.
    fn vm_counters(&self) -> VmCounters {
        let view = &self.view;
        VmCounters {
            cpu_register_accesses: view.cpu_hotplug.access_count(),
            memory_register_accesses: view.memory_hotplug.as_ref().map_or(0, |c| c.access_count()),
            console_dropped_bytes: view.console.dropped(),
            guest_observations_dropped: self.hotplug.lock().map_or(0, |h| h.dropped_observations()),
        }
    }

    /// What is present in the guest now: vCPUs not absent (adding and removing ones count,
    /// as the engine has them) and boot RAM plus plugged slots.
    fn present(&self) -> Present {
        self.devices().present
    }

    /// The devices as the engine, the one authority, has them (all absent if its lock is
    /// poisoned, which only a panic elsewhere can do).
    fn devices(&self) -> DeviceView {
        match self.hotplug.lock() {
            Ok(h) => DeviceView::of(h.engine().machine()),
            Err(_) => DeviceView {
                cpus: Vec::new(),
                slots: Vec::new(),
                present: Present {
                    vcpus: 0,
                    ram: self.view.config.memory.size,
                },
            },
        }
    }

    fn state(&self) -> VmState {
        if self.paused {
            VmState::Paused
        } else {
            VmState::Running
        }
    }

    /// The `GET /metrics` text: the VMM's cumulative metrics with this VM's gauges and
    /// counters.
    pub fn metrics_text(&self) -> String {
        let present = self.present();
        let sample = VmSample {
            state: self.state(),
            vcpus_present: present.vcpus,
            vcpus_max: self.view.config.cpus.max,
            memory_present_bytes: present.ram,
            counters: if self.retired {
                VmCounters::default()
            } else {
                self.vm_counters()
            },
        };
        // Sampled before the registry is locked: the hotplug service locks it while locked.
        let events_dropped = self.events.dropped();
        metrics::lock(&self.metrics).render(Some(sample.state), Some(&sample), events_dropped)
    }

    /// The `vm.info` document (see [`crate::info`]): Cloud Hypervisor's fields, and under
    /// `plugvm` every possible vCPU with its state, memory slots and counters.
    pub fn info(&self) -> serde_json::Value {
        let view = &self.view;
        let threads = self.vcpus.lock().map(|s| s.states()).unwrap_or_default();
        let devices = self.devices();
        let vcpus: Vec<serde_json::Value> = (0..view.config.cpus.max)
            .map(|id| {
                let state = devices.cpus.get(id as usize).copied().unwrap_or("absent");
                serde_json::json!({ "id": id, "state": state, "thread": threads.get(&id) })
            })
            .collect();
        let ids = |want: VcpuState| -> Vec<u32> {
            threads
                .iter()
                .filter(|(_, s)| **s == want)
                .map(|(id, _)| *id)
                .collect()
        };
        let layout = &view.layout;
        let in_flight = self.hotplug.lock().is_ok_and(|h| h.in_flight());
        let counters = self.vm_counters();
        let present = devices.present;
        let plugged = present.ram.saturating_sub(view.config.memory.size);
        let state = self.state();
        let plugvm = serde_json::json!({
            "guest_eject": view.config.guest_eject,
            "transaction_in_flight": in_flight,
            "cpus": {
                "boot": view.config.cpus.boot,
                "max": view.config.cpus.max,
                "vcpus": vcpus,
                "threads_running": ids(VcpuState::Running),
                "parked": ids(VcpuState::Parked),
                "paused": ids(VcpuState::Paused),
                "spare": ids(VcpuState::Created),
            },
            "memory": {
                "boot_ram": view.config.memory.size,
                "ram_ranges": layout.ram.iter().map(|r| serde_json::json!({"base": r.base, "size": r.size})).collect::<Vec<_>>(),
                "hotplug_region": layout.hotplug.map(|r| serde_json::json!({"base": r.base, "size": r.size})),
                "hotplug_slots": self.memory_slots_info(&devices),
                "plugged": plugged,
            },
            "register_accesses": {
                "cpu_hotplug": counters.cpu_register_accesses,
                "memory_hotplug": counters.memory_register_accesses,
            },
            "dropped": {
                "console_bytes": counters.console_dropped_bytes,
                "guest_observations": counters.guest_observations_dropped,
            },
        });
        info::document(&view.config, state, present, plugvm)
    }

    /// Each hotplug slot: its state (the engine's) and the range the host backs it with.
    fn memory_slots_info(&self, devices: &DeviceView) -> Vec<serde_json::Value> {
        let view = &self.view;
        let (Some(_), Some(memory)) = (&view.memory_hotplug, &view.hotplug_memory) else {
            return Vec::new();
        };
        let backed: std::collections::BTreeMap<u32, memory::GuestRange> = memory
            .lock()
            .map(|m| m.backed_slots().into_iter().collect())
            .unwrap_or_default();
        (1..=view.config.memory.hotplug_slots)
            .map(|slot| {
                let state = slot
                    .checked_sub(1)
                    .and_then(|i| devices.slots.get(i as usize))
                    .map_or("absent", |(state, _)| *state);
                let range = backed.get(&slot);
                serde_json::json!({
                    "slot": slot,
                    "state": state,
                    "base": range.map(|r| r.base),
                    "size": range.map(|r| r.size),
                })
            })
            .collect()
    }
}

impl MutEventSubscriber for RequestHandler {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let Some(api) = &self.api else { return };
        let _ = api.wake.read();
        // Requests after one that ends the VM are the VMM's to answer, once the VM is gone.
        while self.exit.reason().is_none() {
            let Some(Ok(msg)) = self.api.as_ref().map(|a| a.requests.try_recv()) else {
                break;
            };
            self.handle(msg);
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        let Some(api) = &self.api else { return };
        if let Err(e) = ops.add(Events::new(&api.wake, EventSet::IN)) {
            tracing::error!("cannot watch the API wake-up event: {e:?}");
        }
    }
}

/// The hotplug service's lock is poisoned: a thread panicked while holding it.
fn hotplug_service_failed() -> ApiResponse {
    RequestError::HostFailure("The hotplug service failed.".into()).into()
}
