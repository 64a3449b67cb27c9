#!/usr/bin/env bash
# The Triton Inference Server backend against a real tritonserver, end to end; exits non-zero
# on any failure. scripts/triton_check.py says what it checks (HTTP and gRPC answers equal to
# `patchcore predict` and the in-process maps, 8 concurrent clients with dynamic batching, bad
# requests, a clean shutdown); --perf adds the latency/throughput table of docs/PERFORMANCE.md.
#
# Tools: cargo and python3.11 (PYTHON=... to choose another 3.10+). The server is PyPI's
# nvidia-pytriton wheel (tritonserver 2.51, CPU-capable, no container) and the client
# tritonclient, both pinned and installed once into <target>/triton-py (about 20 s and 360 MB
# here). The server binds 127.0.0.1 only, on free ports.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { printf 'triton-check: FAILED: %s\n' "$*" >&2; exit 1; }

PYTHON=${PYTHON:-python3.11}
PYTRITON_VERSION=0.7.0
TRITONCLIENT_VERSION=2.51.0
TARGET=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
[ -n "$TARGET" ] || fail "cannot find cargo's target directory"
PYDIR=$TARGET/triton-py
STAMP=$PYDIR/.installed-$PYTRITON_VERSION-$TRITONCLIENT_VERSION

printf '\n== pinned nvidia-pytriton %s and tritonclient %s in %s ==\n' "$PYTRITON_VERSION" "$TRITONCLIENT_VERSION" "$PYDIR"
if [ ! -e "$STAMP" ]; then
    rm -rf "$PYDIR"
    "$PYTHON" -m pip install --quiet --disable-pip-version-check --target "$PYDIR" \
        "nvidia-pytriton==$PYTRITON_VERSION" "tritonclient[http,grpc]==$TRITONCLIENT_VERSION"
    touch "$STAMP"
fi
[ -x "$PYDIR/pytriton/tritonserver/bin/tritonserver" ] || fail "$PYDIR holds no pytriton/tritonserver/bin/tritonserver"

printf '\n== the CLI, libpatchcore.so and libtriton_patchcore.so (release) ==\n'
# One invocation, so the engine is compiled once for both packages.
cargo build --release -p patchcore -p triton-patchcore
for f in patchcore libpatchcore.so libtriton_patchcore.so; do
    [ -e "$TARGET/release/$f" ] || fail "cargo did not produce $TARGET/release/$f"
done

PYTHONPATH=$PYDIR${PYTHONPATH:+:$PYTHONPATH} "$PYTHON" scripts/triton_check.py \
    --patchcore "$TARGET/release/patchcore" \
    --library "$TARGET/release/libpatchcore.so" \
    --backend "$TARGET/release/libtriton_patchcore.so" \
    --config triton/model_repository/patchcore/config.pbtxt \
    --triton "$PYDIR" "$@"
