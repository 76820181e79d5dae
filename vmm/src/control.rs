//! The VMM across a VM's life, in Cloud Hypervisor's model: the API outlives the VM.
//!
//! With `--kernel`, the VM is built and booted at once; with `--api-socket` alone, the VMM
//! waits for `vm.create` (the configuration, state `Created`) and `vm.boot`. While the VM
//! runs, its [`RequestHandler`](crate::request_handler::RequestHandler) answers the API;
//! before and after, [`Vmm`] does. `vm.shutdown` ends the VM and keeps its configuration (it
//! can be booted again), `vm.delete` forgets it too, `vmm.shutdown` and a termination signal
//! end the process, and so does the guest powering off, resetting or panicking (the exit
//! code says which).

use std::path::Path;
use std::sync::mpsc::Receiver;
use std::sync::Arc;

use devices::{ExitReason, ExitSignal};
use kvm_ioctls::Kvm;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::api::{
    self, ApiMessage, ApiRequest, ApiResponse, ApiServerHandle, RequestError, Responder,
};
use crate::config::{HostLimits, VmConfig};
use crate::console::StdinRoute;
use crate::events::{self, EventLog};
use crate::info;
use crate::metrics::{self, Metrics, SharedMetrics};
use crate::signals;
use crate::vm::{Vm, VmError};

/// The VMM's end of the API: requests arrive on `requests`, `wake` says so.
pub struct ApiEndpoint {
    /// Requests from the server's connection threads.
    pub requests: Receiver<ApiMessage>,
    /// Written once per request sent.
    pub wake: EventFd,
}

impl ApiEndpoint {
    /// Answers every request still queued with 503.
    fn refuse_pending(&self, why: &str) {
        for mut msg in self.requests.try_iter() {
            msg.respond.note_taken();
            let _ = msg.respond.send(
                RequestError::VmmUnavailable(format!(
                    "{} was not handled: {why}",
                    msg.request.endpoint()
                ))
                .into(),
            );
        }
    }
}

fn eventfd() -> Result<EventFd, VmError> {
    EventFd::new(EFD_NONBLOCK).map_err(|e| VmError::EventLoop(format!("eventfd: {e}")))
}

/// Binds the API socket and starts its server.
fn start_api(path: &Path) -> Result<(ApiEndpoint, ApiServerHandle), VmError> {
    let (tx, requests) = std::sync::mpsc::channel();
    let wake = eventfd()?;
    let server_wake = wake
        .try_clone()
        .map_err(|e| VmError::EventLoop(format!("eventfd: {e}")))?;
    let server = api::start(path, tx, server_wake)?;
    tracing::info!(path = %path.display(), "API server listening");
    Ok((ApiEndpoint { requests, wake }, server))
}

/// What the VMM lends every VM it builds.
#[derive(Clone)]
pub struct VmmLinks {
    /// Fired by a termination signal; ends the VM too.
    pub terminate: Arc<ExitSignal>,
    /// Standard input, for a VM whose serial port is `stdio`.
    pub stdin: StdinRoute,
    /// The VMM's clock (its epoch is the VMM's start): the journal's and the events' time.
    pub clock: Arc<dyn hotplug::Clock>,
    /// The event stream.
    pub events: Arc<EventLog>,
    /// The VMM's metrics (`GET /metrics`), cumulative over every VM it runs.
    pub metrics: SharedMetrics,
}

/// How the VMM ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmmExit {
    /// The VM ended for this reason and the VMM with it.
    Vm(ExitReason),
    /// `vmm.shutdown`, or a signal, with no VM running.
    Requested,
}

impl VmmExit {
    /// The process exit code (documented in the README).
    pub fn exit_code(self) -> i32 {
        match self {
            VmmExit::Vm(reason) => reason.exit_code(),
            VmmExit::Requested => 0,
        }
    }
}

/// The VMM: the API, the VM's configuration once created, and the VM while it runs.
pub struct Vmm<'k> {
    kvm: &'k Kvm,
    host: HostLimits,
    /// What the command line set for every VM (`--guest-eject`).
    launch: VmConfig,
    /// The created VM's configuration.
    config: Option<VmConfig>,
    api: Option<ApiEndpoint>,
    server: Option<ApiServerHandle>,
    links: VmmLinks,
    /// The `--event-monitor` writer, to let its last events out at the end.
    monitor: Option<std::thread::JoinHandle<()>>,
}

/// How long the end waits for the event monitor to write the last events (its output may be
/// a pipe nobody reads).
const MONITOR_DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(500);

const TOKEN_API: u64 = 0;
const TOKEN_TERMINATE: u64 = 1;

impl<'k> Vmm<'k> {
    /// Starts the VMM of the command line's `launch` configuration: binds the API socket (a
    /// path in use fails here, before anything is built) and watches termination signals.
    pub fn new(kvm: &'k Kvm, host: HostLimits, launch: VmConfig) -> Result<Self, VmError> {
        let (api, server) = match launch.api_socket.as_deref().map(start_api).transpose()? {
            Some((api, server)) => (Some(api), Some(server)),
            None => (None, None),
        };
        let terminate = Arc::new(ExitSignal::new(eventfd()?));
        signals::watch_termination(terminate.clone())
            .map_err(|e| VmError::EventLoop(format!("signal thread: {e}")))?;
        let clock: Arc<dyn hotplug::Clock> = Arc::new(hotplug::MonotonicClock::new());
        let events = Arc::new(EventLog::new(clock.clone()));
        if let Some(server) = &server {
            server.attach_events(events.clone());
        }
        let monitor = match &launch.event_monitor {
            Some(monitor) => {
                let out = monitor
                    .open()
                    .map_err(|e| VmError::EventLoop(format!("--event-monitor: {e}")))?;
                Some(
                    events::spawn_monitor(events.clone(), out)
                        .map_err(|e| VmError::EventLoop(format!("event monitor thread: {e}")))?,
                )
            }
            None => None,
        };
        events.publish("vmm", "starting", None, serde_json::json!({}));
        let config = launch.payload.is_some().then(|| launch.clone());
        Ok(Vmm {
            kvm,
            host,
            launch,
            config,
            api,
            server,
            links: VmmLinks {
                terminate,
                stdin: StdinRoute::default(),
                clock,
                events,
                metrics: Metrics::shared(),
            },
            monitor,
        })
    }

    /// Runs until the VMM ends: boots the command line's VM at once, if it has one, and
    /// otherwise serves the API until a VM is created and booted.
    pub fn run(mut self) -> Result<VmmExit, VmError> {
        let mut vm = match self.config.clone() {
            Some(config) => Some(self.start_vm(&config)?),
            None => None,
        };
        loop {
            let exit = match vm.take() {
                Some(running) => self.run_vm(running)?,
                None => self.serve_without_vm()?,
            };
            match exit {
                Step::Boot(next) => vm = Some(*next),
                Step::Continue => {}
                Step::End(exit) => {
                    self.publish(
                        "vmm",
                        "shutdown",
                        serde_json::json!({ "exit_code": exit.exit_code() }),
                    );
                    // Readers get the last events before the server closes their connections.
                    self.links.events.close();
                    self.stop_api("the VMM is ending");
                    self.drain_monitor();
                    return Ok(exit);
                }
            }
        }
    }

    fn publish(&self, source: &'static str, event: &'static str, data: serde_json::Value) {
        self.links.events.publish(source, event, None, data);
    }

    /// Builds and boots the VM of `config`, with events around it.
    fn start_vm(&mut self, config: &VmConfig) -> Result<Vm, VmError> {
        self.publish("vm", "booting", serde_json::json!({}));
        let vm = Vm::start(self.kvm, config, &mut self.api, &self.links)?;
        self.publish(
            "vm",
            "booted",
            serde_json::json!({ "vcpus": config.cpus.boot, "max_vcpus": config.cpus.max, "memory": config.memory.size }),
        );
        Ok(vm)
    }

    /// Runs `vm` until it ends and takes the API back.
    fn run_vm(&mut self, mut vm: Vm) -> Result<Step, VmError> {
        let result = vm.run_until_exit();
        let (api, deferred) = match vm.take_api() {
            Some((api, deferred)) => (Some(api), deferred),
            None => (None, Vec::new()),
        };
        drop(vm);
        self.api = api;
        let reason = match result {
            Ok(reason) => reason,
            Err(e) => {
                answer_all(deferred, RequestError::HostFailure(e.to_string()).into());
                return Err(e);
            }
        };
        tracing::info!(?reason, "the VM ended");
        let (name, why) = match reason {
            ExitReason::PowerOff => ("shutdown", "the guest powered off"),
            ExitReason::Reset => ("shutdown", "the guest reset the machine"),
            ExitReason::GuestPanic => ("shutdown", "the guest kernel panicked"),
            ExitReason::VcpuError => ("shutdown", "a vCPU failed"),
            ExitReason::Shutdown => ("shutdown", "vm.shutdown"),
            ExitReason::Delete => ("deleted", "vm.delete"),
            ExitReason::VmmShutdown => ("shutdown", "vmm.shutdown"),
            ExitReason::Signal(_) => ("shutdown", "a termination signal"),
        };
        self.publish("vm", name, serde_json::json!({ "reason": why }));
        answer_all(deferred, ApiResponse::no_content());
        Ok(match reason {
            ExitReason::Shutdown if self.api.is_some() => Step::Continue,
            ExitReason::Delete if self.api.is_some() => {
                self.config = None;
                Step::Continue
            }
            other => Step::End(VmmExit::Vm(other)),
        })
    }

    /// Answers the API while no VM runs, until a VM boots or the VMM is told to end.
    fn serve_without_vm(&mut self) -> Result<Step, VmError> {
        let Some(api) = self.api.as_ref() else {
            // Without an API nothing can create a VM.
            return Ok(Step::End(VmmExit::Requested));
        };
        let epoll = Epoll::new().map_err(|e| VmError::EventLoop(format!("epoll: {e}")))?;
        let watch = |fd: &EventFd, token| {
            epoll
                .ctl(
                    ControlOperation::Add,
                    std::os::fd::AsRawFd::as_raw_fd(fd),
                    EpollEvent::new(EventSet::IN, token),
                )
                .map_err(|e| VmError::EventLoop(format!("epoll_ctl: {e}")))
        };
        watch(&api.wake, TOKEN_API)?;
        watch(self.links.terminate.event(), TOKEN_TERMINATE)?;
        let mut events = [EpollEvent::default(); 2];
        loop {
            if self.links.terminate.reason().is_some() {
                return Ok(Step::End(VmmExit::Requested));
            }
            // Requests may be queued already: those that arrived while a VM was ending.
            while let Some(Ok(msg)) = self.api.as_ref().map(|a| a.requests.try_recv()) {
                if let Some(step) = self.handle_without_vm(msg) {
                    return Ok(step);
                }
            }
            match epoll.wait(-1, &mut events) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(VmError::EventLoop(format!("epoll_wait: {e}"))),
            }
            if let Some(api) = &self.api {
                let _ = api.wake.read();
            }
        }
    }

    /// Answers one request while no VM runs; `Some` when the VMM's state moves on.
    fn handle_without_vm(&mut self, msg: ApiMessage) -> Option<Step> {
        let mut respond = msg.respond;
        respond.note_taken();
        let endpoint = msg.request.endpoint();
        let not_running = |what: &str| {
            RequestError::WrongVmState(format!("{endpoint}: the VM is not running ({what})."))
                .into()
        };
        let state = if self.config.is_some() {
            "it is created, not booted: vm.boot boots it"
        } else {
            "no VM is created: vm.create creates one"
        };
        let response = match msg.request {
            ApiRequest::VmmShutdown => {
                tracing::info!("vmm.shutdown: the VMM ends");
                let _ = respond.send(ApiResponse::no_content());
                return Some(Step::End(VmmExit::Requested));
            }
            ApiRequest::Create(config) => self.create(*config),
            ApiRequest::Delete => {
                if self.config.take().is_some() {
                    self.publish(
                        "vm",
                        "deleted",
                        serde_json::json!({ "reason": "vm.delete" }),
                    );
                }
                ApiResponse::no_content()
            }
            ApiRequest::VmInfo => match &self.config {
                Some(config) => ApiResponse::ok(info::created(config)),
                None => {
                    RequestError::NoVm("vm.info: no VM is created (vm.create creates one).".into())
                        .into()
                }
            },
            ApiRequest::Metrics => self.metrics(),
            ApiRequest::Boot => match self.config.clone() {
                None => RequestError::NoVm(
                    "vm.boot: no VM is created (vm.create creates one first).".into(),
                )
                .into(),
                Some(config) => return self.boot(&config, respond),
            },
            ApiRequest::Shutdown
            | ApiRequest::Pause
            | ApiRequest::Resume
            | ApiRequest::Counters
            | ApiRequest::PowerButton
            | ApiRequest::Transactions
            | ApiRequest::Transaction(_)
            | ApiRequest::AddVcpu { .. }
            | ApiRequest::RemoveVcpu { .. }
            | ApiRequest::Resize { .. }
            | ApiRequest::AddMemory { .. }
            | ApiRequest::RemoveMemory { .. } => not_running(state),
        };
        let _ = respond.send(response);
        None
    }

    /// `GET /metrics` without a VM: the cumulative counters, zero gauges.
    fn metrics(&self) -> ApiResponse {
        let state = self.config.as_ref().map(|_| info::VmState::Created);
        let events_dropped = self.links.events.dropped();
        let text = metrics::lock(&self.links.metrics).render(state, None, events_dropped);
        ApiResponse::text(200, metrics::CONTENT_TYPE, text)
    }

    fn create(&mut self, mut config: VmConfig) -> ApiResponse {
        if self.config.is_some() {
            return RequestError::WrongVmState(
                "vm.create: a VM is already created; vm.delete it first.".into(),
            )
            .into();
        }
        config.api_socket = None;
        config.guest_eject = self.launch.guest_eject;
        config.kernel_cache = self.launch.kernel_cache.clone();
        config.event_monitor = None;
        if let Err(e) = config.validate(&self.host) {
            return RequestError::InvalidVmConfig(format!("vm.create: {e}.")).into();
        }
        tracing::info!(
            vcpus = config.cpus.boot,
            max = config.cpus.max,
            ram = config.memory.size,
            "VM created through the API"
        );
        self.config = Some(config);
        self.publish("vm", "created", serde_json::json!({}));
        ApiResponse::no_content()
    }

    fn boot(&mut self, config: &VmConfig, respond: Responder) -> Option<Step> {
        // The files may have changed since vm.create.
        if let Err(e) = config.validate_files() {
            let _ = respond.send(RequestError::InvalidVmConfig(format!("vm.boot: {e}.")).into());
            return None;
        }
        match self.start_vm(config) {
            Ok(vm) => {
                let _ = respond.send(ApiResponse::no_content());
                Some(Step::Boot(Box::new(vm)))
            }
            Err(e) => {
                tracing::warn!("vm.boot failed: {e}");
                self.publish(
                    "vm",
                    "boot_failed",
                    serde_json::json!({ "error": e.to_string() }),
                );
                let message = format!("vm.boot: {e}.");
                let cause = if e.is_config_error() {
                    RequestError::InvalidVmConfig(message)
                } else {
                    RequestError::HostFailure(message)
                };
                let _ = respond.send(cause.into());
                None
            }
        }
    }

    /// Waits (bounded) for the event monitor to write what the closed log still holds.
    fn drain_monitor(&mut self) {
        let Some(monitor) = self.monitor.take() else {
            return;
        };
        let deadline = std::time::Instant::now() + MONITOR_DRAIN_TIMEOUT;
        while !monitor.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        if monitor.is_finished() {
            let _ = monitor.join();
        } else {
            tracing::warn!("the event monitor's output did not take the last events");
        }
    }

    /// Answers what is queued with 503, then stops the server (which removes the socket).
    fn stop_api(&mut self, why: &str) {
        if let Some(api) = self.api.take() {
            api.refuse_pending(why);
        }
        if let Some(server) = self.server.take() {
            server.shutdown();
        }
    }
}

/// What the VMM does next.
enum Step {
    /// Run this freshly booted VM.
    Boot(Box<Vm>),
    /// Serve the API without a VM.
    Continue,
    /// End the process.
    End(VmmExit),
}

fn answer_all(responders: Vec<Responder>, response: ApiResponse) {
    for r in responders {
        let _ = r.send(response.clone());
    }
}
