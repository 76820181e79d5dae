#!/usr/bin/env bash
# Runs every plugvm test, the Linux-guest ones included, on a fresh Debian/Ubuntu machine:
# installs what the tests need from Debian's packages, prepares the guest image, builds the
# workspace, runs `cargo test` over it, then each fuzz target for a short while. Linux-guest
# tests boot Debian's kernel under plugvm inside the nested-KVM test bed
# (resources/kvm-host.sh) where the host's KVM cannot run Linux.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

echo "==> installing test dependencies (Debian packages)" >&2
"$repo/resources/install-deps.sh"

echo "==> preparing the guest image" >&2
"$repo/resources/guest-image.sh" >&2

echo "==> building" >&2
cargo build --workspace --all-targets

echo "==> testing" >&2
status=0
# Kept, so that the summary below can count the test bed's retries.
log="$repo/target/test-run.log"
cargo test --workspace --no-fail-fast -- "$@" 2>&1 | tee "$log" || status=$?
retries=$(grep -c '^WARNING: test-bed retry' "$log" || true)
echo "==> test-bed retries: $retries (a guest test that failed in the nested bed, then passed)" >&2
grep '^WARNING: test-bed retry' "$log" >&2 || true

# The short fuzzing run (about a minute in all; docs/fuzzing.md has the longer one).
echo "==> fuzzing (resources/fuzz.sh --seconds ${PLUGVM_FUZZ_SECONDS:-8})" >&2
# A fixed seed: CI's short run repeats itself; exploring is the longer runs' job.
"$repo/resources/fuzz.sh" --seconds "${PLUGVM_FUZZ_SECONDS:-8}" --seed "${PLUGVM_FUZZ_SEED:-20261129}" || status=1
exit "$status"
