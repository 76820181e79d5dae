//! Tests of the socket's lifecycle, and of `plugvm-remote` against a live server.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::sync::mpsc;
use std::time::Duration;

use plugvm_remote::{cli, client};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::test_util::{fixture, get, quick_config, Behavior, TempDir};
use super::*;

#[test]
fn api_socket_is_private_exclusive_and_cleaned_up() {
    let mut f = fixture(Behavior::Normal, quick_config());
    let lock = socket_lock::lock_path(&f.path);
    for file in [&f.path, &lock] {
        let mode = std::fs::metadata(file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{}", file.display());
    }
    let mut leftovers: Vec<_> = std::fs::read_dir(&f.dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    leftovers.sort();
    assert_eq!(
        leftovers,
        ["api.sock", "api.sock.lock"],
        "only the socket and its lock are left in the directory"
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
    assert!(!lock.exists(), "and its lock");
}

#[test]
fn api_socket_has_one_owner_when_servers_start_at_once() {
    const SERVERS: usize = 10;
    let dir = TempDir::new();
    let path = dir.0.join("race.sock");
    for round in 0..10 {
        let barrier = std::sync::Barrier::new(SERVERS);
        let results: Vec<Result<ApiServerHandle, ApiError>> = std::thread::scope(|scope| {
            let starts: Vec<_> = (0..SERVERS)
                .map(|_| {
                    scope.spawn(|| {
                        let (tx, _rx) = mpsc::channel();
                        barrier.wait();
                        start(&path, tx, EventFd::new(EFD_NONBLOCK).unwrap())
                    })
                })
                .collect();
            starts.into_iter().map(|s| s.join().unwrap()).collect()
        });
        let (servers, refusals): (Vec<_>, Vec<_>) = results.into_iter().partition(Result::is_ok);
        assert_eq!(servers.len(), 1, "round {round}: {refusals:?}");
        for refusal in refusals {
            let err = refusal.unwrap_err();
            assert!(matches!(err, ApiError::InUse(_)), "round {round}: {err}");
            assert!(err.to_string().contains("in use"), "{err}");
        }
        // The winner's socket is the one at the path.
        assert_eq!(get(&path, "/api/v1/vmm.ping").status, 200);
        drop(servers);
        assert!(!path.exists() && !socket_lock::lock_path(&path).exists());
    }
}

#[test]
fn api_socket_lock_held_by_another_means_in_use_and_a_left_one_is_taken_over() {
    let dir = TempDir::new();
    let path = dir.0.join("locked.sock");
    let lock = socket_lock::lock_path(&path);
    let (tx, _rx) = mpsc::channel();
    // Another server's lock, with no socket (yet): the path is taken all the same.
    let other = std::fs::File::create(&lock).unwrap();
    rustix::fs::flock(&other, rustix::fs::FlockOperation::LockExclusive).unwrap();
    let err = start(&path, tx.clone(), EventFd::new(EFD_NONBLOCK).unwrap()).unwrap_err();
    assert!(matches!(err, ApiError::InUse(_)), "{err}");
    assert!(
        lock.exists() && !path.exists(),
        "the refusal touched nothing"
    );
    // The lock file of a server that died is unlocked: the next server takes it over.
    drop(other);
    let server = start(&path, tx.clone(), EventFd::new(EFD_NONBLOCK).unwrap()).unwrap();
    server.shutdown();
    assert!(!lock.exists() && !path.exists());
    // A link planted at the lock's path is not followed.
    let target = dir.0.join("elsewhere");
    std::os::unix::fs::symlink(&target, &lock).unwrap();
    let err = start(&path, tx, EventFd::new(EFD_NONBLOCK).unwrap()).unwrap_err();
    assert!(matches!(err, ApiError::Lock { .. }), "{err}");
    assert!(!target.exists() && !path.exists());
}

#[test]
fn api_socket_replaces_stale_sockets_and_refuses_other_files() {
    let dir = TempDir::new();
    let stale = dir.0.join("stale.sock");
    drop(UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    let (tx, _rx) = mpsc::channel();
    let server = start(&stale, tx.clone(), EventFd::new(EFD_NONBLOCK).unwrap()).unwrap();
    assert_eq!(get(&stale, "/api/v1/vmm.ping").status, 200);
    server.shutdown();

    let file = dir.0.join("file");
    std::fs::write(&file, b"keep me").unwrap();
    let err = start(&file, tx.clone(), EventFd::new(EFD_NONBLOCK).unwrap()).unwrap_err();
    assert!(matches!(err, ApiError::NotASocket(_)), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    assert!(
        !socket_lock::lock_path(&file).exists(),
        "a refusal leaves no lock file"
    );

    let err = start(
        &dir.0.join("no/such/dir.sock"),
        tx,
        EventFd::new(EFD_NONBLOCK).unwrap(),
    )
    .unwrap_err();
    assert!(matches!(err, ApiError::Lock { .. }), "{err}");
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
    assert!(!path.exists() && !socket_lock::lock_path(&path).exists());
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
