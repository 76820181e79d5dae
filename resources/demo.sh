#!/usr/bin/env bash
# The plugvm demo: builds plugvm, prepares the guest image (Debian's stock kernel and a busybox
# initramfs), boots it and hotplugs vCPUs and memory into it through the API while the guest's
# console shows what the guest itself sees and `plugvm-remote watch` shows each transaction
# as it runs. Where the host's KVM cannot run Linux (no VT-x/AMD-V), it runs inside the
# nested-KVM test bed (resources/kvm-host.sh).
#
#   resources/demo.sh           scripted hotplug demo
#   resources/demo.sh --shell   boot to an interactive shell on the serial console
#                               (type `poweroff` to end; plugvm exits with 0)
#
# Each set-up step is one line of progress; what its tools print (apt, cargo...) goes to
# target/demo-logs/, and the end of it is shown if the step fails. plugvm's own log (info
# level) is target/demo-logs/plugvm.log.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
mode=${1:-demo}
logs=$repo/target/demo-logs
# shellcheck source=resources/progress.sh
source "$repo/resources/progress.sh"

if [[ -z "${PLUGVM_KVMHOST_INSIDE:-}" ]]; then
    progress_init "$logs"
    step "installing packages (resources/install-deps.sh)" "$repo/resources/install-deps.sh"
    step "building plugvm (cargo build --release)" cargo build --release --bins
    step "preparing the guest image (resources/guest-image.sh)" "$repo/resources/guest-image.sh"
    echo "==> starting a KVM host for the guest (resources/kvm-host.sh: this machine's KVM" \
        "if it can run Linux, else a nested one under QEMU, which takes a minute or two)" >&2
    exec "$repo/resources/kvm-host.sh" --timeout 900 -- "$repo/resources/demo.sh" "$mode"
fi

# Inside the KVM host: the image was prepared outside, this only reads where it is.
mkdir -p "$logs"
if ! images=$("$repo/resources/guest-image.sh" 2>"$logs/guest-image-inside.log"); then
    echo "demo: resources/guest-image.sh failed:" >&2
    tail -n 25 "$logs/guest-image-inside.log" >&2
    exit 1
fi
kernel=$(sed -n 's/^kernel=//p' <<<"$images")
initramfs=$(sed -n 's/^initramfs=//p' <<<"$images")
plugvm=$repo/target/release/plugvm
remote=$repo/target/release/plugvm-remote

# no-kvmapf: the nested test bed's emulated SVM mishandles KVM's asynchronous page faults, which
# stalls a guest now and then (tests/src/guest.rs, GUEST_CMDLINE, has the measurements).
if [[ "$mode" == "--shell" ]]; then
    exec "$plugvm" --kernel "$kernel" --kernel-cache "$repo/target/kernel-cache" --initramfs "$initramfs" \
        --cpus boot=2,max=4 --memory size=512M,hotplug_size=1G \
        --cmdline "console=ttyS0 panic=-1 pci=off no-kvmapf quiet"
fi

work=$(mktemp -d)
vmm=""
watcher=""
# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
    for pid in $watcher $vmm; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
sock=$work/api.sock
# The guest reports what it sees every two seconds.
# shellcheck disable=SC2016  # expanded by the guest's shell, not here
script='while true; do echo "guest: CPUs online $(cat /sys/devices/system/cpu/online), MemTotal $(awk "/MemTotal/ {print int(\$2/1024)}" /proc/meminfo) MiB"; sleep 2; done'
b64=$(printf '%s' "$script" | base64 -w0)

if [[ -t 1 ]]; then
    bold=$'\033[1m' cyan=$'\033[36m' plain=$'\033[0m'
else
    bold="" cyan="" plain=""
fi
say() { printf '\n%s==> %s%s\n' "$bold" "$*" "$plain"; }
api() {
    echo "\$ plugvm-remote $*"
    "$remote" --api-socket "$sock" "$@" || echo "(exit code $?)"
}

say "booting Debian's kernel: 1 vCPU (max 4), 512 MiB + 1 GiB hotplug region"
# A fresh log: transaction ids start at 1 again with each plugvm.
rm -f "$logs/plugvm.log"
RUST_LOG=${RUST_LOG:-info} "$plugvm" --kernel "$kernel" --kernel-cache "$repo/target/kernel-cache" --initramfs "$initramfs" \
    --cpus boot=1,max=4 --memory size=512M,hotplug_size=1G,hotplug_slots=4 \
    --api-socket "$sock" --log-file "$logs/plugvm.log" \
    --cmdline "console=ttyS0 panic=-1 pci=off no-kvmapf quiet plugvm.run=$b64" </dev/null &
vmm=$!
for _ in $(seq 1 120); do [[ -S "$sock" ]] && "$remote" --api-socket "$sock" ping >/dev/null 2>&1 && break; sleep 1; done

say "plugvm-remote watch: the VMM's events live, each transaction step by step (lines 'watch |')"
# From the first event on (--since 0), so the boot shows too. It ends by itself when plugvm
# does, at the end of the demo.
# A pipeline rather than a process substitution: the nested KVM host has no /dev/fd.
("$remote" --api-socket "$sock" watch --since 0 | sed -u "s/^/${cyan}    watch | /; s/\$/${plain}/") &
watcher=$!
sleep 8

say "hot-add a vCPU: the call returns when the guest answered _OST"
api add-vcpu
sleep 3
say "resize to 4 vCPUs (one all-or-nothing transaction)"
api resize --cpus 4
sleep 3
say "hot-remove vCPU 2: the guest offlines it, ejects it, and says so"
api remove-vcpu 2
sleep 3
say "hot-add 256 MiB of memory"
api add-memory 256M
sleep 3
say "remove it again (the guest onlined it movable, so it can give it back)"
api remove-memory 1
sleep 3
say "the journal: every transaction with its phases and the guest's verdicts"
"$remote" --api-socket "$sock" transactions
say "plugvm's own log of transaction 2 (--log-file, RUST_LOG=info): its lines are in the span tx{id=2 ...}"
grep -F 'tx{id=2 ' "$logs/plugvm.log" | cut -c 1-180 || true
say "press the ACPI power button: the guest's acpid powers it off, and plugvm ends with it"
api power-button
rc=0
wait "$vmm" || rc=$?
vmm=""
# The watcher saw the stream end with plugvm.
wait "$watcher" || true
watcher=""
if [[ $rc -eq 0 ]]; then
    echo "plugvm exited with 0"
else
    echo "plugvm exited with $rc; its log: $logs/plugvm.log"
    exit "$rc"
fi
