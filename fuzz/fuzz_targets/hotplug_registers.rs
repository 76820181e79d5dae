//! A guest that does anything with both hotplug controllers' registers (random accesses of
//! any width at any offset, and Linux's own sequences with made-up values) while the host adds
//! and removes CPUs and memory, against the VMM's controllers, participants and engine. After
//! every turn of the loop the engine, the controllers and the journal must agree.
#![no_main]

use arbitrary::Arbitrary;
use hotplug::{GuestEjectPolicy, Request};
use libfuzzer_sys::fuzz_target;
use vmm::fuzzing::{Block, HotplugRig, RIG_BLOCK};

#[derive(Debug, Arbitrary)]
enum Op {
    Read {
        memory: bool,
        offset: u8,
        len: u8,
    },
    Write {
        memory: bool,
        offset: u8,
        len: u8,
        value: u64,
    },
    FarWrite {
        memory: bool,
        offset: u64,
        value: u32,
    },
    /// Acknowledges a slot's insert (or remove) event.
    Ack {
        memory: bool,
        uid: u8,
        remove: bool,
    },
    /// Ejects a slot.
    Eject {
        memory: bool,
        uid: u8,
    },
    /// `_OST(event, status)` for a slot.
    Ost {
        memory: bool,
        uid: u8,
        event: u32,
        status: u32,
    },
    /// What Linux does for an eject request: acknowledge, `_OST(3, 0x80)`, `_EJ0`,
    /// `_OST(3, 0)`.
    LinuxEject {
        memory: bool,
        uid: u8,
    },
    /// What Linux does for an insert: ack the insert, `_OST(1, 0)`.
    LinuxInsert {
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
    Step,
}

fn block(memory: bool) -> Block {
    if memory {
        Block::Memory
    } else {
        Block::Cpu
    }
}

fuzz_target!(|input: (bool, Vec<Op>)| {
    let (allow, ops) = input;
    let policy = if allow {
        GuestEjectPolicy::Allow
    } else {
        GuestEjectPolicy::Deny
    };
    let Ok(mut rig) = HotplugRig::new(policy) else {
        return;
    };
    let debug = std::env::var_os("FUZZ_DEBUG").is_some();
    for op in ops.into_iter().take(256) {
        if debug {
            eprintln!("{op:?}");
        }
        match op {
            Op::Read {
                memory,
                offset,
                len,
            } => {
                rig.guest_read(
                    block(memory),
                    u64::from(offset % 0x20),
                    usize::from(len % 9),
                );
            }
            Op::Write {
                memory,
                offset,
                len,
                value,
            } => {
                let bytes = value.to_le_bytes();
                rig.guest_write(
                    block(memory),
                    u64::from(offset % 0x20),
                    &bytes[..usize::from(len % 9)],
                );
            }
            Op::FarWrite {
                memory,
                offset,
                value,
            } => {
                rig.guest_write(block(memory), offset, &value.to_le_bytes());
            }
            Op::Ack {
                memory,
                uid,
                remove,
            } => {
                let uid = u32::from(uid % 8);
                if remove {
                    rig.ack_remove(block(memory), uid);
                } else {
                    rig.ack_insert(block(memory), uid);
                }
            }
            Op::Eject { memory, uid } => rig.eject(block(memory), u32::from(uid % 8)),
            Op::Ost {
                memory,
                uid,
                event,
                status,
            } => rig.ost(block(memory), u32::from(uid % 8), event, status),
            Op::LinuxEject { memory, uid } => {
                let (b, uid) = (block(memory), u32::from(uid % 8));
                rig.ack_remove(b, uid);
                rig.ost(b, uid, 3, 0x80);
                rig.eject(b, uid);
                rig.ost(b, uid, 3, 0);
            }
            Op::LinuxInsert { memory, uid } => {
                let (b, uid) = (block(memory), u32::from(uid % 8));
                rig.ack_insert(b, uid);
                rig.ost(b, uid, 1, 0);
            }
            Op::AddCpu(id) => rig.request(Request::AddCpu {
                id: id.map(|i| u32::from(i % 8)),
            }),
            Op::RemoveCpu(id) => rig.request(Request::RemoveCpu {
                id: u32::from(id % 8),
            }),
            Op::AddMemory(blocks) => rig.request(Request::AddMemory {
                size: u64::from(blocks % 6) * RIG_BLOCK,
            }),
            Op::RemoveMemory(slot) => rig.request(Request::RemoveMemory {
                slot: u32::from(slot % 8),
            }),
            Op::Resize {
                vcpus,
                blocks,
                best_effort,
            } => rig.request(Request::Resize {
                vcpus: vcpus.map(|v| u32::from(v % 8)),
                memory: blocks.map(|b| (512 << 20) + u64::from(b % 8) * RIG_BLOCK),
                best_effort,
            }),
            Op::Advance(ms) => rig.advance(u64::from(ms)),
            Op::Step => {
                rig.step();
                rig.check();
            }
        }
    }
    rig.step();
    rig.check();
    rig.finish();
    rig.check();
});
