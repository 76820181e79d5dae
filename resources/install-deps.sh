#!/usr/bin/env bash
# Install the Debian packages that plugvm's tests and benchmarks need.
#
# Usage: resources/install-deps.sh [--check]
#   (no option)  install whatever is missing (needs root, or sudo without a password)
#   --check      only report what is missing; exit 1 if anything is
#
# Idempotent and quiet: when everything is installed it prints nothing and returns at once
# (no apt-get call). `apt-get update` runs only when a package is missing and the package
# lists are absent or cannot provide it. Works non-interactively (CI, no stdin).
#
# Packages:
#   qemu-system-x86  QEMU for the nested KVM host (resources/kvm-host.sh) and the benchmark peer
#   seabios, ipxe-qemu  QEMU's firmware (BIOS images, option ROMs), found via -L /usr/share/seabios
#   acpica-tools     iasl / acpiexec to check the generated AML
#   busybox-static   one-file userland for the guest and outer-VM initramfs images
#   cpio, gzip, xz-utils  building the initramfs; extracting vmlinux from the bzImage
#   python3          QMP client in resources/bench/qemu-hotplug.sh
#   python3-venv     the Schemathesis virtualenv (resources/schemathesis.sh)
#   ca-certificates  apt over https mirrors on minimal images
set -euo pipefail

PACKAGES=(
    qemu-system-x86
    seabios
    ipxe-qemu
    acpica-tools
    busybox-static
    cpio
    gzip
    xz-utils
    python3
    python3-venv
    ca-certificates
)

check_only=0
case "${1:-}" in
    --check) check_only=1 ;;
    "") ;;
    -h | --help)
        sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "install-deps.sh: unknown argument: $1" >&2
        exit 2
        ;;
esac

is_installed() {
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" = installed ]
}

missing=()
for p in "${PACKAGES[@]}"; do
    is_installed "$p" || missing+=("$p")
done

[ "${#missing[@]}" -eq 0 ] && exit 0

if [ "$check_only" = 1 ]; then
    echo "install-deps.sh: missing packages: ${missing[*]}" >&2
    exit 1
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO=(sudo -n)
    else
        echo "install-deps.sh: need root to install: ${missing[*]}" >&2
        exit 1
    fi
fi

export DEBIAN_FRONTEND=noninteractive
echo "install-deps.sh: installing ${missing[*]}" >&2

# Only refresh the package lists when some missing package has no installation candidate.
need_update=0
for p in "${missing[@]}"; do
    cand="$(apt-cache policy "$p" 2>/dev/null | awk '/Candidate:/ {print $2}')"
    if [ -z "$cand" ] || [ "$cand" = "(none)" ]; then
        need_update=1
        break
    fi
done
if [ "$need_update" = 1 ]; then
    "${SUDO[@]}" apt-get update -qq </dev/null >&2
fi

apt_install() {
    "${SUDO[@]}" apt-get install -y -qq --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        "${missing[@]}" </dev/null >&2
}
if ! apt_install; then
    # Stale lists (404 on a superseded version): refresh once and retry.
    "${SUDO[@]}" apt-get update -qq </dev/null >&2
    apt_install
fi

for p in "${missing[@]}"; do
    if ! is_installed "$p"; then
        echo "install-deps.sh: failed to install $p" >&2
        exit 1
    fi
done
