#!/usr/bin/env bash
# The huge-page guest test (tests/tests/memory_hotplug.rs,
# memory_on_huge_pages_is_reserved_and_given_back): `--memory hugepages=on` on a real guest, the
# pool reserved at boot and at each hot-add, an add the pool cannot hold rolled back with its
# reason, the pages given back at removal; the test is in CI too, this runs it alone (guests on
# hugetlbfs pages reset early in the nested bed more often than others: see the test's docs). Up
# to 4 attempts. Under a minute per attempt.
# Usage: resources/bench/hugepages.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
./resources/install-deps.sh
export PLUGVM_TEST_ATTEMPTS="${PLUGVM_TEST_ATTEMPTS:-4}"
exec cargo test -p plugvm-tests --test memory_hotplug -- --exact \
    memory_on_huge_pages_is_reserved_and_given_back --nocapture --test-threads=1
