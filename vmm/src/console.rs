//! Serial console back ends: where the guest's COM1 output goes and where its input comes
//! from (`--serial stdio|file=PATH|socket=PATH|null`).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use devices::SerialDevice;

/// Errors opening a console back end.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// The output file cannot be created.
    #[error("cannot create serial output file {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// The console socket cannot be bound.
    #[error("cannot listen on serial socket {path}: {source}")]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
}

/// Guest output to stdout, unbuffered so that the console is interactive.
#[derive(Debug, Default)]
pub struct StdoutWriter;

impl Write for StdoutWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut out = io::stdout().lock();
        let n = out.write(buf)?;
        out.flush()?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stdout().flush()
    }
}

/// Opens a file for guest output.
pub fn file_writer(path: &Path) -> Result<Box<dyn Write + Send>, ConsoleError> {
    let f = File::create(path).map_err(|source| ConsoleError::File {
        path: path.to_owned(),
        source,
    })?;
    Ok(Box::new(f))
}

/// Guest output waiting for the console's reader; bounded.
pub const CONSOLE_QUEUE_BYTES: usize = 256 * 1024;

#[derive(Debug, Default)]
struct OutputQueue {
    bytes: VecDeque<u8>,
    /// The writer thread is writing a chunk it took from `bytes`.
    writing: bool,
    /// The writer thread waits for bytes: only then does a write need to wake it.
    idle: bool,
}

/// How long the writer thread lets output gather before it writes: the guest writes its
/// console a byte at a time, and waking a thread per byte costs more than the byte.
const CONSOLE_COALESCE: Duration = Duration::from_millis(2);

#[derive(Debug, Default)]
struct OutputShared {
    queue: Mutex<OutputQueue>,
    changed: Condvar,
    dropped: AtomicU64,
}

impl OutputShared {
    fn lock(&self) -> MutexGuard<'_, OutputQueue> {
        // A byte queue cannot be left inconsistent by a panic elsewhere.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What the UART writes to: a bounded queue that a thread of its own drains into the real
/// back end. A vCPU writing to the console never waits for the back end: when its reader is
/// slow or gone (a full pipe, a socket client that stopped reading), output beyond
/// [`CONSOLE_QUEUE_BYTES`] is dropped and counted.
#[derive(Clone, Debug)]
pub struct QueuedOutput {
    shared: Arc<OutputShared>,
}

impl QueuedOutput {
    /// Starts the thread that writes the queue to `sink`.
    pub fn start(mut sink: Box<dyn Write + Send>) -> io::Result<QueuedOutput> {
        let shared = Arc::new(OutputShared::default());
        let thread_shared = shared.clone();
        std::thread::Builder::new()
            .name("console-out".into())
            .spawn(move || loop {
                {
                    let mut q = thread_shared.lock();
                    q.writing = false;
                    thread_shared.changed.notify_all();
                    q.idle = true;
                    q = thread_shared
                        .changed
                        .wait_while(q, |q| q.bytes.is_empty())
                        .unwrap_or_else(|e| e.into_inner());
                    q.idle = false;
                    q.writing = true;
                }
                std::thread::sleep(CONSOLE_COALESCE);
                let chunk: Vec<u8> = thread_shared.lock().bytes.drain(..).collect();
                if sink.write_all(&chunk).and_then(|()| sink.flush()).is_err() {
                    // The back end refused it (a socket client that stopped reading, a
                    // closed stdout): this chunk is lost, the next is tried again.
                    thread_shared
                        .dropped
                        .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                }
            })?;
        Ok(QueuedOutput { shared })
    }

    /// Bytes dropped because the reader did not keep up.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Waits until everything queued was written, at most `timeout`. For the VM's last words
    /// before plugvm exits; a stuck back end costs `timeout`, no more.
    pub fn drain(&self, timeout: Duration) -> bool {
        let q = self.shared.lock();
        let (q, _) = self
            .shared
            .changed
            .wait_timeout_while(q, timeout, |q| !q.bytes.is_empty() || q.writing)
            .unwrap_or_else(|e| e.into_inner());
        q.bytes.is_empty() && !q.writing
    }
}

impl Write for QueuedOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut q = self.shared.lock();
        let room = CONSOLE_QUEUE_BYTES.saturating_sub(q.bytes.len());
        let taken = room.min(buf.len());
        q.bytes.extend(&buf[..taken]);
        let wake = taken > 0 && q.idle;
        drop(q);
        if taken < buf.len() {
            self.shared
                .dropped
                .fetch_add((buf.len() - taken) as u64, Ordering::Relaxed);
        }
        if wake {
            self.shared.changed.notify_all();
        }
        // The whole buffer counts as written: what did not fit is lost, as on a real line.
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The client currently attached to a socket console; output is dropped while none is.
#[derive(Clone, Debug, Default)]
pub struct SocketClient(Arc<Mutex<Option<UnixStream>>>);

impl Write for SocketClient {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Ok(mut client) = self.0.lock() {
            if let Some(stream) = client.as_mut() {
                match stream.write_all(buf) {
                    Ok(()) => {}
                    // A client that stopped reading keeps its place: this chunk is lost (the
                    // write timeout bounds how long the lock is held) and the next one is
                    // tried again.
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) =>
                    {
                        return Err(e);
                    }
                    Err(_) => *client = None,
                }
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A socket console: one client at a time gets the output and types the input.
#[derive(Debug)]
pub struct SocketConsole {
    listener: UnixListener,
    client: SocketClient,
    path: PathBuf,
}

impl SocketConsole {
    /// Binds `path` (replacing a stale socket file).
    pub fn bind(path: &Path) -> Result<Self, ConsoleError> {
        if UnixStream::connect(path).is_err() {
            let _ = std::fs::remove_file(path);
        }
        let listener = UnixListener::bind(path).map_err(|source| ConsoleError::Socket {
            path: path.to_owned(),
            source,
        })?;
        Ok(SocketConsole {
            listener,
            client: SocketClient::default(),
            path: path.to_owned(),
        })
    }

    /// The writer to give the UART.
    pub fn writer(&self) -> SocketClient {
        self.client.clone()
    }

    /// Accepts clients on a background thread, feeding what each types to `serial`.
    pub fn serve(self, serial: Arc<SerialDevice>) -> io::Result<()> {
        std::thread::Builder::new()
            .name("serial-socket".into())
            .spawn(move || {
                for stream in self.listener.incoming().flatten() {
                    let Ok(reader) = stream.try_clone() else {
                        continue;
                    };
                    // Bounds how long a client that stopped reading holds the output lock.
                    let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
                    if let Ok(mut c) = self.client.0.lock() {
                        *c = Some(stream);
                    }
                    tracing::info!(path = %self.path.display(), "serial socket client attached");
                    feed_input(reader, &serial);
                }
            })
            .map(|_| ())
    }
}

/// Restores the terminal when dropped.
#[derive(Debug)]
pub(crate) struct TerminalGuard(pub(crate) bool);

impl TerminalGuard {
    /// Puts a terminal on standard input in raw mode (the guest gets every key).
    pub(crate) fn raw_if_tty() -> Self {
        use std::io::IsTerminal;
        use vmm_sys_util::terminal::Terminal;
        let stdin = std::io::stdin();
        TerminalGuard(stdin.is_terminal() && stdin.lock().set_raw_mode().is_ok())
    }
}

impl TerminalGuard {
    /// Puts the terminal back in canonical mode (once).
    pub(crate) fn restore(&mut self) {
        use vmm_sys_util::terminal::Terminal;
        if std::mem::take(&mut self.0) {
            let _ = std::io::stdin().lock().set_canon_mode();
        }
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        self.restore();
    }
}

/// Where standard input goes: the serial port of the VM that runs now, if its serial port is
/// `stdio`. One thread reads standard input for the VMM's whole life, because a VM booted
/// again after `vm.shutdown` must get the input a reader of the first VM would otherwise
/// keep taking; input that arrives while no VM takes it is dropped.
#[derive(Clone, Default)]
pub struct StdinRoute {
    target: Arc<Mutex<Option<Arc<SerialDevice>>>>,
    reader: Arc<std::sync::OnceLock<()>>,
}

impl StdinRoute {
    /// Sends standard input to `serial` from now on, starting the reader thread the first
    /// time.
    pub fn connect(&self, serial: Arc<SerialDevice>) -> io::Result<()> {
        if let Ok(mut target) = self.target.lock() {
            *target = Some(serial);
        }
        if self.reader.get().is_none() {
            use std::os::fd::AsFd;
            // A duplicate of the descriptor rather than `std::io::stdin()`, whose lock a
            // blocked read would hold, so that restoring the terminal never waits for a key.
            let input = File::from(io::stdin().as_fd().try_clone_to_owned()?);
            let route = self.clone();
            std::thread::Builder::new()
                .name("serial-stdin".into())
                .spawn(move || route.feed(input))?;
            let _ = self.reader.set(());
        }
        Ok(())
    }

    /// Stops sending standard input anywhere (the VM has ended).
    pub fn disconnect(&self) {
        if let Ok(mut target) = self.target.lock() {
            *target = None;
        }
    }

    fn feed(&self, mut input: File) {
        let mut buf = [0u8; 64];
        loop {
            match input.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let serial = self.target.lock().ok().and_then(|t| t.clone());
                    if let Some(serial) = serial {
                        feed_chunk(&buf[..n], &serial);
                    }
                }
            }
        }
    }
}

/// Copies `input` into the guest's receive FIFO until EOF.
pub fn feed_input(mut input: impl Read, serial: &SerialDevice) {
    let mut buf = [0u8; 64];
    loop {
        match input.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => feed_chunk(&buf[..n], serial),
        }
    }
}

/// Puts `chunk` into the guest's receive FIFO, waiting (bounded) for the guest to read.
fn feed_chunk(chunk: &[u8], serial: &SerialDevice) {
    let mut sent = 0;
    while sent < chunk.len() {
        let k = serial.enqueue_input(&chunk[sent..]);
        sent += k;
        if k == 0 {
            // The FIFO holds 64 bytes: give the guest time to drain it.
            wait_for_guest_to_read(serial);
        }
    }
    wait_for_guest_to_read(serial);
}

/// Waits (bounded) until the guest has read its pending input, raising the receive
/// interrupt again when the input sits unread, as a level-triggered UART line would.
fn wait_for_guest_to_read(serial: &SerialDevice) {
    const POLL: std::time::Duration = std::time::Duration::from_millis(5);
    let mut last = serial.pending_input();
    let mut still = 0u32;
    for _ in 0..400 {
        if last == 0 {
            return;
        }
        std::thread::sleep(POLL);
        let now = serial.pending_input();
        if now == last {
            still += 1;
            // 20 ms without the guest reading anything: its interrupt may have been lost.
            if still.is_multiple_of(4) && !serial.kick_receiver() {
                return;
            }
        } else {
            still = 0;
        }
        last = now;
    }
}

#[cfg(test)]
mod queue_tests {
    use super::*;
    use std::time::Instant;

    /// A back end whose reader stopped reading: every write blocks until `open`.
    struct StalledSink {
        open: Arc<(Mutex<bool>, Condvar)>,
        got: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for StalledSink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let (lock, cv) = &*self.open;
            let open = lock.lock().unwrap();
            drop(cv.wait_while(open, |o| !*o).unwrap());
            self.got.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stalled_reader_costs_output_never_time() {
        let open = Arc::new((Mutex::new(false), Condvar::new()));
        let got = Arc::new(Mutex::new(Vec::new()));
        let mut out = QueuedOutput::start(Box::new(StalledSink {
            open: open.clone(),
            got: got.clone(),
        }))
        .unwrap();
        let started = Instant::now();
        let line = [b'x'; 1024];
        for _ in 0..1024 {
            assert_eq!(out.write(&line).unwrap(), line.len());
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the writer waited for the reader"
        );
        let dropped = out.dropped();
        // At most one queue's worth waits, plus one chunk the writer thread holds.
        assert!(
            dropped >= (1024 * 1024 - 2 * CONSOLE_QUEUE_BYTES) as u64,
            "dropped only {dropped}"
        );
        let t = Instant::now();
        assert!(
            !out.drain(Duration::from_millis(50)),
            "drained into a stalled reader"
        );
        assert!(t.elapsed() < Duration::from_secs(1));

        *open.0.lock().unwrap() = true;
        open.1.notify_all();
        assert!(out.drain(Duration::from_secs(5)));
        let written = got.lock().unwrap().len() as u64;
        assert_eq!(
            written + dropped,
            1024 * 1024,
            "every byte is written or counted"
        );
    }
}
