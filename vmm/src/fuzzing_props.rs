//! Property: whatever the host asks and the guest writes to the hotplug registers (Linux's
//! sequences with made-up values, and stray accesses), after every turn of the event loop
//! `vm.info`'s view of the devices (read from the engine) and both controllers agree on every
//! device no transaction holds (state, and each memory slot's range), its vCPU and RAM totals
//! are what the guest can see whenever nothing is in flight, the journal keeps
//! its bounds, and in the end every request got exactly one answer (checked by
//! [`HotplugRig`]). The fuzz target `hotplug_registers` explores the same space unguided.

use hotplug::{GuestEjectPolicy, Request};
use proptest::prelude::*;

use crate::fuzzing::{Block, HotplugRig, RIG_BLOCK};

#[derive(Debug, Clone)]
enum Op {
    Request(Request),
    /// Linux's insert: acknowledge the insert, `_OST(1, status)`.
    Insert {
        memory: bool,
        uid: u32,
        status: u32,
    },
    /// Linux's eject: acknowledge the remove, `_OST(3, 0x80)`, `_EJ0`, `_OST(3, status)`.
    Eject {
        memory: bool,
        uid: u32,
        status: u32,
    },
    /// Any write of any width at any offset.
    Stray {
        memory: bool,
        offset: u64,
        bytes: Vec<u8>,
    },
    Advance(u64),
    Step,
}

fn op() -> impl Strategy<Value = Op> {
    let request = prop_oneof![
        proptest::option::of(0u32..6).prop_map(|id| Request::AddCpu { id }),
        (0u32..6).prop_map(|id| Request::RemoveCpu { id }),
        (0u64..4).prop_map(|b| Request::AddMemory {
            size: b * RIG_BLOCK
        }),
        (0u32..6).prop_map(|slot| Request::RemoveMemory { slot }),
        (
            proptest::option::of(0u32..6),
            proptest::option::of(0u64..5),
            any::<bool>()
        )
            .prop_map(|(vcpus, blocks, best_effort)| Request::Resize {
                vcpus,
                memory: blocks.map(|b| (512 << 20) + b * RIG_BLOCK),
                best_effort,
            }),
    ];
    let status = prop_oneof![Just(0u32), Just(0x80), Just(0x81), 0u32..0x200];
    prop_oneof![
        2 => request.prop_map(Op::Request),
        3 => (any::<bool>(), 0u32..5, status.clone())
            .prop_map(|(memory, uid, status)| Op::Insert { memory, uid, status }),
        3 => (any::<bool>(), 0u32..5, status)
            .prop_map(|(memory, uid, status)| Op::Eject { memory, uid, status }),
        1 => (any::<bool>(), 0u64..0x20, proptest::collection::vec(any::<u8>(), 1..=8))
            .prop_map(|(memory, offset, bytes)| Op::Stray { memory, offset, bytes }),
        1 => (0u64..12_000).prop_map(Op::Advance),
        3 => Just(Op::Step),
    ]
}

fn block(memory: bool) -> Block {
    if memory {
        Block::Memory
    } else {
        Block::Cpu
    }
}

fn apply(rig: &mut HotplugRig, op: Op) {
    match op {
        Op::Request(r) => rig.request(r),
        Op::Insert {
            memory,
            uid,
            status,
        } => {
            let b = block(memory);
            rig.ack_insert(b, uid);
            rig.ost(b, uid, 1, status);
        }
        Op::Eject {
            memory,
            uid,
            status,
        } => {
            let b = block(memory);
            rig.ack_remove(b, uid);
            rig.ost(b, uid, 3, 0x80);
            rig.eject(b, uid);
            rig.ost(b, uid, 3, status);
        }
        Op::Stray {
            memory,
            offset,
            bytes,
        } => rig.guest_write(block(memory), offset, &bytes),
        Op::Advance(ms) => rig.advance(ms),
        Op::Step => {
            rig.step();
            rig.check();
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn engine_and_controllers_agree_after_every_step(
        allow in any::<bool>(),
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        let policy = if allow { GuestEjectPolicy::Allow } else { GuestEjectPolicy::Deny };
        let mut rig = HotplugRig::new(policy).unwrap();
        for op in ops {
            apply(&mut rig, op);
        }
        rig.step();
        rig.check();
        rig.finish();
        rig.check();
    }
}
