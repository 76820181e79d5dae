//! Boots Debian's stock kernel under plugvm (through the nested-KVM test bed where needed)
//! and checks what the guest itself reports.

use std::time::Duration;

use plugvm_tests::guest::{boot_guest, guest_image, GuestBoot, GuestRun};
use plugvm_tests::kvm_guest_test;

fn report(run: &GuestRun) -> String {
    format!(
        "exit={:?} timed_out={} script_rc={:?}\n--- stderr ---\n{}\n--- console (last 60 lines) ---\n{}",
        run.exit_code,
        run.timed_out,
        run.script_rc,
        run.stderr,
        run.console.lines().rev().take(60).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
    )
}

const MIB_KB: u64 = 1024;

kvm_guest_test! {
    /// `--cpus boot=2,max=4 --memory size=512M`: 2 CPUs online, 4 possible (2 hotpluggable),
    /// the RAM plugvm gave, no ACPI complaints, and `poweroff` ends plugvm with 0 within 30 s.
    /// Given the bzImage, plugvm boots the vmlinux from its `--kernel-cache`, where
    /// `guest-image.sh` put what plugvm's own extraction gives (`cli.rs` shows that extraction,
    /// byte for byte, and the cache hit; here the bed, which emulates every instruction, is
    /// spared the decompression and the boot shows the cached kernel is what runs).
    fn boots_debian_kernel_with_two_of_four_cpus() {
        let img = guest_image();
        let cache = img
            .kernel_cache
            .clone()
            .unwrap_or_else(|| panic!("guest-image.sh made no vmlinux, so no kernel cache"));
        let run = boot_guest(&GuestBoot {
            // The bzImage itself (other tests boot the vmlinux guest-image.sh extracted).
            kernel: Some(&img.kernel),
            kernel_cache: Some(&cache),
            rust_log: Some("warn,vmm::boot=info"),
            cpus: "boot=2,max=4",
            memory: "size=512M",
            script: "echo online=$(cat /sys/devices/system/cpu/online)\n\
                     echo possible=$(cat /sys/devices/system/cpu/possible)\n\
                     echo memtotal_kb=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)\n\
                     echo dmesg_memory=$(dmesg | grep -o 'Memory: [0-9]*K/[0-9]*K' | head -n1)\n\
                     echo hotplug_cpus=$(dmesg | grep -o 'Allowing [0-9]* CPUs, [0-9]* hotplug CPUs')\n\
                     dmesg | grep -E 'ACPI (BIOS )?(Error|Warning)'; true",
            ..Default::default()
        });
        let r = report(&run);
        let extracted = format!(
            "booting the vmlinux extracted from bzImage {} ({}",
            img.kernel.display(),
            cache.display()
        );
        assert!(run.stderr.contains(&extracted), "no {extracted:?}\n{r}");
        assert_eq!(run.script_rc, Some(0), "{r}");
        assert_eq!(run.value("online"), Some("0-1"), "{r}");
        assert_eq!(run.value("possible"), Some("0-3"), "{r}");
        assert_eq!(run.value("hotplug_cpus"), Some("Allowing 4 CPUs, 2 hotplug CPUs"), "{r}");

        // The RAM the kernel found (the E820 map plugvm wrote) is the 512 MiB asked for, less
        // the 384 KiB legacy hole below 1 MiB.
        let seen_kb: u64 = run
            .value("dmesg_memory")
            .and_then(|v| v.split('/').nth(1))
            .and_then(|v| v.trim_end_matches('K').parse().ok())
            .unwrap_or_else(|| panic!("no Memory: line\n{r}"));
        assert!((511 * MIB_KB..=512 * MIB_KB).contains(&seen_kb), "kernel saw {seen_kb} KiB\n{r}");
        // MemTotal is that minus what the kernel keeps for itself (its image, struct pages):
        // about 57 MiB for Debian's 6.1 kernel, so MemTotal lands near 455 MiB.
        let memtotal: u64 = run.value("memtotal_kb").and_then(|v| v.parse().ok()).unwrap_or(0);
        assert!(
            (440 * MIB_KB..=512 * MIB_KB).contains(&memtotal),
            "MemTotal {memtotal} KiB\n{r}"
        );

        // The console carries only the kernel's errors (GUEST_CMDLINE); the script printed
        // every ACPI error and warning of the kernel's log.
        assert!(run.acpi_problems().is_empty(), "ACPI problems: {:?}\n{r}", run.acpi_problems());
        assert_eq!(run.exit_code, Some(0), "poweroff must end plugvm with 0\n{r}");
        let end = run.end_to_exit.unwrap_or_else(|| panic!("no PLUGVM-RUN-END\n{r}"));
        assert!(end < Duration::from_secs(30), "poweroff took {end:?}\n{r}");
        eprintln!("ready after {:?}, poweroff to exit {:?}", run.ready_after, end);
    }
}

kvm_guest_test! {
    /// A guest kernel panic ends plugvm with its panic exit code and says so. The guest is
    /// the bzImage booted as one (`--kernel-cache off`): its own decompressor runs.
    fn guest_panic_ends_plugvm_with_an_error() {
        let img = guest_image();
        let off = std::path::Path::new("off");
        let run = boot_guest(&GuestBoot {
            kernel: Some(&img.kernel),
            kernel_cache: Some(off),
            rust_log: Some("warn,vmm::boot=info"),
            script: "echo c > /proc/sysrq-trigger; sleep 60",
            ..Default::default()
        });
        let r = report(&run);
        assert!(!run.timed_out, "{r}");
        assert_eq!(run.exit_code, Some(4), "{r}");
        assert!(run.stderr.contains("guest kernel panicked"), "{r}");
        assert!(run.stderr.contains("format=BzImage"), "not booted as a bzImage\n{r}");
    }
}

kvm_guest_test! {
    /// `reboot` in the guest ends plugvm with the documented reset exit code.
    fn guest_reboot_ends_plugvm_with_the_reset_code() {
        let run = boot_guest(&GuestBoot {
            script: "reboot -f; sleep 60",
            ..Default::default()
        });
        let r = report(&run);
        assert!(!run.timed_out, "{r}");
        assert_eq!(run.exit_code, Some(3), "{r}");
        assert!(run.stderr.contains("reset the machine"), "{r}");
    }
}

kvm_guest_test! {
    /// The same kernel as an uncompressed ELF vmlinux boots to the ready line.
    fn boots_elf_vmlinux() {
        let img = guest_image();
        let Some(vmlinux) = img.vmlinux.as_deref() else {
            panic!("resources/guest-image.sh did not extract a vmlinux");
        };
        let run = boot_guest(&GuestBoot {
            cpus: "boot=2,max=2",
            kernel: Some(vmlinux),
            script: "echo online=$(cat /sys/devices/system/cpu/online)",
            ..Default::default()
        });
        let r = report(&run);
        assert_eq!(run.value("online"), Some("0-1"), "{r}");
        assert_eq!(run.exit_code, Some(0), "{r}");
    }
}
