//! The server: the accept thread and one thread per connection, with the connection limit
//! and idle eviction. What a connection's thread does with its requests (and the round trip
//! to the VMM) is `connection.rs`'s, the socket itself `socket.rs`'s, the event stream
//! `event_stream.rs`'s, the wire bodies `encode.rs`'s.

use std::collections::HashMap;
use std::io::{self, ErrorKind, Read};
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

use super::connection::serve_connection;
use super::encode::error_body;
use super::http::{self};
use super::socket::{bind, remove_if_ours, FileId};
use super::socket_lock::SocketLock;
use super::{ApiConfig, ApiError, ApiMessage, RequestError};
use crate::events::EventLog;

/// How long a stop waits for answers already given by the VMM to reach their clients (the
/// answer to `vmm.shutdown` itself is one of them).
const ANSWER_DRAIN_TIMEOUT: Duration = Duration::from_millis(500);

/// How long, and for how many bytes, a refused connection's input is still read (and thrown
/// away) after the answer: see [`linger`].
pub(super) const LINGER_TIMEOUT: Duration = Duration::from_secs(1);
pub(super) const LINGER_BYTES: u64 = 1024 * 1024;

const LISTENER_TOKEN: u64 = 0;
const STOP_TOKEN: u64 = 1;

/// What an open connection is doing: whether it may give its place to a new one when the
/// server is at `max_connections`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Activity {
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
pub(super) fn max_streams(max_connections: usize) -> usize {
    (max_connections / 2).max(1)
}

/// State shared by the accept thread and the connection threads.
pub(super) struct Shared {
    pub(super) to_vmm: mpsc::Sender<ApiMessage>,
    pub(super) wake: EventFd,
    pub(super) config: ApiConfig,
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
    pub(super) fn set_activity(&self, id: u64, activity: Activity) -> bool {
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
    pub(super) fn start_stream(&self, id: u64) -> bool {
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
