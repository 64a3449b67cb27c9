#!/usr/bin/env bash
# The CUDA backend's check on a GPU machine, in one run: the per-backend tests (every operation
# and the whole pipeline against the CPU backend and float64, PATCHCORE_REQUIRE_GPU=1 so a GPU
# that fails to open fails the run) and the CUDA benches, then one table of both.
#
# The GPU machine has no registry access and no Rust toolchain, so the binaries are built here:
#   scripts/gpu-check.sh prepare     # builds into target/gpu-check (stripped, ~30 MB)
# then, on the GPU machine, from the repository root with target/gpu-check carried along:
#   scripts/gpu-check.sh             # < 8 minutes on an H200
# cuDNN 9 and cuBLAS are found in the machine's Python environment (nvidia/*/lib) or the
# system's library folders, and put on LD_LIBRARY_PATH.
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
    strip "$OUT/backends" "$OUT/bench"
    git rev-parse HEAD > "$OUT/commit"
    ls -la "$OUT"
}

# Folders holding the CUDA libraries, from pip's nvidia/* packages and the usual system places.
library_path() {
    local dirs=""
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
    for d in /usr/local/cuda/lib64 /usr/lib/x86_64-linux-gnu /usr/lib64; do
        [ -d "$d" ] && dirs+="$d:"
    done
    echo "${dirs%:}"
}

run() {
    [ -x "$OUT/backends" ] && [ -x "$OUT/bench" ] || {
        echo "gpu-check: $OUT has no binaries: run 'scripts/gpu-check.sh prepare' on a build machine first" >&2
        exit 2
    }
    export LD_LIBRARY_PATH="$(library_path)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    export PATCHCORE_REQUIRE_GPU=1
    echo "binaries built from commit $(cat "$OUT/commit" 2>/dev/null || echo unknown)"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true
    for lib in libcuda.so.1 libcudnn.so.9 libcublas.so; do
        found=$(IFS=:; for d in $LD_LIBRARY_PATH; do ls "$d"/$lib* 2>/dev/null; done | head -1 || true)
        echo "$lib: ${found:-NOT FOUND}"
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
    echo "== CUDA benches =="
    timeout 280 "$OUT/bench" 2>&1 | tee "$OUT/bench.log" || status=1
    echo
    [ "$status" = 0 ] && echo "gpu-check: PASSED" || echo "gpu-check: FAILED"
    exit "$status"
}

case "${1:-run}" in
    prepare) prepare ;;
    run) run ;;
    *) echo "usage: scripts/gpu-check.sh [prepare|run]" >&2; exit 2 ;;
esac
