use std::sync::{Arc, Mutex};

use super::*;

type Seen = Arc<Mutex<Vec<HotplugObservation>>>;
/// The window as the guest's memory holds it, written only through [`StatusWindow`].
type Page = Arc<Mutex<Vec<u8>>>;

struct TestWindow(Page);

impl StatusWindow for TestWindow {
    fn write(&self, offset: u64, bytes: &[u8]) {
        let at = offset as usize;
        self.0.lock().unwrap()[at..at + bytes.len()].copy_from_slice(bytes);
    }
}

/// The controller with an observer and a window; the window starts as garbage, so every
/// test also shows that attaching a window fills all of it in.
fn observed<L: ControllerLayout>(
    mut c: HotplugController<L>,
) -> (HotplugController<L>, Seen, Page) {
    let seen: Seen = Arc::default();
    let sink = seen.clone();
    c.set_observer(Box::new(move |o| sink.lock().unwrap().push(o)));
    let page: Page = Arc::new(Mutex::new(vec![0xa5; L::WINDOW_SIZE as usize]));
    c.set_window(Box::new(TestWindow(page.clone())));
    (c, seen, page)
}

fn w32<L: ControllerLayout>(c: &HotplugController<L>, off: u64, v: u32) {
    c.mmio_write(MmioAddress(0), off, &v.to_le_bytes());
}
fn ost<L: ControllerLayout>(c: &HotplugController<L>, uid: u32, event: u32, status: u32) {
    let v = u64::from(uid) | u64::from(event) << 16 | u64::from(status) << 32;
    c.mmio_write(MmioAddress(0), regs::OST, &v.to_le_bytes());
}
fn read_u32(page: &Page, at: u64) -> u32 {
    let p = page.lock().unwrap();
    let at = at as usize;
    u32::from_le_bytes(p[at..at + 4].try_into().unwrap())
}
fn read_u64(page: &Page, at: u64) -> u64 {
    let p = page.lock().unwrap();
    let at = at as usize;
    u64::from_le_bytes(p[at..at + 8].try_into().unwrap())
}
fn event(page: &Page) -> u32 {
    read_u32(page, page::EVENT)
}
fn cpu_sta(page: &Page, uid: u32) -> u8 {
    page.lock().unwrap()[(cpu::STA + u64::from(uid)) as usize]
}

#[test]
fn boot_cpus_are_present_others_absent() {
    let (_c, seen, page) = observed(CpuHotplugController::for_cpus(2, 8));
    assert_eq!(cpu_sta(&page, 0), page::STA_PRESENT);
    assert_eq!(cpu_sta(&page, 1), page::STA_PRESENT);
    for uid in 2..8 {
        assert_eq!(cpu_sta(&page, uid), page::STA_ABSENT);
    }
    assert_eq!(event(&page), page::NO_EVENT);
    assert!(seen.lock().unwrap().is_empty());
}

#[test]
fn insert_is_published_acknowledged_and_reported() {
    let (c, seen, page) = observed(CpuHotplugController::for_cpus(2, 8));
    c.update(5, |s| {
        s.enabled = true;
        s.inserting = true;
    });
    assert_eq!(event(&page), 5 | page::EVENT_INSERT);
    assert_eq!(cpu_sta(&page, 5), page::STA_PRESENT);
    w32(&c, regs::ACK_INSERT, 5);
    assert_eq!(event(&page), page::NO_EVENT);
    // A second acknowledgement clears nothing and is not reported again.
    w32(&c, regs::ACK_INSERT, 5);
    ost(&c, 5, 1, 0);
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        &[
            HotplugObservation::StatusRead { uid: 5 },
            HotplugObservation::Ost {
                uid: 5,
                event: 1,
                status: 0
            }
        ]
    );
    assert_eq!(
        c.slot(5),
        Some(HotplugSlotState {
            enabled: true,
            ..Default::default()
        })
    );
}

#[test]
fn ost_carries_uid_event_and_status_in_one_write() {
    let (c, seen, _) = observed(CpuHotplugController::for_cpus(2, 8));
    ost(&c, 3, 0x103, 0x84);
    ost(&c, 7, 3, u32::MAX);
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        &[
            HotplugObservation::Ost {
                uid: 3,
                event: 0x103,
                status: 0x84
            },
            HotplugObservation::Ost {
                uid: 7,
                event: 3,
                status: u32::MAX
            }
        ]
    );
}

#[test]
fn event_word_is_cyclic_after_the_last_acknowledged() {
    let (c, _, page) = observed(CpuHotplugController::for_cpus(2, 8));
    c.update(1, |s| s.removing = true);
    c.update(6, |s| s.inserting = true);
    c.update(3, |s| s.inserting = true);
    // Nothing acknowledged yet: from the first slot.
    assert_eq!(event(&page), 1 | page::EVENT_REMOVE);
    w32(&c, regs::ACK_INSERT, 3);
    assert_eq!(event(&page), 6 | page::EVENT_INSERT);
    c.update(3, |s| s.inserting = true);
    w32(&c, regs::ACK_INSERT, 6);
    // After 6: wraps round to 1 before 3.
    assert_eq!(event(&page), 1 | page::EVENT_REMOVE);
    w32(&c, regs::ACK_REMOVE, 1);
    assert_eq!(event(&page), 3 | page::EVENT_INSERT);
}

#[test]
fn eject_only_when_asked_to_leave() {
    let (c, seen, page) = observed(CpuHotplugController::for_cpus(2, 8));
    w32(&c, regs::EJECT, 1);
    assert!(
        c.slot(1).unwrap().enabled,
        "unrequested eject must be refused"
    );
    assert_eq!(event(&page), 1 | page::EVENT_INSERT, "offered again");
    w32(&c, regs::ACK_INSERT, 1);
    c.update(1, |s| {
        s.removing = true;
        s.eject_allowed = true;
    });
    w32(&c, regs::EJECT, 1);
    assert_eq!(c.slot(1), Some(HotplugSlotState::default()));
    assert_eq!(cpu_sta(&page, 1), page::STA_ABSENT);
    let seen = seen.lock().unwrap();
    assert!(seen.contains(&HotplugObservation::EjectRefused { uid: 1 }));
    assert!(seen.contains(&HotplugObservation::Ejected { uid: 1 }));
}

#[test]
fn hostile_accesses_are_ignored() {
    let (c, seen, page) = observed(CpuHotplugController::for_cpus(2, 8));
    let before = page.lock().unwrap().clone();
    w32(&c, regs::ACK_INSERT, 8);
    w32(&c, regs::EJECT, u32::MAX);
    ost(&c, 9, 1, 0);
    c.mmio_write(MmioAddress(0), regs::ACK_INSERT, &[1, 0]);
    c.mmio_write(MmioAddress(0), regs::OST, &[1, 0, 0, 0]);
    c.mmio_write(MmioAddress(0), 0x0c, &[0; 4]);
    c.mmio_write(MmioAddress(0), 0x1000, &[1]);
    c.mmio_write(MmioAddress(0), regs::EJECT, &[]);
    let mut wide = [0xffu8; 8];
    c.mmio_read(MmioAddress(0), regs::OST, &mut wide);
    assert_eq!(wide, [0; 8], "the registers are write-only");
    assert_eq!(*page.lock().unwrap(), before);
    assert!(seen.lock().unwrap().is_empty());
    assert_eq!(c.access_count(), 9);
}

#[test]
fn one_slot_controller_cannot_reach_other_state() {
    let (c, _, page) = observed(CpuHotplugController::for_cpus(1, 1));
    assert!(!c.update(1, |s| s.enabled = true));
    assert_eq!(c.slot(1), None);
    c.update(0, |s| s.inserting = true);
    assert_eq!(event(&page), page::EVENT_INSERT);
}

#[test]
fn memory_slots_start_at_one_and_publish_their_range() {
    let (m, seen, page) = observed(MemoryHotplugController::for_memory_slots(4));
    assert_eq!(
        m.slot(0),
        None,
        "slot 0 is boot memory, not a hotplug device"
    );
    let range = SlotRange {
        base: 0x1_2000_0000,
        length: 0x1000_0000,
        proximity: 3,
    };
    assert!(m.set_range(2, Some(range)));
    assert!(!m.set_range(0, None));
    assert!(!m.set_range(5, None));
    m.update(2, |s| {
        s.enabled = true;
        s.inserting = true;
    });
    let entry = mem::slot_entry(2).unwrap();
    assert_eq!(event(&page), 2 | page::EVENT_INSERT);
    assert_eq!(read_u64(&page, entry + mem::SLOT_BASE), range.base);
    assert_eq!(read_u64(&page, entry + mem::SLOT_LENGTH), range.length);
    assert_eq!(read_u32(&page, entry + mem::SLOT_PROXIMITY), 3);
    assert_eq!(
        page.lock().unwrap()[(entry + mem::SLOT_STA) as usize],
        page::STA_PRESENT
    );
    w32(&m, regs::ACK_INSERT, 2);
    ost(&m, 2, 1, 0);
    assert!(seen.lock().unwrap().contains(&HotplugObservation::Ost {
        uid: 2,
        event: 1,
        status: 0
    }));
    // An empty slot reads as absent and zero-length.
    let empty = mem::slot_entry(3).unwrap();
    assert_eq!(read_u64(&page, empty + mem::SLOT_LENGTH), 0);
    assert_eq!(
        page.lock().unwrap()[(empty + mem::SLOT_STA) as usize],
        page::STA_ABSENT
    );
    // UID 0 is no slot of this controller.
    w32(&m, regs::ACK_INSERT, 0);
    assert_eq!(seen.lock().unwrap().len(), 2);
}

#[test]
fn memory_eject_needs_a_pending_removal() {
    let (m, seen, _) = observed(MemoryHotplugController::for_memory_slots(2));
    m.update(1, |s| s.enabled = true);
    w32(&m, regs::EJECT, 1);
    assert!(m.slot(1).unwrap().enabled);
    assert!(m.slot(1).unwrap().inserting);
    w32(&m, regs::ACK_INSERT, 1);
    m.update(1, |s| {
        s.removing = true;
        s.eject_allowed = true;
    });
    w32(&m, regs::EJECT, 1);
    assert!(!m.slot(1).unwrap().enabled);
    assert_eq!(
        seen.lock().unwrap().last(),
        Some(&HotplugObservation::Ejected { uid: 1 })
    );
}

#[test]
fn withdrawing_a_removal_replugs_what_the_guest_ejected() {
    let (c, _, page) = observed(CpuHotplugController::for_cpus(3, 4));
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
    w32(&c, regs::EJECT, 2);
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
    assert_eq!(event(&page), 2 | page::EVENT_INSERT);
    assert_eq!(cpu_sta(&page, 2), page::STA_PRESENT);
    assert_eq!(c.withdraw_removal(9), None);
}

/// Whatever a guest writes and reads, in any order, width or offset, the controllers neither
/// panic nor break their invariants: the window always shows the controller's state, and
/// only slots asked to leave can be ejected.
#[test]
fn random_guest_accesses_never_break_the_controllers() {
    fn run<L: ControllerLayout>(c: HotplugController<L>, uids: std::ops::RangeInclusive<u32>) {
        let (c, _, page) = observed(c);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let first = *uids.start();
        // Slot `first` is present and may leave; the others are present and must stay.
        for uid in uids.clone() {
            c.update(uid, |s| s.enabled = true);
        }
        c.update(first, |s| s.eject_allowed = true);
        for _ in 0..20_000 {
            let r = next();
            let offset = r % 0x20;
            let len = [1usize, 2, 4, 8][(r >> 8) as usize % 4];
            // Mostly small values, so that the UIDs are often real ones.
            let value = if r & (1 << 41) == 0 {
                (r >> 16) % 12
            } else {
                r >> 16
            }
            .to_le_bytes();
            if r & (1 << 40) == 0 {
                c.mmio_write(MmioAddress(0), offset, &value[..len]);
            } else {
                let mut data = vec![0u8; len];
                c.mmio_read(MmioAddress(0), offset, &mut data);
            }
            assert_eq!(*page.lock().unwrap(), c.window_image());
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

    let err = refusal(regs::ACK_INSERT, &8u32.to_le_bytes());
    assert!(matches!(
        err,
        ControllerError::Register(RegisterError::UnknownSlot { uid: 8 })
    ));
    assert_eq!(err.to_string(), "UID 8 is not a hotplug slot");

    let err = refusal(regs::ACK_INSERT, &[1, 0]);
    assert!(matches!(err, ControllerError::BadWidth { len: 2, .. }));
    assert_eq!(
        err.to_string(),
        format!("2-byte write at offset {:#x}", regs::ACK_INSERT)
    );

    let err = refusal(regs::OST, &[0; 4]);
    assert!(matches!(err, ControllerError::BadWidth { len: 4, .. }));

    let err = refusal(0x0c, &[0; 4]);
    assert!(matches!(
        err,
        ControllerError::UnknownOffset { offset: 0x0c }
    ));
    assert_eq!(err.to_string(), "write to unknown offset 0xc");

    // CPU 5 is absent: ejecting it is refused, not turned into an observation.
    let err = refusal(regs::EJECT, &5u32.to_le_bytes());
    assert!(matches!(
        err,
        ControllerError::Register(RegisterError::EjectAbsent { uid: 5 })
    ));
    assert_eq!(err.to_string(), "eject of 5, which is not present");
}
