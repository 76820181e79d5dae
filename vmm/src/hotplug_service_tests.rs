//! Tests of the hotplug service: guest events against deadlines, hooks, the journal stream.
use super::*;
use crate::guest_observations::OBSERVATION_QUEUE;
use hotplug::{CpuId, DeviceId};
use std::sync::mpsc::channel;
use std::sync::Mutex;

fn cpu1() -> DeviceId {
    DeviceId::Cpu(CpuId(1))
}

/// Linux's answer to an eject request: `_OST(3, 0x84)`, `_EJ0`, `_OST(3, 0)`.
fn guest_ejects(tx: &ObservationSender) {
    tx.send(GuestObservation::new(cpu1(), GuestEvent::ost(3, 0x84)));
    tx.send(GuestObservation::new(cpu1(), GuestEvent::Eject));
    tx.send(GuestObservation::new(cpu1(), GuestEvent::ost(3, 0)));
}

#[test]
fn an_ej0_received_before_the_deadline_is_judged_wins() {
    let (mut s, tx, clock) = test_service();
    let (respond, answer) = channel();
    s.request(Request::RemoveCpu { id: 1 }, true, respond);
    let deadline = s.time_to_deadline().unwrap();
    // The guest answers; then, before the loop runs, the deadline passes too: the timer
    // and the observations wake the loop in the same instant.
    guest_ejects(&tx);
    clock.advance(deadline + Duration::from_millis(1));
    s.step();
    let response = answer.try_recv().unwrap();
    assert_eq!(response.status, 200, "{:?}", response.body);
    assert!(!s.in_flight());
}

#[test]
fn a_deadline_judged_before_the_ej0_arrived_wins() {
    let (mut s, tx, clock) = test_service();
    let (respond, answer) = channel();
    s.request(Request::RemoveCpu { id: 1 }, true, respond);
    clock.advance(s.time_to_deadline().unwrap() + Duration::from_millis(1));
    s.step();
    assert_eq!(answer.try_recv().unwrap().status, 504);
    // Too late: the removal was rolled back, and a late `_EJ0` does not revive it.
    guest_ejects(&tx);
    s.step();
    assert!(answer.try_recv().is_err());
    assert!(!s.in_flight());
}

#[test]
fn the_eject_hook_hears_of_an_ej0_before_the_engine_commits() {
    let (mut s, tx, _) = test_service();
    let heard = Arc::new(Mutex::new(Vec::new()));
    let h = heard.clone();
    s.on_guest_eject(Box::new(move |d| h.lock().unwrap().push(d)));
    let (respond, answer) = channel();
    s.request(Request::RemoveCpu { id: 1 }, true, respond);
    guest_ejects(&tx);
    s.step();
    assert_eq!(answer.try_recv().unwrap().status, 200);
    assert_eq!(*heard.lock().unwrap(), [cpu1()]);
}

/// Every event of `log` so far, as its SSE data line would carry it.
fn events(log: &EventLog) -> Vec<serde_json::Value> {
    log.read_from(1, Duration::ZERO)
        .map(|b| b.events.iter().map(|e| json!(e.as_ref())).collect())
        .unwrap_or_default()
}

#[test]
fn the_journal_becomes_events_in_order_with_why_a_transaction_failed() {
    let (mut s, tx, clock) = test_service();
    let log = Arc::new(EventLog::new(clock.clone()));
    s.stream_to(log.clone());
    // Added and accepted by the guest.
    let (respond, answer) = channel();
    s.request(Request::AddCpu { id: Some(2) }, true, respond);
    clock.advance(Duration::from_millis(3));
    tx.send(GuestObservation::new(
        DeviceId::cpu(2),
        GuestEvent::StatusRead,
    ));
    tx.send(GuestObservation::new(
        DeviceId::cpu(2),
        GuestEvent::ost(1, 0),
    ));
    s.step();
    assert_eq!(answer.try_recv().unwrap().status, 200);
    // Removed, refused by the guest: device busy.
    let (respond, answer) = channel();
    s.request(Request::RemoveCpu { id: 1 }, true, respond);
    clock.advance(Duration::from_millis(5));
    tx.send(GuestObservation::new(cpu1(), GuestEvent::ost(3, 0x82)));
    s.step();
    assert_eq!(answer.try_recv().unwrap().status, 502);
    // Refused before it began.
    let (respond, _answer) = channel();
    s.request(Request::RemoveCpu { id: 0 }, true, respond);

    let events = events(&log);
    if std::env::var_os("PLUGVM_PRINT_EVENTS").is_some() {
        for e in &events {
            println!("{e}");
        }
    }
    let names: Vec<String> = events
        .iter()
        .map(|e| format!("{} {} {}", e["tx"], e["source"], e["event"]).replace('"', ""))
        .collect();
    assert_eq!(
        names,
        [
            "1 hotplug started",
            "1 hotplug phase",
            "1 hotplug phase",
            "1 hotplug phase",
            "1 guest status_read",
            "1 guest ost",
            "1 hotplug phase",
            "1 hotplug phase",
            "1 hotplug ended",
            "2 hotplug started",
            "2 hotplug phase",
            "2 hotplug phase",
            "2 hotplug phase",
            "2 guest ost",
            "2 hotplug error",
            "2 hotplug phase",
            "2 hotplug phase",
            "2 hotplug ended",
            "null hotplug refused",
        ]
    );
    let phases: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "phase")
        .filter_map(|e| e["data"]["phase"].as_str())
        .collect();
    assert_eq!(
        phases,
        [
            "validate",
            "prepare",
            "publish",
            "await_guest",
            "commit",
            "validate",
            "prepare",
            "publish",
            "await_guest",
            "rollback"
        ]
    );
    let ost = &events[5]["data"];
    assert_eq!(events[5]["at_us"], 3000);
    assert_eq!(ost["device"], json!({"cpu": 2}));
    assert_eq!(ost["kind"], "ost");
    assert_eq!(ost["status"]["name"], "success");
    assert_eq!(events[8]["data"]["status"], "committed");
    assert!(events[8]["data"].get("reason").is_none(), "{}", events[8]);
    assert_eq!(events[17]["data"]["status"], "rolled_back");
    assert_eq!(
        events[17]["data"]["reason"],
        "cpu 1: guest refused: _OST(0x3 eject_request, 0x82 device_busy)"
    );
}

#[test]
fn a_transactions_log_lines_are_in_its_span() {
    let lines = crate::logging::capture::json_lines("info", || {
        let (mut s, tx, _clock) = test_service();
        let (respond, _answer) = channel();
        s.request(Request::RemoveCpu { id: 1 }, true, respond);
        guest_ejects(&tx);
        s.step();
    });
    let in_tx: Vec<&serde_json::Value> =
        lines.iter().filter(|l| l["span"]["name"] == "tx").collect();
    let messages: Vec<&str> = in_tx
        .iter()
        .filter_map(|l| l["fields"]["message"].as_str())
        .collect();
    assert_eq!(
        messages,
        [
            "hotplug transaction started",
            "the guest answered",
            "the guest ejected the device (_EJ0)",
            "the guest answered",
            "hotplug transaction ended"
        ],
        "{lines:?}"
    );
    for line in in_tx {
        assert_eq!(line["span"]["id"], 1, "{line}");
        assert_eq!(line["span"]["kind"], "remove_cpu", "{line}");
    }
}

#[test]
fn a_guest_ejecting_again_and_again_does_not_flood_the_log() {
    let lines = crate::logging::capture::json_lines("warn", || {
        let (mut s, tx, _clock) = test_service();
        for _ in 0..200 {
            tx.send(GuestObservation::new(cpu1(), GuestEvent::Eject));
            s.step();
        }
    });
    // Only the rate-limited warning of `finish`, in each refused transaction's span.
    assert_eq!(lines.len(), REFUSED_EJECT_LOG_BURST as usize, "{lines:?}");
    for line in &lines {
        assert_eq!(line["span"]["kind"], "remove_cpu", "{line}");
    }
}

#[test]
fn the_observation_queue_is_bounded_and_counts_what_it_drops() {
    let (s, tx, _) = test_service();
    for _ in 0..OBSERVATION_QUEUE + 10 {
        tx.send(GuestObservation::new(cpu1(), GuestEvent::StatusRead));
    }
    assert_eq!(s.dropped_observations(), 10);
}

#[test]
fn paused_refuses_and_shutdown_answers_every_waiter() {
    let (mut s, _tx, _) = test_service();
    s.set_paused(true);
    let (respond, answer) = channel();
    s.request(Request::AddCpu { id: None }, true, respond);
    let refused = answer.try_recv().unwrap();
    assert_eq!(refused.status, 409);
    assert!(
        refused.body.to_string().contains("paused"),
        "{:?}",
        refused.body
    );
    s.set_paused(false);

    let (respond, answer) = channel();
    s.request(Request::AddCpu { id: None }, true, respond);
    assert!(s.in_flight());
    assert!(answer.try_recv().is_err(), "answered before the guest did");
    s.abandon_waiters("the VM is shutting down");
    let r = answer.try_recv().unwrap();
    assert_eq!(r.status, 503);
    assert!(r.json()["transaction"]["id"].is_u64(), "{:?}", r);
}
