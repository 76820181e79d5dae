//! Property: whatever the requests, guest replies and injected participant failures, once a
//! transaction ends every participant's state is the state before it or the state it asked
//! for (per device; for all-or-nothing batches, for the whole batch), never a mix, and no
//! fake resource is left held.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Fault, Method, Rig, MIB};
use hotplug::{
    BatchMode, DeviceId, Direction, EngineConfig, GuestEvent, Presence, RecordStatus, Request,
    TxStatus,
};
use proptest::prelude::*;

#[derive(Debug, Clone, Copy)]
enum Reply {
    Accept,
    Refuse,
    Timeout,
    TouchThenTimeout,
    EjectOnly,
    SuccessWithoutEject,
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        proptest::option::of(0u32..5).prop_map(|id| Request::AddCpu { id }),
        (0u32..5).prop_map(|id| Request::RemoveCpu { id }),
        prop_oneof![(0u64..5).prop_map(|b| b * 128 * MIB), Just(100 * MIB)]
            .prop_map(|size| Request::AddMemory { size }),
        (0u32..4).prop_map(|slot| Request::RemoveMemory { slot }),
        (
            proptest::option::of(0u32..5),
            proptest::option::of((4u64..13).prop_map(|b| b * 128 * MIB)),
            any::<bool>()
        )
            .prop_map(|(vcpus, memory, best_effort)| Request::Resize {
                vcpus,
                memory,
                best_effort
            }),
    ]
}

fn reply() -> impl Strategy<Value = Reply> {
    prop_oneof![
        4 => Just(Reply::Accept),
        1 => Just(Reply::Refuse),
        1 => Just(Reply::Timeout),
        1 => Just(Reply::TouchThenTimeout),
        1 => Just(Reply::EjectOnly),
        1 => Just(Reply::SuccessWithoutEject),
    ]
}

/// (participant index, method, how many calls of that method from now).
type InjectedFault = Option<(usize, Method, usize)>;

fn fault() -> impl Strategy<Value = InjectedFault> {
    proptest::option::of((
        0usize..4,
        prop_oneof![
            Just(Method::Validate),
            Just(Method::Prepare),
            Just(Method::Publish),
            Just(Method::Commit),
        ],
        0usize..4,
    ))
}

fn events(reply: Reply, remove: bool) -> Vec<GuestEvent> {
    let (ev, busy) = if remove { (3, 0x82) } else { (1, 1) };
    match (reply, remove) {
        (Reply::Accept, false) => vec![GuestEvent::StatusRead, GuestEvent::ost(1, 0)],
        (Reply::Accept, true) => vec![
            GuestEvent::ost(3, 0x84),
            GuestEvent::Eject,
            GuestEvent::ost(3, 0),
        ],
        (Reply::Refuse, _) => vec![GuestEvent::ost(ev, busy)],
        (Reply::Timeout, _) => vec![],
        (Reply::TouchThenTimeout, _) => vec![GuestEvent::StatusRead],
        (Reply::EjectOnly, _) => vec![GuestEvent::Eject],
        (Reply::SuccessWithoutEject, _) => vec![GuestEvent::ost(ev, 0)],
    }
}

fn model(rig: &Rig) -> BTreeSet<DeviceId> {
    let m = rig.engine.machine();
    m.present_cpus()
        .into_iter()
        .map(DeviceId::cpu)
        .chain(
            m.slots()
                .filter(|(_, s)| s.presence == Presence::Present)
                .map(|(id, _)| DeviceId::MemorySlot(id)),
        )
        .collect()
}

fn run(steps: Vec<(Request, Vec<Reply>, InjectedFault)>) {
    let mut rig = Rig::new(EngineConfig::default());
    for (req, replies, fault) in steps {
        for f in &rig.fakes {
            f.clear_faults();
        }
        if let Some((p, method, n)) = fault {
            let fake = &rig.fakes[p];
            fake.fail(Fault {
                method,
                nth: fake.count(method) + n,
                device: None,
            });
        }
        let before = model(&rig);
        let begun = match rig.engine.begin(req.clone()) {
            Ok(b) => b,
            Err(_) => {
                assert_eq!(model(&rig), before, "a refused request changed the model");
                rig.assert_consistent();
                continue;
            }
        };
        let targets = rig.engine.transaction(begun.id).unwrap().targets.clone();
        let mut completion = begun.completed;
        for (i, t) in targets.iter().enumerate() {
            if completion.is_some() {
                break;
            }
            let remove = t.operation.direction() == Direction::Remove;
            let reply = replies.get(i % replies.len().max(1)).copied();
            for ev in events(reply.unwrap_or(Reply::Accept), remove) {
                let r = rig.engine.guest_event(t.device, ev);
                if let Some(c) = r.completed.into_iter().find(|c| c.id == begun.id) {
                    completion = Some(c);
                    break;
                }
            }
        }
        if completion.is_none() {
            rig.clock.advance(Duration::from_secs(60));
            let r = rig.engine.tick();
            completion = r.completed.into_iter().find(|c| c.id == begun.id);
        }
        let c = completion.expect("every transaction ends by its deadline");
        assert!(rig.engine.in_flight().next().is_none());

        // Per device: before or after, never in between.
        let after = model(&rig);
        for d in &c.outcome.devices {
            let was = before.contains(&d.device);
            let is = after.contains(&d.device);
            let wanted = d.operation.direction() == Direction::Add;
            if d.result.is_committed() {
                assert_eq!(is, wanted, "{:?} committed but not applied", d);
            } else {
                assert_eq!(is, was, "{:?} not committed but changed", d);
            }
        }
        let touched: BTreeSet<DeviceId> = c.outcome.devices.iter().map(|d| d.device).collect();
        for dev in before.symmetric_difference(&after) {
            assert!(
                touched.contains(dev),
                "{dev} changed outside the transaction"
            );
        }
        let committed = c
            .outcome
            .devices
            .iter()
            .filter(|d| d.result.is_committed())
            .count();
        if req.mode() == BatchMode::AllOrNothing {
            assert!(
                committed == 0 || committed == c.outcome.devices.len(),
                "all-or-nothing batch half applied: {c:?}"
            );
        }
        match c.outcome.status {
            TxStatus::Committed => assert_eq!(committed, c.outcome.devices.len()),
            TxStatus::PartiallyCommitted => {
                assert!(committed > 0 && committed < c.outcome.devices.len())
            }
            TxStatus::RolledBack | TxStatus::Rejected => assert_eq!(committed, 0),
        }
        // No fake resource leaks and every participant agrees with the model.
        rig.assert_consistent();
        let rec = rig.engine.transaction(begun.id).unwrap();
        assert_ne!(rec.status, RecordStatus::InProgress);
        assert!(rec.ended_us.is_some());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn transactions_end_rolled_back_or_committed_never_mixed(
        steps in proptest::collection::vec(
            (request(), proptest::collection::vec(reply(), 1..4), fault()),
            1..14,
        )
    ) {
        run(steps);
    }
}
