//! A hostile guest cannot make the engine keep unbounded state, nor evict the host's
//! records: each bound of the journal and of the records is hit here.

mod common;

use common::Rig;
use hotplug::{
    DeviceId, Directive, EngineConfig, GuestEvent, Origin, OstStatus, Request, TxId, TxRecord,
    TxStatus, MAX_GUEST_EVENTS, MAX_GUEST_RECORDS, MAX_NOTES,
};

/// The JSON bound of a single-device record, whatever the guest does (docs/hotplug-framework.md,
/// "Bounds").
const MAX_SINGLE_DEVICE_RECORD_JSON: usize = 16 * 1024;

/// The JSON bound of a full journal of single-device records with the default capacity
/// (256 host + 32 guest records).
const MAX_DEFAULT_JOURNAL_JSON: usize = (256 + MAX_GUEST_RECORDS) * MAX_SINGLE_DEVICE_RECORD_JSON;

fn refuse(device: DeviceId, tx: TxId) -> Directive {
    Directive::RefuseEject {
        device,
        tx,
        status: OstStatus::EjectNotSupported,
    }
}

/// A host transaction the guest refuses: one host record.
fn host_record(rig: &mut Rig) -> TxId {
    let id = rig
        .engine
        .begin(Request::AddCpu { id: Some(1) })
        .unwrap()
        .id;
    let r = rig
        .engine
        .guest_event(DeviceId::cpu(1), GuestEvent::ost(1, 1));
    assert_eq!(r.completed[0].outcome.status, TxStatus::RolledBack);
    id
}

/// One refused guest eject of vCPU 0, episode closed by the guest's failure `_OST`.
fn refused_guest_eject(rig: &mut Rig) -> TxId {
    let cpu0 = DeviceId::cpu(0);
    let r = rig.engine.guest_event(cpu0, GuestEvent::ost(0x103, 0x84));
    let id = r.completed[0].id;
    assert_eq!(r.directives, vec![refuse(cpu0, id)]);
    assert!(rig
        .engine
        .guest_event(cpu0, GuestEvent::ost(0x103, 1))
        .is_empty());
    id
}

#[test]
fn six_hundred_refused_guest_ejects_leave_every_host_record_in_place() {
    let mut rig = Rig::new(EngineConfig::default());
    let host: Vec<TxId> = (0..19).map(|_| host_record(&mut rig)).collect();
    let guest: Vec<TxId> = (0..600).map(|_| refused_guest_eject(&mut rig)).collect();

    for id in &host {
        assert_eq!(rig.engine.transaction(*id).unwrap().origin, Origin::Host);
    }
    let stats = rig.engine.journal().stats();
    assert_eq!((stats.host_records, stats.evicted_host), (19, 0));
    assert_eq!(stats.guest_records, MAX_GUEST_RECORDS);
    assert_eq!(stats.evicted_guest, (600 - MAX_GUEST_RECORDS) as u64);
    // The newest guest records are kept.
    let kept: Vec<TxId> = rig
        .engine
        .records()
        .filter(|r| r.origin == Origin::Guest)
        .map(|r| r.id)
        .collect();
    assert_eq!(kept, guest[600 - MAX_GUEST_RECORDS..]);
    assert_eq!(rig.engine.records().count(), 19 + MAX_GUEST_RECORDS);
    rig.assert_consistent();
}

#[test]
fn a_repeated_guest_eject_is_refused_within_one_record() {
    let mut rig = Rig::new(EngineConfig::default());
    let cpu0 = DeviceId::cpu(0);
    // The probe: vCPU 0 selected, `_OST(0x103, 0x84)` written 600 times.
    let first = rig.engine.guest_event(cpu0, GuestEvent::ost(0x103, 0x84));
    let tx = first.completed[0].id;
    for _ in 1..600 {
        let r = rig.engine.guest_event(cpu0, GuestEvent::ost(0x103, 0x84));
        assert!(r.completed.is_empty());
        assert_eq!(r.directives, vec![refuse(cpu0, tx)]);
    }
    assert_eq!(rig.engine.journal().len(), 1);
    let rec = rig.engine.transaction(tx).unwrap();
    assert_eq!(rec.guest_events.len(), MAX_GUEST_EVENTS);
    assert_eq!(rec.dropped_guest_events, (600 - MAX_GUEST_EVENTS) as u64);
    let json = serde_json::to_value(rec).unwrap();
    assert_eq!(json["dropped_guest_events"], 600 - MAX_GUEST_EVENTS);

    // Once the guest closes the episode, a new attempt is a new record.
    rig.engine.guest_event(cpu0, GuestEvent::ost(0x103, 1));
    let again = rig.engine.guest_event(cpu0, GuestEvent::ost(0x103, 0x84));
    assert_ne!(again.completed[0].id, tx);
    assert_eq!(rig.engine.journal().len(), 2);
}

#[test]
fn a_repeat_whose_episode_record_was_evicted_opens_a_new_record() {
    let config = EngineConfig {
        journal_capacity: 1,
        ..EngineConfig::default()
    };
    let mut rig = Rig::new(config);
    assert_eq!(rig.engine.journal().guest_capacity(), 1);
    rig.engine.begin(Request::AddCpu { id: Some(1) }).unwrap();
    rig.engine
        .guest_event(DeviceId::cpu(1), GuestEvent::ost(1, 0));
    let (cpu0, cpu1) = (DeviceId::cpu(0), DeviceId::cpu(1));
    let a = rig
        .engine
        .guest_event(cpu0, GuestEvent::ost(0x103, 0x84))
        .completed[0]
        .id;
    // vCPU 1's refusal evicts vCPU 0's (guest quota 1), the host record stays.
    let b = rig
        .engine
        .guest_event(cpu1, GuestEvent::ost(0x103, 0x84))
        .completed[0]
        .id;
    assert!(rig.engine.transaction(a).is_none());
    assert_eq!(rig.engine.journal().stats().host_records, 1);
    let r = rig.engine.guest_event(cpu0, GuestEvent::ost(0x103, 0x84));
    let c = r.completed[0].id;
    assert!(c != a && c != b);
    assert_eq!(r.directives, vec![refuse(cpu0, c)]);
    // The new episode is open: `_EJ0` is refused within it.
    let r = rig.engine.guest_event(cpu0, GuestEvent::Eject);
    assert_eq!(r.directives, vec![refuse(cpu0, c)]);
    assert_eq!(rig.engine.transaction(c).unwrap().guest_events.len(), 2);
    assert_eq!(rig.engine.machine().present_cpus(), vec![0, 1]);
}

fn json_len(r: &TxRecord) -> usize {
    serde_json::to_vec(r).unwrap().len()
}

#[test]
fn a_hostile_guest_cannot_grow_the_journal_json_beyond_its_bound() {
    let mut rig = Rig::new(EngineConfig::default());
    let cpu1 = DeviceId::cpu(1);
    // 256 host records, each with 255 distinct ignored `_OST`s with the longest codes there
    // are: every one would be a note and a guest event without the bounds.
    for _ in 0..128 {
        rig.engine.begin(Request::AddCpu { id: Some(1) }).unwrap();
        for n in 0..255 {
            rig.engine
                .guest_event(cpu1, GuestEvent::ost(u32::MAX - n, u32::MAX - n));
        }
        let r = rig.engine.guest_event(cpu1, GuestEvent::ost(1, 0));
        assert_eq!(r.completed[0].outcome.status, TxStatus::Committed);
        let d = &r.completed[0].outcome.devices[0];
        assert_eq!(d.notes.len(), MAX_NOTES);
        assert_eq!(d.dropped_notes, 255 - MAX_NOTES as u64);

        rig.engine.begin(Request::RemoveCpu { id: 1 }).unwrap();
        for n in 0..255 {
            rig.engine
                .guest_event(cpu1, GuestEvent::ost(u32::MAX - n, u32::MAX));
        }
        rig.engine.guest_event(cpu1, GuestEvent::Eject);
        let r = rig.engine.guest_event(cpu1, GuestEvent::ost(3, 0));
        assert_eq!(r.completed[0].outcome.status, TxStatus::Committed);
    }
    // 600 refused guest ejects, each episode stuffed with 255 events.
    let cpu0 = DeviceId::cpu(0);
    for _ in 0..600 {
        rig.engine.guest_event(cpu0, GuestEvent::ost(0x103, 0x84));
        for _ in 0..255 {
            rig.engine.guest_event(cpu0, GuestEvent::Eject);
        }
        rig.engine.guest_event(cpu0, GuestEvent::ost(0x103, 1));
    }

    let stats = rig.engine.journal().stats();
    assert_eq!(
        (stats.host_records, stats.guest_records),
        (256, MAX_GUEST_RECORDS)
    );
    let mut total = 0;
    for r in rig.engine.records() {
        assert!(r.guest_events.len() <= MAX_GUEST_EVENTS);
        assert!(r.dropped_guest_events > 0, "{}", r.id);
        let len = json_len(r);
        assert!(
            len <= MAX_SINGLE_DEVICE_RECORD_JSON,
            "{} is {len} bytes of JSON",
            r.id
        );
        total += len;
    }
    let listing: Vec<&TxRecord> = rig.engine.records().collect();
    let listing = serde_json::to_vec(&listing).unwrap().len();
    assert!(listing <= MAX_DEFAULT_JOURNAL_JSON, "{listing} bytes");
    assert!(total <= listing);
    rig.assert_consistent();
}
