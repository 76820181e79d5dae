#!/usr/bin/env bash
# Hotplug benchmark: plugvm against QEMU/KVM, CPU and memory hotplug, same guest, same run.
#
# Usage: resources/bench/hotplug.sh [--ops N] [--cpu-only|--memory-only] [--mem-sizes LIST]
#                                   [--mem-reps N] [--touch-mb MB] [--qemu-machine M]
#                                   [--timeout SECS] [--guest-trace] [--no-build] [--keep-logs DIR]
#   --ops N          CPU hot-add + hot-remove pairs per VMM (default 20; vCPU ids cycle 1..3)
#   --cpu-only       only the CPU part        --memory-only   only the memory part
#   --mem-sizes LIST hot-added memory sizes, comma separated, multiples of 128M
#                    (default 128M,1G,4G)
#   --mem-reps N     repetitions of each size (default 3; each add is removed again)
#   --touch-mb MB    after each memory add the guest writes min(MB, size/2) MiB to its tmpfs
#                    (default 128; page cache prefers the hot-added ZONE_MOVABLE memory), so
#                    that the RSS after the removal shows whether the host got it back; 0: off
#   --qemu-machine M QEMU's -M (default q35, like qemu-hotplug.sh; pc also works)
#   --plugvm-memory-opts OPTS  appended to plugvm's --memory, e.g. thp=off or hugepages=on
#                    (hugepages=on: the script reserves the outer VM's huge page pool)
#   --timeout SECS   per operation (default 180)
#   --guest-trace    also measure the guest's side of every operation from inside the guest
#                    (ftrace kprobes on the ACPI interpreter, the hotplug worker and the memory and
#                    RCU calls; see "Guest-side trace" below); costs each probe hit a few
#                    microseconds, so take the ratios from a run without it
#   --no-build       do not run `cargo build --release --bins` first
#   --keep-logs DIR  keep both consoles (timestamped) and the VMMs' stderr in DIR (must be
#                    visible inside the test bed, e.g. under target/)
#
# Both VMs run at the same time (booted one after the other) with the same kernel, initramfs
# and command line (console=ttyS0 quiet panic=-1 pci=off no-kvmapf plugvm.run=<command loop>;
# no-kvmapf: see tests/src/guest.rs, GUEST_CMDLINE):
#   plugvm: --cpus boot=1,max=4 --memory size=512M,hotplug_size=H,hotplug_slots=8 --api-socket
#   QEMU:   -enable-kvm -cpu host -M q35 -smp 1,maxcpus=4 -m 512M,slots=8,maxmem=512M+H
# (H: the largest --mem-sizes value rounded up to a GiB, plus 1 GiB). Operations alternate
# between the two VMMs (odd rounds plugvm first, even rounds QEMU first); only one operation
# runs at a time, the other guest idles in its console command loop.
# Measured on this side (time.monotonic around the requests, console lines timestamped by a
# reader thread):
#   CPU (ids 1..3 in turn: add id, wait, remove id, wait; N times)
#     add    plugvm: PUT vm.add-vcpu sent -> response (= commit; the VMM answers after the
#                    guest's _OST)                QEMU: device_add sent -> ACPI_DEVICE_OST(1,..)
#            both:   request -> the guest's `PLUGVM-HOTPLUG cpuN online` console line
#     remove plugvm: PUT vm.remove-vcpu -> response (commit, after _EJ0 and _OST(3,0));
#                    also request -> _EJ0 from the journal     QEMU: device_del -> DEVICE_DELETED
#     plugvm's journal (the transaction record in the response): per-phase durations and the
#     VMM's own share = (duration_us - await_guest) / duration_us; vm.info's
#     register_accesses.cpu_hotplug before the request and after the guest is done (its
#     console command loop answered) = register accesses (VM exits) per operation.
#   memory (each size, --mem-reps times: add, touch, remove)
#     add    plugvm: PUT vm.add-memory -> response      QEMU: object-add memory-backend-ram sent ->
#                    ACPI_DEVICE_OST of device_add pc-dimm;  both: -> the last block's
#                    `PLUGVM-HOTPLUG memoryN online_movable` line (all size/128M blocks online)
#     remove plugvm: PUT vm.remove-memory -> response   QEMU: device_del -> DEVICE_DELETED,
#                    plus object-del (backing freed)
#     RSS    VmRSS of the VMM process before the add, after add + touch, 1 s after the removal;
#            for plugvm also the Rss of the slot's mapping and of the boot-RAM mapping (the
#            guest's own memory: Linux allocates the hot-added memory's struct pages there,
#            about 1.6% of the size, and those host pages stay resident after the removal;
#            later adds reuse them)
# Checked on the way (a failure ends the run): the guest has 2 CPUs online after each CPU add
# and only CPU 0 after each removal; MemTotal grows by the size and comes back. RUST_LOG is
# passed to plugvm (its log lands in the --keep-logs folder).
# stdout: one `hotplug-bench vmm=... op=...` line per operation, then the tables (p50/p95 for
# CPU, median/max for memory, ratio plugvm/QEMU) and the targets, PASS/MISS (informational):
#   CPU hot-add p50 request->commit <= 50% of QEMU's device_add->ACPI_DEVICE_OST p50;
#   VMM's own phases (all but await_guest) < 1% of the transaction (p50, add and remove);
#   memory hot-add 1 GiB request->commit (median) <= 50% of QEMU's;
#   plugvm VmRSS after each removal within 2 MiB of before its add.
# Guest-side trace (--guest-trace): in both guests (same kernel), the interval from the ACPI
# interrupt (irq_handler_entry of the GED, or of the SCI for QEMU's GPE) to the return of the
# register write that delivers the guest's last _OST, split into: the event method (interrupt ->
# the scan's Notify), the notify and hotplug workqueues (Notify -> acpi_device_hotplug), the
# hotplug worker (-> the last _OST; of which RCU grace periods (synchronize_rcu) and, for memory,
# arch_add_memory), and the register accesses (VM exits: every SystemIO access, and SystemMemory
# accesses outside plugvm's status page) with their time in the guest. One
# `hotplug-bench-guest` line per operation, then a median table per VMM.
# stderr: progress. Exit 0 when every operation succeeded, 1 when one failed (console tail and
# stderr shown), 2 on usage errors. Numbers are only comparable within one run (see README.md).
# Runs itself through resources/kvm-host.sh when this machine has no VMX/SVM (PVM /dev/kvm).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
RES="$(cd "$SCRIPT_DIR/.." && pwd -P)"
REPO="$(cd "$RES/.." && pwd -P)"

usage_err() {
    echo "hotplug-bench: $*" >&2
    echo "usage: hotplug.sh [--ops N] [--cpu-only|--memory-only] [--mem-sizes LIST] [--mem-reps N] [--touch-mb MB] [--qemu-machine M] [--timeout SECS] [--guest-trace] [--no-build] [--keep-logs DIR]" >&2
    exit 2
}

ops=20
parts=both
mem_sizes=128M,1G,4G
mem_reps=3
touch_mb=128
machine=q35
timeout_s=180
build=1
keep_logs=""
mem_opts=""
guest_trace=0
while [ $# -gt 0 ]; do
    case "$1" in
        --ops | --mem-sizes | --mem-reps | --touch-mb | --qemu-machine | --timeout | --keep-logs | --plugvm-memory-opts)
            [ $# -ge 2 ] || usage_err "$1 needs a value"
            case "$1" in
                --ops) ops="$2" ;;
                --mem-sizes) mem_sizes="$2" ;;
                --mem-reps) mem_reps="$2" ;;
                --touch-mb) touch_mb="$2" ;;
                --qemu-machine) machine="$2" ;;
                --timeout) timeout_s="$2" ;;
                --keep-logs) keep_logs="$2" ;;
                --plugvm-memory-opts) mem_opts="$2" ;;
            esac
            shift
            ;;
        --cpu-only) parts=cpu ;;
        --memory-only) parts=memory ;;
        --no-build) build=0 ;;
        --guest-trace) guest_trace=1 ;;
        -h | --help)
            sed -n '2,76p' "$0" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *) usage_err "unknown argument: $1" ;;
    esac
    shift
done
for n in "$ops" "$mem_reps" "$touch_mb" "$timeout_s"; do
    [[ "$n" =~ ^[0-9]+$ ]] || usage_err "not a number: $n"
done
if [ "$ops" -lt 1 ] || [ "$mem_reps" -lt 1 ] || [ "$timeout_s" -lt 1 ]; then
    usage_err "--ops, --mem-reps and --timeout must be at least 1"
fi
# memory sizes -> MiB, multiples of 128 MiB (the guest's memory block size)
mem_mib=()
max_mib=0
IFS=, read -r -a size_list <<<"$mem_sizes"
for s in "${size_list[@]}"; do
    [[ "$s" =~ ^([0-9]+)([MmGg])(i?B)?$ ]] || usage_err "--mem-sizes: expected NM or NG, got '$s'"
    m="${BASH_REMATCH[1]}"
    case "${BASH_REMATCH[2]}" in [Gg]) m=$((m * 1024)) ;; esac
    if [ "$m" -lt 128 ] || [ $((m % 128)) -ne 0 ]; then
        usage_err "--mem-sizes: $s is not a multiple of 128M"
    fi
    mem_mib+=("$m")
    [ "$m" -le "$max_mib" ] || max_mib="$m"
done
[ ${#mem_mib[@]} -gt 0 ] || usage_err "--mem-sizes: empty"
# hotplug area: the largest size rounded up to a GiB, plus 1 GiB
hotplug_mib=$(((max_mib + 1023) / 1024 * 1024 + 1024))

if [ -z "${PLUGVM_KVMHOST_INSIDE:-}" ]; then
    # Outside the test bed: prepare the images and the binaries here (fast), then re-run inside.
    "$RES/guest-image.sh" --no-vmlinux >/dev/null || { echo "hotplug-bench: guest-image.sh failed" >&2; exit 1; }
    if [ "$build" = 1 ]; then
        echo "hotplug-bench: cargo build --release --bins" >&2
        (cd "$REPO" && cargo build --release --bins) || { echo "hotplug-bench: build failed" >&2; exit 1; }
    fi
    args=(--ops "$ops" --mem-sizes "$mem_sizes" --mem-reps "$mem_reps" --touch-mb "$touch_mb"
        --qemu-machine "$machine" --timeout "$timeout_s" --no-build)
    [ -z "$mem_opts" ] || args+=(--plugvm-memory-opts "$mem_opts")
    [ "$guest_trace" = 0 ] || args+=(--guest-trace)
    case "$parts" in cpu) args+=(--cpu-only) ;; memory) args+=(--memory-only) ;; esac
    [ -z "$keep_logs" ] || args+=(--keep-logs "$(mkdir -p "$keep_logs" && cd "$keep_logs" && pwd -P)")
    # The outer VM must hold both guests and pass plugvm's check that boot RAM + hotplug area
    # fit in the host's memory (its RAM is only allocated when touched).
    outer_mib=$((512 + hotplug_mib + 2048))
    [ "$outer_mib" -ge 8192 ] || outer_mib=8192
    cd "$REPO"
    exec "$RES/kvm-host.sh" --memory "$outer_mib" --timeout $((900 + (ops * 8 + mem_reps * ${#mem_mib[@]} * 40) * 2 * 5)) \
        -- "$SCRIPT_DIR/$(basename "$0")" "${args[@]}"
fi

images="$("$RES/guest-image.sh" --no-vmlinux)" || { echo "hotplug-bench: guest-image.sh failed" >&2; exit 1; }
KERNEL="$(sed -n 's/^kernel=//p' <<<"$images")"
INITRAMFS="$(sed -n 's/^initramfs=//p' <<<"$images")"
PLUGVM="${CARGO_TARGET_DIR:-$REPO/target}/release/plugvm"
[ -c /dev/kvm ] || { echo "hotplug-bench: /dev/kvm missing" >&2; exit 1; }
[ -x "$PLUGVM" ] || { echo "hotplug-bench: $PLUGVM missing (cargo build --release --bins)" >&2; exit 1; }
command -v qemu-system-x86_64 >/dev/null || { echo "hotplug-bench: qemu-system-x86_64 missing" >&2; exit 1; }
command -v python3 >/dev/null || { echo "hotplug-bench: python3 needed" >&2; exit 1; }

if [[ ",$mem_opts," == *",hugepages=on,"* ]]; then
    # The pool holds the boot RAM and the largest add (2 MiB pages), plus a few spare.
    echo $(((512 + max_mib) / 2 + 8)) >/proc/sys/vm/nr_hugepages ||
        { echo "hotplug-bench: cannot size the huge page pool" >&2; exit 1; }
    grep -E '^HugePages_(Total|Free)' /proc/meminfo >&2
fi

firmware=()
for d in /usr/share/seabios /usr/share/qemu; do [ -d "$d" ] && firmware+=("$d"); done

export KERNEL INITRAMFS PLUGVM
BENCH_OPS="$ops" BENCH_PARTS="$parts" BENCH_MEM_MIB="${mem_mib[*]}" BENCH_MEM_REPS="$mem_reps" \
    BENCH_TOUCH_MB="$touch_mb" BENCH_MACHINE="$machine" BENCH_TIMEOUT="$timeout_s" \
    BENCH_HOTPLUG_MIB="$hotplug_mib" BENCH_KEEP_LOGS="$keep_logs" BENCH_MEM_OPTS="$mem_opts" \
    BENCH_REPO="$REPO" BENCH_GUEST_TRACE="$guest_trace" \
    BENCH_FIRMWARE="$(printf '%s\n' "${firmware[@]}")" \
    exec python3 - <<'PYEOF'
import base64, json, os, queue, re, shutil, socket, statistics, subprocess, sys, tempfile
import threading, time

E = os.environ
OPS, PARTS, MEM_REPS = int(E["BENCH_OPS"]), E["BENCH_PARTS"], int(E["BENCH_MEM_REPS"])
MEM_MIB = [int(x) for x in E["BENCH_MEM_MIB"].split()]
TOUCH_MB, MACHINE, TIMEOUT = int(E["BENCH_TOUCH_MB"]), E["BENCH_MACHINE"], float(E["BENCH_TIMEOUT"])
HOTPLUG_MIB, KEEP = int(E["BENCH_HOTPLUG_MIB"]), E["BENCH_KEEP_LOGS"]
FIRMWARE = [d for d in E["BENCH_FIRMWARE"].split("\n") if d]
KERNEL, INITRAMFS, PLUGVM = E["KERNEL"], E["INITRAMFS"], E["PLUGVM"]
BOOT_MIB = 512
KERNEL_CACHE = os.path.join(E["BENCH_REPO"], "target", "kernel-cache")
MEM_OPTS = E.get("BENCH_MEM_OPTS", "")
CPU_IDS = [1, 2, 3]
MIB = 1 << 20
RSS_SETTLE = 1.0  # seconds between a memory removal and reading the RSS (deferred frees)


def log(msg):
    print("hotplug-bench: " + msg, file=sys.stderr, flush=True)


def now():
    return time.monotonic()


class BenchError(Exception):
    pass


# The guest runs a command loop on its console (echo off), driven from here.
GUEST_LOOP = r'''stty -echo 2>/dev/null
echo PLUGVM-BENCH-CMDLOOP
while IFS= read -r c; do
  [ "$c" = exit ] && break
  eval "$c"
  echo PLUGVM-BENCH-DONE
done
'''
CMDLINE = "console=ttyS0 quiet panic=-1 pci=off no-kvmapf plugvm.run=" + base64.b64encode(GUEST_LOOP.encode()).decode()

# --guest-trace: kprobes and one tracepoint in the guest (the same kernel under both VMMs).
# Each line below must stay one shell line: the guest's command loop evaluates a line at a time.
GUEST_TRACE = E.get("BENCH_GUEST_TRACE") == "1"
TRACEFS = "/sys/kernel/tracing"
TRACE_PROBES = [
    "p:hp acpi_device_hotplug",
    "p:ost acpi_evaluate_ost",
    "p:qn acpi_ev_queue_notify_request",
    "p:memh acpi_ex_system_memory_space_handler fn=%di:u32 addr=%si:x64",
    "r:memhr acpi_ex_system_memory_space_handler",
    "p:ioh acpi_ex_system_io_space_handler fn=%di:u32 addr=%si:x64",
    "r:iohr acpi_ex_system_io_space_handler",
    "p:rcu synchronize_rcu",
    "r:rcur synchronize_rcu",
    "p:aam arch_add_memory",
    "r:aamr arch_add_memory",
]
# One guest command each (short lines: the consoles take a line at a time).
TRACE_SETUP = (
    [f"mount -t tracefs nodev {TRACEFS} 2>/dev/null; echo 0 > {TRACEFS}/tracing_on",
     f"echo 1024 > {TRACEFS}/buffer_size_kb"]
    + [f"echo '{p}' >> {TRACEFS}/kprobe_events || echo 'TRACE-PROBE-FAILED {p}'" for p in TRACE_PROBES]
    + [f"echo 1 > {TRACEFS}/events/kprobes/enable || echo TRACE-PROBE-FAILED kprobes",
       f"echo 'name == \"ACPI:Ged\" || name == \"acpi\"' > {TRACEFS}/events/irq/irq_handler_entry/filter"
       " || echo TRACE-PROBE-FAILED irq filter",
       f"echo 1 > {TRACEFS}/events/irq/irq_handler_entry/enable; echo 1 > {TRACEFS}/tracing_on"])
# One compact line per trace entry: TR pid seconds event [name=value ...]
TRACE_DUMP = (
    "awk '$1 !~ /^#/ && NF >= 5 { n = split($1, a, \"-\"); t = $4; sub(/:$/, \"\", t); "
    "e = $5; sub(/:$/, \"\", e); l = \"TR \" a[n] \" \" t \" \" e; "
    "for (i = 6; i <= NF; i++) if ($i ~ /^[a-z]+=/) l = l \" \" $i; print l }' "
    f"{TRACEFS}/trace; echo > {TRACEFS}/trace")
# plugvm's status page (acpi::layout::status_page): reading it is plain memory, no VM exit.
STATUS_PAGE = (0xFE000, 0xFF000)


def parse_trace(lines):
    """[(pid, t_s, event, {name: value})] from TRACE_DUMP's lines"""
    out = []
    for l in lines:
        f = l.split()
        if len(f) < 4 or f[0] != "TR":
            continue
        try:
            t = float(f[2])
        except ValueError:
            continue
        args = dict(a.split("=", 1) for a in f[4:] if "=" in a)
        out.append((f[1], t, f[3], args))
    return out


def guest_breakdown(events):
    """The guest's side of one operation (ms), from the ACPI interrupt to the return of the
    register write that delivered its last _OST; None when the trace has no complete one."""
    start = next((t for _, t, e, a in events if e == "irq_handler_entry"), None)
    osts = [(pid, t) for pid, t, e, _ in events if e == "ost"]
    if start is None or not osts:
        return None
    ost_pid, ost_t = osts[-1]
    # Register accesses: entry/return pairs per task (the interpreter does not nest them).
    open_acc, accesses = {}, []
    for pid, t, e, a in events:
        if e in ("memh", "ioh"):
            addr = int(a.get("addr", "0"), 16)
            exit_ = e == "ioh" or not STATUS_PAGE[0] <= addr < STATUS_PAGE[1]
            open_acc[pid] = (t, exit_, a.get("fn") == "1")
        elif e in ("memhr", "iohr") and pid in open_acc:
            t0, exit_, write = open_acc.pop(pid)
            accesses.append((pid, t0, t, exit_, write))
    end = next((t1 for pid, t0, t1, ex, w in accesses if pid == ost_pid and t0 >= ost_t and w), None)
    if end is None:
        return None
    notify = next((t for _, t, e, _ in events if e == "qn" and t >= start), None)
    worker = next((t for _, t, e, _ in events if e == "hp" and notify is not None and t >= notify), None)
    exits = [(t0, t1) for _, t0, t1, ex, _ in accesses if ex and start <= t0 <= end]

    def spans(b, e_):
        """summed durations of b -> e_ pairs in the hotplug worker, inside the window"""
        total, opened = 0.0, None
        for pid, t, e, _ in events:
            if pid != ost_pid or not start <= t <= end:
                continue
            if e == b:
                opened = t
            elif e == e_ and opened is not None:
                total, opened = total + (t - opened), None
        return total * 1e3

    ms = lambda a, b: (b - a) * 1e3 if a is not None and b is not None else None
    return {"total": ms(start, end), "event_method": ms(start, notify), "to_worker": ms(notify, worker),
            "worker": ms(worker, ost_t), "rcu": spans("rcu", "rcur"), "arch_add_memory": spans("aam", "aamr"),
            "ost_write": ms(ost_t, end), "exits": len(exits), "exit_ms": sum(b - a for a, b in exits) * 1e3}



def read_status_kib(pid, key="VmRSS"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise BenchError(f"no {key} in /proc/{pid}/status")


def anon_huge_kib(pid):
    """KiB of the process's memory on transparent huge pages (AnonHugePages, all mappings).
    The guest's own faults are KVM's, which the process's fault counters do not see: how much of
    the guest's touch landed on huge pages is what THP changes."""
    total = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("AnonHugePages:"):
                total += int(line.split()[1])
    return total


def read_smaps(pid):
    """[(start, end, rss_kib)] of the anonymous read-write mappings, by address. Linux merges
    adjacent anonymous mappings (guest RAM with a malloc arena next to it, a slot with its
    neighbour), so guest memory is found by address range, not by mapping size."""
    out, cur = [], None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            first = line.split(None, 1)[0]
            if "-" in first and not first.endswith(":"):
                parts = line.split(None, 5)
                name = parts[5].strip() if len(parts) > 5 else ""
                cur = None
                if (name == "" or name.startswith("[anon")) and parts[1].startswith("rw"):
                    a, b = first.split("-")
                    cur = [int(a, 16), int(b, 16), 0]
                    out.append(cur)
            elif cur is not None and first == "Rss:":
                cur[2] = int(line.split()[1])
    return [tuple(m) for m in out]


def overlapping(maps, lo, hi):
    return [m for m in maps if m[0] < hi and m[1] > lo]


def new_range(before, after, size):
    """the address range of `size` bytes mapped between two read_smaps snapshots (None if not
    found): after's ranges minus before's, the piece of that size"""
    pieces = []
    for a0, a1, _ in after:
        cuts = sorted((max(b0, a0), min(b1, a1)) for b0, b1, _ in overlapping(before, a0, a1))
        pos = a0
        for c0, c1 in cuts:
            if c0 > pos:
                pieces.append((pos, c0))
            pos = max(pos, c1)
        if pos < a1:
            pieces.append((pos, a1))
    exact = [p for p in pieces if p[1] - p[0] == size]
    return exact[0] if exact else None


def range_rss_delta(before, after, rng):
    """Rss (KiB) gained by the mapping(s) holding rng: Rss of the after-mappings overlapping it
    minus the before-mappings inside those (the merged neighbours' own pages)"""
    if rng is None:
        return None
    vmas = overlapping(after, *rng)
    if not vmas:
        return None
    lo, hi = min(m[0] for m in vmas), max(m[1] for m in vmas)
    return sum(m[2] for m in vmas) - sum(m[2] for m in before if m[0] >= lo and m[1] <= hi)


class Vmm:
    """A running VMM with the guest's console on stdin/stdout."""

    name = "?"

    def start(self, cmd, tmp):
        self.tmp = tmp
        self.errpath = os.path.join(tmp, f"{self.name}.stderr")
        self.t_start = now()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=open(self.errpath, "wb"))
        self.console = []          # (t, line)
        self.lines = queue.Queue()  # console lines other than PLUGVM-HOTPLUG
        self.hotplug = queue.Queue()  # PLUGVM-HOTPLUG lines
        threading.Thread(target=self._reader, daemon=True).start()

    def _reader(self):
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\r\n").replace("\r", "")
            t = now()
            self.console.append((t, line))
            (self.hotplug if line.startswith("PLUGVM-HOTPLUG ") else self.lines).put((t, line))
        self.lines.put((now(), None))
        self.hotplug.put((now(), None))

    def failure_text(self):
        tail = "\n".join("  | %8.3f %s" % (t - self.t_start, l) for t, l in self.console[-30:])
        try:
            with open(self.errpath, "rb") as f:
                err = f.read().decode("utf-8", "replace").splitlines()[-20:]
        except OSError:
            err = []
        return (f"--- {self.name}: console (last 30 lines, s since start):\n{tail}\n"
                f"--- {self.name}: stderr:\n" + "\n".join("  ! " + l for l in err))

    def wait_line(self, q, pred, what, timeout=None):
        deadline = now() + (timeout or TIMEOUT)
        while True:
            left = deadline - now()
            if left <= 0:
                raise BenchError(f"{self.name}: timeout waiting for {what}")
            try:
                t, line = q.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                q.put((t, None))
                raise BenchError(f"{self.name}: VMM exited while waiting for {what}")
            if pred(line):
                return t, line

    def drain_hotplug(self):
        while True:
            try:
                t, line = self.hotplug.get_nowait()
            except queue.Empty:
                return
            if line is None:
                self.hotplug.put((t, None))
                return

    def wait_online(self, prefix, count, what):
        """times of `count` PLUGVM-HOTPLUG lines starting with prefix; the last one's time"""
        t = None
        for _ in range(count):
            t, line = self.wait_line(self.hotplug, lambda l: l.startswith("PLUGVM-HOTPLUG " + prefix),
                                     what)
            if "failed" in line:
                raise BenchError(f"{self.name}: guest: {line}")
        return t

    def guest(self, cmd):
        """run a shell command in the guest; its output lines"""
        self.proc.stdin.write((cmd + "\n").encode())
        self.proc.stdin.flush()
        out = []
        while True:
            _, line = self.wait_line(self.lines, lambda l: True, "guest command: " + cmd)
            if line == "PLUGVM-BENCH-DONE":
                return out
            out.append(line)

    def boot(self):
        self.wait_line(self.lines, lambda l: "PLUGVM-GUEST-READY" in l, "PLUGVM-GUEST-READY", 600)
        self.wait_line(self.lines, lambda l: l == "PLUGVM-BENCH-CMDLOOP", "the guest's command loop")
        self.block = int(self.guest("cat /sys/devices/system/memory/block_size_bytes")[0], 16)
        if GUEST_TRACE:
            failed = [l for c in TRACE_SETUP for l in self.guest(c) if l.startswith("TRACE-PROBE-FAILED")]
            if failed:
                raise BenchError(f"{self.name}: guest trace: " + "; ".join(failed))
            self.trace()  # empty it

    def trace(self):
        """the guest-side breakdown of what happened since the last call (None without
        --guest-trace)"""
        if not GUEST_TRACE:
            return None
        return guest_breakdown(parse_trace(self.guest(TRACE_DUMP)))

    def cpus_online(self):
        """the guest's online CPUs, as a set of logical ids"""
        text = self.guest("cat /sys/devices/system/cpu/online")[-1].strip()
        out = set()
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            out.update(range(int(lo), int(hi or lo) + 1))
        return out

    def memtotal_kib(self):
        for l in self.guest("grep MemTotal /proc/meminfo"):
            if l.startswith("MemTotal:"):
                return int(l.split()[1])
        raise BenchError(f"{self.name}: no MemTotal")

    def touch(self, mib):
        if mib > 0:
            self.guest(f"dd if=/dev/zero of=/tmp/hpb-fill bs=1M count={mib} 2>/dev/null")

    def untouch(self):
        self.guest("rm -f /tmp/hpb-fill")

    def after_touch(self, res, mib):
        res["rss_touched"] = self.rss()
        after = read_smaps(self.proc.pid)
        rng = new_range(res["maps_before"], after, mib * MIB)
        res["slot_rss"] = range_rss_delta(res["maps_before"], after, rng)
        res["maps_touched"], res["slot_size"] = after, mib * MIB

    def slot_rss_fallback(self, res):
        """when the slot's range could not be told from the mappings before the add (an
        unmapped neighbour's address reused), tell it from those after the removal"""
        touched = res.pop("maps_touched", None)
        if res.get("slot_rss") is None and touched is not None:
            gone = read_smaps(self.proc.pid)
            res["slot_rss"] = range_rss_delta(gone, touched, new_range(gone, touched, res["slot_size"]))

    def rss(self):
        return read_status_kib(self.proc.pid)

    def shutdown(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(b"exit\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()

    def keep_logs(self, d):
        with open(os.path.join(d, f"{self.name}.console"), "w") as f:
            f.writelines("%9.3f %s\n" % (t - self.t_start, l) for t, l in self.console)
        shutil.copy(self.errpath, os.path.join(d, f"{self.name}.stderr"))


class Plugvm(Vmm):
    name = "plugvm"

    def __init__(self, tmp):
        self.sock = os.path.join(tmp, "api.sock")
        # `API request served` lines carry plugvm's socket-to-socket time of each request.
        os.environ["RUST_LOG"] = ",".join(filter(None, [E.get("RUST_LOG") or "warn",
                                                         "vmm::api::connection=info",
                                                         "vmm::memory_manager=info"]))
        self.start([PLUGVM, "--kernel", KERNEL, "--kernel-cache", KERNEL_CACHE,
                    "--initramfs", INITRAMFS,
                    "--cpus", "boot=1,max=4",
                    "--memory", f"size={BOOT_MIB}M,hotplug_size={HOTPLUG_MIB}M,hotplug_slots=8"
                    + (f",{MEM_OPTS}" if MEM_OPTS else ""),
                    "--api-socket", self.sock, "--serial", "stdio", "--cmdline", CMDLINE], tmp)

    def connection(self):
        """The kept-alive API connection (as QMP's is for QEMU), opened again when plugvm has
        closed it (it ends connections idle for longer than its request timeout)."""
        s = getattr(self, "conn", None)
        if s is not None:
            try:
                s.setblocking(False)
                try:
                    alive = s.recv(1, socket.MSG_PEEK) != b""
                except BlockingIOError:
                    alive = True
                s.setblocking(True)
            except OSError:
                alive = False
            if alive:
                return s
            s.close()
        s = socket.socket(socket.AF_UNIX)
        s.connect(self.sock)
        self.conn, self.conn_in = s, s.makefile("rb")
        return s

    def api(self, method, path, body=None, timeout=None):
        data = b"" if body is None else json.dumps(body).encode()
        try:
            s = self.connection()
            s.settimeout(timeout or TIMEOUT)
            s.sendall((f"{method} /api/v1/{path} HTTP/1.1\r\nHost: localhost\r\n"
                       f"Accept: application/json\r\nContent-Type: application/json\r\n"
                       f"Content-Length: {len(data)}\r\n\r\n").encode() + data)
            status = self.conn_in.readline().split()
            length, close = 0, False
            while True:
                line = self.conn_in.readline()
                if not line:
                    raise OSError("connection closed in the answer's head")
                if line in (b"\r\n", b"\n"):
                    break
                name, _, value = line.decode("latin-1").partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
                elif name.strip().lower() == "connection" and value.strip().lower() == "close":
                    close = True
            payload = self.conn_in.read(length) if length else b""
            if close:
                self.conn.close()
                self.conn = None
        except (OSError, ValueError) as e:
            if getattr(self, "conn", None) is not None:
                self.conn.close()
            self.conn = None
            raise BenchError(f"plugvm API {path}: {e}")
        code = int(status[1]) if len(status) > 1 else 0
        if not 200 <= code < 300:
            raise BenchError(f"plugvm API {path}: HTTP {code}: {payload.decode(errors='replace')[:500]}")
        return json.loads(payload) if payload.strip() else {}

    def served_us(self, path):
        """plugvm's own clock for the last `path` request: from the request's arrival on the
        socket to the answer's last byte (its `API request served` log line)."""
        try:
            with open(self.errpath, "rb") as f:
                text = f.read().decode(errors="replace")
        except OSError:
            return None
        for line in reversed(text.splitlines()):
            line = re.sub(r"\x1b\[[0-9;]*m", "", line)  # colours, if the log has them
            if "API request served" in line and f"/api/v1/{path}" in line:
                m = re.search(r"served_us=(\d+)", line)
                return int(m.group(1)) if m else None
        return None

    def log_fields(self, marker):
        """the numeric fields (`key=N`) of plugvm's last log line containing `marker`"""
        try:
            with open(self.errpath, "rb") as f:
                text = f.read().decode(errors="replace")
        except OSError:
            return {}
        for line in reversed(text.splitlines()):
            if marker in line:
                line = re.sub(r"\x1b\[[0-9;]*m", "", line)
                return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)(?:\s|$)", line)}
        return {}

    def tx(self, path, body):
        try:
            self.connection()  # (re)connecting is not part of the request's time
        except OSError as e:
            raise BenchError(f"plugvm API: {e}")
        t0 = now()
        r = self.api("PUT", path, body)
        t1 = now()
        rec = r.get("transaction", r)
        if rec.get("status") != "committed":
            raise BenchError(f"plugvm {path} {body}: not committed: {json.dumps(rec)[:800]}")
        # The log line is written right after the answer: give the logger a moment.
        for _ in range(50):
            served = self.served_us(path)
            if served is not None and served != getattr(self, "_last_served", None):
                break
            time.sleep(0.01)
        self._last_served = served
        rec["served_us"] = served
        return t0, t1, rec

    def regs(self):
        ra = self.api("GET", "vm.info")["plugvm"]["register_accesses"]
        return ra["cpu_hotplug"], ra["memory_hotplug"]

    def wait_api(self):
        deadline = now() + 600
        while now() < deadline:
            if self.proc.poll() is not None:
                raise BenchError("plugvm exited during boot")
            try:
                self.api("GET", "vmm.ping")
                return
            except BenchError:
                time.sleep(0.2)
        raise BenchError("plugvm API socket did not come up")

    def boot(self):
        self.wait_api()
        super().boot()
        # boot RAM: the largest anonymous mapping at boot (possibly merged with an arena)
        maps = read_smaps(self.proc.pid)
        big = max(maps, key=lambda m: m[1] - m[0])
        self.bootram = (big[0], big[0] + BOOT_MIB * MIB) if big[1] - big[0] >= BOOT_MIB * MIB else None

    def bootram_rss(self):
        """Rss (KiB) of the boot-RAM mapping; None when it cannot be told apart (merged with
        more than a malloc arena's worth of neighbours)"""
        if self.bootram is None:
            return None
        vmas = overlapping(read_smaps(self.proc.pid), *self.bootram)
        if sum(m[1] - m[0] for m in vmas) > (BOOT_MIB + 64) * MIB:
            return None
        return sum(m[2] for m in vmas)

    @staticmethod
    def phases(rec):
        out = {}
        for p in rec.get("phases", []):
            out[p["phase"]] = out.get(p["phase"], 0) + p["duration_us"]
        return out

    def add_cpu(self, cid):
        self.drain_hotplug()
        c0, _ = self.regs()
        t0, t1, rec = self.tx("vm.add-vcpu", {"id": cid})
        t_on = self.wait_online("cpu", 1, f"the guest onlining vCPU {cid}")
        online = self.cpus_online()
        c1, _ = self.regs()
        ev = {e["kind"]: e["at_us"] for e in reversed(rec.get("guest_events", []))}
        return {"commit_ms": (t1 - t0) * 1e3, "online_ms": (t_on - t0) * 1e3,
                "journal_us": rec["duration_us"], "served_us": rec["served_us"],
                "phases": self.phases(rec), "regs": c1 - c0,
                "guest_online": online, "first_read_us": ev.get("status_read", rec["started_us"]) - rec["started_us"]}

    def remove_cpu(self, cid):
        c0, _ = self.regs()
        t0, t1, rec = self.tx("vm.remove-vcpu", {"id": cid})
        online = self.cpus_online()
        c1, _ = self.regs()
        ej = [e["at_us"] for e in rec.get("guest_events", []) if e["kind"] == "eject"]
        return {"commit_ms": (t1 - t0) * 1e3, "journal_us": rec["duration_us"],
                "served_us": rec["served_us"],
                "eject_ms": (ej[0] - rec["started_us"]) / 1e3 if ej else None,
                "phases": self.phases(rec), "regs": c1 - c0, "guest_online": online}

    def add_memory(self, mib):
        self.drain_hotplug()
        before = read_smaps(self.proc.pid)
        r0, b0 = self.rss(), self.bootram_rss()
        _, m0 = self.regs()
        t0, t1, rec = self.tx("vm.add-memory", {"size": mib * MIB})
        host = self.log_fields("memory slot backed")
        t_on = self.wait_online("memory", mib * MIB // self.block, f"the guest onlining {mib} MiB")
        slot = rec["targets"][0]["device"]["memory_slot"]
        self.guest("true")
        _, m1 = self.regs()
        return {"regs_add": m1 - m0, "commit_ms": (t1 - t0) * 1e3, "online_ms": (t_on - t0) * 1e3,
                "journal_us": rec["duration_us"], "phases": self.phases(rec),
                "handle": slot, "rss_before": r0, "bootram_before": b0, "maps_before": before,
                "regs_m1": m1, "mmap_us": host.get("mmap_us"), "kvm_add_us": host.get("kvm_us")}

    def remove_memory(self, res):
        t0, t1, rec = self.tx("vm.remove-memory", {"slot": res["handle"]})
        host = self.log_fields("memory slot released")
        res.update({"kvm_del_us": host.get("kvm_us"), "unmap_us": host.get("unmap_us")})
        self.guest("true")
        _, m2 = self.regs()
        time.sleep(RSS_SETTLE)
        res.update({"del_ms": (t1 - t0) * 1e3, "del_journal_us": rec["duration_us"],
                    "del_phases": self.phases(rec), "regs_del": m2 - res["regs_m1"],
                    "rss_after": self.rss(), "bootram_after": self.bootram_rss()})


class Qmp:
    def __init__(self, path, proc):
        for _ in range(600):
            try:
                self.s = socket.socket(socket.AF_UNIX)
                self.s.connect(path)
                break
            except OSError:
                if proc.poll() is not None:
                    raise BenchError("QEMU exited before QMP came up")
                time.sleep(0.1)
        else:
            raise BenchError("cannot connect to QEMU's QMP socket")
        self.f = self.s.makefile("rwb")
        self.events = queue.Queue()
        self.replies = queue.Queue()
        json.loads(self.f.readline())  # greeting
        threading.Thread(target=self._reader, daemon=True).start()
        self.cmd("qmp_capabilities")

    def _reader(self):
        for raw in self.f:
            t = now()
            msg = json.loads(raw)
            (self.events if "event" in msg else self.replies).put((t, msg))

    def cmd(self, name, **a):
        self.f.write((json.dumps({"execute": name, "arguments": a}) + "\n").encode())
        self.f.flush()
        try:
            _, r = self.replies.get(timeout=TIMEOUT)
        except queue.Empty:
            raise BenchError(f"QMP {name}: no reply")
        if "error" in r:
            raise BenchError(f"QMP {name} {a}: {r['error']}")
        return r["return"]

    def drain(self):
        while True:
            try:
                self.events.get_nowait()
            except queue.Empty:
                return

    def wait_event(self, pred, what):
        deadline = now() + TIMEOUT
        while True:
            left = deadline - now()
            if left <= 0:
                raise BenchError("qemu: timeout waiting for QMP event " + what)
            try:
                t, e = self.events.get(timeout=left)
            except queue.Empty:
                continue
            if pred(e):
                return t, e


def ost_for(dev, source):
    def p(e):
        if e["event"] != "ACPI_DEVICE_OST":
            return False
        info = e["data"]["info"]
        return info.get("device") == dev and info.get("source") == source
    return p


def deleted(dev):
    return lambda e: e["event"] == "DEVICE_DELETED" and e["data"].get("device") == dev


class Qemu(Vmm):
    def __init__(self, tmp):
        self.name = "qemu-" + MACHINE.split(",")[0]
        qmp_path = os.path.join(tmp, "qmp.sock")
        cmd = ["qemu-system-x86_64", "-enable-kvm", "-cpu", "host", "-M", MACHINE]
        for d in FIRMWARE:
            cmd += ["-L", d]
        cmd += ["-smp", "1,maxcpus=4", "-m", f"{BOOT_MIB}M,slots=8,maxmem={BOOT_MIB + HOTPLUG_MIB}M",
                "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
                "-serial", "stdio", "-device", "pvpanic",
                "-qmp", f"unix:{qmp_path},server=on,wait=off",
                "-kernel", KERNEL, "-initrd", INITRAMFS, "-append", CMDLINE]
        self.start(cmd, tmp)
        self.qmp = Qmp(qmp_path, self.proc)
        self.slots = {}
        self.n = 0

    def boot(self):
        super().boot()
        free = [c for c in self.qmp.cmd("query-hotpluggable-cpus") if "qom-path" not in c]
        free.sort(key=lambda c: (c["props"].get("socket-id", 0), c["props"].get("core-id", 0),
                                 c["props"].get("thread-id", 0)))
        self.slots = {i + 1: c for i, c in enumerate(free)}

    def add_cpu(self, cid):
        self.drain_hotplug()
        self.qmp.drain()
        c, dev = self.slots[cid], f"cpu{cid}"
        t0 = now()
        self.qmp.cmd("device_add", driver=c["type"], id=dev, **c["props"])
        t_ost, e = self.qmp.wait_event(ost_for(dev, 1), "ACPI_DEVICE_OST for " + dev)
        if e["data"]["info"]["status"] != 0:
            raise BenchError(f"qemu: {dev}: _OST status {e['data']['info']['status']:#x}")
        t_on = self.wait_online("cpu", 1, "the guest onlining " + dev)
        return {"commit_ms": (t_ost - t0) * 1e3, "online_ms": (t_on - t0) * 1e3,
                "guest_online": self.cpus_online()}

    def remove_cpu(self, cid):
        self.qmp.drain()
        dev = f"cpu{cid}"
        t0 = now()
        self.qmp.cmd("device_del", id=dev)
        t_del, _ = self.qmp.wait_event(deleted(dev), "DEVICE_DELETED for " + dev)
        return {"commit_ms": (t_del - t0) * 1e3, "eject_ms": (t_del - t0) * 1e3,
                "guest_online": self.cpus_online()}

    def add_memory(self, mib):
        self.drain_hotplug()
        self.qmp.drain()
        self.n += 1
        dev, mem = f"dimm{self.n}", f"mem{self.n}"
        before = read_smaps(self.proc.pid)
        r0 = self.rss()
        t0 = now()
        self.qmp.cmd("object-add", **{"qom-type": "memory-backend-ram", "id": mem, "size": mib * MIB})
        self.qmp.cmd("device_add", driver="pc-dimm", id=dev, memdev=mem)
        t_ost, e = self.qmp.wait_event(ost_for(dev, 1), "ACPI_DEVICE_OST for " + dev)
        if e["data"]["info"]["status"] != 0:
            raise BenchError(f"qemu: {dev}: _OST status {e['data']['info']['status']:#x}")
        t_on = self.wait_online("memory", mib * MIB // self.block, f"the guest onlining {mib} MiB")
        return {"commit_ms": (t_ost - t0) * 1e3, "online_ms": (t_on - t0) * 1e3,
                "handle": (dev, mem), "rss_before": r0, "maps_before": before}

    def remove_memory(self, res):
        self.qmp.drain()
        dev, mem = res["handle"]
        t0 = now()
        self.qmp.cmd("device_del", id=dev)
        self.qmp.wait_event(deleted(dev), "DEVICE_DELETED for " + dev)
        self.qmp.cmd("object-del", id=mem)
        t1 = now()
        self.guest("true")
        time.sleep(RSS_SETTLE)
        res.update({"del_ms": (t1 - t0) * 1e3, "rss_after": self.rss()})


# ---------------------------------------------------------------------------------------------
def pct(vals, p):
    """linear-interpolated percentile (p in 0..100) of a non-empty list"""
    v = sorted(vals)
    if len(v) == 1:
        return v[0]
    k = (len(v) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def size_label(mib):
    """128M, 1G, ...: a size in MiB as the tables name it"""
    return f"{mib // 1024}G" if mib % 1024 == 0 else f"{mib}M"


def cell(x, fmt="{:.1f}"):
    return "-" if x is None else fmt.format(x)


def ratio(a, b):
    return a / b if a is not None and b else None


tmp = tempfile.mkdtemp(prefix="hotplug-bench.")
logdir = KEEP or tmp
os.makedirs(logdir, exist_ok=True)
log(f"kernel {KERNEL}")
log(f"initramfs {INITRAMFS}")
log(f"plugvm {PLUGVM}; kvm: {E.get('PLUGVM_KVMHOST_INSIDE')}")
log(f"cmdline: {CMDLINE}")
vmms = []
failed = None
cpu = {}   # vmm name -> {"add": [res], "remove": [res]}
mem = {}   # vmm name -> {mib: [res]}
try:
    p = Plugvm(tmp)
    vmms.append(p)
    log("booting plugvm ...")
    p.boot()
    log(f"plugvm up after {now() - p.t_start:.1f} s")
    q = Qemu(tmp)
    vmms.append(q)
    log(f"booting {q.name} ...")
    q.boot()
    log(f"{q.name} up after {now() - q.t_start:.1f} s")
    for v in vmms:
        cpu[v.name] = {"add": [], "remove": []}
        mem[v.name] = {m: [] for m in MEM_MIB}

    if PARTS in ("both", "cpu"):
        log(f"CPU: {OPS} add/remove pairs per VMM, vCPU ids {CPU_IDS}")
        for i in range(OPS):
            cid = CPU_IDS[i % len(CPU_IDS)]
            for v in (vmms if i % 2 == 0 else vmms[::-1]):
                v.trace()
                a = v.add_cpu(cid)
                a["guest"] = v.trace()
                if len(a["guest_online"]) != 2 or 0 not in a["guest_online"]:
                    raise BenchError(f"{v.name}: after adding vCPU {cid} the guest has CPUs {a['guest_online']} online")
                r = v.remove_cpu(cid)
                r["guest"] = v.trace()
                if r["guest_online"] != {0}:
                    raise BenchError(f"{v.name}: after removing vCPU {cid} the guest has CPUs {r['guest_online']} online")
                cpu[v.name]["add"].append(a)
                cpu[v.name]["remove"].append(r)
                extra = ""
                if "phases" in a:
                    extra = (f" journal_add_us={a['journal_us']} journal_del_us={r['journal_us']}"
                             f" regs_add={a['regs']} regs_del={r['regs']}")
                print(f"hotplug-bench vmm={v.name} op=cpu round={i + 1} id={cid} add_commit_ms={a['commit_ms']:.1f}"
                      f" add_online_ms={a['online_ms']:.1f} del_commit_ms={r['commit_ms']:.1f}{extra}", flush=True)
                for op, x in (("cpu-add", a), ("cpu-remove", r)):
                    if x.get("guest"):
                        print(f"hotplug-bench-guest vmm={v.name} op={op} round={i + 1} id={cid} "
                              + " ".join(f"{k}={cell(val, '{:.2f}')}" for k, val in x["guest"].items()), flush=True)
                log(f"[cpu {i + 1}/{OPS}] {v.name} vCPU {cid}: add {a['commit_ms']:.1f} ms (online {a['online_ms']:.1f}),"
                    f" remove {r['commit_ms']:.1f} ms")

    if PARTS in ("both", "memory"):
        log(f"memory: sizes {MEM_MIB} MiB x {MEM_REPS}, touch min({TOUCH_MB} MiB, size/2)")
        n = 0
        for rep in range(MEM_REPS):
            for mib in MEM_MIB:
                n += 1
                for v in (vmms if n % 2 == 1 else vmms[::-1]):
                    mt0 = v.memtotal_kib()
                    h0 = anon_huge_kib(v.proc.pid)
                    v.trace()
                    res = v.add_memory(mib)
                    res["guest"] = v.trace()
                    grow = (v.memtotal_kib() - mt0) // 1024
                    if grow != mib:
                        raise BenchError(f"{v.name}: MemTotal grew by {grow} MiB after adding {mib} MiB")
                    touch = min(TOUCH_MB, mib // 2)
                    v.touch(touch)
                    v.after_touch(res, mib)
                    # How much of the add, the guest's onlining and its touch is on huge pages.
                    res["thp_kib"] = anon_huge_kib(v.proc.pid) - h0
                    v.untouch()
                    v.trace()
                    v.remove_memory(res)
                    res["del_guest"] = v.trace()
                    left = (v.memtotal_kib() - mt0) // 1024
                    if left != 0:
                        raise BenchError(f"{v.name}: MemTotal is {left:+d} MiB off after the removal")
                    v.slot_rss_fallback(res)
                    res.pop("maps_before", None)
                    mem[v.name][mib].append(res)
                    extra = ""
                    if "journal_us" in res:
                        extra = (f" journal_add_us={res['journal_us']} journal_del_us={res['del_journal_us']}"
                                 f" regs_add={res['regs_add']} regs_del={res['regs_del']} bootram_before_kib={res['bootram_before']}"
                                 f" bootram_after_kib={res['bootram_after']}")
                    print(f"hotplug-bench vmm={v.name} op=memory rep={rep + 1} size_mib={mib}"
                          f" add_commit_ms={res['commit_ms']:.1f} add_online_ms={res['online_ms']:.1f}"
                          f" del_ms={res['del_ms']:.1f} touch_mib={touch} rss_before_kib={res['rss_before']}"
                          f" rss_touched_kib={res['rss_touched']} slot_rss_kib={res['slot_rss']}"
                          f" rss_after_kib={res['rss_after']}{extra}", flush=True)
                    for op, g in (("memory-add", res.get("guest")), ("memory-remove", res.get("del_guest"))):
                        if g:
                            print(f"hotplug-bench-guest vmm={v.name} op={op} rep={rep + 1} size_mib={mib} "
                                  + " ".join(f"{k}={cell(val, '{:.2f}')}" for k, val in g.items()), flush=True)
                    log(f"[memory {n}/{MEM_REPS * len(MEM_MIB)}] {v.name} {mib} MiB: add {res['commit_ms']:.1f} ms"
                        f" (online {res['online_ms']:.1f}), remove {res['del_ms']:.1f} ms,"
                        f" RSS {res['rss_before'] // 1024} -> {res['rss_touched'] // 1024} -> {res['rss_after'] // 1024} MiB")
except BenchError as e:
    failed = str(e)
except Exception as e:  # keep the consoles for anything unexpected
    failed = f"{type(e).__name__}: {e}"
if failed and vmms and isinstance(vmms[0], Plugvm) and vmms[0].proc.poll() is None:
    # what plugvm thinks of its vCPUs and its last transaction, for the bug report
    p = vmms[0]
    try:
        info = p.api("GET", "vm.info", timeout=10)
        log("plugvm vm.info cpus: " + json.dumps(info.get("plugvm", {}).get("cpus")))
        txs = p.api("GET", "hotplug/transactions", timeout=10).get("transactions", [])
        if txs:
            log("plugvm last transaction: " + json.dumps(txs[-1]))
    except (BenchError, ValueError, KeyError) as e:
        log(f"plugvm API after the failure: {e}")
for v in vmms:
    v.shutdown()
    if KEEP:
        v.keep_logs(logdir)
if failed:
    log("error: " + failed)
    for v in vmms:
        print(v.failure_text(), file=sys.stderr)

# ---------------------------------------------------------------------------------------------
P, Q = "plugvm", ("qemu-" + MACHINE.split(",")[0])
targets = []
if PARTS in ("both", "cpu") and cpu.get(P, {}).get("add") and cpu.get(Q, {}).get("add"):
    pa, pr, qa, qr = cpu[P]["add"], cpu[P]["remove"], cpu[Q]["add"], cpu[Q]["remove"]
    print()
    print(f"hotplug-bench: CPU hotplug, {len(pa)} adds + {len(pr)} removes per VMM (plugvm vs {Q}), "
          f"times in ms from the request, measured on the host side")
    hdr = f"{'metric':<44}{'plugvm p50':>11}{'p95':>8} |{Q + ' p50':>15}{'p95':>8} |{'ratio p50':>10}{'p95':>6}"
    print(hdr)
    print("-" * len(hdr))
    rows = [
        ("add: request -> commit / ACPI_DEVICE_OST", [x["commit_ms"] for x in pa], [x["commit_ms"] for x in qa]),
        ("add: request -> guest online (console)", [x["online_ms"] for x in pa], [x["online_ms"] for x in qa]),
        ("remove: request -> commit / DEVICE_DELETED", [x["commit_ms"] for x in pr], [x["commit_ms"] for x in qr]),
        ("remove: request -> _EJ0 / DEVICE_DELETED", [x["eject_ms"] for x in pr if x["eject_ms"] is not None],
         [x["eject_ms"] for x in qr]),
    ]
    for label, a, b in rows:
        if not a or not b:
            continue
        a50, a95, b50, b95 = pct(a, 50), pct(a, 95), pct(b, 50), pct(b, 95)
        print(f"{label:<44}{a50:>11.1f}{a95:>8.1f} |{b50:>15.1f}{b95:>8.1f} |"
              f"{cell(ratio(a50, b50), '{:.2f}'):>10}{cell(ratio(a95, b95), '{:.2f}'):>6}")
    print("  (plugvm: the API call returns at commit, after the guest's _OST; `_EJ0` from the journal."
          f" {Q}: QMP events; removal ends at DEVICE_DELETED, i.e. at the guest's _EJ0)")
    print()
    print("plugvm journal (p50 over the operations, microseconds)")
    hdr = f"{'phase':<34}{'add p50':>10}{'p95':>9}{'remove p50':>12}{'p95':>9}"
    print(hdr)
    print("-" * len(hdr))
    for ph in ("validate", "prepare", "publish", "await_guest", "commit"):
        a = [x["phases"].get(ph, 0) for x in pa]
        r = [x["phases"].get(ph, 0) for x in pr]
        print(f"{ph:<34}{pct(a, 50):>10.0f}{pct(a, 95):>9.0f}{pct(r, 50):>12.0f}{pct(r, 95):>9.0f}")
    own_a = [x["journal_us"] - x["phases"].get("await_guest", 0) for x in pa]
    own_r = [x["journal_us"] - x["phases"].get("await_guest", 0) for x in pr]
    tot_a = [x["journal_us"] for x in pa]
    tot_r = [x["journal_us"] for x in pr]
    sh_a = [100.0 * o / t for o, t in zip(own_a, tot_a) if t]
    sh_r = [100.0 * o / t for o, t in zip(own_r, tot_r) if t]
    print(f"{'transaction total (duration_us)':<34}{pct(tot_a, 50):>10.0f}{pct(tot_a, 95):>9.0f}"
          f"{pct(tot_r, 50):>12.0f}{pct(tot_r, 95):>9.0f}")
    vph_a = [sum(v for k, v in x["phases"].items() if k != "await_guest") for x in pa]
    vph_r = [sum(v for k, v in x["phases"].items() if k != "await_guest") for x in pr]
    print(f"{'  VMM phases (all but await_guest)':<34}{pct(vph_a, 50):>10.0f}{pct(vph_a, 95):>9.0f}"
          f"{pct(vph_r, 50):>12.0f}{pct(vph_r, 95):>9.0f}")
    gap_a = [x["journal_us"] - sum(x["phases"].values()) for x in pa]
    gap_r = [x["journal_us"] - sum(x["phases"].values()) for x in pr]
    print(f"{'  between/around the phases':<34}{pct(gap_a, 50):>10.0f}{pct(gap_a, 95):>9.0f}"
          f"{pct(gap_r, 50):>12.0f}{pct(gap_r, 95):>9.0f}")
    print(f"{'VMM own (total - await_guest)':<34}{pct(own_a, 50):>10.0f}{pct(own_a, 95):>9.0f}"
          f"{pct(own_r, 50):>12.0f}{pct(own_r, 95):>9.0f}")
    print(f"{'VMM own share of total, %':<34}{pct(sh_a, 50):>10.2f}{pct(sh_a, 95):>9.2f}"
          f"{pct(sh_r, 50):>12.2f}{pct(sh_r, 95):>9.2f}")
    # End to end on plugvm's side: socket in -> answer out, less the guest's await_guest.
    srv_a = [x["served_us"] for x in pa if x.get("served_us")]
    srv_r = [x["served_us"] for x in pr if x.get("served_us")]
    e2e_a = [x["served_us"] - x["phases"].get("await_guest", 0) for x in pa if x.get("served_us")]
    e2e_r = [x["served_us"] - x["phases"].get("await_guest", 0) for x in pr if x.get("served_us")]
    esh_a = [100.0 * o / t for o, t in zip(e2e_a, srv_a) if t]
    esh_r = [100.0 * o / t for o, t in zip(e2e_r, srv_r) if t]
    if srv_a and srv_r:
        print(f"{'socket in -> answer out (served_us)':<34}{pct(srv_a, 50):>10.0f}{pct(srv_a, 95):>9.0f}"
              f"{pct(srv_r, 50):>12.0f}{pct(srv_r, 95):>9.0f}")
        print(f"{'  VMM own (served - await_guest)':<34}{pct(e2e_a, 50):>10.0f}{pct(e2e_a, 95):>9.0f}"
              f"{pct(e2e_r, 50):>12.0f}{pct(e2e_r, 95):>9.0f}")
        print(f"{'  VMM own share, socket to socket, %':<34}{pct(esh_a, 50):>10.2f}{pct(esh_a, 95):>9.2f}"
              f"{pct(esh_r, 50):>12.2f}{pct(esh_r, 95):>9.2f}")
    rd = [x["first_read_us"] for x in pa]
    print(f"{'add: start -> guest first status read':<34}{pct(rd, 50):>10.0f}{pct(rd, 95):>9.0f}")
    ra, rr = [x["regs"] for x in pa], [x["regs"] for x in pr]
    print(f"register accesses (VM exits) per op: add p50 {pct(ra, 50):.0f} (min {min(ra)}, max {max(ra)}),"
          f" remove p50 {pct(rr, 50):.0f} (min {min(rr)}, max {max(rr)})")
    print("  (the first add of each vCPU id creates its vCPU; later adds reuse the parked one)")
    a50, b50 = pct([x["commit_ms"] for x in pa], 50), pct([x["commit_ms"] for x in qa], 50)
    targets.append(f"target CPU hot-add p50 request->commit <= 50% of {Q} device_add->ACPI_DEVICE_OST: "
                   f"{a50:.1f} ms / {b50:.1f} ms = {100 * a50 / b50:.0f}% -> {'PASS' if a50 <= 0.5 * b50 else 'MISS'}")
    for kind, esh, sh in (("add", esh_a, sh_a), ("remove", esh_r, sh_r)):
        how = "socket in -> answer out" if esh else "journal only (no served_us in plugvm's log)"
        sh = esh or sh
        s50, s95 = pct(sh, 50), pct(sh, 95)
        targets.append(f"target VMM's own share < 1% of the CPU {kind}, {how} "
                       f"(p50, p95): {s50:.2f}%, {s95:.2f}% -> "
                       f"{'PASS' if s50 < 1.0 and s95 < 1.0 else 'MISS'}")

if PARTS in ("both", "memory") and any(mem.get(P, {}).values()) and any(mem.get(Q, {}).values()):
    print()
    print(f"hotplug-bench: memory hotplug (plugvm slot vs {Q} pc-dimm), median and max over the repetitions, ms")
    hdr = (f"{'size':>6} {'metric':<36}{'n':>3}{'plugvm med':>11}{'max':>8} |{Q + ' med':>15}{'max':>8}"
           f" |{'ratio med':>10}")
    print(hdr)
    print("-" * len(hdr))
    for mib in MEM_MIB:
        pm, qm = mem[P][mib], mem[Q][mib]
        if not pm or not qm:
            continue
        sz = size_label(mib)
        for label, key in (("add: request -> commit / _OST", "commit_ms"),
                           ("add: request -> all blocks online", "online_ms"),
                           ("remove: request -> commit / deleted", "del_ms")):
            a, b = [x[key] for x in pm], [x[key] for x in qm]
            print(f"{sz:>6} {label:<36}{len(a):>3}{statistics.median(a):>11.1f}{max(a):>8.1f} |"
                  f"{statistics.median(b):>15.1f}{max(b):>8.1f} |"
                  f"{cell(ratio(statistics.median(a), statistics.median(b)), '{:.2f}'):>10}")
    print(f"  ({Q}: add from object-add (memory-backend-ram) to the pc-dimm's ACPI_DEVICE_OST; removal from"
          " device_del to DEVICE_DELETED plus object-del. plugvm: the API call, which returns at commit)")
    print()
    print("plugvm journal, memory (median over the repetitions, microseconds)")
    hdr = (f"{'size':>6} {'op':<7}{'validate':>9}{'prepare':>9}{'publish':>9}{'await_guest':>12}{'commit':>8}"
           f"{'total':>9}{'own':>7}{'own %':>7}{'regs':>6}")
    print(hdr)
    print("-" * len(hdr))
    for mib in MEM_MIB:
        pm = mem[P][mib]
        if not pm:
            continue
        sz = size_label(mib)
        for op, ph, tot, rg in (("add", "phases", "journal_us", "regs_add"),
                                ("remove", "del_phases", "del_journal_us", "regs_del")):
            cols = [statistics.median([x[ph].get(k, 0) for x in pm])
                    for k in ("validate", "prepare", "publish", "await_guest", "commit")]
            total = statistics.median([x[tot] for x in pm])
            own = statistics.median([x[tot] - x[ph].get("await_guest", 0) for x in pm])
            share = statistics.median([100.0 * (x[tot] - x[ph].get("await_guest", 0)) / x[tot] for x in pm if x[tot]])
            print(f"{sz:>6} {op:<7}" + "".join(f"{c:>{w}.0f}" for c, w in zip(cols, (9, 9, 9, 12, 8)))
                  + f"{total:>9.0f}{own:>7.0f}{share:>7.2f}{statistics.median([x[rg] for x in pm]):>6.0f}")
    print("  (own: total - await_guest; regs: memory-controller register accesses (VM exits) per operation)")
    print()
    print("host side (median): KiB gained on huge pages by add + online + touch; plugvm's mmap and KVM slot calls, microseconds")
    hdr = (f"{'size':>6} {'touch MiB':>10}{'plugvm THP':>14}{Q + ' THP':>14}{'mmap':>8}{'kvm add':>9}"
           f"{'kvm del':>9}{'unmap':>8}{'commit (rm)':>12}")
    print(hdr)
    print("-" * len(hdr))
    worst_commit = None
    for mib in MEM_MIB:
        pm, qm = mem[P][mib], mem[Q][mib]
        if not pm:
            continue
        sz = size_label(mib)
        med = lambda xs, k: statistics.median([x[k] for x in xs if x.get(k) is not None] or [float("nan")])
        commit_rm = med([{"c": x["del_phases"].get("commit", 0)} for x in pm], "c")
        worst_commit = commit_rm if worst_commit is None else max(worst_commit, commit_rm)
        print(f"{sz:>6} {min(TOUCH_MB, mib // 2):>10}{med(pm, 'thp_kib'):>14.0f}{med(qm, 'thp_kib'):>14.0f}"
              f"{med(pm, 'mmap_us'):>8.0f}{med(pm, 'kvm_add_us'):>9.0f}{med(pm, 'kvm_del_us'):>9.0f}"
              f"{med(pm, 'unmap_us'):>8.0f}{commit_rm:>12.0f}")
    print("  (THP: AnonHugePages gained by the VMM process from the request to the end of the guest's touch;"
          " kvm add/del: KVM_SET_USER_MEMORY_REGION; unmap: the slot's munmap at the removal's commit)")
    if worst_commit is not None:
        targets.append(f"target memory removal commit under 5 ms of VMM time at every size: worst median "
                       f"{worst_commit / 1000:.1f} ms -> {'PASS' if worst_commit < 5000 else 'MISS'}")
    print()
    print("plugvm RSS (KiB): VmRSS before the add, after add + guest touch, after the removal")
    hdr = (f"{'size':>6}{'rep':>4}{'touch MiB':>10}{'before':>10}{'touched':>10}{'slot Rss':>10}{'after':>10}"
           f"{'after-before':>13}{'boot-RAM delta':>15}{'rest':>9} |{Q + ' after-before':>24}")
    print(hdr)
    print("-" * len(hdr))
    worst, worst_rest = None, None
    for mib in MEM_MIB:
        sz = size_label(mib)
        for i, x in enumerate(mem[P][mib]):
            d = x["rss_after"] - x["rss_before"]
            bd = (x["bootram_after"] - x["bootram_before"]) if x.get("bootram_before") is not None and x.get("bootram_after") is not None else None
            rest = d - bd if bd is not None else None
            qx = mem[Q][mib][i] if i < len(mem[Q][mib]) else None
            qd = qx["rss_after"] - qx["rss_before"] if qx else None
            worst = d if worst is None else max(worst, d)
            if rest is not None:
                worst_rest = rest if worst_rest is None else max(worst_rest, rest)
            print(f"{sz:>6}{i + 1:>4}{min(TOUCH_MB, mib // 2):>10}{x['rss_before']:>10}{x['rss_touched']:>10}"
                  f"{cell(x['slot_rss'], '{}'):>10}{x['rss_after']:>10}{d:>+13}{cell(bd, '{:+d}'):>15}"
                  f"{cell(rest, '{:+d}'):>9} |{cell(qd, '{:+d}'):>24}")
    print("  (slot Rss: the slot's own mapping after the touch; boot-RAM delta: the guest's own RAM (struct")
    print("   pages of the hot-added memory, page cache) that the guest touched for the first time;"
          " rest = after-before - boot-RAM delta: what plugvm itself kept)")
    pa1 = [x["commit_ms"] for x in mem[P].get(1024, [])]
    qa1 = [x["commit_ms"] for x in mem[Q].get(1024, [])]
    if pa1 and qa1:
        a, b = statistics.median(pa1), statistics.median(qa1)
        targets.append(f"target memory hot-add 1 GiB request->commit <= 50% of {Q}'s: {a:.1f} ms / {b:.1f} ms = "
                       f"{100 * a / b:.0f}% -> {'PASS' if a <= 0.5 * b else 'MISS'}")
    else:
        targets.append("target memory hot-add 1 GiB <= 50% of QEMU's: no 1G in --mem-sizes")
    if worst is not None:
        targets.append(f"target plugvm RSS after removal within 2 MiB of before the add (VmRSS, every add):"
                       f" worst {worst / 1024:+.1f} MiB -> {'PASS' if worst <= 2048 else 'MISS'}")
        later = [x["rss_after"] - x["rss_before"] for m in MEM_MIB for x in mem[P][m][1:]]
        extra = []
        if later:
            extra.append(f"repeated adds of a size (VmRSS, rep >= 2): worst {max(later) / 1024:+.1f} MiB -> "
                         f"{'PASS' if max(later) <= 2048 else 'MISS'}")
        if worst_rest is not None:
            extra.append(f"plugvm's own share (VmRSS minus the guest's boot-RAM growth): worst "
                         f"{worst_rest / 1024:+.1f} MiB -> {'PASS' if worst_rest <= 2048 else 'MISS'}")
        if extra:
            targets.append("    " + "; ".join(extra))

if GUEST_TRACE:
    kinds = []
    if cpu.get(P) and cpu.get(Q):
        kinds += [("CPU add", [x.get("guest") for x in cpu[P]["add"]], [x.get("guest") for x in cpu[Q]["add"]]),
                  ("CPU remove", [x.get("guest") for x in cpu[P]["remove"]], [x.get("guest") for x in cpu[Q]["remove"]])]
    for mib in MEM_MIB:
        sz = size_label(mib)
        pm, qm = mem.get(P, {}).get(mib, []), mem.get(Q, {}).get(mib, [])
        kinds += [(f"{sz} add", [x.get("guest") for x in pm], [x.get("guest") for x in qm]),
                  (f"{sz} remove", [x.get("del_guest") for x in pm], [x.get("del_guest") for x in qm])]
    rows = [("interrupt -> _OST written (total)", "total"), ("  event method: interrupt -> Notify", "event_method"),
            ("  Notify -> hotplug worker", "to_worker"), ("  hotplug worker -> last _OST", "worker"),
            ("    of which RCU grace periods", "rcu"), ("    of which arch_add_memory", "arch_add_memory"),
            ("  the _OST register write", "ost_write"), ("register accesses (VM exits)", "exits"),
            ("  their time in the guest", "exit_ms")]
    print()
    print(f"hotplug-bench: the guest's side (--guest-trace), median ms over the operations (n: traced ones)")
    for label, a, b in kinds:
        a, b = [x for x in a if x], [x for x in b if x]
        if not a and not b:
            continue
        hdr = f"{label:<40}{'plugvm':>10}{Q:>14}"
        print(hdr + f"   (n {len(a)} / {len(b)})")
        print("-" * len(hdr))
        for text, key in rows:
            va = [x[key] for x in a if x.get(key) is not None]
            vb = [x[key] for x in b if x.get(key) is not None]
            if key == "arch_add_memory" and not any(va + vb):
                continue
            fmt = "{:.0f}" if key == "exits" else "{:.1f}"
            print(f"{text:<40}{cell(statistics.median(va) if va else None, fmt):>10}"
                  f"{cell(statistics.median(vb) if vb else None, fmt):>14}")
    print("  (guest clock, from inside each guest: ftrace kprobes; the same kernel under both VMMs)")

if targets:
    print()
    for t in targets:
        print(t)
if KEEP:
    log(f"consoles and stderr kept in {logdir}")
shutil.rmtree(tmp, ignore_errors=True)
sys.exit(1 if failed else 0)
PYEOF
