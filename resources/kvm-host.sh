#!/usr/bin/env bash
# Run a command where a working /dev/kvm with hardware-style virtualization exists.
#
# Usage: resources/kvm-host.sh [--direct|--nested] [--timeout SECS] [--memory MB] [--cpus N]
#                              [--env NAME]... [--verbose] [--keep] -- CMD [ARGS...]
#   --direct       run CMD on this machine (default when the CPU has VMX/SVM, or kvm_intel/kvm_amd
#                  is loaded)
#   --nested       run CMD inside a nested KVM host VM (default otherwise, e.g. on PVM machines)
#   --timeout S    kill CMD (and the VM) after S seconds; exit 124 (default 900; 0 = none).
#                  In nested mode it counts from the moment the VM is up.
#   --memory MB    outer VM memory (default 6144)   --cpus N  outer VM vCPUs (default 2)
#   --env NAME     also pass variable NAME into the VM (repeatable)
#   --verbose      stream the outer VM's console (kernel log) to stderr
#   --keep         keep the run directory (target/kvm-host/run.*) for debugging
# Exit status: CMD's exit status; 124 on timeout; 125 when the nested host failed (VM did not
# come up, /dev/kvm missing inside, QEMU died); 2 on usage errors.
#
# Nested mode: QEMU TCG (`-accel tcg,thread=multi -cpu max`, which emulates AMD SVM with nested
# paging) boots Debian's kernel (same package as resources/guest-image.sh) with a small busybox
# initramfs (resources/guest/kvm-host-init) that loads irqbypass ccp kvm kvm-amd (-> /dev/kvm),
# mounts this machine's / read-only over 9p, the repository (and $CARGO_TARGET_DIR when it is
# outside) writable over 9p at the same absolute paths, proc/sys/devtmpfs and tmpfs /tmp,/run,
# chroots there and runs CMD as root in the caller's working directory (which must be visible:
# not under /tmp, /run, /proc, /sys, /dev). stdin is forwarded (QEMU -chardev stdio on a
# virtio-serial port: a terminal is put in raw mode minus ISIG, so Ctrl-C still ends everything;
# the guest process sees a non-tty stdin, EOF when ours ends); CMD's stdout and stderr come back
# on separate virtio-serial ports (byte-exact, no tty translation) and are replayed on this
# script's stdout and stderr; the outer kernel's console goes to a log file only (shown on
# failure, or live with --verbose). No network inside the VM.
# Inside, PLUGVM_KVMHOST_INSIDE is set to "nested" or "direct" (scripts use it to re-exec
# themselves through kvm-host.sh only when needed).
# Environment passed in: PATH HOME USER LOGNAME LANG LC_ALL TERM TZ NO_COLOR, every RUST_*,
# CARGO_* and PLUGVM_* variable, and --env NAMEs. PLUGVM_KVMHOST_BOOT_TIMEOUT (default 300 s)
# bounds the VM boot. For experiments with the bed itself: PLUGVM_KVMHOST_CPU (default max) is
# the outer -cpu model, PLUGVM_KVMHOST_ACCEL (default tcg,thread=multi) its -accel, and
# PLUGVM_KVMHOST_APPEND is added to its kernel command line, where plugvm_kvmhost_MODULE=a=1,b=2
# passes parameters to a module the bed loads (e.g. plugvm_kvmhost_kvm_amd=vgif=0).
# Usable as a cargo runner:
#   CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="$PWD/resources/kvm-host.sh --" cargo test
#
# Why a script of our own rather than virtme-ng or vmtest (decided November 2026):
# - vmtest (crates.io): when /dev/kvm exists it always adds `-enable-kvm -cpu host`, which fails
#   on PVM hosts; without /dev/kvm it uses `-cpu qemu64`, which has no SVM, so there is no
#   nested /dev/kvm either way without patching it. It also mounts the host root as the 9p
#   *root* filesystem (rootfstype=9p: needs 9p built into the kernel, Debian has it as modules)
#   and runs commands through qemu-guest-agent, which would have to be installed on the host.
# - virtme-ng (PyPI): a capable tool, but it adds a pip install (Python packaging in CI) plus its
#   Rust init, prefers virtiofsd, looks for modules of the guest kernel under the host's
#   /lib/modules (Debian's kernel is not installed here, only unpacked), and picks
#   `-enable-kvm -cpu host` when /dev/kvm exists; making it use TCG `-cpu max` and load
#   kvm-amd at boot means fighting its defaults through --qemu-opts and custom scripts.
# - What we need is small and specific (TCG -cpu max, four modules, two 9p mounts, exit code,
#   separate stdout/stderr): about 300 lines of bash over Debian packages only (qemu-system-x86,
#   busybox-static), cached under target/, so CI needs nothing but resources/install-deps.sh.
set -euo pipefail

die() {
    echo "kvm-host: error: $*" >&2
    exit 125
}
usage_err() {
    echo "kvm-host: $*" >&2
    echo "usage: kvm-host.sh [--direct|--nested] [--timeout SECS] [--memory MB] [--cpus N] [--env NAME]... [--verbose] [--keep] -- CMD [ARGS...]" >&2
    exit 2
}

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
REPO="$(cd "$SCRIPT_DIR/.." && pwd -P)"

mode=""
timeout_s=900
memory=6144
cpus=2
verbose=0
keep=0
extra_env=()
while [ $# -gt 0 ]; do
    case "$1" in
        --direct) mode=direct ;;
        --nested) mode=nested ;;
        --timeout)
            [ $# -ge 2 ] || usage_err "--timeout needs a value"
            timeout_s="$2"
            shift
            ;;
        --memory)
            [ $# -ge 2 ] || usage_err "--memory needs a value"
            memory="$2"
            shift
            ;;
        --cpus)
            [ $# -ge 2 ] || usage_err "--cpus needs a value"
            cpus="$2"
            shift
            ;;
        --env)
            [ $# -ge 2 ] || usage_err "--env needs a value"
            extra_env+=("$2")
            shift
            ;;
        --verbose) verbose=1 ;;
        --keep) keep=1 ;;
        -h | --help)
            sed -n '2,38p' "$0" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        --)
            shift
            break
            ;;
        *) usage_err "unknown option: $1" ;;
    esac
    shift
done
[ $# -gt 0 ] || usage_err "no command given"
for n in "$timeout_s" "$memory" "$cpus"; do
    [[ "$n" =~ ^[0-9]+$ ]] || usage_err "not a number: $n"
done

has_hw_virt() {
    grep -qwE 'vmx|svm' /proc/cpuinfo 2>/dev/null || [ -d /sys/module/kvm_intel ] || [ -d /sys/module/kvm_amd ]
}
if [ -z "$mode" ]; then
    if has_hw_virt && [ -c /dev/kvm ]; then mode=direct; else mode=nested; fi
fi

if [ "$mode" = direct ]; then
    [ -c /dev/kvm ] || die "--direct: /dev/kvm does not exist on this machine"
    export PLUGVM_KVMHOST_INSIDE=direct
    if [ "$timeout_s" -gt 0 ]; then
        set +e
        timeout -k 10 "$timeout_s" "$@"
        rc=$?
        set -e
        [ "$rc" = 124 ] && echo "kvm-host: error: command timed out after ${timeout_s}s" >&2
        exit "$rc"
    fi
    exec "$@"
fi

# ---------------------------------------------------------------------------------------------
# nested mode
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 missing (run resources/install-deps.sh)"
BIOS_DIR=""
for d in /usr/share/seabios /usr/share/qemu /usr/lib/ipxe/qemu; do
    if [ -e "$d/bios-256k.bin" ]; then BIOS_DIR="$d" && break; fi
done

images="$("$SCRIPT_DIR/guest-image.sh" --no-vmlinux --modules)" || die "resources/guest-image.sh failed"
KERNEL="$(sed -n 's/^kernel=//p' <<<"$images")"
MODROOT="$(sed -n 's/^modules=//p' <<<"$images")"
BUSYBOX="$(dirname "$(dirname "$KERNEL")")/busybox/bin/busybox"
KVER="$(basename "$(dirname "$KERNEL")")"
if [ ! -s "$KERNEL" ] || [ ! -d "$MODROOT/lib/modules/$KVER" ] || [ ! -x "$BUSYBOX" ]; then
    die "guest-image.sh gave no usable kernel/modules/busybox"
fi

STATE="$REPO/target/kvm-host"
mkdir -p "$STATE"
INITRAMFS="$STATE/initramfs-$KVER.cpio.gz"
(
    flock 9
    newest="$(find "$SCRIPT_DIR/guest" "$SCRIPT_DIR/kvm-host.sh" -type f -printf '%T@\n' | sort -n | tail -n 1 | cut -d. -f1)"
    if [ ! -s "$INITRAMFS" ] || [ "$newest" -ge "$(stat -c %Y "$INITRAMFS")" ]; then
        echo "kvm-host: building the outer VM initramfs" >&2
        root="$(mktemp -d "$STATE/.initramfs.XXXXXX")"
        mkdir -p "$root"/{bin,sbin,proc,sys,dev,tmp,host}
        cp "$BUSYBOX" "$root/bin/busybox"
        for a in $("$BUSYBOX" --list); do
            [ "$a" = busybox ] || ln -s busybox "$root/bin/$a"
        done
        install -m 0755 "$SCRIPT_DIR/guest/kvm-host-init" "$root/init"
        (cd "$MODROOT" && find lib -print0 | cpio -0 -pdm --quiet "$root")
        (cd "$root" && find . -print0 | LC_ALL=C sort -z | cpio -0 -o -H newc -R 0:0 --quiet | gzip -1n) >"$INITRAMFS.tmp"
        mv "$INITRAMFS.tmp" "$INITRAMFS"
        rm -rf "$root"
    fi
) 9>"$STATE/.lock"

# writable exports: the repository, and a cargo target dir outside it
rw_paths=("$REPO")
if [ -n "${CARGO_TARGET_DIR:-}" ]; then
    mkdir -p "$CARGO_TARGET_DIR"
    t="$(cd "$CARGO_TARGET_DIR" && pwd -P)"
    case "$t/" in "$REPO"/*) ;; *) rw_paths+=("$t") ;; esac
fi

cwd="$(pwd -P)"
cwd_visible=1
case "$cwd/" in
    /tmp/* | /run/* | /proc/* | /sys/* | /dev/*) cwd_visible=0 ;;
esac
for p in "${rw_paths[@]}"; do
    case "$cwd/" in "$p"/*) cwd_visible=1 ;; esac
done
[ "$cwd_visible" = 1 ] ||
    die "the working directory $cwd is not visible inside the VM (tmpfs/pseudo fs there)"

RUN="$(mktemp -d "$STATE/run.XXXXXX")"
qemu_pid=""
tail_pids=()
# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
    if [ -n "$qemu_pid" ]; then kill "$qemu_pid" 2>/dev/null || true; fi
    for p in "${tail_pids[@]}"; do kill "$p" 2>/dev/null || true; done
    if [ "$keep" = 1 ]; then
        echo "kvm-host: kept $RUN" >&2
    else
        rm -rf "$RUN"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

sq() { # single-quote for sh
    local s=${1//\'/\'\\\'\'}
    printf "'%s'" "$s"
}

# the command script, run with the host's bash inside the chroot
{
    echo "# generated by kvm-host.sh"
    for v in PATH HOME USER LOGNAME LANG LC_ALL TERM TZ NO_COLOR "${extra_env[@]}"; do
        if [ -n "${!v+x}" ]; then echo "export $v=$(sq "${!v}")"; fi
    done
    while IFS= read -r v; do
        echo "export $v=$(sq "${!v}")"
    done < <(compgen -e | grep -E '^(RUST_|CARGO_|PLUGVM_)' || true)
    echo "export PLUGVM_KVMHOST_INSIDE=nested"
    echo "cd $(sq "$cwd") || { echo \"kvm-host: cannot cd to $(sq "$cwd") inside the VM\" >&2; exit 125; }"
    printf 'exec'
    for a in "$@"; do printf ' %s' "$(sq "$a")"; done
    printf '\n'
} >"$RUN/cmd.sh"

{
    echo "RUNDIR=$(sq "$RUN")"
    echo "NRW=${#rw_paths[@]}"
    for i in "${!rw_paths[@]}"; do echo "RW$i=$(sq "${rw_paths[$i]}")"; done
} >"$RUN/config.sh"
cfg="$(base64 -w0 <"$RUN/config.sh")"

: >"$RUN/stdout"
: >"$RUN/stderr"
: >"$RUN/status"
: >"$RUN/console.log"

# shellcheck disable=SC2054  # commas are QEMU option syntax
qemu_args=(
    -name plugvm-kvm-host -nodefaults -no-user-config -nographic -no-reboot
    -accel "${PLUGVM_KVMHOST_ACCEL:-tcg,thread=multi}" -cpu "${PLUGVM_KVMHOST_CPU:-max}" -M q35 -smp "$cpus" -m "$memory"
    -kernel "$KERNEL" -initrd "$INITRAMFS"
    -append "console=ttyS0 quiet loglevel=3 panic=-1 mitigations=off random.trust_cpu=on plugvm_kvmhost=$cfg${PLUGVM_KVMHOST_APPEND:+ $PLUGVM_KVMHOST_APPEND}"
    -serial "file:$RUN/console.log"
    -virtfs "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap"
    -device virtio-serial-pci,id=vser
    -chardev "file,id=c_out,path=$RUN/stdout" -device virtserialport,bus=vser.0,chardev=c_out,name=stdout
    -chardev "file,id=c_err,path=$RUN/stderr" -device virtserialport,bus=vser.0,chardev=c_err,name=stderr
    -chardev "file,id=c_st,path=$RUN/status" -device virtserialport,bus=vser.0,chardev=c_st,name=status
    -chardev stdio,id=c_in,signal=on -device virtserialport,bus=vser.0,chardev=c_in,name=stdin
)
for i in "${!rw_paths[@]}"; do
    qemu_args+=(-virtfs "local,path=${rw_paths[$i]},mount_tag=rw$i,security_model=none,multidevs=remap")
done
[ -n "$BIOS_DIR" ] && qemu_args+=(-L "$BIOS_DIR")

start=$(date +%s.%N)
# (explicit <&0: a background job would otherwise get /dev/null as stdin)
qemu-system-x86_64 "${qemu_args[@]}" <&0 >"$RUN/qemu.log" 2>&1 &
qemu_pid=$!

tail -c +1 -s 0.1 -f --pid="$qemu_pid" "$RUN/stdout" &
tail_pids+=($!)
tail -c +1 -s 0.1 -f --pid="$qemu_pid" "$RUN/stderr" >&2 &
tail_pids+=($!)
if [ "$verbose" = 1 ]; then
    tail -c +1 -s 0.1 -f --pid="$qemu_pid" "$RUN/console.log" | sed -u 's/^/[kvm-host console] /' >&2 &
    tail_pids+=($!)
fi

show_console() {
    echo "kvm-host: --- outer VM console (last lines) ---" >&2
    tail -n 40 "$RUN/console.log" | sed 's/\x1b\[[0-9;?]*[a-zA-Z]//g; s/\x1bc//g' | tr -d '\r' >&2
    if [ -s "$RUN/qemu.log" ]; then
        echo "kvm-host: --- qemu ---" >&2
        tail -n 20 "$RUN/qemu.log" >&2
    fi
}
fail() {
    kill "$qemu_pid" 2>/dev/null || true
    wait "$qemu_pid" 2>/dev/null || true
    echo "kvm-host: error: $*" >&2
    [ "$verbose" = 1 ] || show_console
    exit "${2:-125}"
}

boot_timeout="${PLUGVM_KVMHOST_BOOT_TIMEOUT:-300}"
up_at=""
timed_out=0
while kill -0 "$qemu_pid" 2>/dev/null; do
    now=$(date +%s.%N)
    if [ -z "$up_at" ]; then
        if grep -q '^UP' "$RUN/status"; then
            up_at=$now
            if [ -n "${PLUGVM_KVMHOST_TIMING:-}" ] || [ "$verbose" = 1 ]; then
                echo "kvm-host: outer VM up after $(awk -v a="$start" -v b="$now" 'BEGIN{printf "%.2f", b-a}') s" >&2
            fi
        elif grep -q '^FAIL' "$RUN/status"; then
            break
        elif awk -v a="$start" -v b="$now" -v t="$boot_timeout" 'BEGIN{exit !(b-a > t)}'; then
            fail "the nested KVM host did not come up within ${boot_timeout}s"
        fi
    elif [ "$timeout_s" -gt 0 ] && awk -v a="$up_at" -v b="$now" -v t="$timeout_s" 'BEGIN{exit !(b-a > t)}'; then
        timed_out=1
        break
    fi
    sleep 0.1
done
if [ "$timed_out" = 1 ]; then
    kill "$qemu_pid" 2>/dev/null || true
    wait "$qemu_pid" 2>/dev/null || true
    sleep 0.3 # let the output tails drain
    echo "kvm-host: error: command timed out after ${timeout_s}s (VM killed)" >&2
    exit 124
fi
set +e
wait "$qemu_pid"
qrc=$?
set -e
qemu_pid=""
for p in "${tail_pids[@]}"; do wait "$p" 2>/dev/null || true; done
tail_pids=()

if grep -q '^FAIL' "$RUN/status"; then
    fail "nested KVM host: $(sed -n 's/^FAIL //p' "$RUN/status" | head -n 1)"
fi
rc="$(sed -n 's/^RC=//p' "$RUN/status" | tail -n 1)"
if [ -z "$rc" ]; then
    if grep -q '^UP' "$RUN/status"; then
        fail "the outer VM stopped before the command finished (qemu exit $qrc; kernel panic or OOM?)"
    fi
    fail "the nested KVM host did not come up (qemu exit $qrc)"
fi
exit "$rc"
