use std::sync::{Arc, Mutex};

use super::*;

type Seen = Arc<Mutex<Vec<HotplugObservation>>>;

fn observed<L: ControllerLayout>(mut c: HotplugController<L>) -> (HotplugController<L>, Seen) {
    let seen: Seen = Arc::default();
    let sink = seen.clone();
    c.set_observer(Box::new(move |o| sink.lock().unwrap().push(o)));
    (c, seen)
}

fn w32<L: ControllerLayout>(c: &HotplugController<L>, off: u64, v: u32) {
    c.mmio_write(MmioAddress(0), off, &v.to_le_bytes());
}
fn r32<L: ControllerLayout>(c: &HotplugController<L>, off: u64) -> u32 {
    let mut d = [0u8; 4];
    c.mmio_read(MmioAddress(0), off, &mut d);
    u32::from_le_bytes(d)
}
fn w8<L: ControllerLayout>(c: &HotplugController<L>, off: u64, v: u8) {
    c.mmio_write(MmioAddress(0), off, &[v]);
}
fn r8<L: ControllerLayout>(c: &HotplugController<L>, off: u64) -> u8 {
    let mut d = [0u8; 1];
    c.mmio_read(MmioAddress(0), off, &mut d);
    d[0]
}

#[test]
fn boot_cpus_are_enabled_others_absent() {
    let (c, seen) = observed(CpuHotplugController::for_cpus(2, 8));
    w32(&c, cpu::SELECTOR, 1);
    assert_eq!(r8(&c, cpu::STATUS), cpu::STATUS_ENABLED);
    w32(&c, cpu::SELECTOR, 2);
    assert_eq!(r8(&c, cpu::STATUS), 0);
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        &[
            HotplugObservation::StatusRead { uid: 1 },
            HotplugObservation::StatusRead { uid: 2 }
        ]
    );
}

#[test]
fn insert_scan_ack_and_ost() {
    let (c, seen) = observed(CpuHotplugController::for_cpus(2, 8));
    assert_eq!(r32(&c, cpu::NEXT_EVENT), cpu::NO_EVENT);
    c.update(5, |s| {
        s.enabled = true;
        s.inserting = true;
    });
    assert_eq!(r32(&c, cpu::NEXT_EVENT), 5);
    assert_eq!(r32(&c, cpu::SELECTOR), 5);
    assert_eq!(
        r8(&c, cpu::STATUS),
        cpu::STATUS_ENABLED | cpu::STATUS_INSERTING
    );
    w8(&c, cpu::STATUS, cpu::STATUS_INSERTING);
    assert_eq!(r32(&c, cpu::NEXT_EVENT), cpu::NO_EVENT);
    w32(&c, cpu::OST_EVENT, 1);
    w32(&c, cpu::OST_STATUS, 0);
    assert!(seen.lock().unwrap().contains(&HotplugObservation::Ost {
        uid: 5,
        event: 1,
        status: 0
    }));
    assert_eq!(
        c.slot(5),
        Some(HotplugSlotState {
            enabled: true,
            ..Default::default()
        })
    );
}

#[test]
fn next_event_is_cyclic_from_the_selector() {
    let (c, _) = observed(CpuHotplugController::for_cpus(2, 8));
    c.update(1, |s| s.removing = true);
    c.update(6, |s| s.inserting = true);
    w32(&c, cpu::SELECTOR, 3);
    assert_eq!(r32(&c, cpu::NEXT_EVENT), 6);
    w8(&c, cpu::STATUS, cpu::STATUS_INSERTING);
    assert_eq!(r32(&c, cpu::NEXT_EVENT), 1);
    assert_eq!(
        r8(&c, cpu::STATUS),
        cpu::STATUS_ENABLED | cpu::STATUS_REMOVING
    );
}

#[test]
fn eject_only_when_asked_to_leave() {
    let (c, seen) = observed(CpuHotplugController::for_cpus(2, 8));
    w32(&c, cpu::SELECTOR, 1);
    w8(&c, cpu::STATUS, cpu::STATUS_EJECT);
    assert!(
        c.slot(1).unwrap().enabled,
        "unrequested eject must be ignored"
    );
    c.update(1, |s| {
        s.removing = true;
        s.eject_allowed = true;
    });
    w8(&c, cpu::STATUS, cpu::STATUS_EJECT);
    assert_eq!(c.slot(1), Some(HotplugSlotState::default()));
    assert!(seen
        .lock()
        .unwrap()
        .contains(&HotplugObservation::Ejected { uid: 1 }));
}

#[test]
fn hostile_accesses_are_ignored() {
    let (c, seen) = observed(CpuHotplugController::for_cpus(2, 8));
    w32(&c, cpu::SELECTOR, 8);
    w32(&c, cpu::SELECTOR, u32::MAX);
    assert_eq!(r32(&c, cpu::SELECTOR), 0);
    c.mmio_write(MmioAddress(0), cpu::SELECTOR, &[1, 0]);
    c.mmio_write(MmioAddress(0), 0x1000, &[1]);
    c.mmio_write(MmioAddress(0), cpu::NEXT_EVENT, &[0; 4]);
    c.mmio_write(MmioAddress(0), cpu::STATUS, &[]);
    let mut wide = [0xffu8; 8];
    c.mmio_read(MmioAddress(0), cpu::SELECTOR, &mut wide);
    assert_eq!(wide, [0; 8]);
    let mut odd = [0xffu8; 2];
    c.mmio_read(MmioAddress(0), cpu::STATUS, &mut odd);
    assert_eq!(odd, [0; 2]);
    // CPUs have no range registers.
    assert_eq!(r32(&c, mem::BASE_LOW), 0);
    assert_eq!(r32(&c, cpu::SELECTOR), 0);
    assert!(seen.lock().unwrap().is_empty());
    assert!(c.access_count() >= 10);
}

#[test]
fn one_slot_controller_cannot_reach_other_state() {
    let c = CpuHotplugController::for_cpus(1, 1);
    assert!(!c.update(1, |s| s.enabled = true));
    assert_eq!(c.slot(1), None);
    c.update(0, |s| s.inserting = true);
    assert_eq!(r32(&c, cpu::NEXT_EVENT), 0);
}

#[test]
fn memory_slots_start_at_one_and_report_their_range() {
    let (m, seen) = observed(MemoryHotplugController::for_memory_slots(4));
    assert_eq!(
        m.slot(0),
        None,
        "slot 0 is boot memory, not a hotplug device"
    );
    assert!(m.set_range(
        2,
        Some(SlotRange {
            base: 0x1_2000_0000,
            length: 0x1000_0000,
            proximity: 0
        })
    ));
    assert!(!m.set_range(0, None));
    assert!(!m.set_range(5, None));
    m.update(2, |s| {
        s.enabled = true;
        s.inserting = true;
    });
    assert_eq!(r32(&m, mem::NEXT_EVENT), 2);
    assert_eq!(r32(&m, mem::BASE_LOW), 0x2000_0000);
    assert_eq!(r32(&m, mem::BASE_HIGH), 1);
    assert_eq!(r32(&m, mem::LENGTH_LOW), 0x1000_0000);
    assert_eq!(r32(&m, mem::LENGTH_HIGH), 0);
    assert_eq!(r32(&m, mem::PROXIMITY), 0);
    assert_eq!(
        r8(&m, mem::STATUS),
        mem::STATUS_ENABLED | mem::STATUS_INSERTING
    );
    w8(&m, mem::STATUS, mem::STATUS_INSERTING);
    w32(&m, mem::OST_EVENT, 1);
    w32(&m, mem::OST_STATUS, 0);
    assert!(seen.lock().unwrap().contains(&HotplugObservation::Ost {
        uid: 2,
        event: 1,
        status: 0
    }));
    // An empty slot reads as zero-length.
    w32(&m, mem::SELECTOR, 3);
    assert_eq!(r32(&m, mem::LENGTH_LOW), 0);
    w32(&m, mem::SELECTOR, 0);
    assert_eq!(r32(&m, mem::SELECTOR), 3, "selecting slot 0 is refused");
}

#[test]
fn memory_eject_needs_a_pending_removal() {
    let (m, seen) = observed(MemoryHotplugController::for_memory_slots(2));
    m.update(1, |s| s.enabled = true);
    w32(&m, mem::SELECTOR, 1);
    w8(&m, mem::STATUS, mem::STATUS_EJECT);
    assert!(m.slot(1).unwrap().enabled);
    assert!(m.slot(1).unwrap().inserting);
    w8(&m, mem::STATUS, mem::STATUS_INSERTING);
    m.update(1, |s| {
        s.removing = true;
        s.eject_allowed = true;
    });
    w8(&m, mem::STATUS, mem::STATUS_EJECT);
    assert!(!m.slot(1).unwrap().enabled);
    assert_eq!(
        seen.lock().unwrap().last(),
        Some(&HotplugObservation::Ejected { uid: 1 })
    );
}

#[test]
fn withdrawing_a_removal_replugs_what_the_guest_ejected() {
    let c = CpuHotplugController::for_cpus(3, 4);
    c.update(1, |s| {
        s.removing = true;
        s.eject_allowed = true;
    });
    assert_eq!(c.withdraw_removal(1), Some(false));
    assert_eq!(
        c.slot(1),
        Some(HotplugSlotState {
            enabled: true,
            ..Default::default()
        })
    );
    c.update(2, |s| {
        s.removing = true;
        s.eject_allowed = true;
    });
    w32(&c, cpu::SELECTOR, 2);
    w8(&c, cpu::STATUS, cpu::STATUS_EJECT);
    assert!(!c.slot(2).unwrap().enabled);
    assert_eq!(c.withdraw_removal(2), Some(true));
    assert_eq!(
        c.slot(2),
        Some(HotplugSlotState {
            enabled: true,
            inserting: true,
            ..Default::default()
        })
    );
    assert_eq!(r32(&c, cpu::NEXT_EVENT), 2);
    assert_eq!(c.withdraw_removal(9), None);
}

/// Whatever a guest writes and reads, in any order, width or offset, the controllers neither
/// panic nor break their invariants: a selector always names a real slot, an absent slot never
/// has events pending from the guest's side, and only slots asked to leave can be ejected.
#[test]
fn random_guest_accesses_never_break_the_controllers() {
    fn run<L: ControllerLayout>(c: HotplugController<L>, uids: std::ops::RangeInclusive<u32>) {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let (first, last) = (*uids.start(), *uids.end());
        // Slot `first` is present and may leave; the others are present and must stay.
        for uid in uids.clone() {
            c.update(uid, |s| s.enabled = true);
        }
        c.update(first, |s| s.eject_allowed = true);
        for _ in 0..20_000 {
            let r = next();
            let offset = r % 0x30;
            let len = [1usize, 2, 4, 8][(r >> 8) as usize % 4];
            let value = (r >> 16).to_le_bytes();
            if r & (1 << 40) == 0 {
                c.mmio_write(MmioAddress(0), offset, &value[..len]);
            } else {
                let mut data = vec![0u8; len];
                c.mmio_read(MmioAddress(0), offset, &mut data);
            }
            let sel = r32(&c, L::SELECTOR);
            assert!(
                uids.contains(&sel),
                "selector {sel} outside {first}..={last}"
            );
        }
        for uid in uids.clone().skip(1) {
            assert!(
                c.slot(uid).unwrap().enabled,
                "slot {uid} was ejected without being asked to leave"
            );
        }
    }
    run(CpuHotplugController::for_cpus(1, 8), 0..=7);
    run(MemoryHotplugController::for_memory_slots(4), 1..=4);
}

#[test]
fn refused_writes_say_why() {
    let c = CpuHotplugController::for_cpus(2, 8);
    let refusal = |offset, data: &[u8]| c.write(offset, data).unwrap_err();

    let err = refusal(cpu::SELECTOR, &8u32.to_le_bytes());
    assert!(matches!(
        err,
        ControllerError::Register(RegisterError::UnknownSlot { uid: 8 })
    ));
    assert_eq!(err.to_string(), "selector 8 is not a hotplug slot");

    let err = refusal(cpu::SELECTOR, &[1, 0]);
    assert!(matches!(err, ControllerError::BadWidth { len: 2, .. }));
    assert_eq!(
        err.to_string(),
        format!("2-byte write at offset {:#x}", cpu::SELECTOR)
    );

    let err = refusal(cpu::NEXT_EVENT, &[0; 4]);
    assert!(matches!(err, ControllerError::UnknownOffset { offset } if offset == cpu::NEXT_EVENT));
    assert_eq!(
        err.to_string(),
        format!(
            "write to read-only or unknown offset {:#x}",
            cpu::NEXT_EVENT
        )
    );

    // CPU 5 is absent: ejecting it is refused, not turned into an observation.
    assert!(c.write(cpu::SELECTOR, &5u32.to_le_bytes()).is_ok());
    let err = refusal(cpu::STATUS, &[cpu::STATUS_EJECT]);
    assert!(matches!(
        err,
        ControllerError::Register(RegisterError::EjectAbsent { uid: 5 })
    ));
    assert_eq!(err.to_string(), "eject of 5, which is not present");
}
