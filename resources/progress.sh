# shellcheck shell=bash
# Set-up steps as one line of progress each, for scripts that a person watches (sourced by
# resources/demo.sh). Each tool's own output (apt, dpkg, cargo...) goes to a log file of its
# step, shown only when the step fails; the script then exits with the tool's exit code.
#
#   progress_init DIR         keep the logs in DIR (created; the logs of a previous run in it
#                             are removed)
#   step "what" CMD [ARGS...]  run CMD, stdin from /dev/null, stdout and stderr to
#                             DIR/NN-what.log; print on stderr "==> what... done (12 s)", or
#                             "FAILED (exit code N after S s)" and the log's last lines
#                             (PROGRESS_TAIL, default 25), then exit N
#
# CMD runs in the calling shell (a function works too), so `set -e` does not apply inside it:
# give it a command that reports its own failures through its exit code.

progress_init() {
    PROGRESS_DIR=$1
    PROGRESS_N=0
    mkdir -p "$PROGRESS_DIR"
    rm -f "$PROGRESS_DIR"/[0-9][0-9]-*.log
}

# "Building plugvm (release)" -> "building-plugvm-release"
progress_slug() {
    local s=${1,,}
    s=${s//[^a-z0-9]/-}
    while [[ $s == *--* ]]; do s=${s//--/-}; done
    s=${s#-}
    printf '%s' "${s%-}"
}

step() {
    local what=$1 start=$SECONDS rc=0 log
    shift
    PROGRESS_N=$((PROGRESS_N + 1))
    log=$PROGRESS_DIR/$(printf '%02d' "$PROGRESS_N")-$(progress_slug "$what").log
    printf '==> %s... ' "$what" >&2
    "$@" </dev/null >"$log" 2>&1 || rc=$?
    if [[ $rc -eq 0 ]]; then
        printf 'done (%d s)\n' $((SECONDS - start)) >&2
        return 0
    fi
    printf 'FAILED (exit code %d after %d s)\n' "$rc" $((SECONDS - start)) >&2
    printf '    the last lines of %s:\n' "$log" >&2
    tail -n "${PROGRESS_TAIL:-25}" "$log" | sed 's/^/    | /' >&2
    exit "$rc"
}
