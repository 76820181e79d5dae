//! The event stream (`GET /api/v1/events`) against a real Debian guest: a resize seen event
//! by event in order, a guest's refusal and a timeout likewise, a reader that stops reading
//! does not delay a hotplug and learns how many events it missed, and a reader resuming with
//! `since` gets the same events again.

use std::time::Duration;

use plugvm_tests::event_stream::{EventCollector, EventStream, SseEvent};
use plugvm_tests::kvm_guest_test;
use plugvm_tests::session::{ConsoleKind, GuestSession};
use serde_json::{json, Value};

const READY_TIMEOUT: Duration = Duration::from_secs(240);
const CMD_TIMEOUT: Duration = Duration::from_secs(30);
const EVENT_TIMEOUT: Duration = Duration::from_secs(60);
const MIB: u64 = 1 << 20;

fn ended(tx: u64) -> impl Fn(&SseEvent) -> bool {
    move |e| e.event == "ended" && e.tx() == Some(tx)
}

/// The phases and guest answers of a transaction that committed, in order: `started`, the
/// three host phases, each device's `_OST` (after the wait began), `await_guest`, `commit`,
/// `ended`.
fn assert_committed_in_order(labels: &[String], devices: usize) {
    let head = [
        "started",
        "phase:validate",
        "phase:prepare",
        "phase:publish",
    ];
    assert_eq!(&labels[..4], head, "{labels:?}");
    let osts = labels.iter().filter(|l| *l == "ost:success").count();
    assert!(osts >= devices, "one _OST success per device: {labels:?}");
    let pos = |label: &str| labels.iter().position(|l| l == label);
    let (await_guest, commit, end) = (
        pos("phase:await_guest"),
        pos("phase:commit"),
        pos("ended:committed"),
    );
    assert!(
        await_guest.is_some() && commit > await_guest && end > commit,
        "{labels:?}"
    );
    let first_ost = pos("ost:success");
    assert!(first_ost > Some(3) && first_ost < commit, "{labels:?}");
    assert_eq!(
        labels.last().map(String::as_str),
        Some("ended:committed"),
        "{labels:?}"
    );
}

kvm_guest_test! {
    fn hotplug_is_seen_on_the_event_stream_as_it_happens() {
        let (s, _) = GuestSession::boot("boot=1,max=2", "size=512M,hotplug_size=512M", "", ConsoleKind::Stdio, &[], READY_TIMEOUT);
        let mut live = EventCollector::start(s.socket()).unwrap_or_else(|e| panic!("{e}"));
        // A reader that stops reading at once.
        let mut stalled = EventStream::open(s.socket(), None).unwrap_or_else(|e| panic!("{e}"));

        // Enough refused requests to overflow the stalled reader's socket and the event log.
        for _ in 0..3000 {
            let (status, _) = s.api_quiet("PUT", "vm.add-vcpu", Some(&json!({"id": 7})));
            assert_eq!(status, 422);
        }
        let refused = live.until(|e| e.event == "refused", EVENT_TIMEOUT);
        assert!(refused.iter().any(|e| e.data["data"]["error"].as_str().is_some_and(|m| !m.is_empty())));

        // A resize of both kinds: every step on the stream, in order, while a reader is stalled.
        let (status, answer) = s.api(
            "PUT",
            "vm.resize",
            Some(&json!({"desired_vcpus": 2, "desired_ram": 640 * MIB})),
        );
        assert_eq!(status, 200, "{answer}");
        let tx = answer["transaction"]["id"].as_u64().unwrap_or(0);
        live.until(ended(tx), EVENT_TIMEOUT);
        let labels = live.labels_of(tx);
        assert_committed_in_order(&labels, 2);
        let started = live.until(ended(tx), EVENT_TIMEOUT).into_iter().find(|e| e.tx() == Some(tx) && e.event == "started");
        let started = started.unwrap_or_else(|| panic!("no started event: {labels:?}"));
        assert_eq!(started.data["data"]["request"]["kind"], "resize", "{started:?}");
        assert_eq!(started.data["data"]["origin"], "host", "{started:?}");
        let osts: Vec<Value> = live
            .until(ended(tx), EVENT_TIMEOUT)
            .into_iter()
            .filter(|e| e.tx() == Some(tx) && e.event == "ost")
            .map(|e| e.data["data"]["device"].clone())
            .collect();
        assert!(osts.contains(&json!({"cpu": 1})) && osts.contains(&json!({"memory_slot": 1})), "{osts:?}");

        // The stalled reader (the resize did not wait for it): it missed events, is told how
        // many, and then gets the rest.
        let mut missed = 0;
        let mut resize_end = false;
        while !resize_end {
            let event = stalled
                .next(EVENT_TIMEOUT)
                .unwrap_or_else(|e| panic!("stalled reader: {e}"))
                .unwrap_or_else(|| panic!("the stream ended"));
            if event.event == "dropped" {
                missed += event.data["missed"].as_u64().unwrap_or(0);
            }
            resize_end = ended(tx)(&event);
        }
        assert!(missed > 0, "the stalled reader was not told what it missed");
        drop(stalled);

        // The guest refuses a removal: its _OST failure, the rollback, rolled_back.
        s.exec("echo 0 > /sys/firmware/acpi/hotplug/processor/enabled", CMD_TIMEOUT);
        let (status, answer) = s.api("PUT", "vm.remove-vcpu", Some(&json!({"id": 1})));
        assert_eq!(status, 502, "{answer}");
        let tx = answer["transaction"]["id"].as_u64().unwrap_or(0);
        live.until(ended(tx), EVENT_TIMEOUT);
        let labels = live.labels_of(tx);
        assert_eq!(&labels[..4], ["started", "phase:validate", "phase:prepare", "phase:publish"], "{labels:?}");
        assert!(labels.contains(&"ost:eject_not_supported".to_string()), "{labels:?}");
        assert!(labels.contains(&"phase:rollback".to_string()), "{labels:?}");
        assert_eq!(labels.last().map(String::as_str), Some("ended:rolled_back"), "{labels:?}");

        // No answer from the guest (its GED driver unbound): the deadline, the rollback.
        s.exec("echo ACPI0013:00 > /sys/bus/platform/drivers/acpi-ged/unbind", CMD_TIMEOUT);
        let (status, answer) = s.api("PUT", "vm.add-memory", Some(&json!({"size": 128 * MIB})));
        assert_eq!(status, 504, "{answer}");
        let tx = answer["transaction"]["id"].as_u64().unwrap_or(0);
        let seen = live.until(ended(tx), EVENT_TIMEOUT);
        let labels = live.labels_of(tx);
        assert!(!labels.iter().any(|l| l.starts_with("ost")), "{labels:?}");
        assert!(labels.contains(&"phase:rollback".to_string()), "{labels:?}");
        assert_eq!(labels.last().map(String::as_str), Some("ended:rolled_back"), "{labels:?}");
        let end = seen.iter().find(|e| e.event == "ended" && e.tx() == Some(tx));
        let reason = end.map(|e| e.data["data"]["outcome"]["devices"][0]["reason"]["kind"].clone());
        assert_eq!(reason, Some(json!("timeout")), "{end:?}");

        // Resuming after an event id gives the same events again.
        let first = seen.iter().find(|e| e.tx() == Some(tx)).and_then(|e| e.id).unwrap_or(1);
        let mut again = EventStream::open(s.socket(), Some(first - 1)).unwrap_or_else(|e| panic!("{e}"));
        let mut resumed = Vec::new();
        while resumed.last().is_none_or(|e: &SseEvent| !ended(tx)(e)) {
            match again.next(EVENT_TIMEOUT) {
                Ok(Some(e)) => resumed.push(e),
                other => panic!("resumed stream: {other:?}"),
            }
        }
        let resumed: Vec<String> = resumed.iter().filter(|e| e.tx() == Some(tx) && e.event != "status_read").map(SseEvent::label).collect();
        assert_eq!(resumed, labels);
        assert_eq!(s.shutdown(), Some(0));
    }
}
