#!/usr/bin/env python3
"""Generate the golden fixtures used by the Rust `patchcore` tests.

Run from the repository root:

    python3 -m venv /tmp/fixvenv && /tmp/fixvenv/bin/pip install torch torchvision safetensors numpy
    /tmp/fixvenv/bin/python scripts/make_fixtures.py            # all of them
    /tmp/fixvenv/bin/python scripts/make_fixtures.py pipeline   # only pipeline/ and pipeline.safetensors

Everything is written under tests/fixtures/.  CPU only, float32, deterministic
(running it twice gives byte-identical files with the same library versions).

Model weights are NOT random: every parameter/buffer gets values from a hash
of its state_dict key, so the Rust tests can regenerate the exact same weights
without shipping them (see `hash_uniform` / `deterministic_state_dict`):

    fnv1a32(name):  h = 0x811C9DC5; for b in bytes: h = ((h ^ b) * 0x01000193) mod 2^32
    mix64(x):       splitmix64 finaliser (see `mix64`)
    u(name, i)   =  (mix64((fnv1a32(name) << 32) | i) >> 40) / 2^24 - 0.5     in [-0.5, 0.5)

    4-D (conv)            u * sqrt(24 / (shape[1]*shape[2]*shape[3]))
    2-D (fc.weight)       u * sqrt(24 / shape[1])
    1-D *running_var      1 + 0.4 u
    1-D *running_mean     0.1 u
    1-D *.weight (BN)     1 + 0.2 u
    1-D *.bias            0.1 u
    num_batches_tracked   untouched
(computed in float64, cast to float32 at the end).

Files written:
  resnet18.safetensors        input [2,3,64,96] (= 4*u("input", i)), layer2 [2,128,8,12],
                              layer3 [2,256,4,6], embedding [192,384] (anomalib 2.x PatchCore:
                              AvgPool2d(3,1,1) on layer2/layer3, layer3 bilinearly upsampled,
                              concatenated, rows b*H*W + y*W + x), bank_input [3,3,64,96]
                              (= 4*u("bank_input", i)), bank [288,384] (embedding of bank_input),
                              patch_scores [2,8,12], image_score [2] (num_neighbors = 9),
                              image_score_b1 [2] (max patch score), anomaly_map [2,64,96]
                              (nearest upsample + Gaussian blur sigma 4, kernel 33, reflect pad).
                              Extras: locations [2,8,12] int64 (nearest bank row per patch),
                              support [2,9] int64 (b=9 support set of m*, nearest first),
                              support_dist [2,9] (distances q_i* -> bank[support]),
                              image_score_scaled [2] (b=9 score with embedding and bank both
                              multiplied by 1/16; here the softmax weight is not 1.0, unlike
                              image_score, which equals image_score_b1 at f32 precision).
  pipeline/                   train/good/000..003.png and test/good.png, test/defect.png: 72x56
                              RGB pictures (a seeded texture plus hashed noise; the defect a
                              magenta rectangle), inputs of the CLI's default fit and predict.
  pipeline.safetensors        anomalib's results for them with the hashed resnet18: pre-processed
                              as torchvision v2 (antialiased resize to 64x64, ImageNet
                              normalisation), bank = the embedding of all four training images
                              (ratio 1), image_score [2] (num_neighbors = 9),
                              max_patch_distance [2], anomaly_map [2,64,64].
  wide_resnet50_2.safetensors input, layer2 [2,512,8,12], layer3 [2,1024,4,6].
  preprocess_input.png        70x50 RGB test image, pixel(x,y,c) =
                              (x*37 + y*91 + c*53 + (x*y)%17*11) % 256.
  preprocess.safetensors      down [3,24,36], up [3,96,128]: the png as float in [0,1],
                              torchvision v2 resize (bilinear, antialias=True), then
                              ImageNet normalisation.
  checkpoint_zip.pth          torch.save of an OrderedDict state dict (zip format): resnet18
                              conv1.weight, bn1.* (incl. int64 num_batches_tracked), all
                              layer1.0.* tensors, plus extra.half (f16 [5,7]),
                              extra.transposed (f32 [6,4], non-contiguous .t() view),
                              extra.big (f32 [8,5] = arange(40)), extra.view (big[2:5], a view
                              with storage offset 10 sharing storage with extra.big),
                              extra.double (f64 [3]), extra.int (i32 [4]).
  checkpoint_legacy.pth       the same dict, legacy (non-zip) torch.save format (storage keys
                              made deterministic, see legacy_save_deterministic).
  checkpoint_nested.pth       {"state_dict": <same dict>, "epoch": 3}, zip format.
  checkpoint_expected.safetensors  contiguous clones of every tensor of that dict.
  efficientnet_lite0.safetensors   EfficientNet-Lite0 (plain PyTorch below, efficientnet_pytorch
                              names, TF "same" padding, BN eps 1e-3) with hashed weights: input
                              (the resnet18 one), block4 [2,40,8,12], block10 [2,112,4,6].
  efficientnet_bundled.safetensors block4 [1,40,16,16], block10 [1,112,8,8] of chelsea.png
                              resized to 128x128 (antialiased bilinear, TF normalisation
                              (x*255-127)/128) through weights/efficientnet_lite0.safetensors.
  efficientnet_classes.json   logits and top-5 of chelsea.png and coffee.png at 224x224 through
                              the full pretrained classifier. Only written when PATCHCORE_EFFNET_PTH
                              names efficientnet-lite0-57934424.pth (scripts/make_bundled_weights.sh
                              downloads it); otherwise the committed file is left as it is.
"""

import collections
import hashlib
import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from safetensors.torch import load_file, save_file
from torchvision.transforms.v2 import functional as TF

OUT = os.path.join("tests", "fixtures")

M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


# --------------------------------------------------------------------------- hashing
def fnv1a32(name: str) -> int:
    h = 0x811C9DC5
    for b in name.encode("utf-8"):
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on a uint64 array (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def hash_uniform(name: str, n: int) -> np.ndarray:
    """u(name, i) for i in 0..n-1 as float64 in [-0.5, 0.5)."""
    i = np.arange(n, dtype=np.uint64)
    x = (np.uint64(fnv1a32(name)) << np.uint64(32)) | i
    top = mix64(x) >> np.uint64(40)
    return top.astype(np.float64) / float(1 << 24) - 0.5


def hash_tensor(name: str, shape, scale: float = 1.0, dtype=np.float32) -> torch.Tensor:
    n = int(np.prod(shape))
    return torch.from_numpy((hash_uniform(name, n) * scale).reshape(shape).astype(dtype))


def deterministic_value(name: str, shape) -> np.ndarray:
    n = int(np.prod(shape))
    u = hash_uniform(name, n)
    if len(shape) == 4:
        v = u * math.sqrt(24.0 / (shape[1] * shape[2] * shape[3]))
    elif len(shape) == 2:
        v = u * math.sqrt(24.0 / shape[1])
    elif len(shape) == 1:
        if name.endswith("running_var"):
            v = 1.0 + 0.4 * u
        elif name.endswith("running_mean"):
            v = 0.1 * u
        elif name.endswith(".weight"):
            v = 1.0 + 0.2 * u
        elif name.endswith(".bias"):
            v = 0.1 * u
        else:
            raise ValueError(f"no rule for 1-D tensor {name}")
    else:
        raise ValueError(f"no rule for {name} with shape {shape}")
    return v.reshape(shape).astype(np.float32)


def deterministic_state_dict(model: torch.nn.Module) -> "collections.OrderedDict[str, torch.Tensor]":
    sd = model.state_dict()
    out = collections.OrderedDict()
    for name, t in sd.items():
        if name.endswith("num_batches_tracked"):
            out[name] = t.clone()
            continue
        assert t.dtype == torch.float32, (name, t.dtype)
        out[name] = torch.from_numpy(deterministic_value(name, tuple(t.shape)))
    return out


def make_model(ctor):
    model = ctor(weights=None)
    model.load_state_dict(deterministic_state_dict(model))
    model.eval()
    return model


# --------------------------------------------------------------------------- network
@torch.no_grad()
def forward_layers(model, x):
    x = model.conv1(x)
    x = model.bn1(x)
    x = model.relu(x)
    x = model.maxpool(x)
    x = model.layer1(x)
    l2 = model.layer2(x)
    l3 = model.layer3(l2)
    return l2, l3


@torch.no_grad()
def embedding(l2, l3):
    pool = torch.nn.AvgPool2d(3, 1, 1)
    f2 = pool(l2)
    f3 = pool(l3)
    f3 = F.interpolate(f3, size=f2.shape[-2:], mode="bilinear", align_corners=False)
    emb = torch.cat([f2, f3], 1)
    c = emb.shape[1]
    return emb.permute(0, 2, 3, 1).reshape(-1, c).contiguous()


def euclidean_dist(x, y):
    """anomalib PatchcoreModel.euclidean_dist (works batched)."""
    x_norm = x.pow(2).sum(dim=-1, keepdim=True)
    y_norm = y.pow(2).sum(dim=-1, keepdim=True)
    res = x_norm - 2 * torch.matmul(x, y.transpose(-2, -1)) + y_norm.transpose(-2, -1)
    return res.clamp_min(0).sqrt()


@torch.no_grad()
def image_scores(patch_scores, locations, queries, bank, num_neighbors):
    """anomalib PatchcoreModel.compute_anomaly_score. patch_scores/locations: [B, N]."""
    if num_neighbors == 1:
        return patch_scores.amax(1)
    b, n = patch_scores.shape
    ar = torch.arange(b)
    max_patches = torch.argmax(patch_scores, dim=1)
    max_feat = queries.reshape(b, n, -1)[ar, max_patches]
    score = patch_scores[ar, max_patches]
    nn_index = locations[ar, max_patches]
    nn_sample = bank[nn_index, :]
    k = min(num_neighbors, bank.shape[0])
    _, support = euclidean_dist(nn_sample, bank).topk(k=k, largest=False, dim=1)
    distances = euclidean_dist(max_feat.unsqueeze(1), bank[support])  # [B, 1, k]
    weights = (1 - F.softmax(distances.squeeze(1), 1))[..., 0]
    return weights * score


def gaussian_kernel1d(sigma: float):
    ks = 2 * int(4.0 * sigma + 0.5) + 1
    x = torch.arange(ks, dtype=torch.float32) - ks // 2
    g = torch.exp(-x.pow(2) / (2.0 * sigma * sigma))
    return g / g.sum(), ks


@torch.no_grad()
def anomaly_map(patch_scores, size, sigma=4.0):
    """patch_scores [B, h, w] -> [B, H, W]: nearest upsample, Gaussian blur, reflect padding."""
    m = F.interpolate(patch_scores.unsqueeze(1), size=size, mode="nearest")
    g, ks = gaussian_kernel1d(sigma)
    k2 = (g[:, None] * g[None, :]).reshape(1, 1, ks, ks)
    p = ks // 2
    m = F.pad(m, (p, p, p, p), mode="reflect")
    return F.conv2d(m, k2).squeeze(1)


# --------------------------------------------------------------------------- fixtures
def resnet_fixtures():
    x = hash_tensor("input", (2, 3, 64, 96), 4.0)
    bank_x = hash_tensor("bank_input", (3, 3, 64, 96), 4.0)

    r18 = make_model(torchvision.models.resnet18)
    l2, l3 = forward_layers(r18, x)
    emb = embedding(l2, l3)
    bl2, bl3 = forward_layers(r18, bank_x)
    bank = embedding(bl2, bl3)

    b, h, w = l2.shape[0], l2.shape[2], l2.shape[3]
    with torch.no_grad():
        d = euclidean_dist(emb, bank)
        ps, loc = d.topk(k=1, largest=False, dim=1)
    ps = ps.reshape(b, h * w)
    loc = loc.reshape(b, h * w)
    img = image_scores(ps, loc, emb, bank, 9)
    img1 = image_scores(ps, loc, emb, bank, 1)
    # With these activations the support distances differ by >10, so anomalib's weight
    # 1 - softmax(d)[0] rounds to exactly 1.0 in f32 and image_score == image_score_b1.
    # Extra keys that do exercise the re-weighting: the same pipeline on embedding and bank
    # both multiplied by 1/16 (exact in f32), plus the intermediate support set/distances.
    s_emb, s_bank = emb * 0.0625, bank * 0.0625
    with torch.no_grad():
        s_ps, s_loc = euclidean_dist(s_emb, s_bank).topk(k=1, largest=False, dim=1)
    img_scaled = image_scores(s_ps.reshape(b, h * w), s_loc.reshape(b, h * w), s_emb, s_bank, 9)
    with torch.no_grad():
        ar = torch.arange(b)
        mp = torch.argmax(ps, dim=1)
        nn_sample = bank[loc[ar, mp]]
        _, support = euclidean_dist(nn_sample, bank).topk(k=9, largest=False, dim=1)
        support_dist = euclidean_dist(emb.reshape(b, h * w, -1)[ar, mp].unsqueeze(1),
                                      bank[support]).squeeze(1)
    amap = anomaly_map(ps.reshape(b, h, w), tuple(x.shape[-2:]))

    r18_out = {
        "input": x,
        "layer2": l2,
        "layer3": l3,
        "embedding": emb,
        "bank_input": bank_x,
        "bank": bank,
        "patch_scores": ps.reshape(b, h, w),
        "image_score": img,
        "image_score_b1": img1,
        "image_score_scaled": img_scaled,
        "locations": loc.reshape(b, h, w).to(torch.int64),
        "support": support.to(torch.int64),
        "support_dist": support_dist,
        "anomaly_map": amap,
    }
    r18_out = {k: v.detach().contiguous().clone() for k, v in r18_out.items()}
    save_file(r18_out, os.path.join(OUT, "resnet18.safetensors"))

    wrn = make_model(torchvision.models.wide_resnet50_2)
    wl2, wl3 = forward_layers(wrn, x)
    wrn_out = {"input": x, "layer2": wl2, "layer3": wl3}
    wrn_out = {k: v.detach().contiguous().clone() for k, v in wrn_out.items()}
    save_file(wrn_out, os.path.join(OUT, "wide_resnet50_2.safetensors"))
    return r18, {"resnet18.safetensors": r18_out, "wide_resnet50_2.safetensors": wrn_out}


def preprocess_fixtures():
    W, H = 70, 50
    ys, xs, cs = np.meshgrid(np.arange(H), np.arange(W), np.arange(3), indexing="ij")
    img = ((xs * 37 + ys * 91 + cs * 53 + (xs * ys) % 17 * 11) % 256).astype(np.uint8)  # [H, W, 3]
    Image.fromarray(img, "RGB").save(os.path.join(OUT, "preprocess_input.png"))

    t = torch.from_numpy(img).permute(2, 0, 1).to(torch.float32) / 255.0  # [3, H, W]
    mean = [0.485, 0.456, 0.406]
    std = [0.229, 0.224, 0.225]
    down = TF.resize(t, [24, 36], antialias=True)
    down = TF.normalize(down, mean=mean, std=std)
    up = TF.resize(t, [96, 128], antialias=True)
    up = TF.normalize(up, mean=mean, std=std)
    out = {"down": down.contiguous(), "up": up.contiguous()}
    save_file(out, os.path.join(OUT, "preprocess.safetensors"))
    return {"preprocess.safetensors": out}


def pipeline_fixtures():
    """PNG files for the CLI's default path (fit without --val at ratio 1, then predict) and
    anomalib's results for them: the bank is every training row, as anomalib keeps."""
    root = os.path.join(OUT, "pipeline")
    W, H = 72, 56
    ys, xs = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")

    def picture(name, defect):
        phase = hash_uniform(name + ".phase", 1)[0] * 6.0
        noise = hash_uniform(name, H * W * 3).reshape(H, W, 3) * 40.0
        base = 128.0 + 60.0 * np.sin(xs * 0.3 + phase) * np.cos(ys * 0.2)
        img = base[..., None] * np.array([1.0, 0.9, 0.7]) + noise
        if defect:
            img[20:34, 30:46] = [250.0, 30.0, 200.0]
        return np.clip(np.rint(img), 0, 255).astype(np.uint8)

    sets = {"train": [(f"train/good/{i:03}.png", False) for i in range(4)],
            "test": [("test/good.png", False), ("test/defect.png", True)]}
    inputs = {}
    for key, files in sets.items():
        planes = []
        for rel, defect in files:
            img = picture(rel, defect)
            path = os.path.join(root, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            Image.fromarray(img, "RGB").save(path)
            t = torch.from_numpy(img).permute(2, 0, 1).to(torch.float32) / 255.0
            t = TF.resize(t, [64, 64], antialias=True)
            planes.append(TF.normalize(t, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]))
        inputs[key] = torch.stack(planes)

    r18 = make_model(torchvision.models.resnet18)
    bank = embedding(*forward_layers(r18, inputs["train"]))
    l2, l3 = forward_layers(r18, inputs["test"])
    emb = embedding(l2, l3)
    b, h, w = l2.shape[0], l2.shape[2], l2.shape[3]
    with torch.no_grad():
        ps, loc = euclidean_dist(emb, bank).topk(k=1, largest=False, dim=1)
    ps, loc = ps.reshape(b, h * w), loc.reshape(b, h * w)
    out = {
        "image_score": image_scores(ps, loc, emb, bank, 9),
        "max_patch_distance": ps.amax(1),
        "anomaly_map": anomaly_map(ps.reshape(b, h, w), (64, 64)),
    }
    out = {k: v.detach().contiguous().clone() for k, v in out.items()}
    save_file(out, os.path.join(OUT, "pipeline.safetensors"))
    return {"pipeline.safetensors": out}


def legacy_save_deterministic(obj, path):
    """torch.save(..., _use_new_zipfile_serialization=False) with reproducible bytes.

    The legacy writer names each storage str(storage._cdata), i.e. its memory address,
    and writes the storage blobs in sorted-key order, so plain torch.save gives different
    bytes on every run.  We call a copy of torch.serialization._legacy_save whose globals
    shadow `str`, so that address-sized ints map to "0", "1", ... in order of first
    appearance.  Otherwise it is torch's own legacy writer (pickle module, protocol 2).
    The keys are still sorted as strings ("0", "1", "10", "11", ..., "2", ...), so the blob
    order differs from the order of first appearance, as it does for real address keys.
    """
    import builtins
    import pickle
    import types
    import torch.serialization as ser

    names = {}

    def det_str(x=""):
        if type(x) is int and x > (1 << 16):
            return names.setdefault(x, builtins.str(len(names)))
        return builtins.str(x)

    orig = ser._legacy_save
    g = dict(orig.__globals__)
    g["str"] = det_str
    patched = types.FunctionType(orig.__code__, g, orig.__name__, orig.__defaults__, orig.__closure__)
    with open(path, "wb") as f:
        patched(obj, f, pickle, ser.DEFAULT_PROTOCOL)
    assert names, "storage-key patch did not take effect (torch internals changed?)"


def checkpoint_fixtures(r18):
    full = r18.state_dict()
    sd = collections.OrderedDict()
    for k in ["conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean",
              "bn1.running_var", "bn1.num_batches_tracked"]:
        sd[k] = full[k].detach().clone()
    for k, v in full.items():
        if k.startswith("layer1.0."):
            sd[k] = v.detach().clone()
    assert sd["bn1.num_batches_tracked"].dtype == torch.int64

    sd["extra.half"] = hash_tensor("extra.half", (5, 7), 1.0, np.float16)
    base = hash_tensor("extra.transposed", (4, 6))
    sd["extra.transposed"] = base.t()  # [6, 4], strides (1, 6)
    big = torch.arange(40.0, dtype=torch.float32).reshape(8, 5)
    sd["extra.big"] = big
    sd["extra.view"] = big[2:5]  # [3, 5], storage offset 10, shares storage with extra.big
    sd["extra.double"] = hash_tensor("extra.double", (3,), 1.0, np.float64)
    sd["extra.int"] = torch.tensor([-2147483648, -1, 7, 2147483647], dtype=torch.int32)
    assert not sd["extra.transposed"].is_contiguous()
    assert sd["extra.view"].storage_offset() == 10

    torch.save(sd, os.path.join(OUT, "checkpoint_zip.pth"))
    legacy_save_deterministic(sd, os.path.join(OUT, "checkpoint_legacy.pth"))
    torch.save({"state_dict": sd, "epoch": 3}, os.path.join(OUT, "checkpoint_nested.pth"))
    expected = {k: v.contiguous().clone() for k, v in sd.items()}
    save_file(expected, os.path.join(OUT, "checkpoint_expected.safetensors"))

    # Round-trip check: the .pth files must load back to exactly the expected tensors.
    for fname in ["checkpoint_zip.pth", "checkpoint_legacy.pth", "checkpoint_nested.pth"]:
        loaded = torch.load(os.path.join(OUT, fname), weights_only=True)
        if "state_dict" in loaded:
            assert loaded["epoch"] == 3
            loaded = loaded["state_dict"]
        assert list(loaded.keys()) == list(expected.keys()), fname
        for k, v in expected.items():
            assert loaded[k].dtype == v.dtype and torch.equal(loaded[k], v), (fname, k)
    return {"checkpoint_expected.safetensors": expected}


# --------------------------------------------------------------------------- efficientnet-lite0
# (kernel, stride, expand, out, repeats); the stride applies to a stage's first block only.
EFFNET_STAGES = [(3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3),
                 (5, 1, 6, 112, 3), (5, 2, 6, 192, 4), (3, 1, 6, 320, 1)]
EFFNET_PTH_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"


class TfSameConv(torch.nn.Conv2d):
    """Conv2d with TensorFlow "same" padding: pad_total = max((ceil(i/s)-1)*s + k - i, 0),
    the smaller half on top/left."""

    def forward(self, x):
        k, s = self.kernel_size[0], self.stride[0]
        th, tw = (max((math.ceil(i / s) - 1) * s + k - i, 0) for i in x.shape[-2:])
        return super().forward(F.pad(x, (tw // 2, tw - tw // 2, th // 2, th - th // 2)))


def effnet_bn(c):
    return torch.nn.BatchNorm2d(c, eps=1e-3)


class MBConv(torch.nn.Module):
    def __init__(self, k, stride, expand, cin, cout):
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = TfSameConv(cin, mid, 1, bias=False)
            self._bn0 = effnet_bn(mid)
        self._depthwise_conv = TfSameConv(mid, mid, k, stride, groups=mid, bias=False)
        self._bn1 = effnet_bn(mid)
        self._project_conv = TfSameConv(mid, cout, 1, bias=False)
        self._bn2 = effnet_bn(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        h = x
        if hasattr(self, "_expand_conv"):
            h = F.relu6(self._bn0(self._expand_conv(h)))
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.residual else h


class EfficientNetLite0(torch.nn.Module):
    """EfficientNet-Lite0 with efficientnet_pytorch's state_dict names, no squeeze-excitation,
    ReLU6 everywhere; dropout is omitted (eval mode)."""

    def __init__(self):
        super().__init__()
        self._conv_stem = TfSameConv(3, 32, 3, 2, bias=False)
        self._bn0 = effnet_bn(32)
        blocks, cin = [], 32
        for k, stride, expand, cout, n in EFFNET_STAGES:
            for i in range(n):
                blocks.append(MBConv(k, stride if i == 0 else 1, expand, cin, cout))
                cin = cout
        self._blocks = torch.nn.ModuleList(blocks)
        self._conv_head = TfSameConv(320, 1280, 1, bias=False)
        self._bn1 = effnet_bn(1280)
        self._fc = torch.nn.Linear(1280, 1000)

    @torch.no_grad()
    def features(self, x):
        """The outputs of blocks 4 and 10, what PatchCore takes."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        out = []
        for i, block in enumerate(self._blocks[:11]):
            x = block(x)
            if i in (4, 10):
                out.append(x)
        return out

    @torch.no_grad()
    def classify(self, x):
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(x.mean((2, 3)))


def effnet_input(png, size):
    """[1, 3, size, size]: the picture resized like patchcore's Preprocess (antialiased
    bilinear on [0, 1] floats), TF-normalised: (x*255 - 127)/128."""
    img = np.array(Image.open(os.path.join(OUT, png)).convert("RGB"))
    t = torch.from_numpy(img).permute(2, 0, 1).to(torch.float32) / 255.0
    t = TF.resize(t, [size, size], antialias=True)
    return TF.normalize(t, mean=[127 / 255] * 3, std=[128 / 255] * 3).unsqueeze(0)


def efficientnet_fixtures():
    outputs = {}
    hashed = EfficientNetLite0()
    hashed.load_state_dict(deterministic_state_dict(hashed))
    hashed.eval()
    x = hash_tensor("input", (2, 3, 64, 96), 4.0)
    b4, b10 = hashed.features(x)
    out = {"input": x, "block4": b4.contiguous(), "block10": b10.contiguous()}
    save_file(out, os.path.join(OUT, "efficientnet_lite0.safetensors"))
    outputs["efficientnet_lite0.safetensors"] = out

    # The committed bundled weights (blocks 0..10 only), on a real picture.
    bundled = EfficientNetLite0()
    weights = load_file(os.path.join("weights", "efficientnet_lite0.safetensors"))
    missing, unexpected = bundled.load_state_dict({k: v.to(torch.float32) for k, v in weights.items()},
                                                  strict=False)

    def needed(k):  # what blocks 4 and 10 depend on; the converter drops the BN counters
        in_blocks = k.startswith("_blocks.") and int(k.split(".")[1]) <= 10
        return (in_blocks or k.startswith(("_conv_stem.", "_bn0."))) and not k.endswith("num_batches_tracked")

    assert not unexpected and not any(needed(k) for k in missing), (unexpected, missing)
    bundled.eval()
    b4, b10 = bundled.features(effnet_input("chelsea.png", 128))
    out = {"block4": b4.contiguous(), "block10": b10.contiguous()}
    save_file(out, os.path.join(OUT, "efficientnet_bundled.safetensors"))
    outputs["efficientnet_bundled.safetensors"] = out

    pth = os.environ.get("PATCHCORE_EFFNET_PTH")
    if not pth:
        print("note: PATCHCORE_EFFNET_PTH is not set: efficientnet_classes.json left as it is")
        return outputs
    with open(pth, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == EFFNET_PTH_SHA256, f"{pth}: not the 0.1.0 checkpoint"
    full = EfficientNetLite0()
    full.load_state_dict(torch.load(pth, weights_only=True))  # strict: every name must match
    full.eval()
    classes = {"checkpoint_sha256": EFFNET_PTH_SHA256, "size": 224, "images": {}}
    for png in ["chelsea.png", "coffee.png"]:
        logits = full.classify(effnet_input(png, 224))[0]
        classes["images"][png] = {
            "top5": logits.topk(5).indices.tolist(),
            "logits": [float(v) for v in logits.tolist()],
        }
        print(f"{png}: top-5 {classes['images'][png]['top5']}, logits {logits.topk(6).values.tolist()}")
    with open(os.path.join(OUT, "efficientnet_classes.json"), "w") as f:
        json.dump(classes, f, indent=1)
        f.write("\n")
    return outputs


def main():
    if not os.path.isdir(os.path.join("tests", "fixtures")) and not os.path.isfile("Cargo.toml"):
        sys.exit("run from the repository root")
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)  # single-threaded CPU kernels: reproducible reductions

    outputs = {}
    if sys.argv[1:] == ["pipeline"]:  # only the CLI pipeline's files
        outputs.update(pipeline_fixtures())
    else:
        r18, o = resnet_fixtures()
        outputs.update(o)
        outputs.update(preprocess_fixtures())
        outputs.update(checkpoint_fixtures(r18))
        outputs.update(efficientnet_fixtures())
        outputs.update(pipeline_fixtures())

    # ---- self-check ----
    print("hash check: u('input', 0..3) =", hash_uniform("input", 4).tolist(),
          " fnv1a32('input') = 0x%08X" % fnv1a32("input"))
    print("conv1.weight[0,0,0,:3] =", make_model(torchvision.models.resnet18).state_dict()["conv1.weight"][0, 0, 0, :3].tolist())
    for fname, tensors in outputs.items():
        print(f"{fname}:")
        for k, v in tensors.items():
            vf = v.to(torch.float64)
            print(f"  {k:28s} {str(v.dtype):14s} {str(list(v.shape)):20s} "
                  f"max|x| = {vf.abs().max().item():.6g}  mean = {vf.mean().item():.6g}")
    total = 0
    print("files:")
    for f in sorted(os.listdir(OUT)):
        sz = os.path.getsize(os.path.join(OUT, f))
        total += sz
        print(f"  {f:36s} {sz:10d} bytes")
    print(f"  {'total':36s} {total:10d} bytes")


if __name__ == "__main__":
    main()
