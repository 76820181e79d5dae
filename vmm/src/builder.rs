//! Building a VM: KVM, memory, the loaded guest, ACPI tables, devices, vCPUs, the hotplug
//! engine and its participants, and the API's request handler, wired together. Running it
//! afterwards is [`crate::vm`]'s job.

use std::sync::{Arc, Mutex};

use acpi::{MachineDescription, MemoryRange};
use devices::{
    AcpiPowerDevice, CpuHotplugController, ExitSignal, Ged, MemoryHotplugController, PvPanicDevice,
    SerialDevice,
};
use kvm_bindings::{kvm_pit_config, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};
use vm_device::bus::{MmioAddress, MmioRange, PioAddress, PioRange};
use vm_device::device_manager::{IoManager, MmioManager, PioManager};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::arch::{self, BootRegsLayout, CpuTopology};
use crate::boot::{self, ZeroPageInputs};
use crate::config::{SerialConfig, VmConfig};
use crate::console::TerminalGuard;
use crate::console::{self, QueuedOutput, SocketConsole, StdoutWriter};
use crate::control::{ApiEndpoint, VmmLinks};
use crate::cpu_manager::{self, CpuParts, VcpuSet, SPARE_VCPUS};
use crate::host_faults::HostFaults;
use crate::hotplug_service::{self, HotplugService, ObservationReceiver, ObservationSender};
use crate::memory::{self, MemoryLayout};
use crate::memory_backing::Backing;
use crate::memory_manager::{self, GuestMemoryMap, HotplugMemory, MemoryParts};
use crate::request_handler::{RequestHandler, VmView};
use crate::vcpu;
use crate::vm::{Vm, VmError};
use hotplug::DeviceId;

/// Where KVM puts the TSS it needs on Intel hosts (three pages below the IOAPIC area).
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

/// Where `config`'s boot RAM and hotplug region lie.
pub fn memory_layout(config: &VmConfig) -> MemoryLayout {
    MemoryLayout::new(config.memory.size, config.memory.hotplug_size)
}

/// The machine description the ACPI tables are built from.
pub fn machine_description(config: &VmConfig, layout: &MemoryLayout) -> MachineDescription {
    let range = |r: &memory::GuestRange| MemoryRange {
        base: r.base,
        size: r.size,
    };
    MachineDescription {
        boot_cpus: config.cpus.boot,
        max_cpus: config.cpus.max,
        ram: layout.ram.iter().map(range).collect(),
        hotplug_memory: layout.hotplug.as_ref().map(range),
        hotplug_slots: if layout.hotplug.is_some() {
            config.memory.hotplug_slots
        } else {
            0
        },
    }
}

/// Builds the ACPI tables of `config` and writes them to `dir` as `SIGNATURE.dat`.
pub fn dump_acpi_tables(config: &VmConfig, dir: &std::path::Path) -> Result<(), String> {
    let layout = memory_layout(config);
    let tables =
        acpi::build_tables(&machine_description(config, &layout)).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    tables
        .write_to_dir(dir)
        .map_err(|e| format!("cannot write tables to {}: {e}", dir.display()))
}

/// Opens `/dev/kvm`.
pub fn open_kvm() -> Result<Kvm, VmError> {
    Kvm::new().map_err(VmError::Kvm)
}

fn eventfd() -> Result<EventFd, VmError> {
    EventFd::new(EFD_NONBLOCK).map_err(|e| VmError::EventLoop(format!("eventfd: {e}")))
}

/// The devices of a VM, shared with the vCPU threads through the I/O manager.
pub struct Devices {
    /// COM1.
    pub serial: Arc<SerialDevice>,
    /// The GED.
    pub ged: Arc<Ged>,
    /// The CPU hotplug controller.
    pub cpu_hotplug: Arc<CpuHotplugController>,
    /// The memory hotplug controller, when there is a hotplug region.
    pub memory_hotplug: Option<Arc<MemoryHotplugController>>,
    /// The I/O buses.
    pub io: Arc<IoManager>,
}

fn create_devices(
    vm: &VmFd,
    mem: &vm_memory::GuestMemoryMmap,
    config: &VmConfig,
    exit: &Arc<ExitSignal>,
    serial_out: Box<dyn std::io::Write + Send>,
    observations: &ObservationSender,
) -> Result<Devices, VmError> {
    use acpi::layout;
    let serial_irq = eventfd()?;
    vm.register_irqfd(&serial_irq, layout::serial::IRQ)
        .map_err(|e| VmError::KvmIoctl("KVM_IRQFD (serial)", e))?;
    let ged_irq = eventfd()?;
    vm.register_irqfd(&ged_irq, layout::ged::IRQ)
        .map_err(|e| VmError::KvmIoctl("KVM_IRQFD (GED)", e))?;

    let serial = Arc::new(SerialDevice::new(serial_irq, serial_out));
    let mut ged = Ged::new(ged_irq);
    ged.set_window(Box::new(memory::StatusPageWindow::new(
        mem,
        layout::ged::WINDOW,
    )));
    let ged = Arc::new(ged);
    let mut cpu_hotplug = CpuHotplugController::for_cpus(config.cpus.boot, config.cpus.max);
    let queue = || {
        observations
            .try_clone()
            .map_err(|e| VmError::EventLoop(format!("eventfd: {e}")))
    };
    cpu_hotplug.set_observer(hotplug_service::observer(queue()?, DeviceId::cpu));
    cpu_hotplug.set_window(Box::new(memory::StatusPageWindow::new(
        mem,
        layout::cpu_hotplug::WINDOW,
    )));
    let cpu_hotplug = Arc::new(cpu_hotplug);
    let memory_hotplug = if config.memory.hotplug_size > 0 {
        let mut controller = MemoryHotplugController::for_memory_slots(config.memory.hotplug_slots);
        controller.set_observer(hotplug_service::observer(queue()?, DeviceId::memory_slot));
        controller.set_window(Box::new(memory::StatusPageWindow::new(
            mem,
            layout::memory_hotplug::WINDOW,
        )));
        Some(Arc::new(controller))
    } else {
        None
    };

    let mut io = IoManager::new();
    let pio = |base: u16, len: u16| PioRange::new(PioAddress(base), len);
    let mmio = |base: u64, len: u64| MmioRange::new(MmioAddress(base), len);
    let bus = |what| move |e| VmError::Bus(what, e);
    io.register_pio(
        pio(layout::serial::PORT, layout::serial::PORT_LEN).map_err(bus("serial"))?,
        serial.clone(),
    )
    .map_err(bus("serial"))?;
    io.register_pio(
        pio(layout::power::SLEEP_CONTROL_PORT, layout::power::PORT_LEN).map_err(bus("power"))?,
        Arc::new(AcpiPowerDevice::new(exit.clone())),
    )
    .map_err(bus("power"))?;
    io.register_pio(
        pio(layout::pvpanic::PORT, 1).map_err(bus("pvpanic"))?,
        Arc::new(PvPanicDevice::new(exit.clone())),
    )
    .map_err(bus("pvpanic"))?;
    io.register_mmio(
        mmio(
            layout::cpu_hotplug::MMIO_BASE,
            layout::hotplug_registers::MMIO_SIZE,
        )
        .map_err(bus("cpu-hotplug"))?,
        cpu_hotplug.clone(),
    )
    .map_err(bus("cpu-hotplug"))?;
    if let Some(controller) = &memory_hotplug {
        io.register_mmio(
            mmio(
                layout::memory_hotplug::MMIO_BASE,
                layout::hotplug_registers::MMIO_SIZE,
            )
            .map_err(bus("memory-hotplug"))?,
            controller.clone(),
        )
        .map_err(bus("memory-hotplug"))?;
    }
    Ok(Devices {
        serial,
        ged,
        cpu_hotplug,
        memory_hotplug,
        io: Arc::new(io),
    })
}

fn create_hotplug_service(
    config: &VmConfig,
    layout: &MemoryLayout,
    devices: &Devices,
    vcpus: &Arc<Mutex<VcpuSet>>,
    memory: Option<&Arc<Mutex<HotplugMemory>>>,
    observations: ObservationReceiver,
    links: &VmmLinks,
) -> Result<HotplugService, VmError> {
    use hotplug::{Engine, EngineConfig, MachineConfig};
    let machine = MachineConfig {
        max_cpus: config.cpus.max,
        boot_cpus: config.cpus.boot,
        boot_memory: config.memory.size,
        block_size: layout.block_size(),
        hotplug_region_size: config.memory.hotplug_size,
        memory_slots: config.memory.hotplug_slots,
    };
    // The VMM's clock: journal times run on from one VM to the next, as event times do.
    let clock = links.clock.clone();
    let engine_config = EngineConfig {
        guest_eject: config.guest_eject,
        ..EngineConfig::default()
    };
    let mut engine = Engine::new(machine, engine_config, clock.clone())
        .map_err(|e| VmError::Hotplug(e.to_string()))?;
    let failed = |e: hotplug::Error| VmError::Hotplug(e.to_string());
    cpu_manager::register(
        &mut engine,
        CpuParts {
            controller: devices.cpu_hotplug.clone(),
            ged: devices.ged.clone(),
            vcpus: Some(vcpus.clone()),
        },
    )
    .map_err(failed)?;
    if let (Some(controller), Some(memory), Some(region)) =
        (&devices.memory_hotplug, memory, layout.hotplug)
    {
        memory_manager::register(
            &mut engine,
            MemoryParts {
                controller: controller.clone(),
                ged: devices.ged.clone(),
                region,
                backing: Some(memory.clone()),
            },
        )
        .map_err(failed)?;
    }
    let mut service = HotplugService::new(engine, clock, observations)
        .map_err(|e| VmError::EventLoop(format!("timerfd: {e}")))?;
    let ejected = vcpus.clone();
    service.on_guest_eject(Box::new(move |device| {
        // An ejected CPU must not run: its thread starts parking now, not at Commit.
        if let (DeviceId::Cpu(cpu), Ok(set)) = (device, ejected.lock()) {
            set.begin_park(cpu.0);
        }
    }));
    let mut offer_again = hotplug_service::offer_again(
        devices.cpu_hotplug.clone(),
        devices.memory_hotplug.clone(),
        devices.ged.clone(),
    );
    let refused_vcpus = vcpus.clone();
    service.on_refused_eject(Box::new(move |device| {
        // The device stays. The controller kept it under `deny`; under `allow` it carried out
        // the `_EJ0` before the engine refused it (say, CPU 0): its thread may have parked, so
        // it runs again before the guest's next scan adds back what it let go of.
        if let (DeviceId::Cpu(cpu), Ok(mut set)) = (device, refused_vcpus.lock()) {
            if set.states().get(&cpu.0) == Some(&crate::vcpu::VcpuState::Parked) {
                if let Err(e) = set.start(cpu.0) {
                    tracing::error!(vcpu = cpu.0, "cannot restart the vCPU: {e}");
                }
            }
        }
        offer_again(device);
    }));
    Ok(service)
}

/// The hotplug region must lie within the guest's physical address width (CPUID
/// 0x8000_0008) and be a multiple of the guest's memory block size.
fn check_hotplug_region(
    cpuid: &kvm_bindings::CpuId,
    region: memory::GuestRange,
    block: u64,
) -> Result<(), VmError> {
    let err = |why: String| VmError::HotplugRegion {
        base: region.base,
        size: region.size,
        why,
    };
    if !region.size.is_multiple_of(block) {
        return Err(err(format!(
            "the guest's memory block size is {} MiB for this much boot RAM; use a multiple of it",
            block >> 20
        )));
    }
    let phys_bits = cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == 0x8000_0008)
        .map_or(36, |e| e.eax & 0xff);
    let limit = 1u64.checked_shl(phys_bits).unwrap_or(u64::MAX);
    if region.end() > limit {
        return Err(err(format!(
            "ends beyond the guest's {phys_bits}-bit physical address space"
        )));
    }
    Ok(())
}

/// Builds the VM of `config` and starts its boot vCPUs. The VM takes `api` and answers the
/// requests arriving there while it runs; it ends when `links.terminate` fires (a signal to
/// the VMM). On error `api` is left in place.
pub fn build(
    kvm: &Kvm,
    config: &VmConfig,
    api: &mut Option<ApiEndpoint>,
    links: &VmmLinks,
) -> Result<Vm, VmError> {
    let payload = config.payload.as_ref().ok_or(VmError::NoKernel)?;
    let fd = kvm
        .create_vm()
        .map_err(|e| VmError::KvmIoctl("KVM_CREATE_VM", e))?;
    fd.set_tss_address(KVM_TSS_ADDRESS)
        .map_err(|e| VmError::KvmIoctl("KVM_SET_TSS_ADDR", e))?;
    fd.create_irq_chip()
        .map_err(|e| VmError::KvmIoctl("KVM_CREATE_IRQCHIP", e))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    fd.create_pit2(pit)
        .map_err(|e| VmError::KvmIoctl("KVM_CREATE_PIT2", e))?;

    let layout = memory_layout(config);
    let backing = Backing::of(&config.memory);
    let mem = memory::create_guest_memory(&layout, backing)?;
    let boot_slots = memory::register_memory_slots(&fd, &mem)?;
    tracing::info!(ram = layout.ram_size(), "guest memory ready");

    let kernel = boot::load_kernel(&mem, &payload.kernel, &config.kernel_cache)?;
    let initramfs = payload
        .initramfs
        .as_deref()
        .map(|p| boot::load_initramfs(&mem, p, &layout, &kernel))
        .transpose()?;
    let above_4g = layout.hotplug.is_some() || layout.ram.len() > 1;
    let cmdline = boot::guest_cmdline(&payload.cmdline, above_4g);
    if cmdline != payload.cmdline {
        tracing::info!(
            "guest command line: {} added (no device does DMA, and guest memory can reach above 4 GiB)",
            boot::NO_SWIOTLB
        );
    }
    let cmdline_len = boot::load_cmdline(&mem, &cmdline)?;
    let tables = acpi::build_tables(&machine_description(config, &layout))?;
    boot::write_acpi_tables(&mem, &tables)?;
    boot::write_reset_vector(&mem)?;
    let regs_layout = BootRegsLayout::default();
    let zero_page = boot::build_zero_page(
        ZeroPageInputs {
            kernel: &kernel,
            cmdline_len,
            initramfs,
            rsdp: tables.rsdp_address,
        },
        &layout,
    )?;
    boot::write_zero_page(&mem, &zero_page, regs_layout.zero_page)?;

    let exit = Arc::new(ExitSignal::new(eventfd()?));
    let (sink, socket): (Box<dyn std::io::Write + Send>, _) = match &config.serial {
        SerialConfig::Stdio => (Box::new(StdoutWriter), None),
        SerialConfig::File(path) => (console::file_writer(path)?, None),
        SerialConfig::Null => (Box::new(std::io::sink()), None),
        SerialConfig::Socket(path) => {
            let s = SocketConsole::bind(path)?;
            (Box::new(s.writer()), Some(s))
        }
    };
    let console = QueuedOutput::start(sink)
        .map_err(|e| VmError::EventLoop(format!("console thread: {e}")))?;
    let (obs_tx, obs_rx) = hotplug_service::observation_queue()
        .map_err(|e| VmError::EventLoop(format!("eventfd: {e}")))?;
    let devices = create_devices(&fd, &mem, config, &exit, Box::new(console.clone()), &obs_tx)?;
    let terminal = match (&config.serial, socket) {
        (SerialConfig::Stdio, _) => {
            let guard = TerminalGuard::raw_if_tty();
            links
                .stdin
                .connect(devices.serial.clone())
                .map_err(|e| VmError::EventLoop(format!("stdin thread: {e}")))?;
            guard
        }
        (_, Some(socket)) => {
            socket
                .serve(devices.serial.clone())
                .map_err(|e| VmError::EventLoop(format!("serial socket thread: {e}")))?;
            TerminalGuard(false)
        }
        _ => TerminalGuard(false),
    };

    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| VmError::KvmIoctl("KVM_GET_SUPPORTED_CPUID", e))?;
    if let Some(region) = layout.hotplug {
        check_hotplug_region(&supported, region, layout.block_size())?;
    }
    let topology = CpuTopology {
        max_cpus: config.cpus.max,
    };
    let fd = Arc::new(fd);
    let mut set = VcpuSet::new(
        fd.clone(),
        devices.io.clone(),
        exit.clone(),
        supported,
        topology,
    );
    let mut fds = Vec::new();
    for id in 0..config.cpus.boot {
        fds.push(set.create(id)?);
    }
    if let Some(bsp) = fds.first() {
        arch::setup_boot_regs(bsp, &mem, &regs_layout, kernel.entry)?;
    }
    vcpu::install_kick_handler()?;
    for (id, vfd) in (0..).zip(fds) {
        set.spawn(id, vfd)?;
    }
    let spares = config.cpus.boot..config.cpus.max.min(config.cpus.boot + SPARE_VCPUS);
    for id in spares {
        set.ensure(id)?;
    }
    for id in 0..config.cpus.boot {
        set.start(id)?;
    }
    // Injected faults (tests) hit hotplugs only: the VM is built by now.
    let faults = Arc::new(HostFaults::new(&config.inject_faults));
    set.set_faults(faults.clone());
    let vcpus = Arc::new(Mutex::new(set));
    let memory_map = GuestMemoryMap::new(mem);
    let hotplug_memory = layout.hotplug.map(|region| {
        let mut memory = HotplugMemory::new(fd.clone(), memory_map.clone(), region, boot_slots);
        memory.set_faults(faults.clone());
        memory.set_backing(backing);
        Arc::new(Mutex::new(memory))
    });
    let hotplug = Arc::new(Mutex::new(create_hotplug_service(
        config,
        &layout,
        &devices,
        &vcpus,
        hotplug_memory.as_ref(),
        obs_rx,
        links,
    )?));
    if let Ok(mut service) = hotplug.lock() {
        service.stream_to(links.events.clone());
        service.record_metrics(links.metrics.clone());
    }
    // Taken only now that nothing can fail: a VM that fails to build leaves the endpoint
    // to the VMM, which answers the API without a VM.
    let requests = match api.take() {
        Some(api) => {
            let view = VmView {
                config: config.clone(),
                layout,
                cpu_hotplug: devices.cpu_hotplug.clone(),
                memory_hotplug: devices.memory_hotplug.clone(),
                hotplug_memory: hotplug_memory.clone(),
                console: console.clone(),
            };
            let handler = RequestHandler::new(
                api,
                hotplug.clone(),
                vcpus.clone(),
                exit.clone(),
                view,
                devices.ged.clone(),
                links,
            );
            Some(Arc::new(Mutex::new(handler)))
        }
        None => None,
    };
    tracing::info!(
        vcpus = config.cpus.boot,
        max = config.cpus.max,
        "VM started"
    );
    Ok(Vm {
        fd,
        memory: memory_map,
        hotplug_memory,
        devices,
        vcpus,
        hotplug,
        requests,
        console,
        exit,
        terminate: links.terminate.clone(),
        stdin: matches!(config.serial, SerialConfig::Stdio).then(|| links.stdin.clone()),
        finished: false,
        terminal,
    })
}
