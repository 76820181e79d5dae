//! The framework's own overhead per transaction (no guest, no KVM): begin -> guest events ->
//! commit through four no-op participants with the standard orders, journaling included.
//! Each iteration runs two transactions (an add and the matching remove), so the cost of one
//! transaction is about half the reported time.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use hotplug::{
    DeviceId, Engine, EngineConfig, GuestEvent, HotplugParticipant, MachineConfig, MonotonicClock,
    Orders, Request, Role, TxStatus,
};

struct Nop;
impl HotplugParticipant for Nop {}

fn engine(max_cpus: u32) -> Engine {
    let machine = MachineConfig {
        max_cpus,
        boot_cpus: 1,
        boot_memory: 512 << 20,
        block_size: 128 << 20,
        hotplug_region_size: 4 << 30,
        memory_slots: 8,
    };
    let mut e = Engine::new(
        machine,
        EngineConfig::default(),
        Arc::new(MonotonicClock::new()),
    )
    .expect("engine");
    for (name, role) in [
        ("acpi", Role::AcpiBus),
        ("memory", Role::Memory),
        ("vcpus", Role::Cpu),
        ("state", Role::PublishedState),
    ] {
        e.register(name, Orders::standard(role), Box::new(Nop))
            .expect("register");
    }
    e
}

fn committed(r: &hotplug::Report) {
    assert_eq!(r.completed[0].outcome.status, TxStatus::Committed);
}

fn bench(c: &mut Criterion) {
    let cpu = DeviceId::cpu(1);
    let mut e = engine(8);
    c.bench_function("add_remove_cpu_linux_order", |b| {
        b.iter(|| {
            e.begin(Request::AddCpu { id: Some(1) }).expect("begin");
            committed(&e.guest_event(cpu, GuestEvent::ost(1, 0)));
            e.begin(Request::RemoveCpu { id: 1 }).expect("begin");
            e.guest_event(cpu, GuestEvent::ost(3, 0x84));
            e.guest_event(cpu, GuestEvent::Eject);
            committed(&e.guest_event(cpu, GuestEvent::ost(3, 0)));
        })
    });

    let mut e = engine(8);
    let slot = DeviceId::memory_slot(1);
    c.bench_function("add_remove_memory", |b| {
        b.iter(|| {
            e.begin(Request::AddMemory { size: 256 << 20 })
                .expect("begin");
            committed(&e.guest_event(slot, GuestEvent::ost(1, 0)));
            e.begin(Request::RemoveMemory { slot: 1 }).expect("begin");
            e.guest_event(slot, GuestEvent::Eject);
            committed(&e.guest_event(slot, GuestEvent::ost(3, 0)));
        })
    });

    let mut e = engine(8);
    c.bench_function("resize_1_to_8_and_back", |b| {
        b.iter(|| {
            e.begin(Request::Resize {
                vcpus: Some(8),
                memory: None,
                best_effort: false,
            })
            .expect("begin");
            let mut last = None;
            for id in 1..8 {
                last = Some(e.guest_event(DeviceId::cpu(id), GuestEvent::ost(1, 0)));
            }
            committed(last.as_ref().expect("report"));
            e.begin(Request::Resize {
                vcpus: Some(1),
                memory: None,
                best_effort: false,
            })
            .expect("begin");
            for id in 1..8 {
                e.guest_event(DeviceId::cpu(id), GuestEvent::Eject);
                last = Some(e.guest_event(DeviceId::cpu(id), GuestEvent::ost(3, 0)));
            }
            committed(last.as_ref().expect("report"));
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
