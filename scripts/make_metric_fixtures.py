#!/usr/bin/env python3
"""Generate tests/fixtures/metrics.json, the independent values tests/metrics.rs checks
src/eval/metrics.rs against.

Run from the repository root (needs numpy, scikit-learn and scipy):

    python3 -m venv /tmp/fixvenv && /tmp/fixvenv/bin/pip install numpy scikit-learn scipy
    /tmp/fixvenv/bin/python scripts/make_metric_fixtures.py

Deterministic (fixed numpy seeds). Every score is a float32 value, written as the shortest decimal
of its float64 widening, so Rust reads back exactly the same f32 and both sides rank the same
numbers. Scores are rounded to a coarse grid first so that ties occur, as they do in real maps.

Contents:
  image:  scores [200], labels [200] (0/1), auroc (sklearn roc_auc_score),
          f1 [{threshold, f1}] (sklearn f1_score of labels vs score > threshold)
  pixel:  width, height, maps [6][h*w], masks [6][h*w] (0/1; two good images with empty masks,
          regions that touch only diagonally), auroc, f1 as above over all pixels,
          aupro [{fpr_limit, aupro}] by the MVTec AD way below (8-connected regions),
          regions (how many 8-connected regions; 4-connectivity would give more)

AUPRO here is written independently of the Rust code, as the MVTec AD evaluation code does it:
label each mask with scipy.ndimage.label and a 3x3 structure of ones, give every normal pixel an
FPR step of 1/(normal pixels) and every region pixel a PRO step of 1/(region size * regions), sort
all pixels by descending score, take cumulative sums, keep the last point of each run of equal
scores, prepend (0, 0), integrate with the trapezoid rule up to the limit (interpolating the PRO
there) and divide by the limit.
"""

import bisect
import json
from pathlib import Path

import numpy as np
from scipy import ndimage
from sklearn.metrics import f1_score, roc_auc_score

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "metrics.json"
W, H = 32, 32


def f32_list(a):
    return [float(v) for v in np.asarray(a, dtype=np.float32).ravel()]


def pro_curve(maps, masks, structure):
    """(fpr, pro) at every distinct score, highest score first, (0, 0) prepended."""
    fp_step = np.zeros(maps.shape, dtype=np.float64)
    pro_step = np.zeros(maps.shape, dtype=np.float64)
    regions = 0
    normals = 0
    for i, mask in enumerate(masks):
        labelled, n = ndimage.label(mask, structure=structure)
        regions += n
        normals += int((labelled == 0).sum())
        fp_step[i][labelled == 0] = 1.0
        for k in range(1, n + 1):
            region = labelled == k
            pro_step[i][region] = 1.0 / region.sum()
    scores = maps.ravel().astype(np.float64)
    order = np.argsort(-scores, kind="stable")
    scores = scores[order]
    fpr = np.cumsum(fp_step.ravel()[order]) / normals
    pro = np.cumsum(pro_step.ravel()[order]) / regions
    last_of_run = np.append(np.diff(scores) != 0, True)
    return np.concatenate([[0.0], fpr[last_of_run]]), np.concatenate([[0.0], pro[last_of_run]]), regions


def area_up_to(x, y, x_max):
    """Trapezoid area under (x, y), x ascending, cut at x_max with y interpolated there."""
    x = np.asarray(x)
    y = np.asarray(y)
    extra = 0.0
    if x_max not in x:
        j = bisect.bisect(x.tolist(), x_max)  # x[j - 1] <= x_max < x[j]
        assert 0 < j < len(x)
        y_at = y[j - 1] + (y[j] - y[j - 1]) * (x_max - x[j - 1]) / (x[j] - x[j - 1])
        extra = 0.5 * (y[j - 1] + y_at) * (x_max - x[j - 1])
    keep = x <= x_max
    x, y = x[keep], y[keep]
    return float(np.sum(0.5 * (y[1:] + y[:-1]) * np.diff(x)) + extra)


def aupro(maps, masks, fpr_limit, structure=np.ones((3, 3), dtype=int)):
    fpr, pro, _ = pro_curve(maps, masks, structure)
    return area_up_to(fpr, pro, fpr_limit) / fpr_limit


def image_case():
    rng = np.random.default_rng(7)
    labels = rng.random(200) < 0.4
    raw = rng.normal(0.0, 1.0, 200) + 1.2 * labels
    scores = (np.round(raw * 4) / 4).astype(np.float32)  # steps of 0.25: many ties across classes
    thresholds = [np.float32(t) for t in (-0.5, 0.25, 0.5, 1.0, 10.0)]
    return {
        "scores": f32_list(scores),
        "labels": labels.astype(int).tolist(),
        "auroc": float(roc_auc_score(labels, scores)),
        "f1": [
            {"threshold": float(t), "f1": float(f1_score(labels, scores > t, zero_division=0.0))}
            for t in thresholds
        ],
    }


def draw_masks(rng):
    masks = np.zeros((6, H, W), dtype=bool)
    # Image 0: a blob, and two squares that touch only at a corner (one region with 8-connectivity).
    masks[0, 3:8, 4:10] = True
    masks[0, 15:18, 15:18] = True
    masks[0, 18:21, 18:21] = True
    # Image 1: a diagonal line of single pixels (one region), and a lone pixel.
    for k in range(8):
        masks[1, 5 + k, 20 + k] = True
    masks[1, 25, 3] = True
    # Image 2: random small rectangles, possibly overlapping or touching.
    for _ in range(4):
        y, x = rng.integers(0, H - 6), rng.integers(0, W - 6)
        masks[2, y:y + rng.integers(1, 6), x:x + rng.integers(1, 6)] = True
    # Image 3: one large region.
    masks[3, 8:26, 6:22] = True
    # Images 4 and 5: good.
    return masks


def pixel_case():
    rng = np.random.default_rng(11)
    masks = draw_masks(rng)
    smooth = np.stack([ndimage.gaussian_filter(rng.normal(0.0, 1.0, (H, W)), 1.5) for _ in range(6)])
    raw = smooth / smooth.std() + 1.5 * ndimage.gaussian_filter(masks.astype(float), (0, 1.0, 1.0))
    maps = (np.round(raw * 64) / 64).astype(np.float32)  # steps of 1/64: ties
    pixel_scores = maps.ravel()
    pixel_labels = masks.ravel()
    thresholds = [np.float32(t) for t in (0.0, 0.5, 0.75, 1.0)]
    _, _, regions = pro_curve(maps, masks, np.ones((3, 3), dtype=int))
    _, _, regions4 = pro_curve(maps, masks, ndimage.generate_binary_structure(2, 1))
    assert regions4 > regions, "the masks must tell 8- from 4-connectivity"
    aupro4 = aupro(maps, masks, 0.3, ndimage.generate_binary_structure(2, 1))
    aupro8 = aupro(maps, masks, 0.3)
    assert abs(aupro4 - aupro8) > 1e-3, (aupro4, aupro8)
    return {
        "width": W,
        "height": H,
        "maps": [f32_list(m) for m in maps],
        "masks": [m.ravel().astype(int).tolist() for m in masks],
        "auroc": float(roc_auc_score(pixel_labels, pixel_scores)),
        "f1": [
            {"threshold": float(t), "f1": float(f1_score(pixel_labels, pixel_scores > t, zero_division=0.0))}
            for t in thresholds
        ],
        "aupro": [{"fpr_limit": lim, "aupro": aupro(maps, masks, lim)} for lim in (0.3, 0.05, 1.0)],
        "regions": regions,
    }


def main():
    fixture = {"image": image_case(), "pixel": pixel_case()}
    OUT.write_text(json.dumps(fixture, separators=(",", ":")) + "\n")
    p = fixture["pixel"]
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes): image auroc {fixture['image']['auroc']:.6f}, "
          f"pixel auroc {p['auroc']:.6f}, aupro {p['aupro']}, regions {p['regions']}")


if __name__ == "__main__":
    main()
