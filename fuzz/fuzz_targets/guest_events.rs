//! The `_OST`/`_EJ0`/`_STA` events a guest reports, in any order and with any codes, against
//! the hotplug engine while the host starts transactions and time passes. Every transaction
//! must end (by its deadline at the latest), exactly once, and the journal keep its bounds.
#![no_main]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use arbitrary::Arbitrary;
use hotplug::{
    DeviceId, Engine, EngineConfig, FakeClock, GuestEjectPolicy, GuestEvent, MachineConfig,
    Request, MAX_GUEST_EVENTS, MAX_GUEST_RECORDS, MAX_NOTES,
};
use libfuzzer_sys::fuzz_target;

const BLOCK: u64 = 128 << 20;

#[derive(Debug, Arbitrary)]
enum Op {
    Ost {
        memory: bool,
        uid: u8,
        event: u32,
        status: u32,
    },
    Eject {
        memory: bool,
        uid: u8,
    },
    StatusRead {
        memory: bool,
        uid: u8,
    },
    AddCpu(Option<u8>),
    RemoveCpu(u8),
    AddMemory(u8),
    RemoveMemory(u8),
    Resize {
        vcpus: Option<u8>,
        blocks: Option<u8>,
        best_effort: bool,
    },
    Advance(u16),
}

fn device(memory: bool, uid: u8) -> DeviceId {
    if memory {
        DeviceId::memory_slot(u32::from(uid % 6))
    } else {
        DeviceId::cpu(u32::from(uid % 6))
    }
}

fuzz_target!(|input: (bool, Vec<Op>)| {
    let (allow, ops) = input;
    let machine = MachineConfig {
        max_cpus: 4,
        boot_cpus: 2,
        boot_memory: 512 << 20,
        block_size: BLOCK,
        hotplug_region_size: 4 * BLOCK,
        memory_slots: 4,
    };
    let config = EngineConfig {
        guest_eject: if allow {
            GuestEjectPolicy::Allow
        } else {
            GuestEjectPolicy::Deny
        },
        ..EngineConfig::default()
    };
    let clock = Arc::new(FakeClock::new());
    let Ok(mut engine) = Engine::new(machine, config, clock.clone()) else {
        return;
    };
    let mut open = BTreeSet::new();
    let mut ended = BTreeSet::new();
    let mut finish = |report: hotplug::Report, open: &mut BTreeSet<_>| {
        for done in report.completed {
            assert!(ended.insert(done.id), "{:?} ended twice", done.id);
            open.remove(&done.id);
        }
    };
    for op in ops.into_iter().take(512) {
        let report = match op {
            Op::Ost {
                memory,
                uid,
                event,
                status,
            } => engine.guest_event(device(memory, uid), GuestEvent::ost(event, status)),
            Op::Eject { memory, uid } => engine.guest_event(device(memory, uid), GuestEvent::Eject),
            Op::StatusRead { memory, uid } => {
                engine.guest_event(device(memory, uid), GuestEvent::StatusRead)
            }
            Op::Advance(ms) => {
                clock.advance(Duration::from_millis(u64::from(ms)));
                engine.tick()
            }
            request => {
                let request = match request {
                    Op::AddCpu(id) => Request::AddCpu {
                        id: id.map(|i| u32::from(i % 6)),
                    },
                    Op::RemoveCpu(id) => Request::RemoveCpu {
                        id: u32::from(id % 6),
                    },
                    Op::AddMemory(b) => Request::AddMemory {
                        size: u64::from(b % 6) * BLOCK,
                    },
                    Op::RemoveMemory(s) => Request::RemoveMemory {
                        slot: u32::from(s % 6),
                    },
                    Op::Resize {
                        vcpus,
                        blocks,
                        best_effort,
                    } => Request::Resize {
                        vcpus: vcpus.map(|v| u32::from(v % 6)),
                        memory: blocks.map(|b| (512 << 20) + u64::from(b % 6) * BLOCK),
                        best_effort,
                    },
                    _ => unreachable!("guest events are matched above"),
                };
                match engine.begin(request) {
                    Ok(begun) => {
                        open.insert(begun.id);
                        hotplug::Report {
                            completed: begun.completed.into_iter().collect(),
                            directives: Vec::new(),
                        }
                    }
                    Err(_) => hotplug::Report::default(),
                }
            }
        };
        finish(report, &mut open);
        let stats = engine.journal().stats();
        assert!(stats.host_records <= stats.host_capacity, "{stats:?}");
        assert!(stats.guest_records <= MAX_GUEST_RECORDS, "{stats:?}");
        for record in engine.records() {
            assert!(record.guest_events.len() <= MAX_GUEST_EVENTS);
            for d in record.outcome.iter().flat_map(|o| &o.devices) {
                assert!(d.notes.len() <= MAX_NOTES);
            }
        }
    }
    // Every deadline passes: nothing may stay in flight.
    for _ in 0..8 {
        clock.advance(Duration::from_secs(60));
        let report = engine.tick();
        finish(report, &mut open);
    }
    assert_eq!(
        engine.in_flight().count(),
        0,
        "transactions outlived their deadlines"
    );
    assert!(open.is_empty(), "transactions that never ended: {open:?}");
});
