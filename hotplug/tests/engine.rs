//! The engine end to end with recording fake participants and a fake clock.

mod common;

use std::time::Duration;

use common::{Method, Rig, MIB};
use hotplug::{
    DeviceId, DeviceResult, EngineConfig, Error, FailureReason, GuestEvent, OstEvent, OstStatus,
    Phase, Presence, RecordStatus, Request, TxId, TxStatus, ValidationError,
};

use Method::*;

fn calls(rig: &Rig) -> Vec<(String, Method)> {
    rig.take_log().into_iter().map(|(p, m, _)| (p, m)).collect()
}

fn seq(items: &[(&str, Method)]) -> Vec<(String, Method)> {
    items.iter().map(|(p, m)| (p.to_string(), *m)).collect()
}

fn all(method: Method, order: &[&str]) -> Vec<(String, Method)> {
    order.iter().map(|p| (p.to_string(), method)).collect()
}

const ADD_ORDER: [&str; 4] = ["acpi", "memory", "vcpus", "state"];
const REMOVE_ORDER: [&str; 4] = ["vcpus", "memory", "acpi", "state"];

fn reason(r: &DeviceResult) -> FailureReason {
    r.reason().cloned().expect("a failure reason")
}

#[test]
fn add_cpu_commits_on_device_check_success() {
    let mut rig = Rig::new(EngineConfig::default());
    let b = rig.engine.begin(Request::AddCpu { id: None }).unwrap();
    assert_eq!(b.id, TxId(1));
    assert!(b.completed.is_none());
    let mut want = all(Validate, &ADD_ORDER);
    want.extend(all(Prepare, &ADD_ORDER));
    want.extend(all(Publish, &ADD_ORDER));
    assert_eq!(calls(&rig), want);
    assert_eq!(
        rig.engine.machine().presence(DeviceId::cpu(1)),
        Some(Presence::Adding(b.id))
    );
    assert_eq!(
        rig.engine.next_deadline().map(|t| t.as_micros()),
        Some(5_000_000)
    );

    rig.clock.advance(Duration::from_millis(20));
    assert!(rig
        .engine
        .guest_event(DeviceId::cpu(1), GuestEvent::StatusRead)
        .is_empty());
    rig.clock.advance(Duration::from_millis(22));
    let r = rig
        .engine
        .guest_event(DeviceId::cpu(1), GuestEvent::ost(1, 0));
    assert_eq!(r.completed.len(), 1);
    let c = &r.completed[0];
    assert_eq!(c.id, b.id);
    assert_eq!(c.outcome.status, TxStatus::Committed);
    assert!(c.outcome.devices[0].guest_touched);
    assert_eq!(calls(&rig), all(Commit, &ADD_ORDER));
    assert_eq!(rig.engine.machine().present_cpus(), vec![0, 1]);
    rig.assert_consistent();

    let rec = rig.engine.transaction(b.id).unwrap();
    assert_eq!(rec.status, RecordStatus::Committed);
    let phases: Vec<Phase> = rec.phases.iter().map(|p| p.phase).collect();
    assert_eq!(
        phases,
        vec![
            Phase::Validate,
            Phase::Prepare,
            Phase::Publish,
            Phase::AwaitGuest,
            Phase::Commit
        ]
    );
    let wait = &rec.phases[3];
    assert_eq!(
        (wait.started_us, wait.ended_us, wait.duration_us),
        (0, 42_000, 42_000)
    );
    assert_eq!(rec.guest_events.len(), 2);
    assert_eq!(rec.guest_events[1].at_us, 42_000);
    assert_eq!(rec.duration_us, Some(42_000));
}

#[test]
fn slow_prepare_shows_in_phase_durations() {
    let mut rig = Rig::new(EngineConfig::default());
    // A slow participant registered next to the rig's ones cannot be added after the fact
    // while in flight; build a dedicated engine instead.
    let clock = rig.clock.clone();
    let log = rig.log.clone();
    let slow = common::Fake::new("slow", &log, 1).slow(&clock, Duration::from_millis(7));
    rig.engine
        .register("slow", hotplug::Orders::uniform(60), Box::new(slow))
        .unwrap();
    let b = rig.engine.begin(Request::AddCpu { id: Some(2) }).unwrap();
    let rec = rig.engine.transaction(b.id).unwrap();
    let prepare = rec
        .phases
        .iter()
        .find(|p| p.phase == Phase::Prepare)
        .unwrap();
    assert_eq!(prepare.duration_us, 7_000);
    assert_eq!(rec.targets[0].deadline_us, Some(7_000 + 5_000_000));
}

#[test]
fn add_cpu_guest_failure_rolls_back_in_reverse() {
    let mut rig = Rig::new(EngineConfig::default());
    let b = rig.engine.begin(Request::AddCpu { id: Some(3) }).unwrap();
    rig.take_log();
    let r = rig
        .engine
        .guest_event(DeviceId::cpu(3), GuestEvent::ost(1, 1));
    let c = &r.completed[0];
    assert_eq!(c.outcome.status, TxStatus::RolledBack);
    match reason(&c.outcome.devices[0].result) {
        FailureReason::GuestRefused { ost } => {
            assert_eq!(ost.event, OstEvent::DeviceCheck);
            assert_eq!(ost.status, OstStatus::Failure);
        }
        other => panic!("{other:?}"),
    }
    let mut rev: Vec<&str> = ADD_ORDER.to_vec();
    rev.reverse();
    let mut want = all(RollbackPublish, &rev);
    want.extend(all(RollbackPrepare, &rev));
    assert_eq!(calls(&rig), want);
    assert_eq!(
        rig.engine.machine().presence(DeviceId::cpu(3)),
        Some(Presence::Absent)
    );
    rig.assert_consistent();
    let rec = rig.engine.transaction(b.id).unwrap();
    assert_eq!(rec.phases.last().unwrap().phase, Phase::Rollback);
    assert_eq!(rec.errors[0].step, "await_guest");
    // A late verdict is ignored.
    assert!(rig
        .engine
        .guest_event(DeviceId::cpu(3), GuestEvent::ost(1, 0))
        .is_empty());
}

#[test]
fn add_insertion_in_progress_keeps_waiting() {
    let mut rig = Rig::new(EngineConfig::default());
    rig.engine.begin(Request::AddCpu { id: None }).unwrap();
    let cpu = DeviceId::cpu(1);
    assert!(rig
        .engine
        .guest_event(cpu, GuestEvent::ost(0x200, 0x80))
        .completed
        .is_empty());
    let r = rig.engine.guest_event(cpu, GuestEvent::ost(0x200, 0));
    assert_eq!(r.completed[0].outcome.status, TxStatus::Committed);
}

#[test]
fn add_timeout_withdraws_and_says_whether_the_guest_looked() {
    for touched in [false, true] {
        let mut rig = Rig::new(EngineConfig::default());
        rig.engine.begin(Request::AddCpu { id: None }).unwrap();
        if touched {
            rig.engine
                .guest_event(DeviceId::cpu(1), GuestEvent::StatusRead);
        }
        rig.clock.advance(Duration::from_millis(4_999));
        assert!(rig.engine.tick().is_empty());
        rig.clock.advance(Duration::from_millis(1));
        let r = rig.engine.tick();
        let d = &r.completed[0].outcome.devices[0];
        assert_eq!(
            reason(&d.result),
            FailureReason::Timeout {
                guest_touched: touched,
                last_ost: None
            }
        );
        assert_eq!(d.guest_touched, touched);
        assert!(rig.engine.next_deadline().is_none());
        rig.assert_consistent();
    }
}

#[test]
fn remove_cpu_follows_linux_order_and_commits_after_ej0_and_success() {
    let mut rig = Rig::new(EngineConfig::default());
    rig.engine.begin(Request::AddCpu { id: None }).unwrap();
    rig.engine
        .guest_event(DeviceId::cpu(1), GuestEvent::ost(1, 0));
    rig.take_log();
    let cpu = DeviceId::cpu(1);
    let b = rig.engine.begin(Request::RemoveCpu { id: 1 }).unwrap();
    let mut want = all(Validate, &ADD_ORDER);
    want.extend(all(Prepare, &REMOVE_ORDER));
    want.extend(all(Publish, &REMOVE_ORDER));
    assert_eq!(calls(&rig), want);
    rig.clock.advance(Duration::from_millis(10));
    assert!(rig
        .engine
        .guest_event(cpu, GuestEvent::ost(3, 0x84))
        .is_empty());
    rig.clock.advance(Duration::from_millis(200));
    assert!(rig.engine.guest_event(cpu, GuestEvent::Eject).is_empty());
    rig.clock.advance(Duration::from_millis(1));
    let r = rig.engine.guest_event(cpu, GuestEvent::ost(3, 0));
    assert_eq!(r.completed[0].outcome.status, TxStatus::Committed);
    assert_eq!(calls(&rig), all(Commit, &REMOVE_ORDER));
    assert_eq!(rig.engine.machine().present_cpus(), vec![0]);
    rig.assert_consistent();
    let rec = rig.engine.transaction(b.id).unwrap();
    let times: Vec<u64> = rec.guest_events.iter().map(|e| e.at_us).collect();
    assert_eq!(times, vec![10_000, 210_000, 211_000]);
}

#[test]
fn remove_refusals_keep_the_device_with_the_guest_reason() {
    for (status, want) in [
        (1, OstStatus::Failure),
        (0x80, OstStatus::EjectNotSupported),
        (0x81, OstStatus::DeviceInUse),
        (0x82, OstStatus::DeviceBusy),
        (0x83, OstStatus::EjectDependencyBusy),
    ] {
        let mut rig = Rig::new(EngineConfig::default());
        rig.engine.begin(Request::AddCpu { id: None }).unwrap();
        rig.engine
            .guest_event(DeviceId::cpu(1), GuestEvent::ost(1, 0));
        rig.engine.begin(Request::RemoveCpu { id: 1 }).unwrap();
        rig.engine
            .guest_event(DeviceId::cpu(1), GuestEvent::ost(3, 0x84));
        let r = rig
            .engine
            .guest_event(DeviceId::cpu(1), GuestEvent::ost(3, status));
        let d = &r.completed[0].outcome.devices[0];
        match reason(&d.result) {
            FailureReason::GuestRefused { ost } => assert_eq!(ost.status, want),
            other => panic!("{other:?}"),
        }
        assert_eq!(rig.engine.machine().present_cpus(), vec![0, 1]);
        rig.assert_consistent();
    }
}

#[test]
fn remove_success_without_ej0_is_not_a_commit_and_times_out() {
    let mut rig = Rig::new(EngineConfig::default());
    rig.engine.begin(Request::AddCpu { id: None }).unwrap();
    rig.engine
        .guest_event(DeviceId::cpu(1), GuestEvent::ost(1, 0));
    rig.engine.begin(Request::RemoveCpu { id: 1 }).unwrap();
    assert!(rig
        .engine
        .guest_event(DeviceId::cpu(1), GuestEvent::ost(3, 0))
        .is_empty());
    rig.clock.advance(Duration::from_secs(10));
    let r = rig.engine.tick();
    let d = &r.completed[0].outcome.devices[0];
    assert!(matches!(
        reason(&d.result),
        FailureReason::Timeout {
            guest_touched: true,
            ..
        }
    ));
    assert!(d.notes[0].contains("without _EJ0"));
    assert_eq!(rig.engine.machine().present_cpus(), vec![0, 1]);
    rig.assert_consistent();
}

#[test]
fn remove_timeout_after_ej0_commits_with_a_note() {
    let mut rig = Rig::new(EngineConfig::default());
    rig.engine
        .begin(Request::AddMemory { size: 256 * MIB })
        .unwrap();
    rig.engine
        .guest_event(DeviceId::memory_slot(1), GuestEvent::ost(1, 0));
    rig.engine.begin(Request::RemoveMemory { slot: 1 }).unwrap();
    rig.engine
        .guest_event(DeviceId::memory_slot(1), GuestEvent::Eject);
    rig.clock.advance(Duration::from_secs(30));
    let r = rig.engine.tick();
    let d = &r.completed[0].outcome.devices[0];
    assert_eq!(d.result, DeviceResult::Committed);
    assert!(d.notes[0].contains("deadline"));
    assert_eq!(rig.engine.machine().total_memory(), 512 * MIB);
    rig.assert_consistent();
}

#[test]
fn deadlines_are_per_operation_kind() {
    let mut config = EngineConfig::default();
    config.deadlines.add_cpu = Duration::from_secs(1);
    config.deadlines.add_memory = Duration::from_secs(3);
    let mut rig = Rig::new(config);
    let cpu = rig.engine.begin(Request::AddCpu { id: None }).unwrap().id;
    let mem = rig
        .engine
        .begin(Request::AddMemory { size: 128 * MIB })
        .unwrap()
        .id;
    rig.clock.advance(Duration::from_secs(1));
    let r = rig.engine.tick();
    assert_eq!(r.completed.len(), 1);
    assert_eq!(r.completed[0].id, cpu);
    assert_eq!(
        rig.engine.next_deadline().map(|t| t.as_micros()),
        Some(3_000_000)
    );
    rig.clock.advance(Duration::from_secs(2));
    assert_eq!(rig.engine.tick().completed[0].id, mem);
    rig.assert_consistent();
}

#[test]
fn one_transaction_per_device_and_independent_devices_run_concurrently() {
    let mut rig = Rig::new(EngineConfig::default());
    let t1 = rig
        .engine
        .begin(Request::AddCpu { id: Some(2) })
        .unwrap()
        .id;
    assert_eq!(
        rig.engine.begin(Request::AddCpu { id: Some(2) }),
        Err(Error::Conflict {
            device: DeviceId::cpu(2),
            tx: t1
        })
    );
    let err = rig.engine.begin(Request::RemoveCpu { id: 2 }).unwrap_err();
    assert_eq!(err.to_string(), "cpu 2 is busy: tx-1 is in flight");
    assert!(matches!(
        rig.engine.begin(Request::Resize {
            vcpus: Some(1),
            memory: None,
            best_effort: false
        }),
        Err(Error::Conflict { tx, .. }) if tx == t1
    ));
    // Independent devices: both in flight at once, finishing in any order.
    let t2 = rig.engine.begin(Request::AddCpu { id: None }).unwrap().id;
    let t3 = rig
        .engine
        .begin(Request::AddMemory { size: 128 * MIB })
        .unwrap()
        .id;
    assert_eq!(rig.engine.in_flight().count(), 3);
    let r = rig
        .engine
        .guest_event(DeviceId::memory_slot(1), GuestEvent::ost(1, 0));
    assert_eq!(r.completed[0].id, t3);
    let r = rig
        .engine
        .guest_event(DeviceId::cpu(1), GuestEvent::ost(1, 0));
    assert_eq!(r.completed[0].id, t2);
    let r = rig
        .engine
        .guest_event(DeviceId::cpu(2), GuestEvent::ost(1, 0));
    assert_eq!(r.completed[0].id, t1);
    assert_eq!(rig.engine.machine().present_cpus(), vec![0, 1, 2]);
    rig.assert_consistent();
    // Conflicts and invalid requests are not journaled.
    assert_eq!(rig.engine.journal().len(), 3);
}

#[test]
fn invalid_requests_are_precise_and_change_nothing() {
    let mut rig = Rig::new(EngineConfig::default());
    assert_eq!(
        rig.engine.begin(Request::RemoveCpu { id: 0 }),
        Err(Error::Invalid(ValidationError::CpuZeroRemoval))
    );
    let e = rig
        .engine
        .begin(Request::AddMemory { size: 3 * MIB })
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "memory size 0x300000 is not a multiple of the block size 0x8000000"
    );
    assert!(rig.take_log().is_empty());
    assert!(rig.engine.journal().is_empty());
}

#[test]
fn a_veto_rejects_before_any_change() {
    let mut rig = Rig::new(EngineConfig::default());
    rig.fake("vcpus").fail_next(Validate);
    let b = rig.engine.begin(Request::AddCpu { id: None }).unwrap();
    let c = b.completed.unwrap();
    assert_eq!(c.outcome.status, TxStatus::Rejected);
    match reason(&c.outcome.devices[0].result) {
        FailureReason::Vetoed { participant, error } => {
            assert_eq!(participant, "vcpus");
            assert_eq!(error, vec!["vcpus Validate cpu 1", "injected fault"]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        calls(&rig),
        seq(&[
            ("acpi", Validate),
            ("memory", Validate),
            ("vcpus", Validate)
        ])
    );
    let rec = rig.engine.transaction(b.id).unwrap();
    assert_eq!(rec.errors[0].participant.as_deref(), Some("vcpus"));
    assert_eq!(rec.errors[0].error.len(), 2);
    rig.assert_consistent();
}

#[test]
fn prepare_failure_undoes_the_completed_steps_only() {
    let mut rig = Rig::new(EngineConfig::default());
    rig.fake("vcpus").fail_next(Prepare);
    let b = rig.engine.begin(Request::AddCpu { id: None }).unwrap();
    let c = b.completed.unwrap();
    assert_eq!(c.outcome.status, TxStatus::RolledBack);
    assert!(matches!(
        reason(&c.outcome.devices[0].result),
        FailureReason::PrepareFailed { ref participant, .. } if participant == "vcpus"
    ));
    let mut want = all(Validate, &ADD_ORDER);
    want.extend(seq(&[
        ("acpi", Prepare),
        ("memory", Prepare),
        ("vcpus", Prepare),
        ("memory", RollbackPrepare),
        ("acpi", RollbackPrepare),
    ]));
    assert_eq!(calls(&rig), want);
    rig.assert_consistent();
}

#[test]
fn publish_failure_undoes_publishes_then_prepares() {
    let mut rig = Rig::new(EngineConfig::default());
    rig.fake("memory").fail_next(Publish);
    let c = rig
        .engine
        .begin(Request::AddCpu { id: None })
        .unwrap()
        .completed
        .unwrap();
    assert!(matches!(
        reason(&c.outcome.devices[0].result),
        FailureReason::PublishFailed { .. }
    ));
    let log = calls(&rig);
    let tail: Vec<(String, Method)> = log[log.len() - 7..].to_vec();
    assert_eq!(
        tail,
        seq(&[
            ("acpi", Publish),
            ("memory", Publish),
            ("acpi", RollbackPublish),
            ("state", RollbackPrepare),
            ("vcpus", RollbackPrepare),
            ("memory", RollbackPrepare),
            ("acpi", RollbackPrepare),
        ])
    );
    rig.assert_consistent();
}

#[test]
fn failing_commit_is_recorded_and_does_not_roll_back() {
    let mut rig = Rig::new(EngineConfig::default());
    rig.fake("acpi").fail_next(Commit);
    let b = rig.engine.begin(Request::AddCpu { id: None }).unwrap();
    rig.take_log();
    let r = rig
        .engine
        .guest_event(DeviceId::cpu(1), GuestEvent::ost(1, 0));
    let d = &r.completed[0].outcome.devices[0];
    assert_eq!(d.result, DeviceResult::Committed);
    assert_eq!(d.step_errors[0].participant, "acpi");
    assert_eq!(d.step_errors[0].step, "commit");
    assert_eq!(calls(&rig), all(Commit, &ADD_ORDER));
    let rec = rig.engine.transaction(b.id).unwrap();
    assert!(!rec.phases.last().unwrap().ok);
    rig.assert_consistent();
}

#[test]
fn engine_and_report_can_move_to_the_vmm_thread() {
    fn assert_send<T: Send>() {}
    assert_send::<hotplug::Engine>();
    assert_send::<hotplug::Report>();
    assert_send::<hotplug::TxRecord>();
}
