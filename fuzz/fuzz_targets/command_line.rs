//! plugvm's command line: made-up values for every option (sizes, CPU counts, serial and
//! event-monitor back ends, the API socket), in any order.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

const FLAGS: &[&str] = &[
    "--kernel",
    "--initramfs",
    "--cmdline",
    "--cpus",
    "--memory",
    "--serial",
    "--api-socket",
    "--event-monitor",
    "--log-file",
    "--log-format",
    "--guest-eject",
    "--kernel-cache",
    "--dump-acpi-tables",
    "-v",
];

#[derive(Debug, Arbitrary)]
struct Arg {
    flag: Option<u8>,
    value: String,
}

fuzz_target!(|args: Vec<Arg>| {
    let mut argv = vec!["plugvm".to_string()];
    for arg in args.into_iter().take(16) {
        if let Some(f) = arg.flag {
            argv.push(FLAGS[usize::from(f) % FLAGS.len()].to_string());
        }
        argv.push(arg.value);
    }
    vmm::fuzzing::parse_command_line(&argv);
});
