//! The serial console back ends other than stdio, on a real guest: `--serial file=PATH` writes
//! the console to a file, `--serial socket=PATH` gives it to a client of a Unix socket, both
//! ways.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use plugvm_tests::guest::{base64, guest_image, guest_test_binary, GUEST_CMDLINE, READY_LINE};
use plugvm_tests::{kvm_guest_test, ScratchDir};

const DEADLINE: Duration = Duration::from_secs(240);

fn spawn(serial: &str, script: &str) -> Child {
    let img = guest_image();
    let cmdline = format!("{GUEST_CMDLINE} plugvm.run={}", base64(script.as_bytes()));
    Command::new(guest_test_binary())
        .arg("--kernel")
        .arg(img.test_kernel())
        .arg("--initramfs")
        .arg(&img.initramfs)
        .args([
            "--memory",
            "size=256M",
            "--serial",
            serial,
            "--cmdline",
            &cmdline,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start plugvm: {e}"))
}

fn wait_exit(child: &mut Child) -> Option<i32> {
    let start = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return status.code();
        }
        if start.elapsed() > DEADLINE {
            let _ = plugvm_tests::kill_bounded(child, Duration::from_secs(5));
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

kvm_guest_test! {
    /// `--serial file=PATH`: the whole console lands in the file and nothing on stdout.
    fn serial_console_to_a_file() {
        let dir = ScratchDir::new("serial-file");
        let log = dir.join("console.log");
        let mut child = spawn(&format!("file={}", log.display()), "echo serial-file-ok");
        let code = wait_exit(&mut child);
        let mut stdout = String::new();
        if let Some(mut out) = child.stdout.take() {
            let _ = std::io::Read::read_to_string(&mut out, &mut stdout);
        }
        let console = std::fs::read_to_string(&log).unwrap_or_default();
        assert_eq!(code, Some(0), "console:\n{console}");
        assert!(console.contains(READY_LINE), "console:\n{console}");
        assert!(console.contains("serial-file-ok"), "console:\n{console}");
        assert!(console.contains("PLUGVM-RUN-END rc=0"), "console:\n{console}");
        assert!(!stdout.contains(READY_LINE), "stdout got the console: {stdout}");
    }
}

kvm_guest_test! {
    /// `--serial socket=PATH`: a client reads the console and what it types reaches the guest.
    fn serial_console_over_a_socket() {
        let dir = ScratchDir::new("serial-socket");
        let sock = dir.join("console.sock");
        let mut child = spawn(
            &format!("socket={}", sock.display()),
            "read -r line; echo \"got:$line\"",
        );
        let start = Instant::now();
        let stream = loop {
            match UnixStream::connect(&sock) {
                Ok(s) => break s,
                Err(_) if start.elapsed() < Duration::from_secs(30) => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("cannot connect to {}: {e}", sock.display()),
            }
        };
        stream
            .set_read_timeout(Some(DEADLINE))
            .unwrap_or_else(|e| panic!("set_read_timeout: {e}"));
        let mut writer = stream.try_clone().unwrap_or_else(|e| panic!("clone: {e}"));
        let mut seen = Vec::new();
        let mut sent = false;
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            let line = line.trim_end_matches('\r').to_string();
            if line.contains("PLUGVM-RUN-BEGIN") && !sent {
                writer
                    .write_all(b"hello-over-socket\n")
                    .unwrap_or_else(|e| panic!("write: {e}"));
                sent = true;
            }
            let done = line.starts_with("PLUGVM-RUN-END");
            seen.push(line);
            if done {
                break;
            }
        }
        let code = wait_exit(&mut child);
        let console = seen.join("\n");
        assert!(sent, "never saw the script start:\n{console}");
        assert!(seen.iter().any(|l| l == "got:hello-over-socket"), "console:\n{console}");
        assert_eq!(code, Some(0), "console:\n{console}");
    }
}
