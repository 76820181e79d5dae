#!/usr/bin/env bash
# The plugvm demo: builds plugvm, prepares the guest image (Debian's stock kernel and a busybox
# initramfs), boots it and hotplugs vCPUs and memory into it through the API while the guest's
# console shows what the guest itself sees. Where the host's KVM cannot run Linux (no
# VT-x/AMD-V), it runs inside the nested-KVM test bed (resources/kvm-host.sh).
#
#   resources/demo.sh           scripted hotplug demo
#   resources/demo.sh --shell   boot to an interactive shell on the serial console
#                               (type `poweroff` to end; plugvm exits with 0)
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
mode=${1:-demo}

if [[ -z "${PLUGVM_KVMHOST_INSIDE:-}" ]]; then
    "$repo/resources/install-deps.sh"
    echo "==> building plugvm" >&2
    cargo build --release --bins >&2
    echo "==> preparing the guest image" >&2
    "$repo/resources/guest-image.sh" >/dev/null
    exec "$repo/resources/kvm-host.sh" --timeout 900 -- "$repo/resources/demo.sh" "$mode"
fi

eval "$("$repo/resources/guest-image.sh" | grep -E '^(kernel|initramfs)=')"
plugvm=$repo/target/release/plugvm
remote=$repo/target/release/plugvm-remote

if [[ "$mode" == "--shell" ]]; then
    exec "$plugvm" --kernel "$kernel" --initramfs "$initramfs" \
        --cpus boot=2,max=4 --memory size=512M,hotplug_size=1G \
        --cmdline "console=ttyS0 panic=-1 pci=off quiet"
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
sock=$work/api.sock
# The guest reports what it sees every two seconds.
script='while true; do echo "guest: CPUs online $(cat /sys/devices/system/cpu/online), MemTotal $(awk "/MemTotal/ {print int(\$2/1024)}" /proc/meminfo) MiB"; sleep 2; done'
b64=$(printf '%s' "$script" | base64 -w0)

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
api() {
    echo "\$ plugvm-remote $*"
    "$remote" --api-socket "$sock" "$@" || echo "(exit code $?)"
}

say "booting Debian's kernel: 1 vCPU (max 4), 512 MiB + 1 GiB hotplug region"
"$plugvm" --kernel "$kernel" --initramfs "$initramfs" \
    --cpus boot=1,max=4 --memory size=512M,hotplug_size=1G,hotplug_slots=4 \
    --api-socket "$sock" \
    --cmdline "console=ttyS0 panic=-1 pci=off quiet plugvm.run=$b64" </dev/null &
vmm=$!
for _ in $(seq 1 120); do [[ -S "$sock" ]] && "$remote" --api-socket "$sock" ping >/dev/null 2>&1 && break; sleep 1; done
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
say "press the ACPI power button: the guest's acpid powers it off, and plugvm ends with it"
api power-button
wait "$vmm" && echo "plugvm exited with 0"
