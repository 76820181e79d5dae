//! Participants typed by device kind: registered with `Engine::register_for`, each is called
//! only for ops on its kind, with the kind's id and detail, in its order.

mod common;

use std::sync::{Arc, Mutex};

use hotplug::{
    CpuId, CpuKind, DeviceId, DeviceKind, DeviceOp, DeviceParticipant, Direction, Engine,
    EngineConfig, FakeClock, GuestEvent, HotplugParticipant, KindOp, MemoryKind, MemoryPlacement,
    OpKind, Orders, Origin, ParticipantError, Request, Role, SlotId, TxId, TxStatus,
};

use common::MIB;

type Log = Arc<Mutex<Vec<String>>>;

/// Records every call as "name method device" in a log shared by all participants, and
/// keeps the typed ops it was given.
struct Recorder<K: DeviceKind> {
    name: &'static str,
    log: Log,
    ops: Vec<KindOp<K>>,
}

impl<K: DeviceKind> Recorder<K> {
    fn new(name: &'static str, log: &Log) -> Self {
        Recorder {
            name,
            log: log.clone(),
            ops: Vec::new(),
        }
    }

    fn note(&self, method: &str, op: &KindOp<K>) {
        let line = format!("{} {method} {}", self.name, op.device());
        self.log.lock().unwrap().push(line);
    }
}

impl<K: DeviceKind> DeviceParticipant<K> for Recorder<K> {
    fn validate(&self, op: &KindOp<K>) -> Result<(), ParticipantError> {
        self.note("validate", op);
        Ok(())
    }
    fn prepare(&mut self, op: &KindOp<K>) -> Result<(), ParticipantError> {
        self.note("prepare", op);
        self.ops.push(*op);
        Ok(())
    }
    fn publish(&mut self, op: &KindOp<K>) -> Result<(), ParticipantError> {
        self.note("publish", op);
        self.ops.push(*op);
        Ok(())
    }
    fn commit(&mut self, op: &KindOp<K>) -> Result<(), ParticipantError> {
        self.note("commit", op);
        self.ops.push(*op);
        Ok(())
    }
}

/// A participant of every kind, the untyped way.
struct Untyped {
    log: Log,
}

impl HotplugParticipant for Untyped {
    fn validate(&self, op: &DeviceOp) -> Result<(), ParticipantError> {
        self.log
            .lock()
            .unwrap()
            .push(format!("state validate {}", op.device));
        Ok(())
    }
    fn prepare(&mut self, op: &DeviceOp) -> Result<(), ParticipantError> {
        self.log
            .lock()
            .unwrap()
            .push(format!("state prepare {}", op.device));
        Ok(())
    }
}

fn engine() -> Engine {
    let clock = Arc::new(FakeClock::new());
    Engine::new(common::machine(), EngineConfig::default(), clock).unwrap()
}

fn lines(log: &Log) -> Vec<String> {
    std::mem::take(&mut *log.lock().unwrap())
}

#[test]
fn a_typed_participant_sees_only_its_kind_with_the_typed_op() {
    let mut engine = engine();
    let log = Log::default();
    let vcpus = Arc::new(Mutex::new(Recorder::<CpuKind>::new("vcpus", &log)));
    let memory = Arc::new(Mutex::new(Recorder::<MemoryKind>::new("memory", &log)));
    engine
        .register_for::<CpuKind>("vcpus", Orders::standard(Role::Cpu), vcpus.clone())
        .unwrap();
    engine
        .register_for::<MemoryKind>("memory", Orders::standard(Role::Memory), memory.clone())
        .unwrap();

    // One batch with a device of each kind.
    let begun = engine
        .begin(Request::Resize {
            vcpus: Some(2),
            memory: Some(640 * MIB),
            best_effort: false,
        })
        .unwrap();
    for device in [DeviceId::memory_slot(1), DeviceId::cpu(1)] {
        let report = engine.guest_event(device, GuestEvent::ost(1, 0));
        if let Some(c) = report.completed.first() {
            assert_eq!(c.outcome.status, TxStatus::Committed);
        }
    }
    assert_eq!(
        engine
            .transaction(begun.id)
            .unwrap()
            .outcome
            .as_ref()
            .map(|o| o.status),
        Some(TxStatus::Committed)
    );

    for line in lines(&log) {
        assert!(
            line.starts_with("vcpus ") && line.ends_with(" cpu 1")
                || line.starts_with("memory ") && line.ends_with(" memory slot 1"),
            "a participant was called for another kind: {line}"
        );
    }
    let cpu_op = KindOp::<CpuKind> {
        tx: begun.id,
        id: CpuId(1),
        direction: Direction::Add,
        origin: Origin::Host,
        detail: (),
    };
    assert_eq!(vcpus.lock().unwrap().ops, [cpu_op; 3]);
    let memory_op = KindOp::<MemoryKind> {
        tx: begun.id,
        id: SlotId(1),
        direction: Direction::Add,
        origin: Origin::Host,
        detail: MemoryPlacement {
            offset: 0,
            size: 128 * MIB,
        },
    };
    assert_eq!(memory.lock().unwrap().ops, [memory_op; 3]);
}

#[test]
fn typed_and_untyped_participants_keep_their_orders() {
    let mut engine = engine();
    let log = Log::default();
    // Registered in a scrambled order: the order numbers decide.
    engine
        .register(
            "state",
            Orders::standard(Role::PublishedState),
            Box::new(Untyped { log: log.clone() }),
        )
        .unwrap();
    engine
        .register_for::<CpuKind>(
            "vcpus",
            Orders::standard(Role::Cpu),
            Recorder::new("vcpus", &log),
        )
        .unwrap();
    engine
        .register_for::<CpuKind>(
            "bus",
            Orders::standard(Role::AcpiBus),
            Recorder::new("bus", &log),
        )
        .unwrap();

    engine.begin(Request::AddCpu { id: None }).unwrap();
    let add: Vec<String> = lines(&log);
    assert_eq!(
        add,
        [
            "bus validate cpu 1",
            "vcpus validate cpu 1",
            "state validate cpu 1",
            "bus prepare cpu 1",
            "vcpus prepare cpu 1",
            "state prepare cpu 1",
            "bus publish cpu 1",
            "vcpus publish cpu 1",
        ]
    );
    engine.guest_event(DeviceId::cpu(1), GuestEvent::ost(1, 0));
    assert_eq!(lines(&log), ["bus commit cpu 1", "vcpus commit cpu 1"]);

    // Removal: validate keeps the add order, the rest runs the CPU first.
    engine.begin(Request::RemoveCpu { id: 1 }).unwrap();
    assert_eq!(
        lines(&log),
        [
            "bus validate cpu 1",
            "vcpus validate cpu 1",
            "state validate cpu 1",
            "vcpus prepare cpu 1",
            "bus prepare cpu 1",
            "state prepare cpu 1",
            "vcpus publish cpu 1",
            "bus publish cpu 1",
        ]
    );
}

fn op(kind: OpKind, device: DeviceId, memory: Option<MemoryPlacement>) -> DeviceOp {
    DeviceOp {
        tx: TxId(7),
        kind,
        device,
        memory,
        origin: Origin::Guest,
    }
}

#[test]
fn typed_views_of_a_device_op() {
    let cpu = op(OpKind::RemoveCpu, DeviceId::cpu(3), None);
    let typed = KindOp::<CpuKind>::from_op(&cpu).unwrap().unwrap();
    assert_eq!(
        typed,
        KindOp {
            tx: TxId(7),
            id: CpuId(3),
            direction: Direction::Remove,
            origin: Origin::Guest,
            detail: (),
        }
    );
    assert_eq!(typed.device(), DeviceId::cpu(3));
    assert!(KindOp::<MemoryKind>::from_op(&cpu).unwrap().is_none());

    let slot = DeviceId::memory_slot(2);
    let placement = MemoryPlacement {
        offset: 128 * MIB,
        size: 256 * MIB,
    };
    let placed = op(OpKind::AddMemory, slot, Some(placement));
    let typed = KindOp::<MemoryKind>::from_op(&placed).unwrap().unwrap();
    assert_eq!((typed.id, typed.detail), (SlotId(2), placement));
    assert!(KindOp::<CpuKind>::from_op(&placed).unwrap().is_none());

    // A memory op without its placement is an error, not a panic.
    let unplaced = op(OpKind::AddMemory, slot, None);
    let e = KindOp::<MemoryKind>::from_op(&unplaced).unwrap_err();
    assert_eq!(e.chain(), ["memory slot 2 has no placement"]);
}
