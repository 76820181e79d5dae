//! Answers the VMM's API requests on the event loop: hotplug requests go to the
//! [`HotplugService`], pause/resume to the vCPUs, and `vm.info` is built here from the parts
//! of the VM it describes.

use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};

use devices::{CpuHotplugController, ExitReason, ExitSignal, MemoryHotplugController};
use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::api::{ApiMessage, ApiRequest, ApiResponse};
use crate::config::VmConfig;
use crate::console::QueuedOutput;
use crate::cpu_manager::{VcpuSet, VCPU_ACK_TIMEOUT};
use crate::hotplug_service::HotplugService;
use crate::memory::{self, MemoryLayout};
use crate::memory_manager::HotplugMemory;
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

/// The event-loop subscriber that answers API requests.
pub struct RequestHandler {
    requests: Receiver<ApiMessage>,
    wake: EventFd,
    hotplug: Arc<Mutex<HotplugService>>,
    vcpus: Arc<Mutex<VcpuSet>>,
    exit: Arc<ExitSignal>,
    view: VmView,
    paused: bool,
}

impl RequestHandler {
    /// Answers the requests arriving on `requests` (`wake` says there are some).
    pub fn new(
        requests: Receiver<ApiMessage>,
        wake: EventFd,
        hotplug: Arc<Mutex<HotplugService>>,
        vcpus: Arc<Mutex<VcpuSet>>,
        exit: Arc<ExitSignal>,
        view: VmView,
    ) -> Self {
        RequestHandler {
            requests,
            wake,
            hotplug,
            vcpus,
            exit,
            view,
            paused: false,
        }
    }

    /// Answers every request still queued with 503 (the VM is ending).
    pub fn refuse_pending(&self, why: &str) {
        for msg in self.requests.try_iter() {
            let _ = msg.respond.send(ApiResponse::error(
                503,
                format!("{} was not handled: {why}", msg.request.endpoint()),
            ));
        }
    }

    fn handle(&mut self, msg: ApiMessage) {
        tracing::debug!(endpoint = msg.request.endpoint(), "API request");
        // The client may have gone away by the time of the answer; nothing to do then.
        let respond = msg.respond;
        let (request, wait) = match msg.request {
            ApiRequest::Shutdown => {
                tracing::info!("shutdown requested through the API");
                self.exit.request(ExitReason::Shutdown);
                let _ = respond.send(ApiResponse::no_content());
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
                let _ = respond.send(ApiResponse::error(500, "The hotplug service failed."));
            }
        }
    }

    fn with_hotplug(&self, f: impl FnOnce(&HotplugService) -> ApiResponse) -> ApiResponse {
        match self.hotplug.lock() {
            Ok(h) => f(&h),
            Err(_) => ApiResponse::error(500, "The hotplug service failed."),
        }
    }

    fn pause(&mut self) -> ApiResponse {
        if self.paused {
            return ApiResponse::error(409, "The VM is already paused.");
        }
        let Ok(mut hotplug) = self.hotplug.lock() else {
            return ApiResponse::error(500, "The hotplug service failed.");
        };
        // The guest could not answer a transaction while paused; its deadline would expire.
        if hotplug.in_flight() {
            return ApiResponse::error(
                409,
                "A hotplug transaction is waiting for the guest; pause once it has ended.",
            );
        }
        let Ok(vcpus) = self.vcpus.lock() else {
            return ApiResponse::error(500, "The vCPU set failed.");
        };
        hotplug.set_paused(true);
        self.paused = true;
        if let Err(e) = vcpus.pause_all(VCPU_ACK_TIMEOUT) {
            // pause_all has told every vCPU to run again: the VM is not paused.
            hotplug.set_paused(false);
            self.paused = false;
            return ApiResponse::error(500, format!("Cannot pause the VM: {e}."));
        }
        tracing::info!("VM paused");
        ApiResponse::no_content()
    }

    fn resume(&mut self) -> ApiResponse {
        if !self.paused {
            return ApiResponse::error(409, "The VM is not paused.");
        }
        if let Ok(vcpus) = self.vcpus.lock() {
            if let Err(e) = vcpus.resume_all(VCPU_ACK_TIMEOUT) {
                return ApiResponse::error(500, format!("Cannot resume the VM: {e}."));
            }
        }
        if let Ok(mut hotplug) = self.hotplug.lock() {
            hotplug.set_paused(false);
        }
        self.paused = false;
        tracing::info!("VM resumed");
        ApiResponse::no_content()
    }

    /// The `vm.info` document: configuration, every possible vCPU with its state, memory.
    pub fn info(&self) -> serde_json::Value {
        let view = &self.view;
        let threads = self.vcpus.lock().map(|s| s.states()).unwrap_or_default();
        let presence = self.presence();
        let vcpus: Vec<serde_json::Value> = (0..view.config.cpus.max)
            .map(|id| {
                let state = presence(hotplug::DeviceId::cpu(id));
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
        let dropped_observations = self.hotplug.lock().map_or(0, |h| h.dropped_observations());
        serde_json::json!({
            "config": view.config,
            "state": if self.paused { "paused" } else { "running" },
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
                "hotplug_slots": self.memory_slots_info(),
                "plugged": view.hotplug_memory.as_ref().and_then(|m| m.lock().ok()).map_or(0, |m| m.plugged_bytes()),
            },
            "register_accesses": {
                "cpu_hotplug": view.cpu_hotplug.access_count(),
                "memory_hotplug": view.memory_hotplug.as_ref().map_or(0, |c| c.access_count()),
            },
            "dropped": {
                "console_bytes": view.console.dropped(),
                "guest_observations": dropped_observations,
            },
        })
    }

    /// The state of each device as the engine, the one authority, has it.
    fn presence(&self) -> impl Fn(hotplug::DeviceId) -> &'static str {
        let machine: std::collections::BTreeMap<hotplug::DeviceId, hotplug::Presence> = self
            .hotplug
            .lock()
            .map(|h| {
                let m = h.engine().machine();
                let cpus = (0..self.view.config.cpus.max).map(hotplug::DeviceId::cpu);
                let slots =
                    (1..=self.view.config.memory.hotplug_slots).map(hotplug::DeviceId::memory_slot);
                cpus.chain(slots)
                    .filter_map(|d| m.presence(d).map(|p| (d, p)))
                    .collect()
            })
            .unwrap_or_default();
        move |device| match machine.get(&device) {
            Some(hotplug::Presence::Present) => "present",
            Some(hotplug::Presence::Adding(_)) => "adding",
            Some(hotplug::Presence::Removing(_)) => "removing",
            Some(hotplug::Presence::Absent) | None => "absent",
        }
    }

    fn memory_slots_info(&self) -> Vec<serde_json::Value> {
        let view = &self.view;
        let (Some(_), Some(memory)) = (&view.memory_hotplug, &view.hotplug_memory) else {
            return Vec::new();
        };
        let backed: std::collections::BTreeMap<u32, memory::GuestRange> = memory
            .lock()
            .map(|m| m.backed_slots().into_iter().collect())
            .unwrap_or_default();
        let presence = self.presence();
        (1..=view.config.memory.hotplug_slots)
            .map(|slot| {
                let state = presence(hotplug::DeviceId::memory_slot(slot));
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
        let _ = self.wake.read();
        while let Ok(msg) = self.requests.try_recv() {
            self.handle(msg);
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.wake, EventSet::IN)) {
            tracing::error!("cannot watch the API wake-up event: {e:?}");
        }
    }
}
