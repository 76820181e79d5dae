//! The engine end to end: batches, guest-initiated ejects, the journal, configuration.

mod common;

use std::time::Duration;

use common::{Fault, Method, Rig, MIB};
use hotplug::{
    DeviceId, DeviceResult, Directive, Engine, EngineConfig, Error, FailureReason,
    GuestEjectPolicy, GuestEvent, OpKind, Origin, OstStatus, RecordStatus, Request, TxId, TxStatus,
    ValidationError,
};

use Method::*;

fn calls(rig: &Rig) -> Vec<(String, Method)> {
    rig.take_log().into_iter().map(|(p, m, _)| (p, m)).collect()
}

fn all(method: Method, order: &[&str]) -> Vec<(String, Method)> {
    order.iter().map(|p| (p.to_string(), method)).collect()
}

const ADD_ORDER: [&str; 4] = ["acpi", "memory", "vcpus", "state"];
const REMOVE_ORDER: [&str; 4] = ["vcpus", "memory", "acpi", "state"];

fn reason(r: &DeviceResult) -> FailureReason {
    r.reason().cloned().expect("a failure reason")
}

fn resize(vcpus: Option<u32>, memory: Option<u64>, best_effort: bool) -> Request {
    Request::Resize {
        vcpus,
        memory,
        best_effort,
    }
}

#[test]
fn batch_all_or_nothing_rolls_back_every_device() {
    let mut rig = Rig::new(EngineConfig::default());
    let b = rig
        .engine
        .begin(resize(Some(3), Some(768 * MIB), false))
        .unwrap();
    let rec = rig.engine.transaction(b.id).unwrap();
    let targets: Vec<(OpKind, DeviceId)> = rec
        .targets
        .iter()
        .map(|t| (t.operation, t.device))
        .collect();
    assert_eq!(
        targets,
        vec![
            (OpKind::AddMemory, DeviceId::memory_slot(1)),
            (OpKind::AddCpu, DeviceId::cpu(1)),
            (OpKind::AddCpu, DeviceId::cpu(2)),
        ]
    );
    // Two accept; they wait for the third.
    assert!(rig
        .engine
        .guest_event(DeviceId::memory_slot(1), GuestEvent::ost(1, 0))
        .is_empty());
    assert!(rig
        .engine
        .guest_event(DeviceId::cpu(1), GuestEvent::ost(1, 0))
        .is_empty());
    assert_eq!(rig.fake("vcpus").count(Commit), 0);
    let r = rig
        .engine
        .guest_event(DeviceId::cpu(2), GuestEvent::ost(0x200, 0x81));
    let o = &r.completed[0].outcome;
    assert_eq!(o.status, TxStatus::RolledBack);
    let cause = DeviceId::cpu(2);
    assert_eq!(
        reason(&o.devices[0].result),
        FailureReason::BatchAborted { cause }
    );
    assert_eq!(
        reason(&o.devices[1].result),
        FailureReason::BatchAborted { cause }
    );
    assert!(matches!(
        reason(&o.devices[2].result),
        FailureReason::GuestRefused { ost } if ost.status == OstStatus::DriverLoadFailure
    ));
    assert_eq!(rig.engine.machine().present_cpus(), vec![0]);
    assert_eq!(rig.engine.machine().total_memory(), 512 * MIB);
    assert_eq!(rig.fake("vcpus").count(Commit), 0);
    rig.assert_consistent();
}

#[test]
fn batch_all_or_nothing_commits_when_all_accept() {
    let mut rig = Rig::new(EngineConfig::default());
    rig.engine.begin(resize(Some(3), None, false)).unwrap();
    rig.engine
        .guest_event(DeviceId::cpu(2), GuestEvent::ost(1, 0));
    let r = rig
        .engine
        .guest_event(DeviceId::cpu(1), GuestEvent::ost(1, 0));
    assert_eq!(r.completed[0].outcome.status, TxStatus::Committed);
    assert_eq!(rig.engine.machine().present_cpus(), vec![0, 1, 2]);
    rig.assert_consistent();
    // Shrinking back removes the highest ids, vCPUs before memory.
    rig.engine.begin(resize(Some(1), None, false)).unwrap();
    for id in [2, 1] {
        rig.engine.guest_event(DeviceId::cpu(id), GuestEvent::Eject);
    }
    rig.engine
        .guest_event(DeviceId::cpu(2), GuestEvent::ost(3, 0));
    let r = rig
        .engine
        .guest_event(DeviceId::cpu(1), GuestEvent::ost(3, 0));
    assert_eq!(r.completed[0].outcome.status, TxStatus::Committed);
    assert_eq!(rig.engine.machine().present_cpus(), vec![0]);
    rig.assert_consistent();
}

#[test]
fn batch_prepare_failure_aborts_the_whole_batch() {
    let mut rig = Rig::new(EngineConfig::default());
    rig.fake("vcpus").fail(Fault {
        method: Prepare,
        nth: 2,
        device: Some(DeviceId::cpu(2)),
    });
    let c = rig
        .engine
        .begin(resize(Some(3), Some(640 * MIB), false))
        .unwrap()
        .completed
        .unwrap();
    assert_eq!(c.outcome.status, TxStatus::RolledBack);
    assert_eq!(rig.fake("memory").count(RollbackPrepare), 3);
    rig.assert_consistent();
}

#[test]
fn batch_best_effort_keeps_what_succeeded() {
    let mut rig = Rig::new(EngineConfig::default());
    let b = rig.engine.begin(resize(Some(4), None, true)).unwrap();
    // cpu 1 commits at once; cpu 2 refuses; cpu 3 times out.
    rig.engine
        .guest_event(DeviceId::cpu(1), GuestEvent::ost(1, 0));
    assert_eq!(rig.fake("vcpus").count(Commit), 1);
    rig.engine
        .guest_event(DeviceId::cpu(2), GuestEvent::ost(1, 1));
    rig.clock.advance(Duration::from_secs(5));
    let r = rig.engine.tick();
    let o = &r.completed[0].outcome;
    assert_eq!(r.completed[0].id, b.id);
    assert_eq!(o.status, TxStatus::PartiallyCommitted);
    assert_eq!(o.devices[0].result, DeviceResult::Committed);
    assert!(matches!(
        reason(&o.devices[1].result),
        FailureReason::GuestRefused { .. }
    ));
    assert!(matches!(
        reason(&o.devices[2].result),
        FailureReason::Timeout { .. }
    ));
    assert_eq!(rig.engine.machine().present_cpus(), vec![0, 1]);
    rig.assert_consistent();
}

#[test]
fn empty_resize_commits_at_once() {
    let mut rig = Rig::new(EngineConfig::default());
    let c = rig
        .engine
        .begin(resize(Some(1), Some(512 * MIB), false))
        .unwrap()
        .completed
        .unwrap();
    assert_eq!(c.outcome.status, TxStatus::Committed);
    assert!(c.outcome.devices.is_empty());
}

#[test]
fn guest_eject_is_denied_by_default() {
    let mut rig = Rig::new(EngineConfig::default());
    rig.engine.begin(Request::AddCpu { id: None }).unwrap();
    rig.engine
        .guest_event(DeviceId::cpu(1), GuestEvent::ost(1, 0));
    rig.take_log();
    let cpu = DeviceId::cpu(1);
    let r = rig.engine.guest_event(cpu, GuestEvent::ost(0x103, 0x84));
    let tx = r.completed[0].id;
    assert_eq!(r.completed[0].outcome.status, TxStatus::Rejected);
    assert_eq!(
        reason(&r.completed[0].outcome.devices[0].result),
        FailureReason::GuestEjectDenied
    );
    let refuse = Directive::RefuseEject {
        device: cpu,
        tx,
        status: OstStatus::EjectNotSupported,
    };
    assert_eq!(r.directives, vec![refuse]);
    // The guest goes on with _EJ0: refused again, same episode.
    let r = rig.engine.guest_event(cpu, GuestEvent::Eject);
    assert_eq!(r.directives, vec![refuse]);
    assert!(r.completed.is_empty());
    assert!(rig
        .engine
        .guest_event(cpu, GuestEvent::ost(0x103, 0))
        .is_empty());
    let rec = rig.engine.transaction(tx).unwrap();
    assert_eq!(rec.origin, Origin::Guest);
    assert_eq!(rec.guest_events.len(), 3);
    assert!(rig.take_log().is_empty());
    assert_eq!(rig.engine.machine().present_cpus(), vec![0, 1]);
    // A host removal still works afterwards.
    rig.engine.begin(Request::RemoveCpu { id: 1 }).unwrap();
    rig.assert_consistent_after_settle();
}

trait Settle {
    fn assert_consistent_after_settle(&mut self);
}

impl Settle for Rig {
    fn assert_consistent_after_settle(&mut self) {
        self.clock.advance(Duration::from_secs(60));
        self.engine.tick();
        self.assert_consistent();
    }
}

#[test]
fn guest_eject_allowed_becomes_a_removal() {
    let config = EngineConfig {
        guest_eject: GuestEjectPolicy::Allow,
        ..EngineConfig::default()
    };
    let mut rig = Rig::new(config);
    rig.engine.begin(Request::AddCpu { id: None }).unwrap();
    rig.engine
        .guest_event(DeviceId::cpu(1), GuestEvent::ost(1, 0));
    let cpu = DeviceId::cpu(1);
    let r = rig.engine.guest_event(cpu, GuestEvent::ost(0x103, 0x84));
    assert!(r.is_empty());
    let tx = rig.engine.machine().in_flight(cpu).unwrap();
    assert_eq!(rig.engine.transaction(tx).unwrap().origin, Origin::Guest);
    let ops = rig.fake("vcpus").state().ops;
    assert_eq!(ops.last().unwrap().origin, Origin::Guest);
    assert!(rig.engine.guest_event(cpu, GuestEvent::Eject).is_empty());
    let r = rig.engine.guest_event(cpu, GuestEvent::ost(0x103, 0));
    assert_eq!(r.completed[0].id, tx);
    assert_eq!(r.completed[0].outcome.status, TxStatus::Committed);
    assert_eq!(rig.engine.machine().present_cpus(), vec![0]);
    rig.assert_consistent();

    // vCPU 0 cannot go, whatever the policy.
    let r = rig.engine.guest_event(DeviceId::cpu(0), GuestEvent::Eject);
    assert!(matches!(r.directives[0], Directive::RefuseEject { .. }));
    assert_eq!(
        reason(&r.completed[0].outcome.devices[0].result),
        FailureReason::Invalid {
            error: ValidationError::CpuZeroRemoval
        }
    );
}

#[test]
fn guest_eject_vetoed_by_a_participant_is_refused() {
    let config = EngineConfig {
        guest_eject: GuestEjectPolicy::Allow,
        ..EngineConfig::default()
    };
    let mut rig = Rig::new(config);
    rig.engine
        .begin(Request::AddMemory { size: 128 * MIB })
        .unwrap();
    let slot = DeviceId::memory_slot(1);
    rig.engine.guest_event(slot, GuestEvent::ost(1, 0));
    rig.fake("memory").fail_next(Validate);
    let r = rig.engine.guest_event(slot, GuestEvent::Eject);
    assert!(matches!(r.directives[0], Directive::RefuseEject { device, .. } if device == slot));
    assert_eq!(r.completed[0].outcome.status, TxStatus::Rejected);
    assert_eq!(rig.engine.machine().total_memory(), 640 * MIB);
    rig.assert_consistent();
}

#[test]
fn memory_add_passes_the_placement_to_participants() {
    let mut rig = Rig::new(EngineConfig::default());
    rig.engine
        .begin(Request::AddMemory { size: 256 * MIB })
        .unwrap();
    let op = *rig.fake("memory").state().ops.last().unwrap();
    assert_eq!(op.kind, OpKind::AddMemory);
    assert_eq!(op.device, DeviceId::memory_slot(1));
    assert_eq!(op.memory.map(|m| (m.offset, m.size)), Some((0, 256 * MIB)));
}

#[test]
fn journal_ring_is_bounded_queryable_and_serializable() {
    let config = EngineConfig {
        journal_capacity: 2,
        ..EngineConfig::default()
    };
    let mut rig = Rig::new(config);
    let mut ids = Vec::new();
    for _ in 0..3 {
        let b = rig.engine.begin(Request::AddCpu { id: None }).unwrap();
        let dev = rig.engine.transaction(b.id).unwrap().targets[0].device;
        assert_eq!(
            rig.engine.transaction(b.id).unwrap().status,
            RecordStatus::InProgress
        );
        rig.engine.guest_event(dev, GuestEvent::ost(1, 0));
        ids.push(b.id);
    }
    let j = rig.engine.journal();
    assert_eq!((j.len(), j.capacity(), j.evicted()), (2, 2, 1));
    assert!(rig.engine.transaction(ids[0]).is_none());
    let listed: Vec<TxId> = rig.engine.records().map(|r| r.id).collect();
    assert_eq!(listed, vec![ids[1], ids[2]]);

    let json = serde_json::to_value(rig.engine.transaction(ids[2]).unwrap()).unwrap();
    assert_eq!(json["id"], 3);
    assert_eq!(json["origin"], "host");
    assert_eq!(json["status"], "committed");
    assert_eq!(json["mode"], "all_or_nothing");
    assert_eq!(json["request"]["kind"], "add_cpu");
    assert_eq!(json["targets"][0]["device"]["cpu"], 3);
    assert_eq!(json["phases"][0]["phase"], "validate");
    assert!(json["phases"][0]["duration_us"].is_u64());
    let ev = &json["guest_events"][0];
    assert_eq!(ev["kind"], "ost");
    assert_eq!(ev["event"]["name"], "device_check");
    assert_eq!(ev["status"]["code"], 0);
    assert_eq!(json["outcome"]["status"], "committed");
    assert_eq!(json["outcome"]["devices"][0]["result"], "committed");
    assert_eq!(json["outcome"]["devices"][0]["operation"], "add_cpu");
}

#[test]
fn failure_reason_json_is_readable() {
    let mut rig = Rig::new(EngineConfig::default());
    rig.engine.begin(Request::AddCpu { id: None }).unwrap();
    let r = rig
        .engine
        .guest_event(DeviceId::cpu(1), GuestEvent::ost(1, 2));
    let json = serde_json::to_value(&r.completed[0]).unwrap();
    let d = &json["outcome"]["devices"][0];
    assert_eq!(d["result"], "rolled_back");
    assert_eq!(d["reason"]["kind"], "guest_refused");
    assert_eq!(d["reason"]["ost"]["status"]["name"], "unrecognized_notify");
}

#[test]
fn registration_is_refused_while_in_flight() {
    let mut rig = Rig::new(EngineConfig::default());
    let b = rig.engine.begin(Request::AddCpu { id: None }).unwrap();
    let f = common::Fake::new("late", &rig.log, 1);
    assert_eq!(
        rig.engine
            .register("late", hotplug::Orders::uniform(1), Box::new(f))
            .unwrap_err(),
        Error::RegisterInFlight { tx: b.id }
    );
}

#[test]
fn engine_config_is_checked() {
    let config = EngineConfig {
        journal_capacity: 0,
        ..EngineConfig::default()
    };
    let clock = std::sync::Arc::new(hotplug::FakeClock::new());
    assert!(Engine::new(common::machine(), config, clock).is_err());
}

#[test]
fn mixed_batch_runs_removals_first_each_in_its_direction_order() {
    let mut rig = Rig::new(EngineConfig::default());
    rig.engine.begin(Request::AddCpu { id: None }).unwrap();
    rig.engine
        .guest_event(DeviceId::cpu(1), GuestEvent::ost(1, 0));
    rig.take_log();
    // 2 -> 1 vCPUs and 512 -> 640 MiB: remove cpu 1, then add slot 1.
    rig.engine
        .begin(resize(Some(1), Some(640 * MIB), false))
        .unwrap();
    let log = calls(&rig);
    let prepares: Vec<(String, Method)> = log.into_iter().filter(|(_, m)| *m == Prepare).collect();
    let mut want = all(Prepare, &REMOVE_ORDER);
    want.extend(all(Prepare, &ADD_ORDER));
    assert_eq!(prepares, want);
    rig.engine
        .guest_event(DeviceId::memory_slot(1), GuestEvent::ost(1, 0));
    rig.engine.guest_event(DeviceId::cpu(1), GuestEvent::Eject);
    let r = rig
        .engine
        .guest_event(DeviceId::cpu(1), GuestEvent::ost(3, 0));
    assert_eq!(r.completed[0].outcome.status, TxStatus::Committed);
    assert_eq!(rig.engine.machine().present_cpus(), vec![0]);
    assert_eq!(rig.engine.machine().total_memory(), 640 * MIB);
    rig.assert_consistent();
}

/// Found by the `hotplug_registers` fuzz target: an `_EJ0` of a CPU whose add the guest had
/// accepted, while the rest of its batch waited, was recorded and otherwise ignored. Under
/// `allow` the controller had already let the CPU go, so the engine committed a CPU the guest
/// no longer had. The eject is refused instead: the add stands and the CPU is offered again.
#[test]
fn an_eject_of_an_accepted_add_in_a_pending_batch_is_refused() {
    for policy in [GuestEjectPolicy::Deny, GuestEjectPolicy::Allow] {
        let config = EngineConfig {
            guest_eject: policy,
            ..EngineConfig::default()
        };
        let mut rig = Rig::new(config);
        let b = rig.engine.begin(resize(Some(3), None, true)).unwrap();
        assert!(rig
            .engine
            .guest_event(DeviceId::cpu(1), GuestEvent::ost(1, 0))
            .is_empty());
        let r = rig.engine.guest_event(DeviceId::cpu(1), GuestEvent::Eject);
        assert_eq!(
            r.directives,
            vec![Directive::RefuseEject {
                device: DeviceId::cpu(1),
                tx: b.id,
                status: OstStatus::EjectNotSupported,
            }],
            "{policy:?}"
        );
        let r = rig
            .engine
            .guest_event(DeviceId::cpu(2), GuestEvent::ost(1, 0));
        assert_eq!(r.completed[0].outcome.status, TxStatus::Committed);
        assert_eq!(rig.engine.machine().present_cpus(), vec![0, 1, 2]);
        rig.assert_consistent();
    }
}

/// Found by the `engine_and_controllers_agree_after_every_step` property: the same for a
/// device whose removal the guest refused while the rest of its batch waited. The device
/// stays, so its later `_EJ0` is refused too.
#[test]
fn an_eject_of_a_refused_removal_in_a_pending_batch_is_refused() {
    for policy in [GuestEjectPolicy::Deny, GuestEjectPolicy::Allow] {
        let config = EngineConfig {
            guest_eject: policy,
            ..EngineConfig::default()
        };
        let mut rig = Rig::new(config);
        rig.engine.begin(resize(Some(3), None, false)).unwrap();
        rig.engine
            .guest_event(DeviceId::cpu(1), GuestEvent::ost(1, 0));
        rig.engine
            .guest_event(DeviceId::cpu(2), GuestEvent::ost(1, 0));
        assert_eq!(rig.engine.machine().present_cpus(), vec![0, 1, 2]);
        let b = rig.engine.begin(resize(Some(1), None, true)).unwrap();
        // CPU 2 refuses to go; CPU 1 has not answered yet.
        let r = rig
            .engine
            .guest_event(DeviceId::cpu(2), GuestEvent::ost(3, 0x81));
        assert!(r.completed.is_empty());
        let r = rig.engine.guest_event(DeviceId::cpu(2), GuestEvent::Eject);
        assert_eq!(
            r.directives,
            vec![Directive::RefuseEject {
                device: DeviceId::cpu(2),
                tx: b.id,
                status: OstStatus::EjectNotSupported,
            }],
            "{policy:?}"
        );
        rig.engine
            .guest_event(DeviceId::cpu(1), GuestEvent::ost(3, 0x84));
        rig.engine.guest_event(DeviceId::cpu(1), GuestEvent::Eject);
        let r = rig
            .engine
            .guest_event(DeviceId::cpu(1), GuestEvent::ost(3, 0));
        assert_eq!(r.completed[0].outcome.status, TxStatus::PartiallyCommitted);
        assert_eq!(rig.engine.machine().present_cpus(), vec![0, 2]);
        rig.assert_consistent();
    }
}
