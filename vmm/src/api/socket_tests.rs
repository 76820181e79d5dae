//! Tests of the socket's lifecycle, and of `plugvm-remote` against a live server.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::sync::mpsc;
use std::time::Duration;

use plugvm_remote::{cli, client};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::test_util::{fixture, quick_config, Behavior, TempDir};
use super::*;

#[test]
fn api_socket_is_private_exclusive_and_cleaned_up() {
    let mut f = fixture(Behavior::Normal, quick_config());
    let mode = std::fs::metadata(&f.path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let leftovers: Vec<_> = std::fs::read_dir(&f.dir.0).unwrap().collect();
    assert_eq!(
        leftovers.len(),
        1,
        "only the socket is left in the directory"
    );
    let (tx, _rx) = mpsc::channel();
    let err = start(&f.path, tx, EventFd::new(EFD_NONBLOCK).unwrap()).unwrap_err();
    assert!(matches!(err, ApiError::InUse(_)), "{err}");
    assert_eq!(
        f.call("GET", "/api/v1/vmm.ping", None).0,
        200,
        "the refusal left the server alone"
    );
    if let Some(server) = f.server.take() {
        server.shutdown();
    }
    assert!(!f.path.exists(), "shutdown removes the socket file");
}

#[test]
fn api_socket_replaces_stale_sockets_and_refuses_other_files() {
    let dir = TempDir::new();
    let stale = dir.0.join("stale.sock");
    drop(UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    let (tx, _rx) = mpsc::channel();
    let server = start(&stale, tx.clone(), EventFd::new(EFD_NONBLOCK).unwrap()).unwrap();
    let response = client::request(
        &stale,
        "GET",
        "/api/v1/vmm.ping",
        None,
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(response.status, 200);
    server.shutdown();

    let file = dir.0.join("file");
    std::fs::write(&file, b"keep me").unwrap();
    let err = start(&file, tx.clone(), EventFd::new(EFD_NONBLOCK).unwrap()).unwrap_err();
    assert!(matches!(err, ApiError::NotASocket(_)), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");

    let err = start(
        &dir.0.join("no/such/dir.sock"),
        tx,
        EventFd::new(EFD_NONBLOCK).unwrap(),
    )
    .unwrap_err();
    assert!(matches!(err, ApiError::Bind { .. }), "{err}");
}

#[test]
fn api_socket_with_a_long_path_is_bound_in_place() {
    let dir = TempDir::new();
    // Fits sun_path, but the temporary name beside it would not.
    let room = 100usize.saturating_sub(dir.0.as_os_str().len());
    let path = dir.0.join("x".repeat(room.max(1)));
    let (tx, _rx) = mpsc::channel();
    let server = start(&path, tx, EventFd::new(EFD_NONBLOCK).unwrap()).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    server.shutdown();
    assert!(!path.exists());
}

#[test]
fn api_cli_talks_to_a_live_server() {
    let f = fixture(Behavior::Normal, quick_config());
    let socket = f.path.to_str().unwrap();
    let run = |args: &[&str]| {
        let mut full = vec!["plugvm-remote", "--api-socket", socket];
        full.extend_from_slice(args);
        let cli = <cli::Cli as clap::Parser>::try_parse_from(full).unwrap();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = cli::execute(&cli, &mut out, &mut err);
        (
            code,
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        )
    };
    let (code, out, _) = run(&["ping"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("plugvm "), "{out}");
    assert_eq!(
        run(&["info"]),
        (0, "state: running\n".into(), String::new())
    );
    assert_eq!(
        run(&["--json", "info"]),
        (0, "{\"state\":\"running\"}\n".into(), String::new())
    );
    assert_eq!(
        run(&["shutdown"]),
        (0, "The VM is shut down.\n".into(), String::new())
    );
    let (code, out, err) = run(&["resize", "--cpus", "2"]);
    assert_eq!((code, out.as_str()), (1, ""));
    assert_eq!(
        err,
        "plugvm-remote: vm.resize is not implemented yet. (HTTP 501)\n"
    );
}

#[test]
fn api_shutdown_does_not_wait_for_clients_or_the_vmm() {
    let mut f = fixture(Behavior::Hold, quick_config());
    let idle = std::os::unix::net::UnixStream::connect(&f.path).unwrap();
    let path = f.path.clone();
    let pending = std::thread::spawn(move || {
        client::request(
            &path,
            "PUT",
            "/api/v1/vm.add-vcpu",
            None,
            Duration::from_secs(10),
        )
    });
    while f.seen.lock().unwrap().is_empty() {
        std::thread::sleep(Duration::from_millis(5));
    }
    let started = std::time::Instant::now();
    if let Some(server) = f.server.take() {
        server.shutdown();
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert!(!f.path.exists());
    let err = pending.join().unwrap().unwrap_err();
    assert!(err.to_string().contains("closed the connection"), "{err}");
    drop(idle);
    let err = client::request(
        &f.path,
        "GET",
        "/api/v1/vmm.ping",
        None,
        Duration::from_secs(1),
    )
    .unwrap_err();
    assert!(matches!(err, client::ClientError::Connect { .. }), "{err}");
}
