//! Tests of `plugvm-remote`'s argument parsing, requests and output.

use super::*;
use clap::error::ErrorKind;
use serde_json::json;

fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    let mut full = vec!["plugvm-remote", "--api-socket", "/tmp/x.sock"];
    full.extend_from_slice(args);
    Cli::try_parse_from(full)
}

fn request_of(args: &[&str]) -> (&'static str, String, Option<String>) {
    let cli = parse(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
    let (method, target, body) = to_request(&cli.command);
    (method, target, body.map(|b| String::from_utf8(b).unwrap()))
}

#[test]
fn api_cli_maps_commands_to_requests() {
    assert_eq!(
        request_of(&["ping"]),
        ("GET", "/api/v1/vmm.ping".into(), None)
    );
    assert_eq!(
        request_of(&["shutdown"]),
        ("PUT", "/api/v1/vm.shutdown".into(), None)
    );
    for (command, method, endpoint) in [
        ("shutdown-vmm", "PUT", "vmm.shutdown"),
        ("create", "PUT", "vm.create"),
        ("boot", "PUT", "vm.boot"),
        ("delete", "PUT", "vm.delete"),
        ("pause", "PUT", "vm.pause"),
        ("resume", "PUT", "vm.resume"),
        ("power-button", "PUT", "vm.power-button"),
        ("counters", "GET", "vm.counters"),
    ] {
        let args: Vec<&str> = if command == "create" {
            vec![command, "/tmp/vm.json"]
        } else {
            vec![command]
        };
        assert_eq!(
            request_of(&args),
            (method, format!("/api/v1/{endpoint}"), None),
            "{command}"
        );
    }
    assert_eq!(
        request_of(&["info", "--json"]),
        ("GET", "/api/v1/vm.info".into(), None)
    );
    assert_eq!(request_of(&["metrics"]), ("GET", "/metrics".into(), None));
    assert_eq!(
        request_of(&["add-vcpu"]),
        ("PUT", "/api/v1/vm.add-vcpu".into(), Some("{}".into()))
    );
    assert_eq!(
        request_of(&["add-vcpu", "3", "--no-wait"]),
        (
            "PUT",
            "/api/v1/vm.add-vcpu?wait=false".into(),
            Some(r#"{"id":3}"#.into())
        )
    );
    assert_eq!(
        request_of(&["remove-vcpu", "2"]),
        (
            "PUT",
            "/api/v1/vm.remove-vcpu".into(),
            Some(r#"{"id":2}"#.into())
        )
    );
    assert_eq!(
        request_of(&["resize", "--cpus", "4", "--memory", "2G", "--best-effort"]),
        (
            "PUT",
            "/api/v1/vm.resize".into(),
            Some(r#"{"desired_vcpus":4,"desired_ram":2147483648,"best_effort":true}"#.into())
        )
    );
    assert_eq!(
        request_of(&["resize", "--memory", "512M", "--no-wait"]),
        (
            "PUT",
            "/api/v1/vm.resize?wait=false".into(),
            Some(r#"{"desired_ram":536870912}"#.into())
        )
    );
    assert_eq!(
        request_of(&["add-memory", "128MiB"]),
        (
            "PUT",
            "/api/v1/vm.add-memory".into(),
            Some(r#"{"size":134217728}"#.into())
        )
    );
    assert_eq!(
        request_of(&["remove-memory", "1"]),
        (
            "PUT",
            "/api/v1/vm.remove-memory".into(),
            Some(r#"{"slot":1}"#.into())
        )
    );
    assert_eq!(
        request_of(&["transactions"]),
        ("GET", "/api/v1/hotplug/transactions".into(), None)
    );
    assert_eq!(
        request_of(&["--json", "transactions", "7"]),
        ("GET", "/api/v1/hotplug/transactions/7".into(), None)
    );
    assert_eq!(
        request_of(&["watch"]),
        ("GET", "/api/v1/events".into(), None)
    );
    assert_eq!(
        request_of(&["watch", "--since", "0"]),
        ("GET", "/api/v1/events?since=0".into(), None)
    );
}

#[test]
fn api_cli_parses_watch_options() {
    let cli = parse(&["watch", "--json", "--count", "3", "--until-idle", "1.5"]).unwrap();
    assert!(cli.json);
    assert_eq!(
        cli.command,
        Command::Watch(WatchArgs {
            since: None,
            count: Some(3),
            until_idle: Some(Duration::from_millis(1500)),
        })
    );
}

#[test]
fn api_cli_usage_errors_exit_2() {
    let cases: &[&[&str]] = &[
        &[],
        &["frobnicate"],
        &["resize"],
        &["resize", "--best-effort"],
        &["resize", "--cpus", "0"],
        &["resize", "--cpus", "-1"],
        &["remove-vcpu"],
        &["remove-vcpu", "x"],
        &["add-memory", "12Q"],
        &["add-memory", "0"],
        &["ping", "--no-wait"],
        &["transactions", "1", "2"],
        &["watch", "--count", "0"],
        &["watch", "--since", "-1"],
        &["watch", "--until-idle", "0"],
        &["watch", "--no-wait"],
    ];
    for args in cases {
        let err = parse(args).expect_err(&format!("{args:?} parsed"));
        assert_eq!(err.exit_code(), 2, "{args:?}");
    }
    let err = Cli::try_parse_from(["plugvm-remote", "ping"]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument);
    let help = Cli::try_parse_from(["plugvm-remote", "--help"]).unwrap_err();
    assert_eq!(help.exit_code(), 0);
}

#[test]
fn api_cli_parses_sizes() {
    assert_eq!(parse_size("4096"), Ok(4096));
    assert_eq!(parse_size("4k"), Ok(4096));
    assert_eq!(parse_size("1KiB"), Ok(1024));
    assert_eq!(parse_size("3m"), Ok(3 << 20));
    assert_eq!(parse_size("1T"), Ok(1 << 40));
    for bad in [
        "",
        "M",
        "1.5G",
        "-1",
        "1 G",
        "1X",
        "1IB",
        "99999999999T",
        "0G",
    ] {
        assert!(parse_size(bad).is_err(), "{bad}");
    }
}

#[test]
fn api_cli_renders_readable_output() {
    let ping = json!({"build_version": "b1", "version": "0.1.0", "pid": 42});
    assert_eq!(
        readable(&Command::Ping, &ping),
        "plugvm 0.1.0 (build b1), pid 42\n"
    );
    assert_eq!(
        readable(&Command::Shutdown, &Value::Null),
        "The VM is shut down.\n"
    );
    let info = json!({"state": "running", "vcpus": {"online": [0, 1]}, "tags": []});
    assert_eq!(
        readable(&Command::Info, &info),
        "state: running\ntags: []\nvcpus.online.0: 0\nvcpus.online.1: 1\n"
    );
}

#[test]
fn api_cli_missing_socket_is_one_line_and_exit_1() {
    let cli = Cli::try_parse_from([
        "plugvm-remote",
        "--api-socket",
        "/nonexistent/p.sock",
        "ping",
    ])
    .unwrap();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    assert_eq!(execute(&cli, &mut out, &mut err), 1);
    assert!(out.is_empty());
    assert_eq!(
        String::from_utf8(err).unwrap(),
        "plugvm-remote: cannot connect to /nonexistent/p.sock: No such file or directory\n"
    );
}
