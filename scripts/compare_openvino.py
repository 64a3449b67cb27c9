#!/usr/bin/env python3
"""The Python half of scripts/compare-openvino.sh (issue 13): anomalib's PatchcoreModel and its
OpenVINO export against `patchcore predict`, with the weights and bank of our model files.

    compare_openvino.py weights OUT.safetensors
        ResNet-18 with the hashed weights of scripts/make_fixtures.py, for `patchcore fit`:
        real ImageNet weights cannot be downloaded here, and the timings do not depend on the
        values.
    compare_openvino.py compare --patchcore BIN --repeats R MODEL:IMAGE_DIR ...
        For each model file, anomalib's PatchcoreModel loaded with its weights and bank, that
        module converted to OpenVINO, and our CLI score the PNGs under IMAGE_DIR (the first
        multiple of 8 of them; anomalous unless in a folder named good). Prints ms per image,
        the ratios, the scores' largest differences and each engine's image AUROC.

Anomalib and OpenVINO are timed on decoded, already-sized float images (decoding is outside
their clock). Ours twice: the whole CLI run (process start, model load, PNG decoding), the figure
a user of the CLI gets; and the C ABI in this process (libpatchcore.so next to the binary,
through ctypes: the model loaded once, decoded 8-bit images in, scores and anomaly maps out),
what a host that keeps the model loaded gets, and the same work OpenVINO's figure counts; both in
the default precision and, where the CPU has AMX-BF16 or AVX512-BF16, in bf16 (`--precision
bf16`). Each figure is the best of R passes over all images, the passes of all engines
interleaved.
"""

import argparse
import ctypes
import json
import os
import subprocess
import sys
import time
import warnings

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open

BATCHES = (1, 8)
BN_EPS = 1e-5  # torchvision's and timm's BatchNorm2d default


def write_hashed_weights(out):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import torchvision
    from make_fixtures import make_model
    from safetensors.torch import save_file

    model = make_model(torchvision.models.resnet18)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out)


# ------------------------------------------------------------------------- our model file
def read_model_file(path):
    """(meta, folded convolutions {name: (weight, bias)}, memory bank) of a patchcore model."""
    with safe_open(path, framework="pt") as f:
        meta = json.loads(f.metadata()["patchcore"])
        bank = f.get_tensor("memory_bank")
        convs = {}
        for key in f.keys():
            if key.startswith("backbone."):
                name, kind = key[len("backbone."):].rsplit(".", 1)
                convs.setdefault(name, {})[kind] = f.get_tensor(key)
    if meta["backbone"] != "resnet18" or meta["layers"] != ["layer2", "layer3"]:
        sys.exit(f"{path}: backbone {meta['backbone']} {meta['layers']}; this comparison needs "
                 "resnet18 with layer2 + layer3 (fit --backbone resnet18)")
    if meta["preprocess"].get("crop"):
        sys.exit(f"{path}: fitted with --crop; fit without it (anomalib is fed the resized image)")
    return meta, {n: (c["weight"], c["bias"]) for n, c in convs.items()}, bank


def bn_of(conv):
    """The torchvision/timm BatchNorm that follows a ResNet convolution."""
    if conv == "conv1":
        return "bn1"
    if conv.endswith(".downsample.0"):
        return conv[:-1] + "1"
    head, tail = conv.rsplit(".", 1)  # layerN.M.convK -> layerN.M.bnK
    return f"{head}.bn{tail[len('conv'):]}"


def anomalib_model(meta, convs, bank):
    """anomalib's PatchcoreModel with our folded weights and our bank. The model file keeps each
    convolution with its BatchNorm folded in (w' = w g/sqrt(var+eps), b' = beta - mean g/...),
    so the BatchNorm after it is set to pass b' through: gamma 1, beta b', mean 0, var 1 - eps."""
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

    model = PatchcoreModel(layers=meta["layers"], backbone="resnet18", pre_trained=False,
                           num_neighbors=meta["num_neighbors"])
    net = model.feature_extractor.feature_extractor
    state = net.state_dict()
    loaded = set()
    for conv, (weight, bias) in convs.items():
        bn = bn_of(conv)
        values = {f"{conv}.weight": weight, f"{bn}.weight": torch.ones_like(bias),
                  f"{bn}.bias": bias, f"{bn}.running_mean": torch.zeros_like(bias),
                  f"{bn}.running_var": torch.full_like(bias, 1.0 - BN_EPS)}
        for key, value in values.items():
            if key not in state or state[key].shape != value.shape:
                sys.exit(f"model file conv {conv}: anomalib's resnet18 has no {key} of shape "
                         f"{tuple(value.shape)}")
            state[key] = value
            loaded.add(key)
    left = [k for k in state if k not in loaded and not k.endswith("num_batches_tracked")]
    if left:
        sys.exit(f"the model file has no weights for anomalib's {left[:4]}...")
    net.load_state_dict(state)
    model.memory_bank = bank.clone()
    return model.eval()


class Pipeline(torch.nn.Module):
    """What a deployed anomalib PatchCore computes on a resized [0, 1] image: ImageNet
    normalisation, then PatchcoreModel's score and map. The exported graph is this module."""

    def __init__(self, model, mean, std):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean).reshape(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).reshape(1, 3, 1, 1))

    def forward(self, image):
        out = self.model((image - self.mean) / self.std)
        return out.pred_score, out.anomaly_map


# ------------------------------------------------------------------------- timing
def load_images(paths, size):
    planes = []
    for p in paths:
        img = Image.open(p).convert("RGB")
        if img.size != (size, size):
            sys.exit(f"{p}: {img.size[0]}x{img.size[1]}, the model takes {size}x{size} "
                     "(synthesize at the model's size so nobody resizes)")
        planes.append(np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0)
    return np.stack(planes)


def batched(images, batch, infer):
    return np.concatenate([infer(images[i:i + batch]) for i in range(0, len(images), batch)])


def torch_engine(pipeline, images):
    def infer(x):
        return pipeline(torch.from_numpy(x))[0].numpy()

    infer(images[:8])  # warm-up
    return lambda: batched(images, 8, infer)


def openvino_engine(ov_model, images, batch, config):
    """(a pass over the images, the precision the CPU plugin chose) for a static-batch copy."""
    import openvino as ov

    model = ov_model.clone()
    model.reshape({model.inputs[0]: [batch, *images.shape[1:]]})
    compiled = ov.Core().compile_model(model, "CPU", config)
    request = compiled.create_infer_request()
    score = compiled.outputs[0]

    def infer(x):
        return request.infer({0: x})[score].copy()

    infer(images[:batch])  # warm-up
    return (lambda: batched(images, batch, infer)), compiled.get_property("INFERENCE_PRECISION_HINT").to_string()


def ours_engine(binary, model_path, paths, batch, precision="f32"):
    def run():
        out = subprocess.run([binary, "predict", "--model", model_path, "--batch", str(batch),
                              "--precision", precision, *paths],
                             check=True, capture_output=True, text=True).stdout
        by_path = {r["path"]: r["score"] for r in map(json.loads, out.splitlines())}
        return np.array([by_path[p] for p in paths], dtype=np.float32)

    return run


class CImage(ctypes.Structure):
    """PatchcoreImage of include/patchcore.h."""
    _fields_ = [("pixels", ctypes.POINTER(ctypes.c_uint8)), ("width", ctypes.c_uint32),
                ("height", ctypes.c_uint32), ("stride_bytes", ctypes.c_size_t), ("channels", ctypes.c_uint32)]


class CResult(ctypes.Structure):
    """PatchcoreResult of include/patchcore.h."""
    _fields_ = [("score", ctypes.c_float), ("normalized", ctypes.c_float), ("is_anomalous", ctypes.c_bool)]


def c_abi_engine(library, model_path, paths, batch, precision="f32"):
    """A pass over the images through patchcore_predict_batch, each image's map included (as
    OpenVINO's graph computes one), on a model loaded once (patchcore_load_with_precision); the
    images decoded beforehand."""
    lib = ctypes.CDLL(library)
    lib.patchcore_last_error.restype = ctypes.c_char_p
    model = ctypes.c_void_p()

    def check(status, what):
        if status != 0:
            sys.exit(f"{what}: {lib.patchcore_last_error().decode()}")

    check(lib.patchcore_load_with_precision(model_path.encode(), b"cpu", precision.encode(), ctypes.byref(model)),
          model_path)
    pixels = [np.ascontiguousarray(np.asarray(Image.open(p).convert("RGB"), dtype=np.uint8)) for p in paths]
    maps = [np.empty(px.shape[:2], dtype=np.float32) for px in pixels]

    def infer(start):
        n = min(batch, len(pixels) - start)
        images = (CImage * n)(*(CImage(px.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)), px.shape[1], px.shape[0],
                                       3 * px.shape[1], 3) for px in pixels[start:start + n]))
        outs = (ctypes.POINTER(ctypes.c_float) * n)(*(m.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
                                                      for m in maps[start:start + n]))
        lens = (ctypes.c_size_t * n)(*(m.size for m in maps[start:start + n]))
        results = (CResult * n)()
        check(lib.patchcore_predict_batch(model, images, ctypes.c_size_t(n), results, outs, lens), "predict")
        return np.array([r.score for r in results], dtype=np.float32)

    infer(0)  # warm-up
    return lambda: np.concatenate([infer(i) for i in range(0, len(pixels), batch)])


def category_engines(binary, model_path, paths, images, pipeline):
    """{engine: a pass over the images returning their scores}, and OpenVINO's default precision."""
    import openvino as ov

    engines = {"anomalib PyTorch b8": torch_engine(pipeline, images)}
    ov_model = ov.convert_model(pipeline, example_input=torch.from_numpy(images[:8]))
    precision = None
    for name, config in (("default", {}), ("f32", {"INFERENCE_PRECISION_HINT": "f32"})):
        for b in BATCHES:
            engines[f"OpenVINO {name} b{b}"], chosen = openvino_engine(ov_model, images, b, config)
            precision = precision or chosen
    for b in BATCHES:
        engines[f"ours CLI b{b}"] = ours_engine(binary, model_path, paths, b)
    library = os.path.join(os.path.dirname(binary), "libpatchcore.so")
    for b in BATCHES:
        engines[f"ours C ABI b{b}"] = c_abi_engine(library, model_path, paths, b)
    # `--precision bf16` where this CPU has AMX-BF16 or AVX512-BF16 (the CLI refuses it elsewhere, saying why).
    probe = subprocess.run([binary, "predict", "--model", model_path, "--precision", "bf16", paths[0]],
                           capture_output=True, text=True)
    if probe.returncode == 0:
        for b in BATCHES:
            engines[f"ours CLI bf16 b{b}"] = ours_engine(binary, model_path, paths, b, "bf16")
        for b in BATCHES:
            engines[f"ours C ABI bf16 b{b}"] = c_abi_engine(library, model_path, paths, b, "bf16")
    else:
        print(f"ours bf16 skipped: {probe.stderr.strip()}", flush=True)
    return engines, precision


# ------------------------------------------------------------------------- comparison
def image_auroc(scores, anomalous):
    """P(an anomalous image outscores a good one), ties counting half (Mann-Whitney U)."""
    bad, good = scores[anomalous], scores[~anomalous]
    if len(bad) == 0 or len(good) == 0:
        return float("nan")  # undefined without both kinds
    wins = (bad[:, None] > good[None, :]).sum() + 0.5 * (bad[:, None] == good[None, :]).sum()
    return float(wins) / (len(bad) * len(good))


def compare(args):
    torch.set_grad_enabled(False)
    seconds, worst, aurocs, bf16_change, categories = {}, {}, {}, [], []
    n_images, largest = 0, 0.0
    for pair in args.pairs:
        model_path, image_dir = pair.split(":", 1)
        categories.append(os.path.basename(model_path).split(".")[0])
        meta, convs, bank = read_model_file(model_path)
        paths = sorted(os.path.join(d, f) for d, _, files in os.walk(image_dir) for f in files if f.endswith(".png"))
        paths = paths[:len(paths) // 8 * 8]  # whole batches of 8 for every engine
        images = load_images(paths, meta["preprocess"]["resize"])
        pipeline = Pipeline(anomalib_model(meta, convs, bank), meta["preprocess"]["mean"],
                            meta["preprocess"]["std"]).eval()
        engines, precision = category_engines(args.patchcore, model_path, paths, images, pipeline)

        # Passes interleaved across engines, so a burst of load from elsewhere on the machine
        # hits every engine's best alike rather than one engine's every pass.
        best, scores = dict.fromkeys(engines, float("inf")), {}
        for _ in range(args.repeats):
            for name, run in engines.items():
                t0 = time.perf_counter()
                scores[name] = run()
                best[name] = min(best[name], time.perf_counter() - t0)
        for name, s in best.items():
            seconds[name] = seconds.get(name, 0.0) + s
        n_images += len(paths)

        anomalous = np.array([os.path.basename(os.path.dirname(p)) != "good" for p in paths])
        for name, s in scores.items():
            aurocs.setdefault(name, []).append(image_auroc(s, anomalous))
        if "ours CLI bf16 b8" in scores:
            bf16_change.append((np.abs(scores["ours CLI bf16 b8"] - scores["ours CLI b8"]), scores["ours CLI b8"]))
        ref = scores.pop("anomalib PyTorch b8")
        diffs = {k: float(np.abs(v - ref).max()) for k, v in scores.items()}
        for k, d in diffs.items():
            worst[k] = max(worst.get(k, 0.0), d)
        largest = max(largest, float(np.abs(ref).max()))
        print(f"{os.path.basename(model_path)}: {len(paths)} images, bank {tuple(bank.shape)}, "
              f"anomalib scores {ref.min():.4g}..{ref.max():.4g}", flush=True)

    print(f"\n{n_images} images, {len(args.pairs)} model(s); OpenVINO default precision here: {precision}; "
          f"torch threads {torch.get_num_threads()}; best of {args.repeats} interleaved passes.")
    print("ours CLI: the whole `patchcore predict` run (process start, model load, PNG decoding); "
          "ours C ABI, anomalib and OpenVINO: inference on decoded images, the model loaded.\n")
    reference = seconds["anomalib PyTorch b8"]
    # Image AUROC (mean over the categories) shows whether a score difference changes verdicts.
    print("| engine | ms/image | anomalib / engine | max \\|score - anomalib\\| | image AUROC |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, s in seconds.items():
        diff = f"{worst[name]:.2e}" if name in worst else "-"
        print(f"| {name} | {1000 * s / n_images:.1f} | {reference / s:.2f}x | {diff} | {np.mean(aurocs[name]):.3f} |")
    for ours_name in ("ours CLI", "ours C ABI", "ours CLI bf16", "ours C ABI bf16"):
        if f"{ours_name} b1" not in seconds:
            continue
        for b in BATCHES:
            ours = seconds[f"{ours_name} b{b}"]
            for peer in ("OpenVINO default", "OpenVINO f32"):
                print(f"{peer} b{b} / {ours_name} b{b}: {seconds[f'{peer} b{b}'] / ours:.2f} (above 1: ours is faster)")
    if bf16_change:
        # The per-image change `--precision bf16` makes to our own f32 scores.
        change, base = np.concatenate([c for c, _ in bf16_change]), np.concatenate([b for _, b in bf16_change])
        print(f"ours bf16 vs ours f32, {len(change)} images: per-image score change max {change.max():.3g}, "
              f"mean {change.mean():.3g}, relative max {(change / np.abs(base)).max():.2%}")
        # Issue 13 asks for bf16's image AUROC equal to the f32 run's within 0.005 per category.
        pairs = list(zip(categories, aurocs["ours CLI b8"], aurocs["ours CLI bf16 b8"]))
        shift = max(abs(b - f) for _, f, b in pairs)
        print("image AUROC per category, ours f32 -> bf16: "
              + ", ".join(f"{c} {f:.3f} -> {b:.3f}" for c, f, b in pairs)
              + f"; largest change {shift:.3f} ({'within' if shift <= 0.005 else 'BEYOND'} 0.005)")

    # The same computation? The f32 engines must agree with anomalib to f32 rounding of the
    # distance sums; reduced precision (OpenVINO's default on AMX/AVX512-BF16) is shown, not judged.
    scale = max(1.0, largest)
    bad = {k: d for k, d in worst.items() if "default" not in k and "bf16" not in k and d > args.tolerance * scale}
    if bad:
        sys.exit(f"scores disagree beyond {args.tolerance} x {scale:.3g}: {bad}")
    print(f"f32 engines agree with anomalib within {args.tolerance} x {scale:.3g} (the largest score)")


def main():
    # anomalib's imports and torch.jit tracing in convert_model warn about their own internals.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("weights")
    w.add_argument("out")
    c = sub.add_parser("compare")
    c.add_argument("--patchcore", required=True, help="the release patchcore binary")
    c.add_argument("--repeats", type=int, default=2)
    c.add_argument("--tolerance", type=float, default=1e-4,
                   help="largest f32 score difference, relative to the largest score (at least 1)")
    c.add_argument("pairs", nargs="+", metavar="MODEL:IMAGE_DIR")
    args = parser.parse_args()
    if args.command == "weights":
        write_hashed_weights(args.out)
    else:
        compare(args)


if __name__ == "__main__":
    main()
