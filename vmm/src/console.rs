//! Serial console back ends: where the guest's COM1 output goes and where its input comes
//! from (`--serial stdio|file=PATH|socket=PATH|null`).

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

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

/// The client currently attached to a socket console; output is dropped while none is.
#[derive(Clone, Debug, Default)]
pub struct SocketClient(Arc<Mutex<Option<UnixStream>>>);

impl Write for SocketClient {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Ok(mut client) = self.0.lock() {
            if let Some(stream) = client.as_mut() {
                if stream.write_all(buf).is_err() {
                    *client = None;
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

/// Copies `input` into the guest's receive FIFO until EOF.
pub fn feed_input(mut input: impl Read, serial: &SerialDevice) {
    let mut buf = [0u8; 64];
    loop {
        match input.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let mut sent = 0;
                while sent < n {
                    let k = serial.enqueue_input(&buf[sent..n]);
                    sent += k;
                    if k == 0 {
                        // The FIFO holds 64 bytes: give the guest time to drain it.
                        wait_for_guest_to_read(serial);
                    }
                }
                wait_for_guest_to_read(serial);
            }
        }
    }
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
