#!/usr/bin/env bash
# Issue 13: our CPU predict against anomalib's PatchCore and its OpenVINO export, in one run on
# this machine, with the same weights and memory bank (not part of CI: it installs about 6 GB).
#
#   scripts/compare-openvino.sh [CATEGORY ...]    (default: chip woven, an object and a texture,
#                                                  so that it takes minutes; all: every category)
#
# 1. Installs the pinned torch, anomalib and openvino of scripts/compare-openvino.requirements.txt
#    into target/ov-venv (once; PyPI's torch wheel brings the CUDA libraries).
# 2. Builds the release CLI, synthesizes the categories at 256 px, writes ResNet-18 with the
#    hashed test weights (no ImageNet download here) and fits one model per category at ratio
#    0.25: 40 training images x 1,024 patches -> a 10,240-row bank, the size issue 13 measured.
# 3. scripts/compare_openvino.py loads each model file's folded weights and bank into anomalib's
#    PatchcoreModel, converts that module with openvino.convert_model, and times anomalib
#    (batch 8), OpenVINO with the CPU plugin's default precision (bf16 where the CPU has it) and
#    with f32 forced (batch 1 and 8), and ours on the same test images: `patchcore predict
#    --batch 1|8` (process start, load and decoding included) and the C ABI in process
#    (libpatchcore.so through ctypes, model loaded, decoded images, maps included), each in the
#    default precision and, where the CPU has AMX-BF16 or AVX512-BF16, in bf16; then prints
#    ms/image, the ratios, the largest score differences and each engine's image AUROC.
#
# Environment: REPEATS (passes per figure, the best is kept; default 2),
# PATCHCORE_RESNET18_WEIGHTS (torchvision resnet18 weights as safetensors instead of the hashed ones),
# ISA=avx512_bf16: every engine as on a CPU with AVX512-BF16 but no AMX (AMD Zen 4, where issue 13
# was measured): OpenVINO's oneDNN capped by ONEDNN_MAX_CPU_ISA, ours by PATCHCORE_BF16_PRODUCTS.
set -euo pipefail
case "${ISA:-}" in
    "") ;;
    avx512_bf16) export ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 PATCHCORE_BF16_PRODUCTS=avx512 ;;
    *) echo "ISA=$ISA: expected avx512_bf16 or nothing" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."

venv=target/ov-venv
work=target/ov-compare
requirements=scripts/compare-openvino.requirements.txt

if ! cmp -s "$requirements" "$venv/requirements.txt" 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q -r "$requirements"
    cp "$requirements" "$venv/requirements.txt"
fi
python="$venv/bin/python"

cargo build --release -q
patchcore=target/release/patchcore

mkdir -p "$work"
[ -d "$work/data" ] || "$patchcore" synth --out "$work/data" --size 256 >/dev/null
categories=(chip woven)
[ $# -eq 0 ] || categories=("$@")
[ "${categories[*]}" != all ] || mapfile -t categories < <(ls "$work/data")

weights="${PATCHCORE_RESNET18_WEIGHTS:-$work/resnet18-hashed.safetensors}"
[ -f "$weights" ] || "$python" scripts/compare_openvino.py weights "$weights"

pairs=()
for c in "${categories[@]}"; do
    model="$work/$c.patchcore"
    if [ ! -f "$model" ] || [ "$weights" -nt "$model" ] || [ "$patchcore" -nt "$model" ]; then
        "$patchcore" fit --backbone resnet18 --weights "$weights" --ratio 0.25 \
            --train "$work/data/$c/train/good" --out "$model" >/dev/null
    fi
    pairs+=("$model:$work/data/$c/test")
done

echo "== machine"
grep -m1 'model name' /proc/cpuinfo
echo "cores: $(nproc), load average: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "ISA cap: ${ISA:-none} (ONEDNN_MAX_CPU_ISA=${ONEDNN_MAX_CPU_ISA:-}, PATCHCORE_BF16_PRODUCTS=${PATCHCORE_BF16_PRODUCTS:-})"
echo "CPU flags: $(grep -m1 '^flags' /proc/cpuinfo | grep -o -w -E 'avx2|fma|avx512f|avx512_bf16|avx512_vnni|amx_[a-z0-9]+' | sort -u | tr '\n' ' ')"
"$python" -c 'import torch, anomalib, openvino; print("torch", torch.__version__, "| anomalib", anomalib.__version__, "| openvino", openvino.__version__)'
echo "== comparison (categories: ${categories[*]})"
"$python" scripts/compare_openvino.py compare --patchcore "$patchcore" --repeats "${REPEATS:-2}" "${pairs[@]}"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
