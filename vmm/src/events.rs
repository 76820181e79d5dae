//! The event stream: every hotplug phase, guest answer and VM lifecycle change, as it
//! happens, for `GET /api/v1/events` (Server-Sent Events) and `--event-monitor`.
//!
//! Events go into a bounded ring ([`EventLog`]) that the VMM appends to without ever waiting
//! for a reader: each reader (an API connection, the monitor's writer thread) keeps its own
//! position, and one that falls more than [`EVENT_LOG_CAPACITY`] events behind loses the
//! oldest and is told how many ([`ReadBatch::missed`]).

use std::collections::VecDeque;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use hotplug::Clock;
use serde::Serialize;
use serde_json::{json, Value};

/// Events kept for readers that are behind.
pub const EVENT_LOG_CAPACITY: usize = 1024;

/// One event. `id`s start at 1 and have no gaps; `at_us` is on the journal's clock
/// (microseconds since the VMM started).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    /// Position in the stream.
    pub id: u64,
    /// When, microseconds since the VMM started.
    pub at_us: u64,
    /// What it is about: `vmm`, `vm`, `hotplug` (a transaction) or `guest` (what the guest
    /// did in one).
    pub source: &'static str,
    /// What happened, e.g. `booted`, `phase`, `ost`.
    pub event: &'static str,
    /// The transaction, for hotplug and guest events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tx: Option<u64>,
    /// Details; an object.
    pub data: Value,
}

/// What a reader got: the events from its position on, and how many it missed because it
/// was too far behind.
#[derive(Debug, Default)]
pub struct ReadBatch {
    /// Events, oldest first.
    pub events: Vec<Arc<Event>>,
    /// Events lost before `events` (the reader was more than the log's capacity behind).
    pub missed: u64,
    /// The position to read from next.
    pub next: u64,
}

struct Ring {
    events: VecDeque<Arc<Event>>,
    next_id: u64,
    closed: bool,
}

/// The bounded event log shared by the VMM and its readers.
pub struct EventLog {
    ring: Mutex<Ring>,
    arrived: Condvar,
    clock: Arc<dyn Clock>,
    capacity: usize,
    /// Events readers missed, summed over every read.
    dropped: AtomicU64,
}

impl std::fmt::Debug for EventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLog").finish_non_exhaustive()
    }
}

impl EventLog {
    /// An empty log on `clock`, keeping [`EVENT_LOG_CAPACITY`] events.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self::with_capacity(clock, EVENT_LOG_CAPACITY)
    }

    /// An empty log keeping `capacity` events (at least 1).
    pub fn with_capacity(clock: Arc<dyn Clock>, capacity: usize) -> Self {
        EventLog {
            ring: Mutex::new(Ring {
                events: VecDeque::new(),
                next_id: 1,
                closed: false,
            }),
            arrived: Condvar::new(),
            clock,
            capacity: capacity.max(1),
            dropped: AtomicU64::new(0),
        }
    }

    /// Appends an event; never waits for a reader.
    pub fn publish(&self, source: &'static str, event: &'static str, tx: Option<u64>, data: Value) {
        let at_us = self.clock.now().as_micros();
        let Ok(mut ring) = self.ring.lock() else {
            return;
        };
        let id = ring.next_id;
        ring.next_id += 1;
        if ring.events.len() == self.capacity {
            ring.events.pop_front();
        }
        ring.events.push_back(Arc::new(Event {
            id,
            at_us,
            source,
            event,
            tx,
            data,
        }));
        drop(ring);
        self.arrived.notify_all();
    }

    /// Ends every reader's wait: no event comes after this (the VMM is ending).
    pub fn close(&self) {
        if let Ok(mut ring) = self.ring.lock() {
            ring.closed = true;
        }
        self.arrived.notify_all();
    }

    /// The id the next event will have.
    pub fn next_id(&self) -> u64 {
        self.ring.lock().map_or(1, |r| r.next_id)
    }

    /// The events from id `from` on, waiting up to `wait` for one if there is none yet.
    /// `None` once the log is closed and `from` is past its end.
    pub fn read_from(&self, from: u64, wait: Duration) -> Option<ReadBatch> {
        let Ok(mut ring) = self.ring.lock() else {
            return None;
        };
        if ring.next_id <= from && !ring.closed {
            ring = match self
                .arrived
                .wait_timeout_while(ring, wait, |r| r.next_id <= from && !r.closed)
            {
                Ok((ring, _)) => ring,
                Err(_) => return None,
            };
        }
        if ring.closed && ring.next_id <= from {
            return None;
        }
        let oldest = ring.events.front().map_or(ring.next_id, |e| e.id);
        let start = from.max(oldest);
        let skip = usize::try_from(start - oldest).unwrap_or(usize::MAX);
        let missed = start.saturating_sub(from.max(1));
        if missed > 0 {
            self.dropped.fetch_add(missed, Ordering::Relaxed);
        }
        Some(ReadBatch {
            events: ring.events.iter().skip(skip).cloned().collect(),
            missed,
            next: ring.next_id,
        })
    }

    /// Events that readers missed (each reader's [`ReadBatch::missed`], summed): the VMM's
    /// whole life long.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl Event {
    /// The event in Cloud Hypervisor's event-monitor format: `timestamp` (seconds and
    /// nanoseconds since the VMM started), `source`, `event` and `properties` (strings).
    pub fn cloud_hypervisor_json(&self) -> Value {
        let mut properties = serde_json::Map::new();
        properties.insert("id".into(), json!(self.id.to_string()));
        if let Some(tx) = self.tx {
            properties.insert("tx".into(), json!(tx.to_string()));
        }
        if let Value::Object(data) = &self.data {
            for (k, v) in data {
                let text = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                properties.insert(k.clone(), json!(text));
            }
        }
        json!({
            "timestamp": {
                "secs": self.at_us / 1_000_000,
                "nanos": (self.at_us % 1_000_000) * 1_000,
            },
            "source": self.source,
            "event": self.event,
            "properties": properties,
        })
    }
}

/// Writes every event to `out` in Cloud Hypervisor's event-monitor format (pretty JSON,
/// a blank line after each), on a thread of its own, until the log closes. A writer that
/// falls behind loses events and writes a `dropped` event saying how many.
pub fn spawn_monitor(
    log: Arc<EventLog>,
    mut out: Box<dyn Write + Send>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("event-monitor".into())
        .spawn(move || {
            let mut next = 1;
            while let Some(batch) = log.read_from(next, Duration::from_secs(1)) {
                next = batch.next;
                let mut text = String::new();
                if batch.missed > 0 {
                    let dropped = json!({
                        "timestamp": {"secs": 0, "nanos": 0},
                        "source": "vmm",
                        "event": "dropped",
                        "properties": {"missed": batch.missed.to_string()},
                    });
                    text.push_str(&format!("{dropped:#}\n\n"));
                }
                for event in &batch.events {
                    text.push_str(&format!("{:#}\n\n", event.cloud_hypervisor_json()));
                }
                if !text.is_empty()
                    && (out.write_all(text.as_bytes()).is_err() || out.flush().is_err())
                {
                    tracing::warn!("the event monitor's output failed; no more events go there");
                    return;
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hotplug::FakeClock;

    fn log(capacity: usize) -> (Arc<EventLog>, Arc<FakeClock>) {
        let clock = Arc::new(FakeClock::new());
        (
            Arc::new(EventLog::with_capacity(clock.clone(), capacity)),
            clock,
        )
    }

    #[test]
    fn readers_get_events_in_order_from_their_position() {
        let (log, clock) = log(8);
        clock.advance(Duration::from_micros(5));
        log.publish("vm", "booted", None, json!({}));
        log.publish("hotplug", "phase", Some(1), json!({"phase": "prepare"}));
        let batch = log.read_from(1, Duration::ZERO).unwrap();
        assert_eq!(batch.events.len(), 2);
        assert_eq!((batch.events[0].id, batch.events[0].at_us), (1, 5));
        assert_eq!(batch.events[1].tx, Some(1));
        assert_eq!((batch.missed, batch.next), (0, 3));
        let later = log.read_from(2, Duration::ZERO).unwrap();
        assert_eq!(later.events.len(), 1);
        assert_eq!(later.events[0].id, 2);
        assert!(log.read_from(3, Duration::ZERO).unwrap().events.is_empty());
    }

    #[test]
    fn a_reader_too_far_behind_is_told_what_it_missed() {
        let (log, _) = log(4);
        for _ in 0..10 {
            log.publish("vm", "paused", None, json!({}));
        }
        assert_eq!(log.dropped(), 0);
        let batch = log.read_from(1, Duration::ZERO).unwrap();
        assert_eq!(batch.missed, 6);
        assert_eq!(batch.events.first().map(|e| e.id), Some(7));
        assert_eq!(batch.next, 11);
        assert_eq!(log.dropped(), 6);
        // Another reader as far behind adds its own; one that keeps up adds nothing.
        assert_eq!(log.read_from(3, Duration::ZERO).unwrap().missed, 4);
        assert_eq!(log.read_from(11, Duration::ZERO).unwrap().missed, 0);
        assert_eq!(log.dropped(), 10);
    }

    #[test]
    fn a_waiting_reader_wakes_on_an_event_and_on_close() {
        let (log, _) = log(4);
        let reader = {
            let log = log.clone();
            std::thread::spawn(move || {
                log.read_from(1, Duration::from_secs(10))
                    .map(|b| b.events.len())
            })
        };
        std::thread::sleep(Duration::from_millis(20));
        log.publish("vm", "resumed", None, json!({}));
        assert_eq!(reader.join().unwrap(), Some(1));
        let reader = {
            let log = log.clone();
            std::thread::spawn(move || log.read_from(2, Duration::from_secs(10)).is_none())
        };
        std::thread::sleep(Duration::from_millis(20));
        log.close();
        assert!(reader.join().unwrap());
    }

    #[test]
    fn the_monitor_format_is_cloud_hypervisors() {
        let (log, clock) = log(4);
        clock.advance(Duration::from_micros(1_500_001));
        log.publish(
            "hotplug",
            "ost",
            Some(3),
            json!({"device": "cpu 1", "status": 0}),
        );
        let batch = log.read_from(1, Duration::ZERO).unwrap();
        let ch = batch.events[0].cloud_hypervisor_json();
        assert_eq!(ch["timestamp"], json!({"secs": 1, "nanos": 500_001_000}));
        assert_eq!(ch["source"], "hotplug");
        assert_eq!(ch["event"], "ost");
        assert_eq!(ch["properties"]["tx"], "3");
        assert_eq!(ch["properties"]["status"], "0");
        assert_eq!(ch["properties"]["device"], "cpu 1");
    }
}
