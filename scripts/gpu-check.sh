#!/usr/bin/env bash
# The CUDA backend's check on a GPU machine, in one run: the per-backend tests (every operation
# and the whole pipeline against the CPU backend and float64, PATCHCORE_REQUIRE_GPU=1 so a GPU
# that fails to open fails the run) and the CUDA benches, then one table of both; then
# `patchcore profile --device cuda` on a small category (the device's peak, the stage table, and
# a trace whose "CUDA stream" track must hold device-timed spans).
#
# The GPU machine has no registry access and no Rust toolchain, so the binaries are built here:
#   scripts/gpu-check.sh prepare     # builds into target/gpu-check (stripped, ~50 MB)
# then, on the GPU machine, from the repository root with target/gpu-check carried along:
#   scripts/gpu-check.sh             # < 8 minutes on an H200
# cuDNN 9 and cuBLAS 13 are found in any Python environment's nvidia/*/lib or the system's
# library folders and put on LD_LIBRARY_PATH; where some are missing and pip reaches an index,
# pinned CUDA-13.0-era wheels go into target/gpu-libs; where neither works, the missing
# libraries are named and the check stops (exit 3) before running anything.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=target/gpu-check

prepare() {
    scripts/install-nvcc.sh
    rm -rf "$OUT" && mkdir -p "$OUT"
    # --release: the same code paths as a user's build; stripped to travel light.
    cargo test --release --features cuda --test backends --no-run --message-format=json |
        python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "backends":
        print(m["executable"])' | xargs -I{} cp {} "$OUT/backends"
    cargo bench --features cuda --bench cuda --no-run --message-format=json |
        python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "cuda":
        print(m["executable"])' | xargs -I{} cp {} "$OUT/bench"
    cargo build --release --features cuda --bin patchcore
    cp target/release/patchcore "$OUT/patchcore"
    strip "$OUT/backends" "$OUT/bench" "$OUT/patchcore"
    git rev-parse HEAD > "$OUT/commit"
    ls -la "$OUT"
}

# The libraries the backend loads, by the sonames this build links against: the driver, cuBLAS
# 13 and cuDNN 9 with the sub-libraries its convolutions load.
REQUIRED_LIBS=(libcuda.so.1 libcublas.so.13 libcublasLt.so.13 libcudnn.so.9 libcudnn_graph.so.9
    libcudnn_ops.so.9 libcudnn_cnn.so.9 libcudnn_engines_precompiled.so.9 libcudnn_heuristic.so.9)
# CUDA-13.0-era wheels for cuBLAS and cuDNN, pinned (unpinned, pip takes releases that need a
# newer driver), installed into target/gpu-libs when the machine lacks them.
GPU_WHEELS=(nvidia-cublas==13.0.2.14 nvidia-cudnn-cu13==9.13.0.50)
GPU_LIBS=target/gpu-libs

# Folders holding the CUDA libraries: pip's nvidia/*/lib in any site-packages (the machine's
# Python environments, and target/gpu-libs), then the usual system places.
library_path() {
    local dirs=""
    for lib in "$GPU_LIBS"/nvidia/*/lib; do
        [ -d "$lib" ] && dirs+="$PWD/$lib:"
    done
    for py in python3 python; do
        command -v "$py" >/dev/null || continue
        dirs+=$("$py" - <<'PY' 2>/dev/null || true
import glob, os, site, sys
roots = site.getsitepackages() + [site.getusersitepackages()] + sys.path
seen = []
for root in roots:
    for lib in glob.glob(os.path.join(root, "nvidia", "*", "lib")):
        if lib not in seen:
            seen.append(lib)
print(":".join(seen), end=":")
PY
)
    done
    for d in /usr/local/nvidia/lib64 /usr/local/cuda/lib64 /usr/lib/x86_64-linux-gnu /usr/lib64; do
        [ -d "$d" ] && dirs+="$d:"
    done
    echo "${dirs%:}"
}

# The required libraries not found in LD_LIBRARY_PATH's folders, one per line.
missing_libraries() {
    local lib dir found
    for lib in "${REQUIRED_LIBS[@]}"; do
        found=""
        local IFS=:
        for dir in $LD_LIBRARY_PATH; do
            [ -e "$dir/$lib" ] && { found=$dir; break; }
        done
        unset IFS
        [ -n "$found" ] || echo "$lib"
    done
}

# Every required library on LD_LIBRARY_PATH, installing the pinned wheels when some are missing
# and pip reaches an index; otherwise the missing ones are named and the check stops here,
# before anything runs.
find_libraries() {
    export LD_LIBRARY_PATH="$(library_path)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    local missing
    missing=$(missing_libraries)
    [ -z "$missing" ] && return 0
    echo "not found: $(echo $missing)"
    # The driver does not come as a wheel: without it, installing the others would not help.
    if [ "$(echo $missing)" != "libcuda.so.1" ] && echo "installing ${GPU_WHEELS[*]} into $GPU_LIBS" &&
        python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$GPU_LIBS" \
        "${GPU_WHEELS[@]}" 2>&1 | tail -3; then
        export LD_LIBRARY_PATH="$(library_path)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
        missing=$(missing_libraries)
    fi
    if [ -n "$missing" ]; then
        echo "gpu-check: missing $(echo $missing): install the NVIDIA driver (libcuda) or the wheels" \
            "${GPU_WHEELS[*]}, or add their lib folders to LD_LIBRARY_PATH" >&2
        exit 3
    fi
}

run() {
    [ -x "$OUT/backends" ] && [ -x "$OUT/bench" ] && [ -x "$OUT/patchcore" ] || {
        echo "gpu-check: $OUT has no binaries: run 'scripts/gpu-check.sh prepare' on a build machine first" >&2
        exit 2
    }
    find_libraries
    export PATCHCORE_REQUIRE_GPU=1
    echo "binaries built from commit $(cat "$OUT/commit" 2>/dev/null || echo unknown)"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true
    for lib in "${REQUIRED_LIBS[@]}"; do
        found=$(IFS=:; for d in $LD_LIBRARY_PATH; do [ -e "$d/$lib" ] && echo "$d/$lib"; done | head -1 || true)
        echo "$lib: $found"
    done
    local status=0
    echo "== per-backend tests (parity with the CPU backend and float64) =="
    timeout 170 "$OUT/backends" --test-threads=1 --nocapture 2>&1 | tee "$OUT/tests.log" || status=1
    echo
    echo "== parity =="
    echo "| backend | operation | relative error | bound |"
    echo "| --- | --- | ---: | ---: |"
    grep '^parity: ' "$OUT/tests.log" | sed 's/^parity: /| /; s/$/ |/' || true
    echo
    echo "== host waits and copies per predicted batch (at most 2 waits) =="
    grep '^transfers: ' "$OUT/tests.log" || true
    echo
    echo "== CUDA benches =="
    timeout 280 "$OUT/bench" 2>&1 | tee "$OUT/bench.log" || status=1
    echo
    echo "== patchcore profile on the GPU (issue 12: device peak, stage table, CUDA stream track) =="
    profile_on_gpu || status=1
    echo
    [ "$status" = 0 ] && echo "gpu-check: PASSED" || echo "gpu-check: FAILED"
    exit "$status"
}

# A small synthetic category fitted and profiled on the GPU: the roofline table against the
# device's peak, and a trace whose "CUDA stream" track holds the device-timed operations.
profile_on_gpu() {
    local data="$OUT/profile-data" model="$OUT/profile-model.safetensors"
    rm -rf "$data"
    "$OUT/patchcore" synth --out "$data" --category chip --size 128 >/dev/null || return 1
    timeout 60 "$OUT/patchcore" fit --device cuda --train "$data/chip/train/good" --size 128 --out "$model" >/dev/null || return 1
    timeout 60 "$OUT/patchcore" profile --device cuda --model "$model" "$data/chip/test/good" --batch 8 --repeat 3 \
        --trace "$OUT/profile-trace.json" || return 1
    python3 - "$OUT/profile-trace.json" <<'PY'
import json, sys
events = json.load(open(sys.argv[1]))
events = events["traceEvents"] if isinstance(events, dict) else events
tracks = {e["tid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "thread_name"}
stream = [tid for tid, name in tracks.items() if name == "CUDA stream"]
device = [e for e in events if e.get("ph") == "X" and e["tid"] in stream]
print(f"CUDA stream track: {len(device)} device-timed spans: {sorted({e['name'] for e in device})}")
sys.exit(0 if device else 1)
PY
}

case "${1:-run}" in
    prepare) prepare ;;
    run) run ;;
    *) echo "usage: scripts/gpu-check.sh [prepare|run]" >&2; exit 2 ;;
esac
