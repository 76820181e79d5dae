#!/usr/bin/env bash
# Boot plugvm's test guest (resources/guest-image.sh) with QEMU/KVM: proves the guest image and
# is the QEMU peer for plugvm's boot benchmark.
#
# Usage: resources/bench/qemu-boot.sh [--machine q35|pc|microvm] [--runs N] [--memory MB]
#                                     [--cpus N] [--timeout SECS] [--script 'SH CODE']
#   Needs a /dev/kvm that can run Linux: on a machine without VMX/SVM the script re-runs itself
#   through resources/kvm-host.sh (nested KVM host); the images are prepared outside first.
#   Each run boots with `-enable-kvm -cpu host`, console on ttyS0 (serial stdio) and
#   plugvm.run=<base64 of the script> (default: count processors, print cpu/possible),
#   checks PLUGVM-GUEST-READY, PLUGVM-RUN-BEGIN, PLUGVM-RUN-END rc=0 and that QEMU exits after
#   the guest's poweroff, and prints one line per run:
#     qemu-boot machine=q35 run=1 ready_ms=... run_end_ms=... exit_ms=... guest_uptime_s=...
#   (times from QEMU's start). Exit status 0 when every run passed.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
RES="$(cd "$SCRIPT_DIR/.." && pwd -P)"

machine=q35
runs=1
memory=512
cpus=1
timeout_s=120
script='cat /proc/cpuinfo | grep -c processor; cat /sys/devices/system/cpu/possible; cut -d" " -f1 /proc/uptime'
orig_args=("$@")
while [ $# -gt 0 ]; do
    case "$1" in
        --machine) machine="$2"; shift ;;
        --runs) runs="$2"; shift ;;
        --memory) memory="$2"; shift ;;
        --cpus) cpus="$2"; shift ;;
        --timeout) timeout_s="$2"; shift ;;
        --script) script="$2"; shift ;;
        -h | --help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "qemu-boot: unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done

images="$("$RES/guest-image.sh" --no-vmlinux)" || { echo "qemu-boot: guest-image.sh failed" >&2; exit 1; }
if [ -z "${PLUGVM_KVMHOST_INSIDE:-}" ]; then
    exec "$RES/kvm-host.sh" -- "$0" "${orig_args[@]}"
fi
KERNEL="$(sed -n 's/^kernel=//p' <<<"$images")"
INITRAMFS="$(sed -n 's/^initramfs=//p' <<<"$images")"
[ -c /dev/kvm ] || { echo "qemu-boot: /dev/kvm missing" >&2; exit 1; }

firmware=()
for d in /usr/share/seabios /usr/share/qemu; do [ -d "$d" ] && firmware+=(-L "$d"); done
case "$machine" in
    q35 | pc) mopts=(-M "$machine") ;;
    microvm) mopts=(-M 'microvm,pit=on,pic=on,rtc=on') ;;
    *) echo "qemu-boot: unknown machine $machine" >&2; exit 2 ;;
esac
b64="$(printf '%s\n' "$script" | base64 -w0)"
append="console=ttyS0 quiet panic=-1 plugvm.run=$b64"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
failed=0
for run in $(seq 1 "$runs"); do
    log="$tmp/serial.$run"
    t0=$(date +%s%N)
    set +e
    # each console line prefixed with the ms since QEMU's start
    timeout -k 5 "$timeout_s" qemu-system-x86_64 -enable-kvm -cpu host "${mopts[@]}" "${firmware[@]}" \
        -m "$memory" -smp "$cpus" -nodefaults -no-user-config -nographic -no-reboot \
        -serial stdio -device pvpanic -kernel "$KERNEL" -initrd "$INITRAMFS" -append "$append" \
        </dev/null 2>"$tmp/qemu.err" |
        while IFS= read -r line; do
            printf '%d %s\n' $((($(date +%s%N) - t0) / 1000000)) "${line//$'\r'/}"
        done >"$log"
    qrc=${PIPESTATUS[0]}
    set -e
    t_exit=$((($(date +%s%N) - t0) / 1000000))
    ms_of() { awk -v p="$1" 'index($0, p) { print $1; exit }' "$log"; }
    ready=$(ms_of PLUGVM-GUEST-READY)
    begin=$(ms_of PLUGVM-RUN-BEGIN)
    end_line=$(grep -m1 'PLUGVM-RUN-END' "$log" || true)
    end=$(ms_of PLUGVM-RUN-END)
    uptime=$(awk '/PLUGVM-RUN-BEGIN/ {f=1; next} /PLUGVM-RUN-END/ {f=0} f {l=$2} END {print l}' "$log")
    ok=1
    [ -n "$ready" ] || { echo "qemu-boot: run $run: no PLUGVM-GUEST-READY" >&2; ok=0; }
    [ -n "$begin" ] || { echo "qemu-boot: run $run: no PLUGVM-RUN-BEGIN" >&2; ok=0; }
    [[ "$end_line" == *"PLUGVM-RUN-END rc=0"* ]] || { echo "qemu-boot: run $run: no 'PLUGVM-RUN-END rc=0'" >&2; ok=0; }
    [ "$qrc" = 0 ] || { echo "qemu-boot: run $run: QEMU did not exit cleanly after poweroff (status $qrc)" >&2; ok=0; }
    if [ "$ok" = 1 ]; then
        echo "qemu-boot machine=$machine run=$run ready_ms=$ready run_end_ms=$end exit_ms=$t_exit guest_uptime_s=$uptime"
        if [ "$run" = 1 ]; then
            echo "qemu-boot: guest output of run 1:" >&2
            awk '/PLUGVM-RUN-BEGIN/,/PLUGVM-RUN-END/' "$log" | cut -d' ' -f2- | sed 's/^/  | /' >&2
        fi
    else
        failed=1
        echo "qemu-boot: --- serial (ms line) ---" >&2
        tail -n 40 "$log" >&2
        cat "$tmp/qemu.err" >&2
    fi
done
exit "$failed"
