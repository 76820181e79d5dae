#!/usr/bin/env bash
# The hostile-guest test (tests/tests/hostile_guest.rs): random devmem writes to the GED and
# both hotplug controllers and sysfs ejects from inside a Debian guest while the host hotplugs.
# Not in CI while guest tests run in the nested test bed, which the guest's hostility takes down
# in about two runs of five (see the test's docs); up to 3 attempts here. About 1-2 minutes.
# Usage: resources/bench/hostile-guest.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
./resources/install-deps.sh
export PLUGVM_TEST_ATTEMPTS="${PLUGVM_TEST_ATTEMPTS:-3}"
exec cargo test -p plugvm-tests --test hostile_guest -- --ignored --nocapture --test-threads=1
