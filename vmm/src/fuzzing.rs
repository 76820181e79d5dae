//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`): every part of plugvm that
//! takes input from outside, reachable without a socket, a VM or KVM.
//!
//! Each entry point runs the production code itself (the same parser, router, option parser,
//! register blocks, participants and engine the VMM uses) and checks the promises the rest of
//! the VMM relies on; a broken promise panics, which the fuzzer reports as a crash.

use std::io::{BufReader, Cursor};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::Duration;

use acpi::layout::hotplug_registers as regs;
use devices::{CpuHotplugController, Ged, MemoryHotplugController};
use hotplug::{
    DeviceId, Engine, EngineConfig, FakeClock, GuestEjectPolicy, MachineConfig, Request,
    MAX_GUEST_EVENTS, MAX_GUEST_RECORDS, MAX_NOTES,
};
use vm_device::bus::MmioAddress;
use vm_device::DeviceMmio;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::api::http::{self, HeadError};
use crate::api::routing::{self, Action};
use crate::api::{ApiResponse, RequestError, MAX_BODY_BYTES};
use crate::cpu_manager::{self, CpuParts};
use crate::hotplug_service::{self, HotplugService};
use crate::info::DeviceView;
use crate::memory::GuestRange;
use crate::memory_manager::{self, MemoryParts};

/// Serves `input` as the bytes a client sent on one connection, the way the API server does
/// (request head, body, routing; requests the VMM would carry out are not carried out), and
/// returns the status of each answer. Panics if an answer breaks a promise of the API: a
/// status outside 100..=599, a server error for bad input, or a non-ASCII response.
pub fn serve_bytes(input: &[u8]) -> Vec<u16> {
    let mut reader = BufReader::new(Cursor::new(input));
    let mut statuses = Vec::new();
    loop {
        if http::await_request(&mut reader).is_err() {
            break;
        }
        let head = match http::read_head(&mut reader) {
            Ok(head) => head,
            Err(HeadError::Reject(e)) => {
                statuses.push(e.status());
                check_error_answer(e);
                break;
            }
            Err(_) => break,
        };
        let len = match usize::try_from(head.content_length) {
            Ok(len) if len <= MAX_BODY_BYTES => len,
            _ => {
                statuses.push(413);
                break;
            }
        };
        let Ok(body) = http::read_body(&mut reader, len) else {
            break;
        };
        statuses.push(route_request(&head.method, &head.target, &body));
        if !head.keep_alive {
            break;
        }
    }
    statuses
}

/// Routes one request (method, request-target, body) as the API server does and returns the
/// status of the answer the router gives (200 for a request it hands to the VMM). Panics if
/// bad input gets anything but a 4xx with a one-sentence JSON error, or if an answer is not
/// ASCII on the wire.
pub fn route_request(method: &str, target: &str, body: &[u8]) -> u16 {
    match routing::route(method, target, body) {
        Ok(Action::Reply(response)) => {
            check_wire(&response);
            response.status
        }
        Ok(Action::Forward(request)) => {
            // What the VMM answers a request it cannot carry out now names the endpoint.
            check_wire(&ApiResponse::not_implemented(&request));
            200
        }
        Ok(Action::Stream(_)) => 200,
        Err(e) => {
            let status = e.status();
            check_error_answer(e);
            status
        }
    }
}

fn check_error_answer(error: RequestError) {
    let status = error.status();
    // 505 (HTTP Version Not Supported) is the one 5xx status that names the client's fault.
    assert!(
        (400..500).contains(&status) || status == 505,
        "bad input answered {status}: {error}"
    );
    assert!(!error.to_string().is_empty(), "an error without a message");
    check_wire(&ApiResponse::from(error));
}

fn check_wire(response: &ApiResponse) {
    let mut wire = Vec::new();
    crate::api::encode::write_answer(&mut wire, response, None, true)
        .unwrap_or_else(|e| panic!("writing a response into memory failed: {e}"));
    assert!(wire.is_ascii(), "a response that is not ASCII: {wire:?}");
}

/// Parses `args` (argv\[0\] included) as plugvm's command line. Panics only if the parser
/// does (it must not, whatever the input); an error is an answer, not a failure.
pub fn parse_command_line(args: &[String]) -> bool {
    crate::config::parse_invocation(args).is_ok()
}

/// Which register block a guest access goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Block {
    /// The CPU hotplug controller.
    Cpu,
    /// The memory hotplug controller.
    Memory,
}

/// Possible CPUs of the [`HotplugRig`] (one boot CPU).
pub const RIG_MAX_CPUS: u32 = 4;
/// Memory slots of the [`HotplugRig`].
pub const RIG_MEMORY_SLOTS: u32 = 4;
/// Memory block size of the [`HotplugRig`].
pub const RIG_BLOCK: u64 = 128 << 20;

/// The VMM's hotplug path without KVM: both hotplug controllers, the GED, the controller
/// participants and the engine behind the same [`HotplugService`] the event loop runs, on a
/// fake clock. The guest's side is register accesses; the host's is API requests. The vCPU
/// and memory-backing participants (KVM's part) are left out.
pub struct HotplugRig {
    service: HotplugService,
    cpu: Arc<CpuHotplugController>,
    memory: Arc<MemoryHotplugController>,
    region: GuestRange,
    clock: Arc<FakeClock>,
    respond: Sender<ApiResponse>,
    answers: Receiver<ApiResponse>,
    waiting: usize,
    _ged_irq: EventFd,
}

impl std::fmt::Debug for HotplugRig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HotplugRig")
            .field("waiting", &self.waiting)
            .finish_non_exhaustive()
    }
}

impl HotplugRig {
    /// A machine of one boot CPU out of [`RIG_MAX_CPUS`], 512 MiB of boot memory and a
    /// hotplug region of [`RIG_MEMORY_SLOTS`] slots' worth of 128 MiB blocks, wired as the
    /// VMM wires it, under the guest-eject `policy`.
    pub fn new(policy: GuestEjectPolicy) -> std::io::Result<Self> {
        let machine = MachineConfig {
            max_cpus: RIG_MAX_CPUS,
            boot_cpus: 1,
            boot_memory: 512 << 20,
            block_size: RIG_BLOCK,
            hotplug_region_size: u64::from(RIG_MEMORY_SLOTS) * RIG_BLOCK,
            memory_slots: RIG_MEMORY_SLOTS,
        };
        let region = GuestRange {
            base: 1 << 32,
            size: machine.hotplug_region_size,
        };
        let clock = Arc::new(FakeClock::new());
        let (obs_tx, obs_rx) = hotplug_service::observation_queue()?;
        let mut cpu = CpuHotplugController::for_cpus(machine.boot_cpus, machine.max_cpus);
        cpu.set_observer(hotplug_service::observer(
            obs_tx.try_clone()?,
            DeviceId::cpu,
        ));
        let mut memory = MemoryHotplugController::for_memory_slots(machine.memory_slots);
        memory.set_observer(hotplug_service::observer(obs_tx, DeviceId::memory_slot));
        let (cpu, memory) = (Arc::new(cpu), Arc::new(memory));
        let ged_irq = EventFd::new(EFD_NONBLOCK)?;
        let ged = Arc::new(Ged::new(ged_irq.try_clone()?));
        let config = EngineConfig {
            guest_eject: policy,
            ..EngineConfig::default()
        };
        let invalid = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
        let mut engine =
            Engine::new(machine, config, clock.clone()).map_err(|e| invalid(e.to_string()))?;
        // The production wiring (`builder::create_hotplug_service`) without KVM's part.
        let cpu_parts = CpuParts {
            controller: cpu.clone(),
            ged: ged.clone(),
            vcpus: None,
        };
        cpu_manager::register(&mut engine, cpu_parts).map_err(|e| invalid(e.to_string()))?;
        let memory_parts = MemoryParts {
            controller: memory.clone(),
            ged: ged.clone(),
            region,
            backing: None,
        };
        memory_manager::register(&mut engine, memory_parts).map_err(|e| invalid(e.to_string()))?;
        let mut service = HotplugService::new(engine, clock.clone(), obs_rx)?;
        service.on_refused_eject(hotplug_service::offer_again(
            cpu.clone(),
            Some(memory.clone()),
            ged,
        ));
        let (respond, answers) = channel();
        Ok(HotplugRig {
            service,
            cpu,
            memory,
            region,
            clock,
            respond,
            answers,
            waiting: 0,
            _ged_irq: ged_irq,
        })
    }

    /// A guest read of `len` bytes (1..=8) at `offset` of `block`.
    pub fn guest_read(&self, block: Block, offset: u64, len: usize) -> Vec<u8> {
        let mut data = vec![0; len.clamp(1, 8)];
        match block {
            Block::Cpu => self.cpu.mmio_read(MmioAddress(0), offset, &mut data),
            Block::Memory => self.memory.mmio_read(MmioAddress(0), offset, &mut data),
        }
        data
    }

    /// A guest write of `data` (1..=8 bytes used) at `offset` of `block`.
    pub fn guest_write(&self, block: Block, offset: u64, data: &[u8]) {
        let data = &data[..data.len().min(8)];
        if data.is_empty() {
            return;
        }
        match block {
            Block::Cpu => self.cpu.mmio_write(MmioAddress(0), offset, data),
            Block::Memory => self.memory.mmio_write(MmioAddress(0), offset, data),
        }
    }

    /// The guest acknowledges the insert event of `uid` (as its scan does).
    pub fn ack_insert(&self, block: Block, uid: u32) {
        self.guest_write(block, regs::ACK_INSERT, &uid.to_le_bytes());
    }

    /// The guest acknowledges the remove event of `uid`.
    pub fn ack_remove(&self, block: Block, uid: u32) {
        self.guest_write(block, regs::ACK_REMOVE, &uid.to_le_bytes());
    }

    /// The guest ejects `uid` (`_EJ0`).
    pub fn eject(&self, block: Block, uid: u32) {
        self.guest_write(block, regs::EJECT, &uid.to_le_bytes());
    }

    /// The guest evaluates `_OST(event, status)` for `uid`: one 64-bit write.
    pub fn ost(&self, block: Block, uid: u32, event: u32, status: u32) {
        let value = u64::from(uid & regs::UID_MASK)
            | u64::from(event & regs::UID_MASK) << regs::OST_EVENT_SHIFT
            | u64::from(status) << regs::OST_STATUS_SHIFT;
        self.guest_write(block, regs::OST, &value.to_le_bytes());
    }

    /// An API request, answered when its transaction ends (or at once when refused).
    pub fn request(&mut self, request: Request) {
        self.waiting += 1;
        self.service.request(request, true, self.respond.clone());
    }

    /// Lets `ms` milliseconds pass on the engine's clock.
    pub fn advance(&mut self, ms: u64) {
        self.clock.advance(Duration::from_millis(ms));
    }

    /// One turn of the event loop: the guest's observations, then the deadlines.
    pub fn step(&mut self) {
        self.service.step();
        while let Ok(answer) = self.answers.try_recv() {
            assert!(
                (200..600).contains(&answer.status),
                "status {}",
                answer.status
            );
            // 502: the guest refused or failed; 504: it did not answer in time. A 500 (the
            // host failed) cannot happen here, where nothing on the host fails.
            assert!(
                answer.status < 500 || matches!(answer.status, 502 | 504),
                "a hotplug answered {} with no host fault: {:?}",
                answer.status,
                answer.body
            );
            self.waiting = self
                .waiting
                .checked_sub(1)
                .unwrap_or_else(|| panic!("an answer nobody asked for: {answer:?}"));
        }
    }

    /// Ends every transaction (the deadlines pass) and checks that every request was answered.
    pub fn finish(&mut self) {
        for _ in 0..8 {
            self.advance(60_000);
            self.step();
        }
        assert!(
            !self.service.in_flight(),
            "a transaction outlived its deadlines"
        );
        assert_eq!(self.waiting, 0, "requests left without an answer");
    }

    /// Checks that the engine, the controllers and the journal agree: every device that no
    /// transaction holds reads in its controller exactly as the engine has it, and the journal
    /// keeps its bounds.
    pub fn check(&self) {
        let engine = self.service.engine();
        let machine = engine.machine();
        // What vm.info reports (its device part) against what the guest reads.
        let view = DeviceView::of(machine);
        let mut enabled_cpus = 0;
        for (id, state) in (0..RIG_MAX_CPUS).zip(&view.cpus) {
            let slot = self.cpu.slot(id).unwrap_or_default();
            enabled_cpus += u32::from(slot.enabled);
            match *state {
                "present" => assert!(
                    slot.enabled && !slot.removing,
                    "vm.info has CPU {id} present but the guest reads {slot:?}"
                ),
                "absent" => assert!(
                    !slot.enabled,
                    "vm.info has CPU {id} absent but the guest reads {slot:?}"
                ),
                _ => {}
            }
        }
        let mut enabled_ram = machine.config().boot_memory;
        for (uid, (state, placement)) in (1..=RIG_MEMORY_SLOTS).zip(&view.slots) {
            let slot = self.memory.slot(uid).unwrap_or_default();
            let range = self.memory.range(uid);
            if slot.enabled {
                enabled_ram += range.map_or(0, |r| r.length);
            }
            match *state {
                "present" => {
                    assert!(
                        slot.enabled && !slot.removing,
                        "vm.info has memory slot {uid} present but the guest reads {slot:?}"
                    );
                    let seen = range.map(|r| (r.base, r.length));
                    let placed = placement.map(|p| (self.region.base + p.offset, p.size));
                    assert_eq!(seen, placed, "memory slot {uid}: guest's range, engine's");
                }
                "absent" => assert!(
                    !slot.enabled,
                    "vm.info has memory slot {uid} absent but the guest reads {slot:?}"
                ),
                _ => {}
            }
        }
        if engine.in_flight().next().is_none() {
            assert_eq!(
                view.present.vcpus, enabled_cpus,
                "vm.info's vCPUs, the guest's"
            );
            assert_eq!(view.present.ram, enabled_ram, "vm.info's RAM, the guest's");
        }
        let stats = engine.journal().stats();
        assert!(stats.host_records <= stats.host_capacity, "{stats:?}");
        assert!(
            stats.guest_records <= stats.guest_capacity.min(MAX_GUEST_RECORDS),
            "{stats:?}"
        );
        for record in engine.records() {
            assert!(record.guest_events.len() <= MAX_GUEST_EVENTS);
            for device in record.outcome.iter().flat_map(|o| &o.devices) {
                assert!(
                    device.notes.len() <= MAX_NOTES,
                    "{} notes on one device",
                    device.notes.len()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! Crashes the fuzz targets found, kept as regression tests.
    use super::*;

    /// `hotplug_registers`: the guest accepted CPU 1 of a resize, then ejected it (with the
    /// old selector register, after selecting a CPU beyond max, which left CPU 1 selected)
    /// while the batch still waited for the others. Under `allow` the engine committed a CPU its controller had let go.
    #[test]
    fn an_eject_during_a_pending_batch_leaves_engine_and_controller_agreeing() {
        for policy in [GuestEjectPolicy::Deny, GuestEjectPolicy::Allow] {
            let mut rig = HotplugRig::new(policy).unwrap();
            rig.request(Request::Resize {
                vcpus: Some(3),
                memory: Some((512 << 20) + 3 * RIG_BLOCK),
                best_effort: true,
            });
            rig.step();
            rig.check();
            rig.ack_insert(Block::Cpu, 1);
            rig.ost(Block::Cpu, 1, 1, 0);
            rig.ost(Block::Cpu, 1, 3, 0x80);
            rig.eject(Block::Cpu, 1);
            rig.ost(Block::Cpu, 1, 3, 0);
            rig.step();
            rig.check();
            rig.finish();
            rig.check();
        }
    }

    #[test]
    fn bad_http_input_gets_a_client_error() {
        assert_eq!(
            serve_bytes(b"GET /api/v1/vmm.ping HTTP/0.1\r\nHost: x\r\n\r\n"),
            [505]
        );
        assert_eq!(serve_bytes(b"GET /api/v1/vmm.ping HTTP/1.1\r\n\r\n"), [200]);
        assert_eq!(route_request("PUT", "/api/v1/vm.add-vcpu", b"{"), 400);
    }
}
