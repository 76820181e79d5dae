//! One connection's thread: reads each request (bounded in size and time), routes it, and
//! writes the server's own answer, or sends the request to the VMM (the channel and the wake
//! eventfd), whose loop writes the answer itself; until the client closes, a limit is hit or
//! the server stops.

use std::io::{self, BufReader, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Instant;

use super::encode::{error_body, write_answer};
use super::event_stream::stream_events;
use super::http::{self, DeadlineReader, HeadError};
use super::responder::{Delivery, Written};
use super::routing::{self, Action};
use super::server::{max_streams, Activity, Shared, LINGER_BYTES, LINGER_TIMEOUT};
use super::{ApiMessage, ApiRequest, ApiResponse, RequestError, Responder, MAX_BODY_BYTES};
use crate::logging::micros_between;
use plugvm_remote::wire::TOO_MANY_CONNECTIONS;

/// Serves requests on connection `id` until it closes, fails, times out or is evicted.
pub(super) fn serve_connection(shared: &Shared, id: u64, stream: UnixStream) {
    let mut writer = match stream.try_clone() {
        Ok(writer) => writer,
        Err(_) => return,
    };
    let mut reader = BufReader::new(DeadlineReader::new(stream));
    let timeout = shared.config.request_timeout;
    while !shared.stopping.load(Ordering::SeqCst) {
        reader.get_mut().set_budget(timeout);
        if http::await_request(&mut reader).is_err() {
            return;
        }
        if !shared.set_activity(id, Activity::Busy) {
            // Evicted as idle while this request was on its way: its place is gone.
            let full = RequestError::VmmUnavailable(TOO_MANY_CONNECTIONS.to_string());
            return refuse(&mut reader, &mut writer, &full);
        }
        let head = match http::read_head(&mut reader) {
            Ok(head) => head,
            Err(HeadError::Idle | HeadError::Broken) => return,
            Err(HeadError::Timeout) => {
                let late =
                    RequestError::RequestTimeout("The request was not received in time.".into());
                return refuse(&mut reader, &mut writer, &late);
            }
            Err(HeadError::Reject(e)) => return refuse(&mut reader, &mut writer, &e),
        };
        let len = match usize::try_from(head.content_length) {
            Ok(len) if len <= MAX_BODY_BYTES => len,
            _ => {
                let message = format!(
                    "Request body of {} bytes exceeds the {MAX_BODY_BYTES}-byte limit.",
                    head.content_length
                );
                return refuse(
                    &mut reader,
                    &mut writer,
                    &RequestError::BodyTooLarge(message),
                );
            }
        };
        let body = {
            if head.expect_continue
                && len > 0
                && writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").is_err()
            {
                return;
            }
            match http::read_body(&mut reader, len) {
                Ok(body) => body,
                Err(HeadError::Timeout) => {
                    let late = RequestError::RequestTimeout(
                        "The request body was not received in time.".into(),
                    );
                    return refuse(&mut reader, &mut writer, &late);
                }
                Err(_) => return,
            }
        };
        // The request is in: the VMM's time for it runs from here to the answer's last byte.
        let received = std::time::Instant::now();
        let action = routing::route(&head.method, &head.target, &body);
        if let Ok(Action::Stream(from)) = action {
            if !shared.start_stream(id) {
                let message = format!(
                    "Too many open event streams (at most {}); retry later.",
                    max_streams(shared.config.max_connections)
                );
                return refuse(
                    &mut reader,
                    &mut writer,
                    &RequestError::VmmUnavailable(message),
                );
            }
            let from = from.or(head.last_event_id.map(|id| id.saturating_add(1)));
            return stream_events(shared, &mut writer, from);
        }
        shared.answering.fetch_add(1, Ordering::SeqCst);
        let keep_alive = head.keep_alive;
        let served = match action {
            Ok(Action::Forward(request)) => ask_vmm(shared, request, &mut writer, keep_alive),
            Ok(Action::Reply(response)) => answer_here(&mut writer, &response, None, keep_alive),
            Ok(Action::Stream(_)) => {
                let error =
                    RequestError::HostFailure("The event stream cannot be answered here.".into());
                answer_here(&mut writer, &error.into(), None, keep_alive)
            }
            Err(e) => {
                let allow = e.allow().map(str::to_string);
                answer_here(&mut writer, &e.into(), allow.as_deref(), keep_alive)
            }
        };
        shared.answering.fetch_sub(1, Ordering::SeqCst);
        // Benchmarks subtract the guest's share (the journal's await_guest) from served_us;
        // queued_us is the part before the event loop took the request.
        tracing::info!(
            method = %head.method,
            target = %head.target,
            status = served.status,
            served_us = micros_between(received, served.at),
            queued_us = served.taken.map(|t| micros_between(received, t)),
            delivered = served.ok,
            "API request served"
        );
        if !served.ok || !head.keep_alive {
            // The end of the answer for the client even while the VMM still holds a copy of
            // the socket (its responder, when this thread answered 503 for it).
            let _ = writer.shutdown(Shutdown::Write);
            return;
        }
        // Kept alive: idle again, and so the first to give way when the server is full.
        shared.set_activity(id, Activity::Waiting(Instant::now()));
    }
}

/// Answers `error` (the connection then closes).
pub(super) fn fail(writer: &mut UnixStream, error: &RequestError) {
    let _ = fail_with(writer, error, false);
}

/// Answers `error`, saying whether the connection stays open.
fn fail_with(writer: &mut UnixStream, error: &RequestError, keep_alive: bool) -> io::Result<()> {
    let body = error_body(&error.to_string());
    http::write_response(
        writer,
        error.status(),
        Some((http::JSON, &body)),
        None,
        keep_alive,
    )
}

/// [`fail`], then [`linger`]: for an answer given before the whole request was read.
fn refuse(reader: &mut BufReader<DeadlineReader>, writer: &mut UnixStream, error: &RequestError) {
    fail(writer, error);
    linger(reader, writer);
}

/// Ends a connection whose client may still be sending, so that the client reads the answer.
///
/// A Unix socket closed with unread input resets the connection (the peer's next read fails
/// with `ECONNRESET`, as after a TCP reset), and many clients then report the reset rather
/// than the answer: a head over the size limit or a flood of empty lines got "connection
/// reset" instead of its 431 or 400. So the write side is shut first (the client reads the
/// answer, then its end), and what the client still sends is read and dropped until it
/// closes, for at most [`LINGER_TIMEOUT`] and [`LINGER_BYTES`].
fn linger(reader: &mut BufReader<DeadlineReader>, writer: &UnixStream) {
    let _ = writer.shutdown(Shutdown::Write);
    reader.get_mut().set_budget(LINGER_TIMEOUT);
    let _ = io::copy(&mut reader.by_ref().take(LINGER_BYTES), &mut io::sink());
}

/// How an answer went: its status, when its last byte left, and whether the connection
/// can go on.
struct Served {
    status: u16,
    at: Instant,
    /// When the VMM's loop took the request, if it went to the VMM and the loop said so.
    taken: Option<Instant>,
    ok: bool,
}

/// Writes the server's own answer to a request that does not go to the VMM.
fn answer_here(
    writer: &mut UnixStream,
    response: &ApiResponse,
    allow: Option<&str>,
    keep_alive: bool,
) -> Served {
    let written = write_answer(writer, response, allow, keep_alive);
    Served {
        status: response.status,
        at: Instant::now(),
        taken: None,
        ok: written.is_ok(),
    }
}

/// Sends `request` to the VMM and wakes it; the VMM writes the answer to the client itself
/// (see [`Responder`]). This thread answers only when the VMM does not: 503 when it does not
/// answer within the VMM timeout or drops the request, and it sends what the VMM could not
/// write without waiting.
fn ask_vmm(
    shared: &Shared,
    request: ApiRequest,
    writer: &mut UnixStream,
    keep_alive: bool,
) -> Served {
    let endpoint = request.endpoint();
    let claim = Arc::new(AtomicBool::new(false));
    let (done, written) = mpsc::channel();
    let unanswered = |writer: &mut UnixStream, error: RequestError| {
        let status = error.status();
        let ok = fail_with(writer, &error, keep_alive).is_ok();
        Served {
            status,
            at: Instant::now(),
            taken: None,
            ok,
        }
    };
    let answer_writer = match writer.try_clone() {
        Ok(w) => w,
        Err(e) => {
            return unanswered(
                writer,
                RequestError::HostFailure(format!("Cannot answer {endpoint}: {e}.")),
            )
        }
    };
    let respond = Responder::socket(
        answer_writer,
        keep_alive,
        endpoint,
        Arc::clone(&claim),
        done,
    );
    if shared.to_vmm.send(ApiMessage { request, respond }).is_err() {
        return unanswered(
            writer,
            RequestError::VmmUnavailable("The VMM is not running.".into()),
        );
    }
    if let Err(e) = shared.wake.write(1) {
        // The message is queued: whoever claims first answers.
        if !claim.swap(true, Ordering::SeqCst) {
            return unanswered(
                writer,
                RequestError::VmmUnavailable(format!("Cannot wake the VMM: {e}.")),
            );
        }
    }
    let timeout = shared.config.vmm_timeout;
    let outcome = match written.recv_timeout(timeout) {
        Ok(outcome) => outcome,
        Err(mpsc::RecvTimeoutError::Timeout) if !claim.swap(true, Ordering::SeqCst) => {
            tracing::warn!("the VMM did not answer {endpoint} within {timeout:?}");
            return unanswered(
                writer,
                RequestError::VmmUnavailable(format!(
                    "The VMM did not answer {endpoint} within {} s.",
                    timeout.as_secs_f64()
                )),
            );
        }
        Err(mpsc::RecvTimeoutError::Disconnected) if !claim.swap(true, Ordering::SeqCst) => {
            return unanswered(
                writer,
                RequestError::VmmUnavailable(format!(
                    "The VMM dropped the {endpoint} request unanswered."
                )),
            );
        }
        // The VMM claimed the answer just now: its write does not wait, so this wait is only
        // scheduling. (A responder reports before it is dropped; were it not, the connection
        // would end here.)
        Err(_) => match written.recv() {
            Ok(outcome) => outcome,
            Err(_) => {
                return Served {
                    status: 500,
                    at: Instant::now(),
                    taken: None,
                    ok: false,
                }
            }
        },
    };
    let Written {
        status,
        taken,
        delivery,
    } = outcome;
    match delivery {
        Delivery::Sent(at) => Served {
            status,
            at,
            taken,
            ok: true,
        },
        Delivery::Rest(rest) => {
            let ok = writer
                .write_all(&rest)
                .and_then(|()| writer.flush())
                .is_ok();
            Served {
                status,
                at: Instant::now(),
                taken,
                ok,
            }
        }
        Delivery::Failed => Served {
            status,
            at: Instant::now(),
            taken,
            ok: false,
        },
    }
}
