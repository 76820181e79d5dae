#!/usr/bin/env bash
# Repeats a benchmark until its ratios are stable, and shows the spread.
#
# Usage: resources/bench/repeat.sh [--max-runs N] [--tolerance PCT] [--keep DIR] -- BENCH [ARGS...]
#   BENCH          resources/bench/boot.sh or resources/bench/hotplug.sh (any script whose
#                  stdout ends with `target ...: ... = R% -> PASS|MISS` or `= Rx -> ...` lines)
#   --max-runs N   at most N invocations (default 5; at least 3)
#   --tolerance P  stable when, for every target, the last three invocations' ratios are within
#                  P percent of each other (max/min - 1; default 10)
#   --keep DIR     keep each invocation's stdout as DIR/run-K.out (default: a temporary folder)
#
# The test bed's numbers move from run to run (see README.md): one invocation's ratio says
# little. This runs the same invocation again until three in a row agree, then prints per target
# every run's ratio, the spread of the last three, their median, and how many of them passed.
# Exit: 0 stable (whatever the targets say), 1 not stable after --max-runs or a run gave no
# result,
# 2 usage.
set -euo pipefail

usage_err() {
    echo "repeat: $*" >&2
    echo "usage: repeat.sh [--max-runs N] [--tolerance PCT] [--keep DIR] -- BENCH [ARGS...]" >&2
    exit 2
}

max_runs=5
tolerance=10
keep=""
while [ $# -gt 0 ]; do
    case "$1" in
        --max-runs | --tolerance | --keep)
            [ $# -ge 2 ] || usage_err "$1 needs a value"
            case "$1" in
                --max-runs) max_runs="$2" ;;
                --tolerance) tolerance="$2" ;;
                --keep) keep="$2" ;;
            esac
            shift
            ;;
        --) shift; break ;;
        -h | --help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) usage_err "unknown argument: $1" ;;
    esac
    shift
done
[ $# -gt 0 ] || usage_err "no benchmark given after --"
[[ "$max_runs" =~ ^[0-9]+$ ]] && [ "$max_runs" -ge 3 ] || usage_err "--max-runs: at least 3"
[[ "$tolerance" =~ ^[0-9]+(\.[0-9]+)?$ ]] || usage_err "--tolerance: a number of percent"
[ -x "$1" ] || usage_err "$1 is not an executable script"

dir="${keep:-$(mktemp -d "${TMPDIR:-/tmp}/bench-repeat.XXXXXX")}"
mkdir -p "$dir"

# analyze RUNS [--quiet]: the ratios of run-1.out .. run-RUNS.out; exit 0 when every target's
# last three ratios agree within the tolerance.
analyze() {
    python3 - "$dir" "$1" "$tolerance" "${2:-}" <<'PYEOF'
import os, re, statistics, sys

d, runs, tol, quiet = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4] == "--quiet"
PAT = re.compile(r"^target (.*?): .*= ([0-9.]+)(%|x) -> (PASS|MISS)")

def targets(k):
    out = {}
    with open(os.path.join(d, f"run-{k}.out")) as f:
        for line in f:
            m = PAT.match(line.strip())
            if m:
                v = float(m.group(2)) / (100.0 if m.group(3) == "%" else 1.0)
                out[m.group(1)] = (v, m.group(4))
    return out

per = [targets(k) for k in range(1, runs + 1)]
names = list(per[-1]) if per else []
ok = bool(names)
lines = [f"repeat: {runs} run(s); a ratio is stable when the last three agree within {tol:g}%"]
for n in names:
    vals = [p.get(n) for p in per]
    last3 = [v for v in vals[-3:] if v is not None]
    lo = min((x for x, _ in last3), default=0)
    spread = (max(x for x, _ in last3) / lo - 1) * 100 if len(last3) == 3 and lo > 0 else None
    stable = spread is not None and spread <= tol
    ok = ok and stable
    med = statistics.median(x for x, _ in last3) if last3 else None
    passes = sum(1 for _, r in last3 if r == "PASS")
    lines.append(f"target {n}")
    lines.append("    ratio per run: " + " ".join("-" if v is None else f"{v[0]:.2f}" for v in vals)
                 + f"; last three: median {'-' if med is None else f'{med:.2f}'}, spread "
                 + ("-" if spread is None else f"{spread:.1f}%")
                 + f" -> {'stable' if stable else 'NOT stable'}, {passes}/{len(last3)} PASS")
if not names:
    lines.append("repeat: no `target ... = R% -> PASS|MISS` lines in the output")
if not quiet:
    print("\n".join(lines))
sys.exit(0 if ok else 1)
PYEOF
}

runs=0
for k in $(seq 1 "$max_runs"); do
    echo "repeat: run $k of at most $max_runs: $*" >&2
    if ! "$@" >"$dir/run-$k.out"; then
        # A benchmark exits 1 when one boot or operation of many failed (the test bed's
        # flakiness): its tables still stand, unless it printed no target at all.
        if ! grep -q '^target ' "$dir/run-$k.out"; then
            echo "repeat: run $k failed with no result (its output: $dir/run-$k.out)" >&2
            exit 1
        fi
        echo "repeat: run $k had failures (see its stderr); its targets are counted" >&2
    fi
    runs=$k
    if [ "$k" -ge 3 ] && analyze "$k" --quiet; then
        break
    fi
done
echo "repeat: outputs in $dir" >&2
analyze "$runs"
