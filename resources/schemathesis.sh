#!/usr/bin/env bash
# Installs Schemathesis (the OpenAPI-driven API fuzzer, from PyPI, pinned) into a virtualenv
# under target/ if it is not there yet, and prints the path of its command.
# Used by tests/tests/api_schema.rs; needs python3 with venv (resources/install-deps.sh).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
version=4.32.5
venv="${CARGO_TARGET_DIR:-$repo/target}/schemathesis-$version"
bin="$venv/bin/schemathesis"
mkdir -p "$(dirname "$venv")"
# One installer at a time (test binaries may ask together); the others wait, then find it.
exec 9>"$venv.lock"
flock 9
if [ ! -x "$bin" ]; then
    echo "schemathesis.sh: installing schemathesis $version into $venv" >&2
    rm -rf "$venv"
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$version" >&2
fi
echo "$bin"
