//! The shell helpers of `resources/`, run for real with bash: `progress.sh`, which makes each
//! set-up step of `resources/demo.sh` one line of progress with its tools' output in a log.

use std::process::{Command, Output};
use std::time::Duration;

use plugvm_tests::{run_with_timeout, workspace_root, ScratchDir};

/// Runs `script` in bash (`set -euo pipefail`) after sourcing `resources/progress.sh` with
/// its logs in `dir`.
fn with_progress(dir: &ScratchDir, script: &str) -> Output {
    let helper = workspace_root().join("resources/progress.sh");
    let full = format!(
        "set -euo pipefail\nsource '{}'\nprogress_init '{}'\n{script}",
        helper.display(),
        dir.path().display()
    );
    run_with_timeout(
        Command::new("bash").args(["-c", &full]),
        Duration::from_secs(20),
    )
    .unwrap_or_else(|t| panic!("bash still running: {:?}", t.0))
}

#[test]
fn each_step_is_one_line_and_its_output_goes_to_its_log() {
    let dir = ScratchDir::new("progress");
    std::fs::write(dir.join("07-old-run.log"), "stale").unwrap();
    let out = with_progress(
        &dir,
        "step 'Installing packages (apt)' sh -c 'echo unpacking; echo warning >&2'\n\
         quiet() { echo from a function; }\n\
         step 'a function' quiet\n\
         echo after",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "after\n");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    assert!(
        lines[0].starts_with("==> Installing packages (apt)... done (")
            && lines[0].ends_with(" s)"),
        "{stderr}"
    );
    assert!(lines[1].starts_with("==> a function... done ("), "{stderr}");
    let log = std::fs::read_to_string(dir.join("01-installing-packages-apt.log")).unwrap();
    assert_eq!(log, "unpacking\nwarning\n");
    let log = std::fs::read_to_string(dir.join("02-a-function.log")).unwrap();
    assert_eq!(log, "from a function\n");
    assert!(
        !dir.join("07-old-run.log").exists(),
        "a previous run's log was kept"
    );
}

#[test]
fn a_failing_step_shows_the_end_of_its_log_and_exits_with_its_code() {
    let dir = ScratchDir::new("progress-fail");
    let out = with_progress(
        &dir,
        "step 'building' sh -c 'for i in $(seq 1 40); do echo line $i; done; exit 3'\n\
         echo not reached",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(
        lines[0].starts_with("==> building... FAILED (exit code 3 after "),
        "{stderr}"
    );
    assert!(lines[1].contains("01-building.log"), "{stderr}");
    // The last 25 lines, marked as the tool's.
    assert_eq!(lines.len(), 2 + 25, "{stderr}");
    assert_eq!(lines[2], "    | line 16");
    assert_eq!(lines[26], "    | line 40");

    let out = with_progress(
        &dir,
        "PROGRESS_TAIL=2 step 'missing tool' no-such-command-here",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(127), "{out:?}");
    assert!(stderr.contains("no-such-command-here"), "{stderr}");
}
