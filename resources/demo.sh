#!/usr/bin/env bash
# The plugvm demo: builds plugvm, prepares the guest image (Debian's stock kernel and a
# busybox initramfs) and boots it to a shell on the serial console. Where the host's KVM
# cannot run Linux (no VT-x/AMD-V), it runs inside the nested-KVM test bed.
# Type `poweroff` in the guest to end it (plugvm exits with code 0).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
"$repo/resources/install-deps.sh"
cargo build --release --bins >&2
eval "$("$repo/resources/guest-image.sh" | grep -E '^(kernel|initramfs)=')"
exec "$repo/resources/kvm-host.sh" -- "$repo/target/release/plugvm" \
    --kernel "$kernel" --initramfs "$initramfs" \
    --cpus boot=2,max=4 --memory size=512M,hotplug_size=1G \
    --cmdline "console=ttyS0 panic=-1 pci=off quiet" "$@"
