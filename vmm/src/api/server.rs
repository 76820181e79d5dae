//! The server: the accept thread, one thread per connection (with the connection limit and
//! idle eviction), and the round trip to the VMM. The socket itself is `socket.rs`'s, the
//! event stream `event_stream.rs`'s, the wire bodies `encode.rs`'s.

use std::collections::HashMap;
use std::io::{self, BufReader, ErrorKind, Read};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use plugvm_remote::wire::TOO_MANY_CONNECTIONS;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::encode::{encode_body, error_body};
use super::event_stream::stream_events;
use super::http::{self, DeadlineReader, HeadError};
use super::routing::{self, Action};
use super::socket::{bind, remove_if_ours, FileId};
use super::socket_lock::SocketLock;
use super::{
    ApiConfig, ApiError, ApiMessage, ApiRequest, ApiResponse, RequestError, MAX_BODY_BYTES,
};
use crate::events::EventLog;

/// How long a stop waits for answers already given by the VMM to reach their clients (the
/// answer to `vmm.shutdown` itself is one of them).
const ANSWER_DRAIN_TIMEOUT: Duration = Duration::from_millis(500);

/// How long, and for how many bytes, a refused connection's input is still read (and thrown
/// away) after the answer: see [`linger`].
const LINGER_TIMEOUT: Duration = Duration::from_secs(1);
const LINGER_BYTES: u64 = 1024 * 1024;

const LISTENER_TOKEN: u64 = 0;
const STOP_TOKEN: u64 = 1;

/// What an open connection is doing: whether it may give its place to a new one when the
/// server is at `max_connections`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Activity {
    /// Waiting for the first byte of a request, since then: a new connection, or a kept-alive
    /// one between requests. It holds a place and promises nothing, so at the limit the one
    /// that has waited longest is evicted for a new connection: a flood of idle connections
    /// cannot keep an operator out.
    Waiting(Instant),
    /// Reading, handling or answering a request: never evicted. A client that stops sending
    /// is bounded by `request_timeout`, the VMM by `vmm_timeout`.
    Busy,
    /// Serving the event stream: long-lived by design, never evicted, and so allowed at most
    /// [`max_streams`] places.
    Streaming,
}

/// An open connection, as the server tracks it.
struct Connection {
    /// A clone of the stream, to shut it down on eviction or stop.
    stream: UnixStream,
    activity: Activity,
}

/// How many connections may be event streams at once: half of them (at least one), so that
/// streams, which are never evicted, always leave room for requests.
fn max_streams(max_connections: usize) -> usize {
    (max_connections / 2).max(1)
}

/// State shared by the accept thread and the connection threads.
pub(super) struct Shared {
    to_vmm: mpsc::Sender<ApiMessage>,
    wake: EventFd,
    config: ApiConfig,
    /// The open connections, to apply the limit and to shut them down on stop.
    connections: Mutex<HashMap<u64, Connection>>,
    next_connection: AtomicU64,
    pub(super) stopping: AtomicBool,
    /// Requests read and not yet fully answered, so that a stop lets their answers out.
    pub(super) answering: AtomicUsize,
    /// The VMM's event log, for `GET /api/v1/events`.
    pub(super) events: std::sync::OnceLock<Arc<EventLog>>,
}

impl Shared {
    fn connections(&self) -> MutexGuard<'_, HashMap<u64, Connection>> {
        self.connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes in connection `id` (`stream` is a clone of it), waiting for its first request.
    /// At the limit it evicts the connection that has waited longest for a request; `false`
    /// when there is none, every place being a request in progress or an event stream.
    fn admit(&self, id: u64, stream: UnixStream) -> bool {
        let mut connections = self.connections();
        if connections.len() >= self.config.max_connections {
            let longest_waiting = connections
                .iter()
                .filter_map(|(id, c)| match c.activity {
                    Activity::Waiting(since) => Some((since, *id)),
                    Activity::Busy | Activity::Streaming => None,
                })
                .min();
            let Some(evicted) = longest_waiting.and_then(|(_, id)| connections.remove(&id)) else {
                return false;
            };
            // The read side only: the thread then sees the end of the stream and quits, as
            // an HTTP server may end an idle connection. A request that was on its way is
            // still read, and answered 503 (see `serve_connection`); the client's later
            // writes fail, so no request is half taken.
            let _ = evicted.stream.shutdown(Shutdown::Read);
            tracing::debug!("API server evicts its longest-idle connection for a new one");
        }
        connections.insert(
            id,
            Connection {
                stream,
                activity: Activity::Waiting(Instant::now()),
            },
        );
        true
    }

    /// Records what connection `id` does now; `false` once it was evicted.
    fn set_activity(&self, id: u64, activity: Activity) -> bool {
        match self.connections().get_mut(&id) {
            Some(connection) => {
                connection.activity = activity;
                true
            }
            None => false,
        }
    }

    /// Makes connection `id` an event stream, unless streams already fill their share of the
    /// places ([`max_streams`]).
    fn start_stream(&self, id: u64) -> bool {
        let mut connections = self.connections();
        let streams = connections
            .values()
            .filter(|c| c.activity == Activity::Streaming)
            .count();
        if streams >= max_streams(self.config.max_connections) {
            return false;
        }
        match connections.get_mut(&id) {
            Some(connection) => {
                connection.activity = Activity::Streaming;
                true
            }
            None => false,
        }
    }
}

/// The running API server. Dropping it stops it, like [`ApiServerHandle::shutdown`].
#[derive(Debug)]
pub struct ApiServerHandle {
    path: PathBuf,
    file_id: FileId,
    /// Held for the server's life; released (and its file removed) after the socket is.
    _lock: SocketLock,
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

impl ApiServerHandle {
    /// The socket path the server listens on.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves the event stream (`GET /api/v1/events`) from `log`.
    pub fn attach_events(&self, log: Arc<EventLog>) {
        let _ = self.shared.events.set(log);
    }

    /// Stops accepting, closes open connections and removes the socket file.
    ///
    /// Requests already forwarded to the VMM are not waited for: their
    /// threads end when the VMM answers (or drops the request) or times out.
    pub fn shutdown(self) {
        // Drop does the work.
    }
}

impl Drop for ApiServerHandle {
    fn drop(&mut self) {
        let shared = &self.shared;
        shared.stopping.store(true, Ordering::SeqCst);
        if let Err(e) = self.stop.write(1) {
            tracing::error!("cannot signal the API server thread to stop: {e}");
        }
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the API server thread panicked");
            }
        }
        let drain_until = std::time::Instant::now() + ANSWER_DRAIN_TIMEOUT;
        while shared.answering.load(Ordering::SeqCst) > 0 && std::time::Instant::now() < drain_until
        {
            thread::sleep(Duration::from_millis(2));
        }
        for connection in shared.connections().values() {
            let _ = connection.stream.shutdown(Shutdown::Both);
        }
        remove_if_ours(&self.path, self.file_id);
    }
}

/// Binds, secures and publishes the socket, then spawns the accept thread.
pub(crate) fn start(
    path: &Path,
    to_vmm: mpsc::Sender<ApiMessage>,
    wake: EventFd,
    config: ApiConfig,
) -> Result<ApiServerHandle, ApiError> {
    let (listener, file_id, lock) = bind(path)?;
    let prepared = prepare(&listener).and_then(|(stop, epoll)| {
        let thread_stop = stop.try_clone().map_err(ApiError::Poll)?;
        Ok((stop, thread_stop, epoll))
    });
    let (stop, thread_stop, epoll) = match prepared {
        Ok(parts) => parts,
        Err(e) => {
            remove_if_ours(path, file_id);
            return Err(e);
        }
    };
    let shared = Arc::new(Shared {
        to_vmm,
        wake,
        config,
        connections: Mutex::new(HashMap::new()),
        next_connection: AtomicU64::new(0),
        stopping: AtomicBool::new(false),
        answering: AtomicUsize::new(0),
        events: std::sync::OnceLock::new(),
    });
    let thread_shared = Arc::clone(&shared);
    let spawned = thread::Builder::new()
        .name("api-server".into())
        .spawn(move || accept_loop(listener, epoll, thread_stop, &thread_shared));
    match spawned {
        Ok(thread) => Ok(ApiServerHandle {
            path: path.to_path_buf(),
            file_id,
            _lock: lock,
            stop,
            thread: Some(thread),
            shared,
        }),
        Err(e) => {
            remove_if_ours(path, file_id);
            Err(ApiError::Spawn(e))
        }
    }
}

fn prepare(listener: &UnixListener) -> Result<(EventFd, Epoll), ApiError> {
    listener.set_nonblocking(true).map_err(ApiError::Poll)?;
    let stop = EventFd::new(EFD_NONBLOCK).map_err(ApiError::Poll)?;
    let epoll = Epoll::new().map_err(ApiError::Poll)?;
    for (fd, token) in [
        (listener.as_raw_fd(), LISTENER_TOKEN),
        (stop.as_raw_fd(), STOP_TOKEN),
    ] {
        epoll
            .ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )
            .map_err(ApiError::Poll)?;
    }
    Ok((stop, epoll))
}

fn accept_loop(listener: UnixListener, epoll: Epoll, stop: EventFd, shared: &Arc<Shared>) {
    let mut events = [EpollEvent::default(); 2];
    loop {
        let ready = match epoll.wait(-1, &mut events) {
            Ok(n) => &events[..n],
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!("API server stops: epoll_wait failed: {e}");
                return;
            }
        };
        if ready.iter().any(|e| e.data() == STOP_TOKEN) {
            let _ = stop.read();
            return;
        }
        loop {
            match listener.accept() {
                Ok((stream, _)) => spawn_connection(shared, stream),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::Interrupted | ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) => {
                    // Likely out of fds: back off instead of spinning.
                    tracing::warn!("API server cannot accept: {e}");
                    thread::sleep(Duration::from_millis(50));
                    break;
                }
            }
        }
    }
}

fn spawn_connection(shared: &Arc<Shared>, stream: UnixStream) {
    let inner: &Shared = shared;
    let setup = stream
        .set_nonblocking(false)
        .and_then(|()| stream.set_write_timeout(Some(inner.config.request_timeout)))
        .and_then(|()| stream.try_clone());
    let clone = match setup {
        Ok(clone) => clone,
        Err(e) => {
            tracing::warn!("API server drops a connection: {e}");
            return;
        }
    };
    let id = inner.next_connection.fetch_add(1, Ordering::Relaxed);
    if !inner.admit(id, clone) {
        return refuse_at_once(&stream);
    }
    let thread_shared = Arc::clone(shared);
    let spawned = thread::Builder::new()
        .name("api-connection".into())
        .spawn(move || {
            serve_connection(&thread_shared, id, stream);
            thread_shared.connections().remove(&id);
        });
    if let Err(e) = spawned {
        tracing::warn!("API server cannot spawn a connection thread: {e}");
        inner.connections().remove(&id);
    }
}

/// Answers 503 on the accept thread, which must not wait: what the client already sent is
/// thrown away, so that the close does not reset the connection before the client reads the
/// answer (see [`linger`]). A request written after this fails to send; `plugvm-remote` still
/// reads this answer then, and retries.
fn refuse_at_once(stream: &UnixStream) {
    let full = RequestError::VmmUnavailable(TOO_MANY_CONNECTIONS.to_string());
    let body = error_body(&full.to_string());
    let _ = http::write_response(
        &mut &*stream,
        full.status(),
        Some((http::JSON, &body)),
        None,
        false,
    );
    let _ = stream.shutdown(Shutdown::Write);
    if stream.set_nonblocking(true).is_ok() {
        let _ = io::copy(&mut stream.take(LINGER_BYTES), &mut io::sink());
    }
}

/// Serves requests on connection `id` until it closes, fails, times out or is evicted.
fn serve_connection(shared: &Shared, id: u64, stream: UnixStream) {
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
            if head.expect_continue && len > 0 {
                use std::io::Write;
                if writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").is_err() {
                    return;
                }
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
        let (response, allow) = handle(shared, action);
        let body = encode_body(&response);
        let written = http::write_response(
            &mut writer,
            response.status,
            body.as_ref().map(|(kind, bytes)| (*kind, bytes.as_slice())),
            allow.as_deref(),
            head.keep_alive,
        );
        shared.answering.fetch_sub(1, Ordering::SeqCst);
        // Benchmarks subtract the guest's share (the journal's await_guest) from this.
        tracing::info!(
            method = %head.method,
            target = %head.target,
            status = response.status,
            served_us = u64::try_from(received.elapsed().as_micros()).unwrap_or(u64::MAX),
            "API request served"
        );
        if written.is_err() || !head.keep_alive {
            return;
        }
        // Kept alive: idle again, and so the first to give way when the server is full.
        shared.set_activity(id, Activity::Waiting(Instant::now()));
    }
}

/// Answers `error` (the connection then closes).
pub(super) fn fail(writer: &mut UnixStream, error: &RequestError) {
    let body = error_body(&error.to_string());
    let _ = http::write_response(
        writer,
        error.status(),
        Some((http::JSON, &body)),
        None,
        false,
    );
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

/// Gets the answer to a routed request: the server's own, or the VMM's.
fn handle(shared: &Shared, action: Result<Action, RequestError>) -> (ApiResponse, Option<String>) {
    match action {
        Ok(Action::Reply(response)) => (response, None),
        Ok(Action::Forward(request)) => (ask_vmm(shared, request), None),
        Ok(Action::Stream(_)) => (
            RequestError::HostFailure("The event stream cannot be answered here.".into()).into(),
            None,
        ),
        Err(e) => {
            let allow = e.allow().map(str::to_string);
            (e.into(), allow)
        }
    }
}

/// Sends `request` to the VMM, wakes it, and waits for the answer.
fn ask_vmm(shared: &Shared, request: ApiRequest) -> ApiResponse {
    let endpoint = request.endpoint();
    let (respond, answer) = mpsc::channel();
    if shared.to_vmm.send(ApiMessage { request, respond }).is_err() {
        return RequestError::VmmUnavailable("The VMM is not running.".into()).into();
    }
    if let Err(e) = shared.wake.write(1) {
        return RequestError::VmmUnavailable(format!("Cannot wake the VMM: {e}.")).into();
    }
    let timeout = shared.config.vmm_timeout;
    match answer.recv_timeout(timeout) {
        Ok(response) if (200..=599).contains(&response.status) => response,
        Ok(response) => RequestError::HostFailure(format!(
            "The VMM answered {endpoint} with invalid status {}.",
            response.status
        ))
        .into(),
        Err(mpsc::RecvTimeoutError::Timeout) => {
            tracing::warn!("the VMM did not answer {endpoint} within {timeout:?}");
            RequestError::VmmUnavailable(format!(
                "The VMM did not answer {endpoint} within {} s.",
                timeout.as_secs_f64()
            ))
            .into()
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => RequestError::VmmUnavailable(format!(
            "The VMM dropped the {endpoint} request unanswered."
        ))
        .into(),
    }
}
