#!/usr/bin/env bash
# C ABI latency, the figures of docs/PERFORMANCE.md ("C ABI latency"):
#   1. `cargo bench --bench ffi`: fits the bundled EfficientNet-Lite0 and ResNet-18 (hashed
#      weights: latency does not depend on the values) at 256 px on synthetic images, saves
#      both models, and times patchcore_predict against PatchCore::predict in one process;
#   2. examples/c/bench.c, built with gcc against libpatchcore.so, times the same models from
#      a C host: p50/p90/p99 per image, with and without the anomaly map;
#   3. the same program asked for CUDA, which reports why it cannot have it in a CPU build.
# Usage: scripts/c-bench.sh [ITERATIONS]   (default 200; RAYON_NUM_THREADS sets the threads)
set -euo pipefail
cd "$(dirname "$0")/.."
ITERATIONS=${1:-200}
TARGET=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')

printf '== machine ==\n%s, %s logical CPUs, load %s\n' "$(uname -m)" "$(nproc)" "$(cut -d' ' -f1-3 /proc/loadavg)"
grep -m1 'model name' /proc/cpuinfo || true

printf '\n== Rust API against the C ABI, one process (cargo bench --bench ffi) ==\n'
cargo build --release
cargo bench --bench ffi 2>&1 | grep -v '^\s*\(Compiling\|Finished\|Running\)'

printf '\n== from C (examples/c/bench.c) ==\n'
make -s -C examples/c OUT="$TARGET/c-examples" LIBDIR="$TARGET/release" "$TARGET/c-examples/bench"
MODELS=("$TARGET"/tmp/c-bench/efficientnet_lite0-256.patchcore "$TARGET"/tmp/c-bench/resnet18-256.patchcore)
"$TARGET/c-examples/bench" --iterations "$ITERATIONS" "${MODELS[@]}"

printf '\n== from C on CUDA ==\n'
"$TARGET/c-examples/bench" --device cuda --iterations "$ITERATIONS" "${MODELS[0]}" || true
