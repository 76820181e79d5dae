#!/usr/bin/env bash
# The soak: 1,000 vCPU and 200 memory add/remove cycles on one Debian guest (in the nested
# test bed where the host's KVM cannot run Linux), sampling plugvm's descriptors, threads,
# mappings, memory slots, RSS and per-cycle latency every 50 cycles. Prints the tables; fails
# on growth or drift (tests/tests/soak.rs says what counts). About 10 minutes.
# Usage: resources/bench/soak.sh   (PLUGVM_SOAK_CPU_CYCLES, PLUGVM_SOAK_MEMORY_CYCLES: counts)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
./resources/install-deps.sh
export PLUGVM_TEST_ATTEMPTS=1 PLUGVM_TEST_ATTEMPT_TIMEOUT_S=3600
exec cargo test -p plugvm-tests --test soak -- --ignored --nocapture --test-threads=1
