//! Follows the hotplug journal and turns what it gains into log lines (in each transaction's
//! span) and events (see [`crate::events`]), for [`crate::hotplug_service::HotplugService`].

use std::collections::BTreeMap;
use std::sync::Arc;

use hotplug::{DeviceId, DeviceResult, Engine, FailureReason, Request, TxId};
use serde_json::json;

use crate::events::EventLog;
use crate::metrics::request_kind;

/// Follows the journal: what each open transaction gained since the last look (its start,
/// phases, guest events, errors and end) is logged, in the transaction's span
/// `tx{id=N kind=...}`, and published as events when there is an event log.
pub(crate) struct JournalStream {
    pub(crate) log: Option<Arc<EventLog>>,
    /// Open transactions: phases, guest events and errors already seen.
    open: BTreeMap<TxId, (usize, usize, usize)>,
    /// The lowest transaction id not seen yet.
    next: u64,
}

/// Logs at `$level` for a host-initiated transaction, at debug for a guest-initiated one
/// (`$guest`): a guest can start any number of (refused) ejects, and must not be able to flood
/// the log with them; `finish` warns of refused ejects, rate-limited.
macro_rules! tx_log {
    ($guest:expr, $level:ident, $($arg:tt)+) => {
        if $guest {
            tracing::debug!($($arg)+)
        } else {
            tracing::$level!($($arg)+)
        }
    };
}

/// One thing a transaction's record gained, in time order.
enum Gained<'a> {
    Phase(&'a hotplug::PhaseRecord),
    Guest(&'a hotplug::GuestEventRecord),
    Error(&'a hotplug::ErrorRecord),
}

impl Gained<'_> {
    /// Where it goes in the transaction's story: a phase when it ended (an `await_guest`
    /// episode starts long before the guest answer that ends it); at the same instant, what
    /// the guest did comes first, then the error it caused, then the phase that ended.
    fn order(&self) -> (u64, u8) {
        match self {
            Gained::Guest(g) => (g.at_us, 0),
            Gained::Error(e) => (e.at_us, 1),
            Gained::Phase(p) => (p.ended_us, 2),
        }
    }

    /// Logs it (in the caller's span; `guest`: of a guest-initiated transaction) and gives its
    /// event: source, name and data.
    fn log(&self, guest: bool) -> (&'static str, &'static str, serde_json::Value) {
        match self {
            Gained::Phase(p) => {
                let devices = device_list(&p.devices);
                if p.ok {
                    tracing::debug!(phase = p.phase.name(), %devices, us = p.duration_us, "hotplug phase done");
                } else {
                    tx_log!(guest, info, phase = p.phase.name(), %devices, us = p.duration_us, "hotplug phase failed");
                }
                ("hotplug", "phase", json!(p))
            }
            Gained::Guest(g) => {
                let name = match g.event {
                    hotplug::GuestEventKind::Ost { ost } => {
                        tx_log!(guest, info, device = %g.device, %ost, "the guest answered");
                        "ost"
                    }
                    hotplug::GuestEventKind::Eject => {
                        tx_log!(guest, info, device = %g.device, "the guest ejected the device (_EJ0)");
                        "eject"
                    }
                    hotplug::GuestEventKind::StatusRead => {
                        tracing::debug!(device = %g.device, "the guest read the device's status");
                        "status_read"
                    }
                };
                ("guest", name, json!(g))
            }
            Gained::Error(e) => {
                let error = e.error.join(": ");
                tx_log!(
                    guest,
                    warn,
                    step = e.step,
                    device = e.device.map(tracing::field::display),
                    participant = e.participant.as_deref(),
                    "hotplug error: {error}"
                );
                ("hotplug", "error", json!(e))
            }
        }
    }
}

fn device_list(devices: &[DeviceId]) -> String {
    devices
        .iter()
        .map(DeviceId::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A value's name in the API's JSON (`rolled_back`, `all_or_nothing`), for log fields that
/// read like the events and the journal.
fn api_name<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => name,
        Ok(other) => other.to_string(),
        Err(_) => "?".to_string(),
    }
}

/// The span a transaction's log lines are in: JSON logs carry its id and kind in `span`.
/// At error level so that it is on whenever a line of the transaction is logged at all: an
/// info span would be filtered out under the default `RUST_LOG` (warn), and its warnings would
/// lose it.
pub(crate) fn tx_span(id: TxId, request: &Request) -> tracing::Span {
    tracing::error_span!("tx", id = id.0, kind = request_kind(request))
}

/// The device to blame for a transaction that did not commit, and why: the first failure
/// that is not a batch abort (which only echoes another device's failure).
pub(crate) fn failure(outcome: &hotplug::TxOutcome) -> Option<(DeviceId, &FailureReason)> {
    outcome
        .devices
        .iter()
        .filter_map(|d| match &d.result {
            DeviceResult::Committed => None,
            DeviceResult::RolledBack { reason } | DeviceResult::Rejected { reason } => {
                Some((d.device, reason))
            }
        })
        // The device that caused a batch abort explains it best.
        .min_by_key(|(_, r)| matches!(r, FailureReason::BatchAborted { .. }))
}

impl JournalStream {
    /// A follower that has seen nothing yet and publishes nowhere.
    pub(crate) fn new() -> Self {
        JournalStream {
            log: None,
            open: BTreeMap::new(),
            next: 1,
        }
    }

    pub(crate) fn publish(
        &self,
        source: &'static str,
        event: &'static str,
        tx: Option<u64>,
        data: serde_json::Value,
    ) {
        if let Some(log) = &self.log {
            log.publish(source, event, tx, data);
        }
    }

    /// Logs and publishes what `engine`'s records gained since the last call, in time order
    /// per transaction.
    pub(crate) fn follow(&mut self, engine: &Engine) {
        let new: Vec<TxId> = engine
            .records()
            .map(|r| r.id)
            .filter(|id| id.0 >= self.next)
            .collect();
        for id in new {
            self.next = self.next.max(id.0 + 1);
            self.open.insert(id, (0, 0, 0));
            if let Some(r) = engine.transaction(id) {
                let _span = tx_span(id, &r.request).entered();
                let by_guest = r.origin == hotplug::Origin::Guest;
                let targets = r
                    .targets
                    .iter()
                    .map(|t| match t.operation.direction() {
                        hotplug::Direction::Add => format!("+{}", t.device),
                        hotplug::Direction::Remove => format!("-{}", t.device),
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                tx_log!(
                    by_guest,
                    info,
                    origin = %api_name(&r.origin),
                    mode = %api_name(&r.mode),
                    %targets,
                    "hotplug transaction started"
                );
                self.publish(
                    "hotplug",
                    "started",
                    Some(id.0),
                    json!({ "origin": r.origin, "request": r.request, "mode": r.mode, "targets": r.targets, "started_us": r.started_us }),
                );
            }
        }
        let open: Vec<TxId> = self.open.keys().copied().collect();
        for id in open {
            let Some(record) = engine.transaction(id) else {
                // Evicted from the journal before it could be read: nothing more to say.
                self.open.remove(&id);
                continue;
            };
            let _span = tx_span(id, &record.request).entered();
            let by_guest = record.origin == hotplug::Origin::Guest;
            let (phases, guest, errors) = self.open.get(&id).copied().unwrap_or_default();
            let mut items: Vec<Gained<'_>> = Vec::new();
            items.extend(record.phases.iter().skip(phases).map(Gained::Phase));
            items.extend(record.guest_events.iter().skip(guest).map(Gained::Guest));
            items.extend(record.errors.iter().skip(errors).map(Gained::Error));
            items.sort_by_key(Gained::order);
            for item in items {
                let (source, event, data) = item.log(by_guest);
                self.publish(source, event, Some(id.0), data);
            }
            if record.status == hotplug::RecordStatus::InProgress {
                self.open.insert(
                    id,
                    (
                        record.phases.len(),
                        record.guest_events.len(),
                        record.errors.len(),
                    ),
                );
                continue;
            }
            self.open.remove(&id);
            let mut data = json!({ "status": record.status, "duration_us": record.duration_us, "outcome": record.outcome });
            let reason = record
                .outcome
                .as_ref()
                .and_then(failure)
                .map(|(device, reason)| format!("{device}: {reason}"));
            let us = record.duration_us.unwrap_or(0);
            let status = api_name(&record.status);
            match &reason {
                Some(reason) => {
                    tx_log!(by_guest, info, %status, us, "hotplug transaction ended: {reason}");
                    data["reason"] = json!(reason);
                }
                None => tx_log!(by_guest, info, %status, us, "hotplug transaction ended"),
            }
            self.publish("hotplug", "ended", Some(id.0), data);
        }
    }
}
