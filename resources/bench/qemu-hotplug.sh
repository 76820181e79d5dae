#!/usr/bin/env bash
# CPU and memory hotplug with QEMU/KVM and plugvm's test guest: proves the guest's uevent
# handler (resources/guest/plugvm-uevent) and is the QEMU peer for plugvm's hotplug benchmark.
#
# Usage: resources/bench/qemu-hotplug.sh [--machine q35|pc] [--cpus-add N] [--dimm-mb MB]
#                                        [--dimms N] [--no-unplug] [--timeout SECS]
#   Boots with `-enable-kvm -cpu host -smp 1,maxcpus=4 -m 512M,slots=4,maxmem=4G` and, over QMP:
#   - hot-adds N (default 3) vCPUs: device_add <type from query-hotpluggable-cpus>
#     socket-id=0,core-id=K,thread-id=0
#   - hot-adds N (default 1) DIMMs: object_add memory-backend-ram + device_add pc-dimm (256 MiB)
#   - then (unless --no-unplug) removes them again: device_del, waits for DEVICE_DELETED.
#   Prints one line per operation with latencies in ms measured on this side:
#     qemu-hotplug op=cpu-add id=cpu1 ost_ms=... online_ms=... ost=0x0
#       ost_ms:    device_add sent -> QMP event ACPI_DEVICE_OST for the device (guest's _OST)
#       online_ms: device_add sent -> the guest's "PLUGVM-HOTPLUG cpu1 online" console line
#                  (written by the uevent handler right after it onlined the device; for a DIMM:
#                  the last of its memory blocks)
#     qemu-hotplug op=cpu-del id=cpu1 deleted_ms=... ost=...   (device_del -> DEVICE_DELETED)
#   and the guest's view (online CPUs, MemTotal) after each phase. Exit 0 when all succeeded.
#   Re-runs itself through resources/kvm-host.sh when this machine has no VMX/SVM.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
RES="$(cd "$SCRIPT_DIR/.." && pwd -P)"

for a in "$@"; do
    case "$a" in -h | --help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac
done

images="$("$RES/guest-image.sh" --no-vmlinux)" || { echo "qemu-hotplug: guest-image.sh failed" >&2; exit 1; }
if [ -z "${PLUGVM_KVMHOST_INSIDE:-}" ]; then
    exec "$RES/kvm-host.sh" -- "$0" "$@"
fi
[ -c /dev/kvm ] || { echo "qemu-hotplug: /dev/kvm missing" >&2; exit 1; }
command -v python3 >/dev/null || { echo "qemu-hotplug: python3 needed" >&2; exit 1; }

KERNEL="$(sed -n 's/^kernel=//p' <<<"$images")" \
    INITRAMFS="$(sed -n 's/^initramfs=//p' <<<"$images")" \
    exec python3 - "$@" <<'PYEOF'
import argparse, base64, json, os, queue, socket, subprocess, sys, tempfile, threading, time

ap = argparse.ArgumentParser(prog="qemu-hotplug.sh")
ap.add_argument("--machine", default="q35")
ap.add_argument("--cpus-add", type=int, default=3)
ap.add_argument("--dimm-mb", type=int, default=256)
ap.add_argument("--dimms", type=int, default=1)
ap.add_argument("--no-unplug", action="store_true")
ap.add_argument("--timeout", type=float, default=60.0, help="per step")
args = ap.parse_args()

def now():
    return time.monotonic()

def ms(a, b):
    return "%.1f" % ((b - a) * 1000.0)

tmp = tempfile.mkdtemp(prefix="qemu-hotplug.")
qmp_path = os.path.join(tmp, "qmp.sock")
# Guest: a tiny command loop on the console, driven from here (echo off to keep output clean).
guest = r'''stty -echo 2>/dev/null
echo PLUGVM-BENCH-CMDLOOP
while IFS= read -r c; do
  [ "$c" = exit ] && break
  eval "$c"
  echo PLUGVM-BENCH-DONE
done
'''
b64 = base64.b64encode(guest.encode()).decode()
firmware = []
for d in ("/usr/share/seabios", "/usr/share/qemu"):
    if os.path.isdir(d):
        firmware += ["-L", d]
cmd = ["qemu-system-x86_64", "-enable-kvm", "-cpu", "host", "-M", args.machine] + firmware + [
    "-smp", "1,maxcpus=4", "-m", "512M,slots=4,maxmem=4G",
    "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
    "-serial", "stdio", "-device", "pvpanic",
    "-qmp", "unix:%s,server=on,wait=off" % qmp_path,
    "-kernel", os.environ["KERNEL"], "-initrd", os.environ["INITRAMFS"],
    "-append", "console=ttyS0 quiet panic=-1 plugvm.run=" + b64,
]
t_start = now()
qemu = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                        stderr=open(os.path.join(tmp, "qemu.err"), "wb"))
serial = queue.Queue()
serial_log = []

def serial_reader():
    for raw in qemu.stdout:
        line = raw.decode(errors="replace").rstrip("\r\n").replace("\r", "")
        t = now()
        serial_log.append((t, line))
        serial.put((t, line))
    serial.put((now(), None))

threading.Thread(target=serial_reader, daemon=True).start()

def fail(msg):
    print("qemu-hotplug: error: " + msg, file=sys.stderr)
    print("qemu-hotplug: --- guest console (last lines) ---", file=sys.stderr)
    for t, l in serial_log[-30:]:
        print("  %8.3f %s" % (t - t_start, l), file=sys.stderr)
    try:
        qemu.kill()
    except Exception:
        pass
    try:
        sys.stderr.write(open(os.path.join(tmp, "qemu.err")).read())
    except Exception:
        pass
    sys.exit(1)

def wait_serial(pred, what, timeout=None):
    deadline = now() + (timeout or args.timeout)
    while True:
        left = deadline - now()
        if left <= 0:
            fail("timeout waiting for " + what)
        try:
            t, line = serial.get(timeout=left)
        except queue.Empty:
            continue
        if line is None:
            fail("QEMU exited while waiting for " + what)
        if pred(line):
            return t, line

class Qmp:
    def __init__(self, path):
        for _ in range(200):
            try:
                self.s = socket.socket(socket.AF_UNIX)
                self.s.connect(path)
                break
            except OSError:
                time.sleep(0.05)
        else:
            fail("cannot connect to QMP")
        self.f = self.s.makefile("rwb")
        self.events = queue.Queue()
        self.replies = queue.Queue()
        json.loads(self.f.readline())  # greeting
        threading.Thread(target=self.reader, daemon=True).start()
        self.cmd("qmp_capabilities")

    def reader(self):
        for raw in self.f:
            t = now()
            msg = json.loads(raw)
            (self.events if "event" in msg else self.replies).put((t, msg))

    def cmd(self, name, **a):
        self.f.write((json.dumps({"execute": name, "arguments": a}) + "\n").encode())
        self.f.flush()
        t, r = self.replies.get(timeout=args.timeout)
        if "error" in r:
            fail("%s %s: %s" % (name, a, r["error"]))
        return r["return"]

    def wait_event(self, pred, what):
        deadline = now() + args.timeout
        while True:
            left = deadline - now()
            if left <= 0:
                fail("timeout waiting for QMP event " + what)
            try:
                t, e = self.events.get(timeout=left)
            except queue.Empty:
                continue
            if pred(e):
                return t, e

def guest(c):
    """run a shell command in the guest, return its output lines"""
    qemu.stdin.write((c + "\n").encode())
    qemu.stdin.flush()
    out = []
    while True:
        t, line = wait_serial(lambda l: True, "guest command: " + c)
        if line == "PLUGVM-BENCH-DONE":
            return out
        if not line.startswith("PLUGVM-HOTPLUG"):
            out.append(line)

def guest_view(tag):
    v = guest("echo cpus_online=$(cat /sys/devices/system/cpu/online) "
              "$(grep MemTotal /proc/meminfo | tr -s ' ' | tr -d ' ')")
    print("qemu-hotplug guest after=%s %s" % (tag, " ".join(v)))
    return v

qmp = Qmp(qmp_path)
t_ready, _ = wait_serial(lambda l: "PLUGVM-GUEST-READY" in l, "PLUGVM-GUEST-READY", 180)
wait_serial(lambda l: l == "PLUGVM-BENCH-CMDLOOP", "guest command loop")
print("qemu-hotplug boot ready_ms=%s" % ms(t_start, t_ready))
guest_view("boot")

ok = True
def ost_for(dev, source):
    def p(e):
        if e["event"] != "ACPI_DEVICE_OST":
            return False
        info = e["data"]["info"]
        return info.get("device") == dev and info.get("source") == source
    return p

def hotplug_line(prefix):
    return lambda l: l.startswith("PLUGVM-HOTPLUG " + prefix)

# ---- CPUs
slots = [c for c in qmp.cmd("query-hotpluggable-cpus") if "qom-path" not in c]
slots.sort(key=lambda c: (c["props"].get("socket-id", 0), c["props"].get("core-id", 0),
                          c["props"].get("thread-id", 0)))
added_cpus = []
for i, c in enumerate(slots[: args.cpus_add]):
    dev = "cpu%d" % (i + 1)
    t0 = now()
    qmp.cmd("device_add", driver=c["type"], id=dev, **c["props"])
    t_ost, e = qmp.wait_event(ost_for(dev, 1), "ACPI_DEVICE_OST for " + dev)
    t_on, line = wait_serial(hotplug_line("cpu"), "guest onlining " + dev)
    status = e["data"]["info"]["status"]
    ok &= status == 0 and line.endswith(" online")
    print("qemu-hotplug op=cpu-add id=%s ost_ms=%s online_ms=%s ost=0x%x guest='%s'"
          % (dev, ms(t0, t_ost), ms(t0, t_on), status, line[len("PLUGVM-HOTPLUG "):]))
    added_cpus.append(dev)
v = guest_view("cpu-add")
if added_cpus and "cpus_online=0-%d" % len(added_cpus) not in " ".join(v):
    ok = False
    print("qemu-hotplug: error: not all hot-added CPUs are online in the guest", file=sys.stderr)

# ---- memory
block = int(guest("cat /sys/devices/system/memory/block_size_bytes")[0], 16)
nblocks = max(1, (args.dimm_mb << 20) // block)
mem_before = int([x for x in guest("grep MemTotal /proc/meminfo")[0].split() if x.isdigit()][0])
added_dimms = []
for i in range(args.dimms):
    dev, mem = "dimm%d" % (i + 1), "mem%d" % (i + 1)
    qmp.cmd("object-add", **{"qom-type": "memory-backend-ram", "id": mem, "size": args.dimm_mb << 20})
    t0 = now()
    qmp.cmd("device_add", driver="pc-dimm", id=dev, memdev=mem)
    t_ost, e = qmp.wait_event(ost_for(dev, 1), "ACPI_DEVICE_OST for " + dev)
    t_on = None
    modes = []
    for _ in range(nblocks):
        t_on, line = wait_serial(hotplug_line("memory"), "guest onlining memory of " + dev)
        modes.append(line.split(" ", 2)[2])
    status = e["data"]["info"]["status"]
    ok &= status == 0
    print("qemu-hotplug op=mem-add id=%s size_mb=%d blocks=%d ost_ms=%s online_ms=%s ost=0x%x guest='%s'"
          % (dev, args.dimm_mb, nblocks, ms(t0, t_ost), ms(t0, t_on), status, ",".join(sorted(set(modes)))))
    added_dimms.append((dev, mem))
v = guest_view("mem-add")
mem_after = int([x for x in guest("grep MemTotal /proc/meminfo")[0].split() if x.isdigit()][0])
grow = (mem_after - mem_before) // 1024
print("qemu-hotplug memtotal_growth_mb=%d expected_mb=%d" % (grow, args.dimm_mb * args.dimms))
if added_dimms and grow != args.dimm_mb * args.dimms:
    ok = False
    print("qemu-hotplug: error: MemTotal did not grow as expected", file=sys.stderr)

# ---- unplug
if not args.no_unplug:
    def deleted(dev):
        return lambda e: e["event"] == "DEVICE_DELETED" and e["data"].get("device") == dev
    for dev in reversed(added_cpus):
        t0 = now()
        qmp.cmd("device_del", id=dev)
        t_del, _ = qmp.wait_event(deleted(dev), "DEVICE_DELETED for " + dev)
        print("qemu-hotplug op=cpu-del id=%s deleted_ms=%s" % (dev, ms(t0, t_del)))
    for dev, mem in reversed(added_dimms):
        t0 = now()
        qmp.cmd("device_del", id=dev)
        t_del, _ = qmp.wait_event(deleted(dev), "DEVICE_DELETED for " + dev)
        qmp.cmd("object-del", id=mem)
        print("qemu-hotplug op=mem-del id=%s deleted_ms=%s" % (dev, ms(t0, t_del)))
    v = guest_view("unplug")
    if "cpus_online=0 " not in " ".join(v) + " ":
        ok = False
        print("qemu-hotplug: error: CPUs still online after unplug", file=sys.stderr)

qemu.stdin.write(b"exit\n")
qemu.stdin.flush()
wait_serial(lambda l: l.startswith("PLUGVM-RUN-END"), "PLUGVM-RUN-END")
try:
    qemu.wait(timeout=args.timeout)
except subprocess.TimeoutExpired:
    fail("QEMU did not exit after the guest's poweroff")
print("qemu-hotplug result=%s" % ("ok" if ok else "FAILED"))
sys.exit(0 if ok else 1)
PYEOF
