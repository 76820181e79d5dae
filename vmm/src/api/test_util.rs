//! Test fixtures: a temp dir, a real API server and a fake VMM thread.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::Duration;

use plugvm_remote::client;
use serde_json::{json, Value};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::*;

/// A private directory under the system temp dir, removed on drop.
pub(crate) struct TempDir(pub PathBuf);

impl TempDir {
    pub(crate) fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("plugvm-api-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What the fake VMM does with a request.
#[derive(Clone, Copy)]
pub(crate) enum Behavior {
    /// Answer 200 for vm.info and metrics, 204 for shutdown, 501 for the rest.
    Normal,
    /// Keep the message and never answer.
    Hold,
    /// Drop the message unanswered.
    Drop,
}

pub(crate) struct Fixture {
    pub dir: TempDir,
    pub path: PathBuf,
    pub server: Option<ApiServerHandle>,
    pub seen: Arc<Mutex<Vec<ApiRequest>>>,
    pub wake: EventFd,
}

pub(crate) fn quick_config() -> ApiConfig {
    ApiConfig {
        vmm_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_millis(500),
        max_connections: 8,
    }
}

pub(crate) fn fixture(behavior: Behavior, config: ApiConfig) -> Fixture {
    let dir = TempDir::new();
    let path = dir.0.join("api.sock");
    let (to_vmm, from_api) = mpsc::channel::<ApiMessage>();
    let wake = EventFd::new(EFD_NONBLOCK).unwrap();
    let server = start_with_config(&path, to_vmm, wake.try_clone().unwrap(), config).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let vmm_seen = Arc::clone(&seen);
    thread::spawn(move || {
        let mut held = Vec::new();
        for message in from_api {
            vmm_seen.lock().unwrap().push(message.request.clone());
            let response = match (behavior, &message.request) {
                (Behavior::Hold, _) => {
                    held.push(message);
                    continue;
                }
                (Behavior::Drop, _) => continue,
                (Behavior::Normal, ApiRequest::VmInfo) => {
                    ApiResponse::ok(json!({"state": "running"}))
                }
                (Behavior::Normal, ApiRequest::Shutdown) => ApiResponse::no_content(),
                (Behavior::Normal, ApiRequest::Metrics) => ApiResponse::text(
                    200,
                    crate::metrics::CONTENT_TYPE,
                    "# HELP up_total Ü.\n# TYPE up_total counter\nup_total 1\n",
                ),
                (Behavior::Normal, other) => ApiResponse::not_implemented(other),
            };
            let _ = message.respond.send(response);
        }
    });
    Fixture {
        dir,
        path,
        server: Some(server),
        seen,
        wake,
    }
}

impl Fixture {
    pub(crate) fn call(&self, method: &str, target: &str, body: Option<&str>) -> (u16, Value) {
        let response = client::request(
            &self.path,
            method,
            target,
            body.map(str::as_bytes),
            Duration::from_secs(10),
        )
        .unwrap();
        let body = if response.body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&response.body).unwrap()
        };
        (response.status, body)
    }

    /// Sends raw bytes and returns everything the server writes until it closes.
    pub(crate) fn raw(&self, bytes: &[u8]) -> String {
        let mut stream = UnixStream::connect(&self.path).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        // A server that refuses the connection at once (too many connections) may have closed
        // it before the request is written: its answer is still there to read.
        let _ = stream.write_all(bytes);
        let mut text = String::new();
        let _ = stream.read_to_string(&mut text);
        text
    }

    /// Sends raw bytes and reads everything the server writes until it closes, which must be
    /// a clean end of stream: a reset (the server closed with input unread, which clients
    /// report instead of the answer) fails the test.
    pub(crate) fn exchange(&self, bytes: &[u8]) -> String {
        let mut stream = UnixStream::connect(&self.path).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.write_all(bytes).unwrap();
        let mut answer = Vec::new();
        if let Err(e) = stream.read_to_end(&mut answer) {
            panic!(
                "reading the answer failed: {e}; read {:?}",
                String::from_utf8_lossy(&answer)
            );
        }
        String::from_utf8(answer).unwrap()
    }
}

/// A request head of `len` bytes in all, blank line included: `start` (the request line and
/// any headers, each with its CRLF), then padding headers.
pub(crate) fn head_of(start: &str, len: usize) -> String {
    let mut text = start.to_string();
    while len - text.len() - 2 > 1100 {
        text.push_str(&format!("X-Pad: {}\r\n", "p".repeat(1000)));
    }
    let room = len - text.len() - 2;
    text.push_str(&format!("X: {}\r\n\r\n", "p".repeat(room - 5)));
    assert_eq!(text.len(), len);
    text
}

/// `GET target` on `path`, with a 5 s timeout.
pub(crate) fn get(path: &std::path::Path, target: &str) -> client::Response {
    client::request(path, "GET", target, None, Duration::from_secs(5)).unwrap()
}

/// Asserts an error response: the status and a `{"error": "..."}` body.
pub(crate) fn assert_error(result: (u16, Value), status: u16, needle: &str) {
    assert_eq!(result.0, status, "{:?}", result.1);
    let object = result.1.as_object().expect("error body is an object");
    assert_eq!(object.len(), 1, "{object:?}");
    let message = object["error"].as_str().expect("error is a string");
    assert!(message.contains(needle), "{message:?} lacks {needle:?}");
    assert!(message.ends_with('.'), "{message:?}");
}
