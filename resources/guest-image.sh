#!/usr/bin/env bash
# Build (once) and print the Linux guest used by plugvm's tests: Debian's kernel and a busybox
# initramfs whose /init is resources/guest/init.
#
# Usage: resources/guest-image.sh [--refresh] [--no-vmlinux] [--modules]
#   stdout: kernel=PATH        bzImage (vmlinuz) of Debian's linux-image-amd64 dependency
#           initramfs=PATH     gzip'ed newc cpio: busybox-static, /init, pvpanic, ACPI button
#                              and evdev modules
#           vmlinux=PATH       uncompressed ELF kernel extracted from the bzImage (XZ payload)
#           kernel_cache=DIR   a plugvm --kernel-cache folder holding that vmlinux as plugvm
#                              names it (vmlinux-<sha256 of the bzImage>)
#           modules=PATH       (only with --modules) folder holding lib/modules/VERSION/...
#                              with the modules plugvm's scripts use (pvpanic, button, evdev,
#                              kvm, 9p, virtio)
#   stderr: progress.
#   --refresh     ask apt again which kernel linux-image-amd64 points at (otherwise the cached
#                 choice is reused without calling apt; the cached path answers in well under 1 s)
#   --no-vmlinux  do not extract/print vmlinux
#
# Cache: <repo>/target/guest-image/ (override: PLUGVM_GUEST_IMAGE_DIR). The initramfs is rebuilt
# when a file in resources/guest/ or this script is newer than it; the kernel's modules are
# extracted again (from the cached .deb) when KEEP_MODULES changed.
# Environment: PLUGVM_GUEST_KERNEL_PKG=linux-image-6.1.0-NN-amd64 pins a kernel package
# (default: whatever linux-image-amd64 depends on); PLUGVM_GUEST_KERNEL_META (default
# linux-image-amd64), e.g. linux-image-cloud-amd64.
#
# Guest kernel command line knobs understood by /init: see resources/guest/init.
set -euo pipefail

log() { echo "guest-image: $*" >&2; }
die() {
    echo "guest-image: error: $*" >&2
    exit 1
}

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
REPO="$(cd "$SCRIPT_DIR/.." && pwd -P)"
GUEST_SRC="$SCRIPT_DIR/guest"
CACHE="${PLUGVM_GUEST_IMAGE_DIR:-$REPO/target/guest-image}"
META="${PLUGVM_GUEST_KERNEL_META:-linux-image-amd64}"

refresh=0
want_vmlinux=1
want_modules=0
for a in "$@"; do
    case "$a" in
        --refresh) refresh=1 ;;
        --no-vmlinux) want_vmlinux=0 ;;
        --modules) want_modules=1 ;;
        -h | --help)
            sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *) die "unknown argument: $a (see --help)" ;;
    esac
done

# Modules kept from the kernel package (the rest of its 400 MB is not extracted).
# pvpanic*: the guest's panic notifier; evdev, button: the guest's power button (acpid reads
# the ACPI button driver's KEY_POWER from /dev/input); the others: resources/kvm-host.sh's
# outer VM.
KEEP_MODULES=(
    pvpanic pvpanic-mmio pvpanic-pci evdev button
    irqbypass ccp kvm kvm-amd kvm-intel
    virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_console
    netfs fscache 9pnet 9pnet_virtio 9p overlay
)
GUEST_MODULES=(pvpanic pvpanic-mmio evdev button)

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9

# newest mtime (seconds) of the initramfs sources
sources_mtime() {
    find "$GUEST_SRC" "$SCRIPT_DIR/guest-image.sh" -type f -printf '%T@\n' | sort -n | tail -n 1 | cut -d. -f1
}

apt_download() { # PKG... into the current directory
    if ! apt-get download -q "$@" </dev/null >/dev/null 2>"$CACHE/apt.err"; then
        log "apt-get download $* failed; running apt-get update"
        apt-get update -qq </dev/null >&2 || die "apt-get update failed (root needed?)"
        apt-get download -q "$@" </dev/null >/dev/null 2>"$CACHE/apt.err" ||
            die "apt-get download $* failed: $(grep -v '^W:' "$CACHE/apt.err" | head -n 3)"
    fi
}

resolve_kernel_pkg() {
    if [ -n "${PLUGVM_GUEST_KERNEL_PKG:-}" ]; then
        echo "$PLUGVM_GUEST_KERNEL_PKG"
        return
    fi
    local dep
    dep="$(apt-cache depends "$META" 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}')" || true
    if [ -z "$dep" ]; then
        log "no package lists for $META; running apt-get update"
        apt-get update -qq </dev/null >&2 || die "apt-get update failed (root needed?)"
        dep="$(apt-cache depends "$META" 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}')" || true
    fi
    [ -n "$dep" ] || die "cannot resolve $META to a versioned kernel package"
    echo "$dep"
}

# ---- which kernel ------------------------------------------------------------------------------
STATE="$CACHE/current"
KPKG=""
if [ "$refresh" = 0 ] && [ -r "$STATE" ]; then
    KPKG="$(sed -n 's/^kernel_pkg=//p' "$STATE")"
fi
if [ -z "$KPKG" ] || [ -n "${PLUGVM_GUEST_KERNEL_PKG:-}" ]; then
    KPKG="$(resolve_kernel_pkg)"
fi
KVER="${KPKG#linux-image-}"
KDIR="$CACHE/$KVER"
KERNEL="$KDIR/vmlinuz"
VMLINUX="$KDIR/vmlinux"
MODROOT="$KDIR/modules"
INITRAMFS="$KDIR/initramfs.cpio.gz"
# The KEEP_MODULES an extraction kept: a cache made with another list is extracted again.
KEPT="$KDIR/modules.kept"
BUSYBOX="$CACHE/busybox/bin/busybox"

# ---- kernel + modules ------------------------------------------------------------------------------
newest_deb() { # PKG: the newest cached .deb of PKG, or nothing (also when there is no cache)
    [ -d "$CACHE/debs" ] || return 0
    find "$CACHE/debs" -maxdepth 1 -name "${1}_*.deb" | sort -V | tail -n 1
}
if [ ! -s "$KERNEL" ] || [ ! -d "$MODROOT/lib/modules/$KVER" ] ||
    [ "$(cat "$KEPT" 2>/dev/null)" != "${KEEP_MODULES[*]}" ]; then
    deb="$(newest_deb "$KPKG")"
    if [ -z "$deb" ]; then
        log "downloading $KPKG"
        mkdir -p "$CACHE/debs"
        (cd "$CACHE/debs" && apt_download "$KPKG")
        deb="$(newest_deb "$KPKG")"
        [ -n "$deb" ] || die "download of $KPKG produced no .deb"
    fi
    tmp="$(mktemp -d "$CACHE/.extract.XXXXXX")"
    pats=('*/boot/*' '*/modules.builtin' '*/modules.order')
    for m in "${KEEP_MODULES[@]}"; do
        pats+=("*/$m.ko" "*/$m.ko.xz" "*/$m.ko.zst")
    done
    log "extracting kernel and ${#KEEP_MODULES[@]} modules from $(basename "$deb")"
    # tar reports patterns that match nothing (e.g. modules built in); that is fine here.
    dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$tmp" --wildcards "${pats[@]}" 2>/dev/null || true
    [ -s "$tmp/boot/vmlinuz-$KVER" ] || die "no boot/vmlinuz-$KVER in $deb"
    rm -rf "$KDIR"
    mkdir -p "$MODROOT/lib/modules/$KVER"
    cp "$tmp/boot/vmlinuz-$KVER" "$KDIR/vmlinuz.tmp"
    cp "$tmp/boot/config-$KVER" "$KDIR/config"
    cp "$tmp/boot/System.map-$KVER" "$KDIR/System.map"
    src="$(find "$tmp" -type d -path "*/modules/$KVER" | head -n 1)"
    [ -n "$src" ] || die "no lib/modules/$KVER in $deb"
    (cd "$src" && find . -type f \( -name '*.ko' -o -name '*.ko.xz' -o -name '*.ko.zst' -o -name 'modules.*' \) -print0 |
        cpio -0 -pdm --quiet "$MODROOT/lib/modules/$KVER")
    # busybox insmod cannot load compressed modules: keep plain .ko files.
    find "$MODROOT" -name '*.ko.xz' -exec xz -d {} +
    if find "$MODROOT" -name '*.ko.zst' | grep -q .; then
        command -v zstd >/dev/null || die "zstd needed to decompress modules"
        find "$MODROOT" -name '*.ko.zst' -exec zstd -q -d --rm {} +
    fi
    rm -rf "$tmp"
    mv "$KDIR/vmlinuz.tmp" "$KERNEL"
    echo "${KEEP_MODULES[*]}" >"$KEPT"
    printf 'kernel_pkg=%s\n' "$KPKG" >"$STATE.tmp" && mv "$STATE.tmp" "$STATE"
fi
if ! grep -qsx "kernel_pkg=$KPKG" "$STATE"; then
    printf 'kernel_pkg=%s\n' "$KPKG" >"$STATE.tmp" && mv "$STATE.tmp" "$STATE"
fi

# ---- busybox ---------------------------------------------------------------------------------
if [ ! -x "$BUSYBOX" ]; then
    log "downloading busybox-static"
    mkdir -p "$CACHE/debs"
    (cd "$CACHE/debs" && apt_download busybox-static)
    deb="$(find "$CACHE/debs" -maxdepth 1 -name 'busybox-static_*.deb' | sort -V | tail -n 1)"
    [ -n "$deb" ] || die "download of busybox-static produced no .deb"
    tmp="$(mktemp -d "$CACHE/.extract.XXXXXX")"
    dpkg-deb -x "$deb" "$tmp"
    mkdir -p "$CACHE/busybox/bin"
    cp "$tmp/bin/busybox" "$BUSYBOX.tmp" && mv "$BUSYBOX.tmp" "$BUSYBOX"
    rm -rf "$tmp"
fi

# ---- vmlinux -----------------------------------------------------------------------------------
# Like the kernel's scripts/extract-vmlinux: find the XZ stream (FD 37 7A 58 5A 00) in the
# bzImage and decompress it (about 1-2 s).
if [ "$want_vmlinux" = 1 ] && [ ! -s "$VMLINUX" ]; then
    log "extracting vmlinux"
    found=0
    offsets="$(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$KERNEL" | cut -d: -f1)" || true
    for off in $offsets; do
        if tail -c "+$((off + 1))" "$KERNEL" | xz -dc --single-stream >"$VMLINUX.tmp" 2>/dev/null ||
            [ -s "$VMLINUX.tmp" ]; then
            if [ "$(head -c 4 "$VMLINUX.tmp" | od -An -c | tr -d ' ')" = '177ELF' ]; then
                mv "$VMLINUX.tmp" "$VMLINUX"
                found=1
                break
            fi
        fi
    done
    rm -f "$VMLINUX.tmp"
    [ "$found" = 1 ] || { log "no XZ-compressed ELF found in $KERNEL; skipping vmlinux"; want_vmlinux=0; }
fi

# ---- plugvm's kernel cache ------------------------------------------------------------------
# plugvm boots a bzImage as the vmlinux inside it, which it extracts once and keeps as
# vmlinux-<sha256 of the bzImage> in its --kernel-cache folder. The tests' folder gets the vmlinux
# above under that name (byte for byte what plugvm extracts: tests/tests/cli.rs checks it), so
# that the nested test bed, which emulates every instruction, does not decompress it again.
KERNEL_CACHE_DIR="${CARGO_TARGET_DIR:-target}"
case "$KERNEL_CACHE_DIR" in /*) ;; *) KERNEL_CACHE_DIR="$REPO/$KERNEL_CACHE_DIR" ;; esac
KERNEL_CACHE_DIR="$KERNEL_CACHE_DIR/kernel-cache"
if [ "$want_vmlinux" = 1 ]; then
    mkdir -p "$KERNEL_CACHE_DIR"
    seeded="$KERNEL_CACHE_DIR/vmlinux-$(sha256sum "$KERNEL" | cut -d' ' -f1)"
    if [ ! -s "$seeded" ]; then
        ln -f "$VMLINUX" "$seeded" 2>/dev/null || cp "$VMLINUX" "$seeded"
    fi
fi

# ---- initramfs ---------------------------------------------------------------------------------
need_initramfs=0
if [ ! -s "$INITRAMFS" ]; then
    need_initramfs=1
elif [ "$(sources_mtime)" -ge "$(stat -c %Y "$INITRAMFS")" ]; then
    need_initramfs=1
fi
if [ "$need_initramfs" = 1 ]; then
    log "building initramfs"
    root="$(mktemp -d "$CACHE/.initramfs.XXXXXX")"
    mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,run,root,etc}
    cp "$BUSYBOX" "$root/bin/busybox"
    # one symlink per applet (busybox --install needs /proc/self/exe of the target arch; it
    # is the same here, but plain symlinks keep the build independent of the host)
    for applet in $("$BUSYBOX" --list); do
        [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
    done
    install -m 0755 "$GUEST_SRC/init" "$root/init"
    install -m 0755 "$GUEST_SRC/plugvm-uevent" "$root/sbin/plugvm-uevent"
    install -m 0755 "$GUEST_SRC/plugvm-poweroff" "$root/sbin/plugvm-poweroff"
    install -m 0755 -D "$GUEST_SRC/plugvm-power-button" "$root/etc/acpi/PWRF/00000080"
    for m in "${GUEST_MODULES[@]}"; do
        f="$(find "$MODROOT" -name "$m.ko" | head -n 1)"
        if [ -n "$f" ]; then
            rel="${f#"$MODROOT"/}"
            mkdir -p "$root/$(dirname "$rel")"
            cp "$f" "$root/$rel"
        else
            log "module $m not in the package (built in?)"
        fi
    done
    echo 'root:x:0:0:root:/root:/bin/sh' >"$root/etc/passwd"
    echo 'root:x:0:' >"$root/etc/group"
    (cd "$root" && find . -print0 | LC_ALL=C sort -z |
        cpio -0 -o -H newc -R 0:0 --quiet | gzip -9n) >"$INITRAMFS.tmp"
    mv "$INITRAMFS.tmp" "$INITRAMFS"
    rm -rf "$root"
    log "initramfs: $(stat -c %s "$INITRAMFS") bytes"
fi

echo "kernel=$KERNEL"
echo "initramfs=$INITRAMFS"
[ "$want_vmlinux" = 1 ] && echo "vmlinux=$VMLINUX" && echo "kernel_cache=$KERNEL_CACHE_DIR"
[ "$want_modules" = 1 ] && echo "modules=$MODROOT"
exit 0
