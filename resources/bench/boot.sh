#!/usr/bin/env bash
# Boot benchmark: plugvm against QEMU/KVM, same guest, same machine, same run.
#
# Usage: resources/bench/boot.sh [--runs N] [--memory SIZE] [--cpus N]
#                                [--qemu-machine M]... [--warmup N] [--timeout SECS]
#                                [--settle SECS] [--extra-cmdline STR] [--vmlinux] [--no-build]
#                                [--keep-logs DIR]
#   --runs N          measured boots per VMM (default 5); plugvm and QEMU runs alternate
#                     (odd rounds plugvm first, even rounds QEMU first)
#   --memory SIZE     guest RAM, MiB or with an M/G suffix (default 128M)
#   --cpus N          boot vCPUs (default 1): Firecracker's reference config is 1 vCPU, 128 MiB
#   --qemu-machine M  QEMU's -M value, repeatable (default microvm, run as
#                     `microvm,pit=on,pic=on,rtc=on` like qemu-boot.sh; q35, pc or a full
#                     `-M` string such as `microvm,acpi=on` are accepted). The targets are
#                     judged against the first one.
#   --warmup N        unmeasured boots of each VMM first (default 1: page cache, 9p, THP)
#   --timeout SECS    per boot (default 120)
#   --settle SECS     after the guest's PLUGVM-RUN-BEGIN, wait this long before reading
#                     /proc/PID/{status,smaps} (default 1.5; the guest runs `sleep 3`)
#   --extra-cmdline STR  appended to the kernel command line of both VMMs (e.g. quiet)
#   --vmlinux         boot the uncompressed ELF vmlinux instead of the bzImage, in both VMMs
#                     (plugvm: ELF entry; QEMU: PVH entry of the same ELF) - what Firecracker's
#                     reference boot uses; skips the in-guest XZ decompression. QEMU 7.2's
#                     microvm hung after "ACPI: Core revision" with PVH here: use q35 with it
#   --cloud-hypervisor PATH  also boot Cloud Hypervisor (the binary at PATH) as a peer: it boots
#                     the ELF vmlinux (it has no bzImage loader) with --serial tty --console off;
#                     the binary is copied under target/ so that the test bed sees it, and a
#                     target line says whether plugvm reaches the ready line before it
#   --no-build        do not run `cargo build --release --bins` first (use the binary as it is)
#   --keep-logs DIR   keep every boot's console output and stderr in DIR (must be visible inside
#                     the test bed: e.g. under the repository)
#
# Both VMMs boot resources/guest-image.sh's kernel + initramfs with the command line
#   console=ttyS0 panic=-1 pci=off no-kvmapf plugvm.run=<base64 of: uptime; sleep 3>
# (no-kvmapf: see tests/src/guest.rs, GUEST_CMDLINE)
# plugvm:  target/release/plugvm --kernel K --initramfs I --cpus boot=N --memory size=SIZE
#          --serial stdio --cmdline ...
# QEMU:    qemu-system-x86_64 -enable-kvm -cpu host -M M -smp N -m SIZE -nodefaults
#          -no-user-config -nographic -no-reboot -serial stdio -kernel K -initrd I -append ...
# Measured per boot (times from just before the VMM process is spawned, on this side):
#   kernel_ms    -> the kernel's first console line ("Linux version": VMM set-up, firmware and
#                   decompression are done)
#   ready_ms     -> the PLUGVM-GUEST-READY console line
#   exit_ms      -> process exit after the guest's poweroff (includes the guest's `sleep 3`)
#   shutdown_ms  PLUGVM-RUN-END line -> process exit (poweroff path)
#   uptime_ms    the guest kernel's own /proc/uptime when its script starts
#   vmrss/vmhwm  VmRSS / VmHWM (KiB) from /proc/PID/status while the guest idles in `sleep 3`
#                (VmHWM: the last value polled before exit)
#   guest_kib    Rss of the guest-RAM mapping(s) in /proc/PID/smaps (anonymous, exactly the
#                guest memory size): the guest memory the guest touched
#   overhead_kib total smaps Rss - guest_kib: the VMM's own memory
#   ovh_anon_kib the anonymous part of it (heap, stacks; without shared libraries and binary text)
# stdout: one `boot-bench vmm=... run=...` line per boot, then a table of median/min per metric
# and VMM, the ratio plugvm/QEMU, and the targets (informational PASS/MISS):
#   plugvm ready_ms median <= 50% of QEMU's;  plugvm overhead median <= 5 MiB (Firecracker's bound)
# stderr: progress. Exit 0 when every boot succeeded, 1 when one failed (its console tail and
# stderr are shown), 2 on usage errors.
# Runs itself through resources/kvm-host.sh when this machine has no VMX/SVM (PVM /dev/kvm).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
RES="$(cd "$SCRIPT_DIR/.." && pwd -P)"
REPO="$(cd "$RES/.." && pwd -P)"

usage_err() {
    echo "boot-bench: $*" >&2
    echo "usage: boot.sh [--runs N] [--memory SIZE] [--cpus N] [--qemu-machine M]... [--warmup N] [--timeout SECS] [--settle SECS] [--extra-cmdline STR] [--vmlinux] [--cloud-hypervisor PATH] [--no-build] [--keep-logs DIR]" >&2
    exit 2
}

runs=5
memory=128M
cpus=1
machines=()
warmup=1
timeout_s=120
settle=1.5
extra_cmdline=""
build=1
keep_logs=""
vmlinux=0
ch=""
while [ $# -gt 0 ]; do
    case "$1" in
        --runs | --memory | --cpus | --qemu-machine | --warmup | --timeout | --settle | --extra-cmdline | --keep-logs | --cloud-hypervisor)
            [ $# -ge 2 ] || usage_err "$1 needs a value"
            case "$1" in
                --runs) runs="$2" ;;
                --memory) memory="$2" ;;
                --cpus) cpus="$2" ;;
                --qemu-machine) machines+=("$2") ;;
                --warmup) warmup="$2" ;;
                --timeout) timeout_s="$2" ;;
                --settle) settle="$2" ;;
                --extra-cmdline) extra_cmdline="$2" ;;
                --keep-logs) keep_logs="$2" ;;
                --cloud-hypervisor) ch="$2" ;;
            esac
            shift
            ;;
        --no-build) build=0 ;;
        --vmlinux) vmlinux=1 ;;
        -h | --help)
            sed -n '2,57p' "$0" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *) usage_err "unknown argument: $1" ;;
    esac
    shift
done
[ ${#machines[@]} -gt 0 ] || machines=(microvm)
for n in "$runs" "$cpus" "$warmup" "$timeout_s"; do
    [[ "$n" =~ ^[0-9]+$ ]] || usage_err "not a number: $n"
done
if [ "$runs" -lt 1 ] || [ "$cpus" -lt 1 ]; then usage_err "--runs and --cpus must be at least 1"; fi
[[ "$settle" =~ ^[0-9]+(\.[0-9]+)?$ ]] || usage_err "not a number: $settle"
# guest memory in MiB
if [[ "$memory" =~ ^([0-9]+)([MmGg]?)(i?B)?$ ]]; then
    memory_mib="${BASH_REMATCH[1]}"
    case "${BASH_REMATCH[2]}" in [Gg]) memory_mib=$((memory_mib * 1024)) ;; esac
else
    usage_err "--memory: expected MiB or a M/G suffix, got $memory"
fi
[ "$memory_mib" -ge 64 ] || usage_err "--memory: at least 64M"

if [ -z "${PLUGVM_KVMHOST_INSIDE:-}" ]; then
    # Outside the test bed: prepare the images and the binary here (fast), then re-run inside.
    "$RES/guest-image.sh" >/dev/null || { echo "boot-bench: guest-image.sh failed" >&2; exit 1; }
    if [ "$build" = 1 ]; then
        echo "boot-bench: cargo build --release --bins" >&2
        (cd "$REPO" && cargo build --release --bins) || { echo "boot-bench: build failed" >&2; exit 1; }
    fi
    args=(--runs "$runs" --memory "${memory_mib}M" --cpus "$cpus" --warmup "$warmup"
        --timeout "$timeout_s" --settle "$settle" --extra-cmdline "$extra_cmdline" --no-build)
    for m in "${machines[@]}"; do args+=(--qemu-machine "$m"); done
    [ "$vmlinux" = 0 ] || args+=(--vmlinux)
    if [ -n "$ch" ]; then
        [ -x "$ch" ] || usage_err "--cloud-hypervisor: $ch is not an executable"
        mkdir -p "$REPO/target/bench-peers"
        # (already there when a previous run copied it and this one was given that copy)
        [ "$ch" -ef "$REPO/target/bench-peers/cloud-hypervisor" ] ||
            cp -f "$ch" "$REPO/target/bench-peers/cloud-hypervisor"
        args+=(--cloud-hypervisor "$REPO/target/bench-peers/cloud-hypervisor")
    fi
    [ -z "$keep_logs" ] || args+=(--keep-logs "$(mkdir -p "$keep_logs" && cd "$keep_logs" && pwd -P)")
    boots=$(((runs + warmup) * (2 + ${#machines[@]})))
    cd "$REPO"
    exec "$RES/kvm-host.sh" --timeout $((300 + boots * timeout_s)) -- "$SCRIPT_DIR/$(basename "$0")" "${args[@]}"
fi

images="$("$RES/guest-image.sh")" || { echo "boot-bench: guest-image.sh failed" >&2; exit 1; }
if [ "$vmlinux" = 1 ]; then
    KERNEL="$(sed -n 's/^vmlinux=//p' <<<"$images")"
    [ -n "$KERNEL" ] || { echo "boot-bench: guest-image.sh gave no vmlinux" >&2; exit 1; }
else
    KERNEL="$(sed -n 's/^kernel=//p' <<<"$images")"
fi
INITRAMFS="$(sed -n 's/^initramfs=//p' <<<"$images")"
VMLINUX="$(sed -n 's/^vmlinux=//p' <<<"$images")"
[ -z "$ch" ] || [ -n "$VMLINUX" ] || { echo "boot-bench: Cloud Hypervisor needs the vmlinux" >&2; exit 1; }
PLUGVM="${CARGO_TARGET_DIR:-$REPO/target}/release/plugvm"
[ -c /dev/kvm ] || { echo "boot-bench: /dev/kvm missing" >&2; exit 1; }
[ -x "$PLUGVM" ] || { echo "boot-bench: $PLUGVM missing (cargo build --release --bins)" >&2; exit 1; }
command -v qemu-system-x86_64 >/dev/null || { echo "boot-bench: qemu-system-x86_64 missing" >&2; exit 1; }
command -v python3 >/dev/null || { echo "boot-bench: python3 needed" >&2; exit 1; }

firmware=()
for d in /usr/share/seabios /usr/share/qemu; do [ -d "$d" ] && firmware+=("$d"); done

export KERNEL INITRAMFS PLUGVM
BENCH_RUNS="$runs" BENCH_MEMORY_MIB="$memory_mib" BENCH_CPUS="$cpus" BENCH_WARMUP="$warmup" \
    BENCH_TIMEOUT="$timeout_s" BENCH_SETTLE="$settle" BENCH_EXTRA_CMDLINE="$extra_cmdline" \
    BENCH_KEEP_LOGS="$keep_logs" BENCH_FIRMWARE="$(printf '%s\n' "${firmware[@]}")" \
    BENCH_KERNEL_CACHE="$REPO/target/kernel-cache" BENCH_CH="$ch" BENCH_VMLINUX="$VMLINUX" \
    BENCH_MACHINES="$(printf '%s\n' "${machines[@]}")" \
    exec python3 - <<'PYEOF'
import base64, os, shutil, statistics, subprocess, sys, tempfile, threading, time

E = os.environ
KERNEL_CACHE = E["BENCH_KERNEL_CACHE"]
CH, VMLINUX = E["BENCH_CH"], E["BENCH_VMLINUX"]
RUNS, MEM_MIB, CPUS = int(E["BENCH_RUNS"]), int(E["BENCH_MEMORY_MIB"]), int(E["BENCH_CPUS"])
WARMUP, TIMEOUT, SETTLE = int(E["BENCH_WARMUP"]), float(E["BENCH_TIMEOUT"]), float(E["BENCH_SETTLE"])
EXTRA = E["BENCH_EXTRA_CMDLINE"].strip()
KEEP = E["BENCH_KEEP_LOGS"]
FIRMWARE = [d for d in E["BENCH_FIRMWARE"].split("\n") if d]
MACHINES = [m for m in E["BENCH_MACHINES"].split("\n") if m]
KERNEL, INITRAMFS, PLUGVM = E["KERNEL"], E["INITRAMFS"], E["PLUGVM"]
MMIO_HOLE_START_KIB = 0xC000_0000 // 1024  # plugvm splits boot RAM around the 32-bit hole

def log(msg):
    print(f"boot-bench: {msg}", file=sys.stderr, flush=True)

script = "cut -d' ' -f1 /proc/uptime; sleep 3\n"
cmdline = "console=ttyS0 panic=-1 pci=off no-kvmapf plugvm.run=" + base64.b64encode(script.encode()).decode()
if EXTRA:
    cmdline += " " + EXTRA

def machine_arg(m):
    # plain microvm: the configuration resources/bench/qemu-boot.sh proved with this guest
    return "microvm,pit=on,pic=on,rtc=on" if m == "microvm" else m

def vmm_cmd(vmm):
    if vmm == "plugvm":
        # The bzImage's vmlinux is extracted once (in the warm-up boot) and then cached.
        return [PLUGVM, "--kernel", KERNEL, "--kernel-cache", KERNEL_CACHE,
                "--initramfs", INITRAMFS, "--cpus", f"boot={CPUS}",
                "--memory", f"size={MEM_MIB}M", "--serial", "stdio", "--cmdline", cmdline]
    if vmm == CH_NAME:
        return [CH, "--kernel", VMLINUX, "--initramfs", INITRAMFS, "--cmdline", cmdline,
                "--cpus", f"boot={CPUS}", "--memory", f"size={MEM_MIB}M",
                "--serial", "tty", "--console", "off"]
    cmd = ["qemu-system-x86_64", "-enable-kvm", "-cpu", "host", "-M", machine_arg(vmm)]
    for d in FIRMWARE:
        cmd += ["-L", d]
    return cmd + ["-smp", str(CPUS), "-m", f"{MEM_MIB}M", "-nodefaults", "-no-user-config",
                  "-nographic", "-no-reboot", "-serial", "stdio",
                  "-kernel", KERNEL, "-initrd", INITRAMFS, "-append", cmdline]

CH_NAME = "cloud-hypervisor"

def label(vmm):
    return vmm if vmm in ("plugvm", CH_NAME) else "qemu-" + vmm

def read_status(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                out[k] = int(v.split()[0])
    return out

def read_smaps(pid):
    """[(size_kib, rss_kib, anonymous, name)] per mapping"""
    maps, cur = [], None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            first = line.split(None, 1)[0]
            if "-" in first and not first.endswith(":"):
                parts = line.split(None, 5)
                name = parts[5].strip() if len(parts) > 5 else ""
                cur = {"name": name, "size": 0, "rss": 0, "anon": 0}
                maps.append(cur)
            elif first == "Size:":
                cur["size"] = int(line.split()[1])
            elif first == "Rss:":
                cur["rss"] = int(line.split()[1])
            elif first == "Anonymous:":
                cur["anon"] = int(line.split()[1])
    return maps

def guest_mappings(maps):
    """The guest RAM: anonymous mapping(s) of exactly the guest memory size (plugvm splits RAM
    larger than 3 GiB around the MMIO hole; QEMU keeps one block)."""
    total = MEM_MIB * 1024
    anon = [m for m in maps if m["name"] in ("", "[anon]") or m["name"].startswith("[anon:")
            or m["name"].startswith("/memfd:")]
    exact = [m for m in anon if m["size"] == total]
    if exact:
        return [max(exact, key=lambda m: m["rss"])]
    if total > MMIO_HOLE_START_KIB:
        low = [m for m in anon if m["size"] == MMIO_HOLE_START_KIB]
        high = [m for m in anon if m["size"] == total - MMIO_HOLE_START_KIB]
        if low and high:
            return [low[0], high[0]]
    return []

def boot(vmm, tag, logdir):
    """One boot; returns (result dict or None, failure text)."""
    cmd = vmm_cmd(vmm)
    errpath = os.path.join(logdir, f"{tag}.stderr")
    conpath = os.path.join(logdir, f"{tag}.console")
    lines = []  # (ms, text)
    marks = {}
    begin_evt = threading.Event()
    with open(errpath, "wb") as err:
        t0 = time.monotonic()
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)

        def reader():
            for raw in iter(p.stdout.readline, b""):
                ms = (time.monotonic() - t0) * 1000.0
                text = raw.decode("utf-8", "replace").rstrip("\r\n").replace("\r", "")
                lines.append((ms, text))
                for key, pat in (("kernel", "Linux version"), ("ready", "PLUGVM-GUEST-READY"), ("begin", "PLUGVM-RUN-BEGIN"),
                                 ("end", "PLUGVM-RUN-END")):
                    if key not in marks and pat in text:
                        marks[key] = (ms, text)
                        if key == "begin":
                            begin_evt.set()
            begin_evt.set()  # EOF: stop waiting

        th = threading.Thread(target=reader, daemon=True)
        th.start()
        mem, smaps_err, hwm = None, None, [0]
        deadline = t0 + TIMEOUT
        if begin_evt.wait(max(0.0, deadline - time.monotonic())) and "begin" in marks:
            time.sleep(max(0.0, t0 + marks["begin"][0] / 1000.0 + SETTLE - time.monotonic()))
            try:
                st = read_status(p.pid)
                maps = read_smaps(p.pid)
                gm = guest_mappings(maps)
                total_rss = sum(m["rss"] for m in maps)
                anon_rss = sum(m["anon"] for m in maps)
                if gm:
                    g_rss = sum(m["rss"] for m in gm)
                    g_anon = sum(m["anon"] for m in gm)
                    mem = {"vmrss_kib": st["VmRSS"], "guest_kib": g_rss,
                           "overhead_kib": total_rss - g_rss, "ovh_anon_kib": anon_rss - g_anon}
                else:
                    big = sorted((m for m in maps if m["size"] >= 16384), key=lambda m: -m["size"])
                    smaps_err = "no anonymous mapping of %d KiB in smaps; large mappings: %s" % (
                        MEM_MIB * 1024, ", ".join(f"{m['size']}K rss={m['rss']}K {m['name'] or 'anon'}"
                                                  for m in big[:8]))
            except (OSError, KeyError, ValueError) as e:
                smaps_err = f"reading /proc/{p.pid}: {e}"
        # poll VmHWM until exit
        rc = None
        while True:
            rc = p.poll()
            if rc is not None:
                break
            if time.monotonic() > deadline:
                p.kill()
                rc = p.wait()
                rc = f"killed after {TIMEOUT:.0f}s timeout"
                break
            try:
                hwm[0] = max(hwm[0], read_status(p.pid).get("VmHWM", 0))
            except OSError:
                pass
            time.sleep(0.05)
        exit_ms = (time.monotonic() - t0) * 1000.0
        th.join(5)
    with open(conpath, "w") as f:
        f.writelines(f"{ms:9.1f} {text}\n" for ms, text in lines)

    problems = []
    if "ready" not in marks:
        problems.append("no PLUGVM-GUEST-READY")
    if "begin" not in marks:
        problems.append("no PLUGVM-RUN-BEGIN")
    if "end" not in marks or "rc=0" not in marks["end"][1]:
        problems.append("no 'PLUGVM-RUN-END rc=0'")
    if rc != 0:
        problems.append(f"exit status {rc}")
    if mem is None and not problems:
        problems.append(smaps_err or "memory not sampled")
    if problems:
        with open(errpath, "rb") as f:
            errtext = f.read().decode("utf-8", "replace")
        tail = "\n".join(f"  | {ms:8.1f} {t}" for ms, t in lines[-30:])
        errtail = "\n".join("  ! " + l for l in errtext.splitlines()[-20:])
        return None, (f"{label(vmm)} {tag}: " + "; ".join(problems) + f"\n  command: {' '.join(cmd[:6])} ...\n"
                      f"  console (last 30 lines, ms since start):\n{tail}\n  stderr:\n{errtail}")
    uptime = None
    bi = next(i for i, (_, t) in enumerate(lines) if "PLUGVM-RUN-BEGIN" in t)
    if bi + 1 < len(lines):
        try:
            uptime = float(lines[bi + 1][1].split()[0]) * 1000.0
        except (ValueError, IndexError):
            pass
    res = {"kernel_ms": marks["kernel"][0] if "kernel" in marks else None, "ready_ms": marks["ready"][0], "exit_ms": exit_ms,
           "shutdown_ms": exit_ms - marks["end"][0], "uptime_ms": uptime}
    res.update(mem)
    res["vmhwm_kib"] = hwm[0] or None
    return res, None

METRICS = [  # key, unit, fmt
    ("kernel_ms", "ms", "{:.0f}"), ("ready_ms", "ms", "{:.0f}"), ("exit_ms", "ms", "{:.0f}"), ("shutdown_ms", "ms", "{:.0f}"),
    ("uptime_ms", "ms", "{:.0f}"), ("vmrss_kib", "KiB", "{:.0f}"), ("vmhwm_kib", "KiB", "{:.0f}"),
    ("guest_kib", "KiB", "{:.0f}"), ("overhead_kib", "KiB", "{:.0f}"), ("ovh_anon_kib", "KiB", "{:.0f}"),
]

logdir = KEEP or tempfile.mkdtemp(prefix="boot-bench.")
os.makedirs(logdir, exist_ok=True)
PEERS = MACHINES + ([CH_NAME] if CH else [])
vmms = ["plugvm"] + PEERS
results = {v: [] for v in vmms}
failures = []
log(f"kernel {KERNEL}\nboot-bench: initramfs {INITRAMFS}\nboot-bench: plugvm {PLUGVM}")
log(f"{CPUS} vCPU, {MEM_MIB} MiB, {RUNS} measured + {WARMUP} warm-up boots per VMM "
    f"({', '.join(label(v) for v in vmms)}); kvm: {os.environ.get('PLUGVM_KVMHOST_INSIDE')}")
log(f"cmdline: {cmdline}")
total = (RUNS + WARMUP) * len(vmms)
n = 0
for rnd in range(WARMUP + RUNS):
    warm = rnd < WARMUP
    order = vmms if rnd % 2 == 0 else vmms[1:] + vmms[:1]
    for v in order:
        n += 1
        tag = f"{label(v)}.{'warmup' if warm else 'run'}{(rnd if warm else rnd - WARMUP) + 1}"
        log(f"[{n}/{total}] {tag} ...")
        res, fail = boot(v, tag, logdir)
        if fail:
            failures.append(fail)
            log("FAILED: " + fail)
            continue
        fmt = lambda k: "-" if res.get(k) is None else f"{res[k]:.0f}"
        line = " ".join(f"{k}={fmt(k)}" for k, _, _ in METRICS)
        log(f"[{n}/{total}] {tag}: {line}")
        if not warm:
            results[v].append(res)
            print(f"boot-bench vmm={label(v)} run={rnd - WARMUP + 1} {line}", flush=True)

def stat(v, k, fn):
    vals = [r[k] for r in results[v] if r.get(k) is not None]
    return fn(vals) if vals else None

def cell(x, fmt="{:.0f}"):
    return "-" if x is None else fmt.format(x)

print()
print(f"boot-bench: {CPUS} vCPU, {MEM_MIB} MiB guest, runs: " +
      ", ".join(f"{label(v)} {len(results[v])}/{RUNS}" for v in vmms) +
      f" (kvm {os.environ.get('PLUGVM_KVMHOST_INSIDE')})")
hdr = f"{'metric':<14}{'unit':<5}{'plugvm med':>11}{'min':>9}"
for m in PEERS:
    q = label(m)[:20]
    hdr += f" | {q + ' med':>24}{'min':>9}{'ratio med':>10}{'min':>7}"
print(hdr)
print("-" * len(hdr))
for k, unit, fmt in METRICS:
    pmed, pmin = stat("plugvm", k, statistics.median), stat("plugvm", k, min)
    row = f"{k:<14}{unit:<5}{cell(pmed):>11}{cell(pmin):>9}"
    for m in PEERS:
        qmed, qmin = stat(m, k, statistics.median), stat(m, k, min)
        rmed = pmed / qmed if pmed is not None and qmed else None
        rmin = pmin / qmin if pmin is not None and qmin else None
        row += f" | {cell(qmed):>24}{cell(qmin):>9}{cell(rmed, '{:.2f}'):>10}{cell(rmin, '{:.2f}'):>7}"
    print(row)
print()
ref = MACHINES[0]
pready, qready = stat("plugvm", "ready_ms", statistics.median), stat(ref, "ready_ms", statistics.median)
if pready is not None and qready:
    ratio = pready / qready
    print(f"target boot-to-ready <= 50% of {label(ref)}: plugvm {pready:.0f} ms / {qready:.0f} ms = "
          f"{ratio * 100:.0f}% -> {'PASS' if ratio <= 0.5 else 'MISS'}")
else:
    print(f"target boot-to-ready <= 50% of {label(ref)}: no data")
if CH:
    cready = stat(CH_NAME, "ready_ms", statistics.median)
    if pready is not None and cready:
        print(f"target boot-to-ready ahead of Cloud Hypervisor's (its vmlinux): plugvm {pready:.0f} ms / "
              f"{cready:.0f} ms = {pready / cready:.2f}x -> {'PASS' if pready < cready else 'MISS'}")
    else:
        print("target boot-to-ready ahead of Cloud Hypervisor's: no data")
povh = stat("plugvm", "overhead_kib", statistics.median)
pmax = stat("plugvm", "overhead_kib", max)
if povh is not None:
    print(f"target plugvm overhead <= 5 MiB (5120 KiB): median {povh:.0f} KiB (max {pmax:.0f}) -> "
          f"{'PASS' if povh <= 5120 else 'MISS'}")
else:
    print("target plugvm overhead <= 5 MiB: no data")
if KEEP:
    log(f"console logs and stderr kept in {logdir}")
else:
    shutil.rmtree(logdir, ignore_errors=True)
if failures:
    log(f"{len(failures)} boot(s) failed:")
    for f in failures:
        print(f, file=sys.stderr)
    sys.exit(1)
sys.exit(0)
PYEOF
