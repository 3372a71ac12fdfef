"""Evaluation metrics for the DeepAVFusion downstream tasks, as the reference code computes them.

Every number in a paper table comes from some specific evaluation code, and the variants disagree:
AVSBench and DeepAVFusion compute "mIoU" differently, DeepAVFusion and AST average "mAP" over
different classes, and the localization "cIoU" in tables is a success rate, not a mean. So each
variant here has its own name, its docstring says which convention it follows, and the evaluators
return keys that carry the convention in the name (`avsbench_miou` vs `davf_miou`).

Specification: `docs/metrics.md` (every definition, in prose, with the peer code it follows) and
`docs/official_implementation.md` sections 3.2-3.6 (the official evaluators). The
upstream files each function follows are named in its docstring.

| task | function / evaluator | convention | scale |
|---|---|---|---|
| classification | `top1`, `topk`, `multi_head_top1` | `timm.utils.accuracy`, micro | % |
| | `mean_ap`, `mean_roc_auc`, `multi_head_mean_ap` | DeepAVFusion (`classes="seen"`) or AST (`"all"`) | x100 |
| localization | `ciou_per_sample`, `ciou_batch`, `localization_metrics`, `LocalizationEvaluator` | EZ-VSL (Senocak/LVS) | fraction |
| | `slavc_ap`, `slavc_max_f1`, `slavc_loc_acc`, `SLAVCEvaluator` (silent / off-screen items) | SLAVC `EvaluatorFull` | fraction |
| segmentation | `avsbench_miou`, `avsbench_fscore`, `AVSBenchEvaluator` | AVSBench `utility.py` + `test.py` | fraction |
| | `davf_segmentation`, `DeepAVFusionSegEvaluator` | DeepAVFusion `eval_avsegm.py` | fraction |
| separation | `bss_eval`, `is_silent`, `SeparationEvaluator` | mir_eval BSS-Eval v3, DeepAVFusion / Sound-of-Pixels skip rules | dB |

Scales follow the reference code (top-1 in %, mAP x100, everything else as the code returns it);
multiply by 100 yourself when a table prints percentages. All functions take torch tensors or numpy
arrays and return python floats (or dicts / lists of them), ready for `metrics.json`. Where a
reference would divide 0 by 0 the value is `nan`, never a silent 0 (except where the reference
itself substitutes 0, which is documented).
"""
from __future__ import annotations

import warnings
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    # classification
    "topk", "top1", "multi_head_top1", "mean_ap", "mean_roc_auc", "multi_head_mean_ap",
    # localization
    "ciou_per_sample", "ciou_batch", "normalize_scores", "localization_metrics", "LocalizationEvaluator",
    "LOC_AUC_THRESHOLDS", "cell_hits",
    "slavc_confidence", "slavc_precision_recall", "slavc_ap", "slavc_max_f1", "slavc_loc_acc", "SLAVCEvaluator",
    # segmentation
    "avsbench_mask_iou", "avsbench_fscore_curve", "avsbench_miou", "avsbench_fscore",
    "AVSBenchEvaluator", "davf_fscore_binary", "davf_segmentation", "DeepAVFusionSegEvaluator",
    # separation
    "bss_eval", "bss_eval_sdr", "is_silent", "SKIP_RULES", "SeparationEvaluator",
]


# --------------------------------------------------------------------------------------------- #
# Conversions
# --------------------------------------------------------------------------------------------- #

def _tensor(x) -> torch.Tensor:
    """CPU, detached tensor; numpy/list inputs keep their dtype (float64 stays float64)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
    else:
        x = torch.as_tensor(np.asarray(x))
    if x.dtype in (torch.float16, torch.bfloat16):  # AMP outputs: compute in float32 like the ref
        x = x.float()
    return x


def _numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        return x.numpy()
    return np.asarray(x)


# --------------------------------------------------------------------------------------------- #
# Classification (docs/metrics.md#classification; docs/official_implementation.md §3.2-3.3)
# --------------------------------------------------------------------------------------------- #

def _class_indices(target) -> torch.Tensor:
    target = _tensor(target)
    if target.ndim == 2:  # one-hot / multi-hot / soft target: the argmax class (CAV-MAE style)
        target = target.argmax(1)
    return target.long().reshape(-1)


def topk(logits, target, k: int = 5) -> float:
    """Micro top-k accuracy in percent, exactly `timm.utils.accuracy` (what DeepAVFusion reports).

    Args:
        logits: (N, C) scores (logits or probabilities; only the ranking matters).
        target: (N,) class indices, or (N, C) one-hot/soft targets (their argmax is used).
        k: a sample is correct if its target is among the `min(k, C)` highest scores.

    `torch.topk` breaks ties (as timm does); torchmetrics' `MulticlassAccuracy` defaults to *macro*
    averaging and gives a different number (docs/metrics.md#top-1-accuracy).
    """
    logits, target = _tensor(logits), _class_indices(target)
    if logits.ndim != 2 or logits.shape[0] != target.shape[0]:
        raise ValueError(f"logits must be (N, C) and target (N,); got {tuple(logits.shape)}, {tuple(target.shape)}")
    maxk = min(int(k), logits.shape[1])
    _, pred = logits.topk(maxk, dim=1, largest=True, sorted=True)  # (N, maxk)
    correct = pred.eq(target[:, None]).any(1)
    return float(correct.float().sum().item() * 100.0 / target.shape[0])


def top1(logits, target) -> float:
    """Micro top-1 accuracy in percent (`timm.utils.accuracy(...)[0]`; docs/metrics.md#top-1-accuracy)."""
    return topk(logits, target, k=1)


def _mean_logits(logits_by_head: Mapping[str, object]) -> torch.Tensor:
    heads = [_tensor(v) for v in logits_by_head.values()]
    total = heads[0]
    for h in heads[1:]:
        total = total + h
    return total / float(len(heads))  # eval_linprobe.py: (preds_image + preds_audio + preds_fusion) / 3.


def multi_head_top1(logits_by_head: Mapping[str, object], target) -> dict[str, float]:
    """Top-1 (%) of every head and of the averaged logits, as `eval_linprobe.py`/`eval_finetune.py`.

    Args:
        logits_by_head: e.g. `{"image": (N, C), "audio": (N, C), "fusion": (N, C)}`.
        target: (N,) class indices.

    Returns `{head: top1, ..., "all": top1(mean of the heads' logits)}`. The official log keys are
    `val_acc1_image`, `val_acc1_audio`, `val_acc1_fusion`, `val_acc1_all`; the paper number is
    `all` (docs/official_implementation.md §3.2). The mean is over logits, not probabilities.
    """
    if not logits_by_head:
        raise ValueError("logits_by_head is empty")
    if "all" in logits_by_head:
        raise ValueError("'all' is reserved for the averaged logits")
    out = {name: top1(v, target) for name, v in logits_by_head.items()}
    out["all"] = top1(_mean_logits(logits_by_head), target)
    return out


def _per_class(score_fn, scores, targets, classes: str) -> float:
    scores, targets = _numpy(scores).astype(np.float64), _numpy(targets)
    if scores.ndim != 2 or scores.shape != targets.shape:
        raise ValueError(f"scores and targets must both be (N, C); got {scores.shape}, {targets.shape}")
    targets = (targets > 0.5).astype(np.int64)  # multi-hot
    if classes == "seen":
        keep = targets.sum(0) > 0  # util/misc.py: seen_classes = labels.sum(0) > 0
        if not keep.any():
            raise ValueError("no class has a positive sample; mAP over seen classes is undefined")
        scores, targets = scores[:, keep], targets[:, keep]
    elif classes != "all":
        raise ValueError(f"classes must be 'seen' or 'all', got {classes!r}")
    with warnings.catch_warnings():
        # 'all': sklearn warns and scores 0.0 (AP) / nan (ROC-AUC) for a class without positives;
        # that is the documented convention of the AST-style mean, not an accident.
        warnings.simplefilter("ignore")
        vals = [score_fn(targets[:, c], scores[:, c]) for c in range(targets.shape[1])]
    return float(np.mean(vals) * 100.0)


def mean_ap(scores, targets, classes: str = "seen") -> float:
    """Multi-label mean average precision x100 (AudioSet), per-class `sklearn.metrics.average_precision_score`.

    Args:
        scores: (N, C) logits or probabilities (AP is rank-invariant, so either gives the same).
        targets: (N, C) multi-hot labels.
        classes:
            "seen" -- DeepAVFusion `util/misc.py::calc_multi_class_stats`: mean over the classes with
                at least one positive in `targets` (docs/official_implementation.md §3.2).
            "all" -- AST / CAV-MAE / AudioMAE `util/stat.py`: mean over all C classes; sklearn 1.9
                scores a class without positives as 0.0, which pulls the mean down whenever the eval
                subset lacks a class (docs/metrics.md#mean-average-precision). AST prints a fraction; here x100.
    """
    from sklearn.metrics import average_precision_score

    return _per_class(average_precision_score, scores, targets, classes)


def mean_roc_auc(scores, targets, classes: str = "seen") -> float:
    """Mean per-class ROC-AUC x100, the second number of DeepAVFusion's `calc_multi_class_stats`.

    Same `classes` convention as `mean_ap`. A class with no negatives has no ROC-AUC: sklearn returns
    nan, so the mean is nan, as in the reference.
    """
    from sklearn.metrics import roc_auc_score

    return _per_class(roc_auc_score, scores, targets, classes)


def multi_head_mean_ap(scores_by_head: Mapping[str, object], targets, classes: str = "seen") -> dict[str, float]:
    """`mean_ap` of every head and of the averaged logits (`all`), as `eval_linprobe.py` for AudioSet
    (official keys `val_ap_image`, ..., `val_ap_all`)."""
    if not scores_by_head:
        raise ValueError("scores_by_head is empty")
    if "all" in scores_by_head:
        raise ValueError("'all' is reserved for the averaged logits")
    out = {name: mean_ap(v, targets, classes) for name, v in scores_by_head.items()}
    out["all"] = mean_ap(_mean_logits(scores_by_head), targets, classes)
    return out


# --------------------------------------------------------------------------------------------- #
# Sound source localization: cIoU / AUC (docs/metrics.md#localization; docs/official_implementation.md §3.4)
# Protocol of stoneMo/EZ-VSL test.py::validate + utils.py::Evaluator/normalize_img.
# --------------------------------------------------------------------------------------------- #

#: success-rate thresholds of the localization AUC, computed as in EZ-VSL (`0.05*i`, 21 points)
LOC_AUC_THRESHOLDS: tuple[float, ...] = tuple(0.05 * i for i in range(21))


def _upsample_map(pred: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    if tuple(pred.shape[-2:]) == tuple(size):
        return pred
    if not pred.is_floating_point():
        pred = pred.float()
    # EZ-VSL: F.interpolate(..., mode='bilinear', align_corners=True); SLAVC: bicubic
    return F.interpolate(pred[None, None], size=size, mode=mode, align_corners=True)[0, 0]


def normalize_scores(pred, normalize: str = "minmax", value_range: tuple[float, float] | None = None):
    """Map localization scores to [0, 1] before thresholding, one of the two references' ways.

    ``"minmax"``: per image, ``(x - min) / (max - min)`` (EZ-VSL / SLAVC ``utils.normalize_img``; a
    constant map is left unchanged). ``"fixed"``: ``(x - lo) / (hi - lo)`` with the score's fixed range
    ``value_range = (lo, hi)``, the same for every image (SLAVC ``test.py``: ``min_max_norm`` with
    ``[-1/tau, 1/tau]`` for its cos/tau maps, ``[-1, 1]`` for a cosine map). Works on numpy or torch.
    """
    if normalize == "fixed":
        if value_range is None:
            raise ValueError("normalize='fixed' needs value_range=(lo, hi), the score's fixed range "
                             "(SLAVC: (-1/tau, 1/tau) for cos/tau maps, (-1, 1) for cosine maps)")
        lo, hi = (float(v) for v in value_range)
        if not hi > lo:
            raise ValueError(f"value_range={value_range}: needs lo < hi")
        return (pred - lo) / (hi - lo)
    if normalize != "minmax":
        raise ValueError(f"normalize must be 'minmax' or 'fixed', got {normalize!r}")
    vmin, vmax = pred.min(), pred.max()
    return (pred - vmin) / (vmax - vmin) if not (vmax - vmin) == 0 else pred


def ciou_per_sample(pred_map, gt_map, threshold="median", *, mode: str = "bilinear", normalize: str = "minmax",
                    value_range: tuple[float, float] | None = None) -> float:
    """Per-image consensus IoU of the Senocak/LVS protocol as implemented by EZ-VSL.

    Args:
        pred_map: (h, w) (or (1, h, w)) localization scores, e.g. audio-patch similarity.
        gt_map: (H, W) ground truth in [0, 1]; soft on Flickr-SoundNet (0.5 = one annotator's box,
            1.0 = consensus of at least 2), binary on VGG-SS.
        threshold: "median" (EZ-VSL; SLAVC `--relative_prediction --pred_size 0.5`) or a float
            (absolute threshold on the normalized map).
        mode: upsampling mode, "bilinear" (EZ-VSL) or "bicubic" (SLAVC); always align_corners=True.
        normalize, value_range: how scores reach [0, 1] (`normalize_scores`): "minmax" per image
            (EZ-VSL, the default) or "fixed" with the scores' fixed range (SLAVC `test.py`). SLAVC without
            `--relative_prediction` is `threshold=0.5, normalize="fixed", value_range=(-1/tau, 1/tau)`
            (`(-1, 1)` for a cosine map, `mode="bicubic"`): a float threshold after the per-image min-max
            is *not* SLAVC's rule (two halves at 0.1/tau and 0.6/tau, GT the left half: SLAVC's fixed range
            puts both halves at >= 0.55, all positive, cIoU 0.5; min-max puts the left half at 0, cIoU 0).
            With "median" the two normalizations give the same cIoU (an increasing affine map keeps the
            order), so SLAVC's `--relative_prediction` is the default path.

    Steps:
        1. upsample `pred_map` to the GT size;
        2. normalize (`normalize_scores`; min-max per image by default);
        3. thr = element at index floor(0.5 * H*W) of the sorted values, B = pred >= thr (so ties at
           the median make B cover more than half the image; a constant map is all positive);
        4. cIoU = sum(B*G) / (sum(G) + sum(B*[G == 0])) -- the soft G weights the intersection, the
           "union" is the GT mass plus false positives on G == 0 pixels (not a symmetric IoU).

    Returns nan if the denominator is 0 (empty GT and empty B, impossible with "median").
    """
    pred, gt = _tensor(pred_map), _numpy(gt_map).astype(np.float64)
    while pred.ndim > 2 and pred.shape[0] == 1:
        pred = pred[0]
    if pred.ndim != 2 or gt.ndim != 2:
        raise ValueError(f"expected 2-D maps, got pred {tuple(pred.shape)} and gt {gt.shape}")
    pred = normalize_scores(_upsample_map(pred, gt.shape, mode).numpy(), normalize, value_range)
    if isinstance(threshold, str):
        if threshold != "median":
            raise ValueError(f"threshold must be 'median' or a float, got {threshold!r}")
        thr = np.sort(pred.flatten())[int(pred.shape[0] * pred.shape[1] * 0.5)]
    else:
        thr = float(threshold)
    b = (pred >= thr).astype(np.float64)
    inter = np.sum(b * gt)
    denom = np.sum(gt) + np.sum(b * (gt == 0))
    return float(inter / denom) if denom != 0 else float("nan")


def ciou_batch(pred_maps, gt_maps, threshold="median", *, mode: str = "bilinear", normalize: str = "minmax",
               value_range: tuple[float, float] | None = None) -> list[float]:
    """`ciou_per_sample` for a batch: pred (B, h, w) or (B, 1, h, w), gt (B, H, W) or (B, 1, H, W).

    Each prediction is scored against its own GT map (EZ-VSL's `test.py` reads the whole batch's
    `gt_map` and is only correct with batch size 1; SLAVC fixed that; docs/metrics.md#ciou).
    """
    pred, gt = _tensor(pred_maps), _tensor(gt_maps)
    if pred.ndim == 4:
        pred = pred[:, 0]
    if gt.ndim == 4:
        gt = gt[:, 0]
    if pred.shape[0] != gt.shape[0]:
        raise ValueError(f"batch sizes differ: pred {tuple(pred.shape)}, gt {tuple(gt.shape)}")
    if pred.is_floating_point() and tuple(pred.shape[-2:]) != tuple(gt.shape[-2:]):
        # upsample the batch at once (same values as one at a time)
        pred = F.interpolate(pred[:, None], size=tuple(gt.shape[-2:]), mode=mode, align_corners=True)[:, 0]
    return [ciou_per_sample(p, g, threshold, mode=mode, normalize=normalize, value_range=value_range)
            for p, g in zip(pred, gt)]


def localization_metrics(ciou_values: Sequence[float]) -> dict[str, float]:
    """Aggregate per-image cIoUs like EZ-VSL `utils.Evaluator` (fractions, not percent).

    Returns:
        ciou: `finalize_AP50`, the fraction of images with cIoU >= 0.5. **This is the "cIoU" that
            papers print** (e.g. 83.94 on Flickr = 0.8394 here).
        ciou_mean: `finalize_cIoU`, the plain mean of the per-image cIoUs (printed, not reported).
        auc: `finalize_AUC`, `sklearn.metrics.auc` (trapezoid) of the success rate mean(cIoU >= t)
            over t in {0, 0.05, ..., 1.0}.
        n: number of images.
    """
    from sklearn.metrics import auc as sk_auc

    c = np.asarray([float(v) for v in ciou_values], dtype=np.float64)
    if c.size == 0:
        raise ValueError("no cIoU values")
    success = [np.sum(c >= t) / len(c) for t in LOC_AUC_THRESHOLDS]
    return {
        "ciou": float(np.mean(c >= 0.5)),
        "ciou_mean": float(np.mean(c)),
        "auc": float(sk_auc(list(LOC_AUC_THRESHOLDS), success)),
        "n": int(c.size),
    }


def cell_hits(pred_maps, sounding, grid: int) -> torch.Tensor:
    """Pointing over grid cells (an AV-Digits diagnostic, not a benchmark metric): for each scene, does
    the cell with the highest mean map value hold a sounding object?

    ``pred_maps (B, h, w)`` any resolution (each cell's value is the mean over its region,
    ``adaptive_avg_pool2d`` to ``grid x grid``), ``sounding (B, grid*grid)`` 0/1 per cell, row-major.
    Returns ``(B,)`` bools. Chance is ``sounding cells / grid**2`` (1/4 on a 2 x 2 scene with one
    source). Unlike the median-threshold cIoU, whose ceiling on a quarter-image cell is 0.5 and which a
    map that lights up *every* object on screen can reach (when two of the four cells hold objects, their
    union is exactly the top half), this asks only the question localization is about: which object sounds.
    """
    maps = _tensor(pred_maps).float()
    snd = _tensor(sounding).bool()
    if maps.dim() != 3 or snd.dim() != 2 or snd.shape != (maps.shape[0], grid * grid):
        raise ValueError(f"cell_hits: maps (B, h, w) and sounding (B, {grid * grid}); got "
                         f"{tuple(maps.shape)} and {tuple(snd.shape)}")
    cells = F.adaptive_avg_pool2d(maps[:, None], grid).flatten(1)       # (B, g*g) row-major like `sounding`
    return snd.gather(1, cells.argmax(1, keepdim=True))[:, 0]


class LocalizationEvaluator:
    """Streaming cIoU/AUC (EZ-VSL protocol, see `ciou_per_sample` and `localization_metrics`).

    >>> ev = LocalizationEvaluator()
    >>> for pred, gt in batches: ev.update(pred, gt)     # (B, h, w), (B, H, W)
    >>> ev.compute()  # {"ciou": AP50, "ciou_mean": ..., "auc": ..., "n": ...}
    """

    def __init__(self, threshold="median", *, mode: str = "bilinear"):
        self.threshold, self.mode = threshold, mode
        self.cious: list[float] = []

    def reset(self) -> None:
        self.cious = []

    def update(self, pred_maps, gt_maps) -> list[float]:
        """Score a batch; returns its per-image cIoUs (also kept for `compute`)."""
        vals = ciou_batch(pred_maps, gt_maps, self.threshold, mode=self.mode)
        self.cious.extend(vals)
        return vals

    def compute(self) -> dict[str, float]:
        return localization_metrics(self.cious)


# --------------------------------------------------------------------------------------------- #
# Localization with silent and off-screen sounds: SLAVC (Mo & Morgado, "A Closer Look at
# Weakly-Supervised Audio-Visual Source Localization", NeurIPS 2022). stoneMo/SLAVC (commit 05b429c)
# utils.py::EvaluatorFull (update, calc_precision_recall, calc_ap, cal_auc, finalize_stats) and
# test.py::validate (the fixed-range score normalization and the confidence). A test item is
# "visible" when something on screen sounds (SLAVC: it has annotated boxes; here: its GT map has mass);
# silent and off-screen items have an empty GT map and count only through their confidence.
# --------------------------------------------------------------------------------------------- #

def slavc_confidence(scores) -> float:
    """SLAVC's confidence that something on screen sounds: the mean of the top quarter of the
    fixed-range-normalized scores (``test.py``: ``np.sort(scores.flatten())[-n//4:].mean()``; Python's
    ``-n//4`` rounds down, so it keeps the top ``ceil(n / 4)`` values)."""
    v = np.sort(_numpy(scores).astype(np.float64).ravel())
    return float(v[-v.size // 4:].mean())


def _slavc_lists(visible, ciou, confidence):
    vis = np.asarray(visible, dtype=bool).ravel()
    c = np.asarray(ciou, dtype=np.float64).ravel()
    conf = np.asarray(confidence, dtype=np.float64).ravel()
    if not vis.size == c.size == conf.size:
        raise ValueError(f"visible, ciou and confidence differ in length: {vis.size}, {c.size}, {conf.size}")
    return vis, c, conf


def slavc_precision_recall(visible, ciou, confidence, conf_thr: float, ciou_thr: float = 0.5) -> tuple[float, float]:
    """Precision and recall at one confidence threshold (``EvaluatorFull.calc_precision_recall``).

    A confident item (``confidence >= conf_thr``) is a true positive when it is visible and localized
    (``ciou >= ciou_thr``), else a false positive (a silent / off-screen item, or the wrong place); an
    unconfident visible item is a false negative; an unconfident silent item counts nowhere. With no
    confident item precision is 1, with no visible item recall is 1 (the reference's conventions)."""
    vis, c, conf = _slavc_lists(visible, ciou, confidence)
    confident = conf >= conf_thr
    tp = int(np.sum(confident & vis & (c >= ciou_thr)))
    fp = int(np.sum(confident)) - tp
    fn = int(np.sum(~confident & vis))
    precision = 1.0 if tp + fp == 0 else tp / (tp + fp)
    recall = 1.0 if tp + fn == 0 else tp / (tp + fn)
    return precision, recall


def slavc_ap(visible, ciou, confidence, ciou_thr: float = 0.5) -> float:
    """SLAVC's AP (``EvaluatorFull.calc_ap``), over every item (visible, silent and off-screen).

    Thresholds: the sorted confidences without the largest, from the top down in steps of
    ``max(1, N // 200)`` (about 200 thresholds); precision ``p_i`` and recall ``r_i`` at each; interpolated
    precision ``P_i = max(p_i, p_{i+1}, ...)``; ``AP = sum_i P_i * (r_{i+1} - r_i)`` (the recall below the
    first threshold's is not counted, as in the reference)."""
    vis, c, conf = _slavc_lists(visible, ciou, confidence)
    if conf.size == 0:
        return float("nan")
    skip = max(1, conf.size // 200)
    pr = [slavc_precision_recall(vis, c, conf, t, ciou_thr) for t in np.sort(conf)[:-1][::-skip]]
    precision, recall = [p for p, _ in pr], [r for _, r in pr]
    precision_max = [max(precision[i:]) for i in range(len(precision))]
    return float(sum(precision_max[i] * (recall[i + 1] - recall[i]) for i in range(len(precision_max) - 1)))


def slavc_max_f1(visible, ciou, confidence, ciou_thr: float = 0.5) -> float:
    """SLAVC's max-F1 (``EvaluatorFull.finalize_stats``): F1 = 2PR / (P + R) (0 when P + R = 0) at the
    confidence thresholds ``sorted(confidence)[::max(1, N // 10)]`` (about 10), the largest of them."""
    vis, c, conf = _slavc_lists(visible, ciou, confidence)
    if conf.size == 0:
        return float("nan")
    f1 = []
    for t in np.sort(conf)[::max(1, conf.size // 10)]:
        p, r = slavc_precision_recall(vis, c, conf, t, ciou_thr)
        f1.append(2 * r * p / (r + p) if r + p > 0 else 0.0)
    return float(max(f1))


def slavc_loc_acc(visible, ciou, ciou_thr: float = 0.5) -> float:
    """SLAVC's LocAcc: the precision on the visible items with every item confident (``finalize_stats``'
    ``Precision-visible@50``), i.e. the fraction of visible items with ``ciou >= ciou_thr`` (nan if none).
    (The progress line's ``precision_at_50`` uses ``ciou > 0.5``, strictly; the saved metrics use >=.)"""
    vis = np.asarray(visible, dtype=bool).ravel()
    c = np.asarray(ciou, dtype=np.float64).ravel()
    return float(np.mean(c[vis] >= ciou_thr)) if vis.any() else float("nan")


class SLAVCEvaluator:
    """Localization with silent and off-screen sounds as SLAVC's ``test.py`` + ``EvaluatorFull`` score it.

    Per item: upsample the map to the GT size (``mode``, bicubic as SLAVC, align_corners=True); scores in
    [0, 1] by the fixed range ``value_range`` (``normalize_scores(..., "fixed")``; SLAVC: ``[-1/tau, 1/tau]``
    on its cos/tau maps, the default ``(-1, 1)`` on cosine maps such as the kit's read-outs); the
    confidence ``slavc_confidence``; the binary map at the median (``relative_prediction=True``, the
    README's recipe and ``--pred_size 0.5``) or at ``pred_thr`` on the fixed-range scores (without
    ``--relative_prediction``); the cIoU as ``ciou_per_sample``.

    ``compute()``: ``slavc_ap`` and ``slavc_max_f1`` over every item (the "all" subset), ``slavc_loc_acc``
    and ``slavc_auc`` (EZ-VSL's success-rate AUC) over the visible items, ``n``, ``n_visible``. OGL, the
    size buckets and the 0.75 cIoU threshold of ``finalize_stats`` are left out.
    """

    def __init__(self, *, value_range: tuple[float, float] = (-1.0, 1.0), relative_prediction: bool = True,
                 pred_thr: float = 0.5, mode: str = "bicubic", ciou_thr: float = 0.5):
        self.value_range, self.relative, self.pred_thr = value_range, bool(relative_prediction), float(pred_thr)
        self.mode, self.ciou_thr = mode, float(ciou_thr)
        self.reset()

    def reset(self) -> None:
        self.visible: list[bool] = []
        self.cious: list[float] = []
        self.confidences: list[float] = []

    def update(self, pred_maps, gt_maps) -> list[tuple[float, float]]:
        """Score a batch, pred (B, h, w), gt (B, H, W) (all zeros: nothing on screen sounds); returns
        ``(ciou, confidence)`` per item (the cIoU of an item with an empty GT is 0 or nan, never used)."""
        pred, gt = _tensor(pred_maps).float(), _tensor(gt_maps)
        if pred.ndim != 3 or gt.ndim != 3 or pred.shape[0] != gt.shape[0]:
            raise ValueError(f"expected pred (B, h, w) and gt (B, H, W), got {tuple(pred.shape)} and {tuple(gt.shape)}")
        if tuple(pred.shape[-2:]) != tuple(gt.shape[-2:]):
            pred = F.interpolate(pred[:, None], size=tuple(gt.shape[-2:]), mode=self.mode, align_corners=True)[:, 0]
        out = []
        for p, g in zip(pred.numpy(), gt.numpy()):
            conf = slavc_confidence(normalize_scores(p.astype(np.float64), "fixed", self.value_range))
            if self.relative:
                ciou = ciou_per_sample(p, g, "median")
            else:
                ciou = ciou_per_sample(p, g, self.pred_thr, normalize="fixed", value_range=self.value_range)
            self.visible.append(bool(g.sum() > 0))
            self.cious.append(ciou)
            self.confidences.append(conf)
            out.append((ciou, conf))
        return out

    def compute(self) -> dict[str, float]:
        if not self.cious:
            raise ValueError("no items scored")
        vis, c, conf = self.visible, self.cious, self.confidences
        visible_cious = [v for v, seen in zip(c, vis) if seen]
        return {"slavc_ap": slavc_ap(vis, c, conf, self.ciou_thr),
                "slavc_max_f1": slavc_max_f1(vis, c, conf, self.ciou_thr),
                "slavc_loc_acc": slavc_loc_acc(vis, c, self.ciou_thr),
                "slavc_auc": localization_metrics(visible_cious)["auc"] if visible_cious else float("nan"),
                "n": len(c), "n_visible": int(sum(vis))}


# --------------------------------------------------------------------------------------------- #
# Segmentation, AVSBench protocol (docs/metrics.md#avsbench-miou)
# OpenNLPLab/AVSBench avs_scripts/avs_s4/utils/utility.py (mask_iou, _eval_pr, Eval_Fmeasure)
# and avs_s4/test.py + utils/pyutils.py::AverageMeter (mean over batches).
# --------------------------------------------------------------------------------------------- #

def _frames(x) -> torch.Tensor:
    """(N, H, W) float tensor from (N, H, W) or (N, 1, H, W)."""
    x = _tensor(x)
    if x.ndim == 4:
        if x.shape[1] != 1:
            raise ValueError(f"binary segmentation expects one channel, got {tuple(x.shape)}")
        x = x[:, 0]
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise ValueError(f"expected (N, H, W) frames, got {tuple(x.shape)}")
    return x if x.is_floating_point() else x.float()


def _probs(pred, from_logits: bool) -> torch.Tensor:
    pred = _frames(pred)
    return torch.sigmoid(pred) if from_logits else pred


def avsbench_mask_iou(pred, gt, *, from_logits: bool = True, eps: float = 1e-7) -> list[float]:
    """Per-frame IoU of AVSBench `mask_iou` (binary S4/MS3).

    Args:
        pred: (N, H, W) or (N, 1, H, W) logits (`from_logits=True`, as the reference) or probabilities.
        gt: same shape, {0, 1}.

    Per frame: p = sigmoid > 0.5; IoU = sum(p*g) / (sum(max(p, g)) + eps). **Empty-GT rule:** if the
    GT frame is all zero, IoU = (number of true-negative pixels) / (H*W), so a frame predicted empty
    scores 1 instead of 0/0.
    """
    prob, target = _probs(pred, from_logits), _frames(gt)
    if prob.shape != target.shape:
        raise ValueError(f"pred {tuple(prob.shape)} and gt {tuple(target.shape)} differ")
    p = (prob > 0.5).to(target.dtype)                              # (N, H, W) in {0, 1}
    empty = target.flatten(1).sum(1) == 0                          # (N,) frames without foreground
    inter = torch.where(empty, ((1 - p) * (1 - target)).flatten(1).sum(1),   # true negatives
                        (p * target).flatten(1).sum(1))
    union = torch.where(empty, torch.full_like(inter, float(target[0].numel())),
                        torch.maximum(p, target).flatten(1).sum(1))
    return [float(v) for v in inter / (union + eps)]


def _avsbench_pr(prob: torch.Tensor, gt: torch.Tensor, thresholds: torch.Tensor):
    """Vectorized `_eval_pr` of one frame: precision/recall at every threshold, float32 like the ref.

    For each thr: y = prob >= thr, tp = sum(y*g), P = tp/(sum(y)+1e-20), R = tp/(sum(g)+1e-20).
    Sorting once gives sum(y) and tp at all thresholds (the same >= comparisons, no loop).
    """
    p, g = prob.reshape(-1), gt.reshape(-1).double()
    order = torch.argsort(p)
    p_sorted, g_sorted = p[order], g[order]
    first = torch.searchsorted(p_sorted, thresholds.to(p_sorted.dtype), right=False)  # first index >= thr
    n = p.numel()
    n_pred = (n - first).float()
    g_suffix = torch.cat([torch.flip(torch.cumsum(torch.flip(g_sorted, [0]), 0), [0]), g.new_zeros(1)])
    tp = g_suffix[first].float()
    prec = tp / (n_pred + 1e-20)
    rec = tp / (g.sum().float() + 1e-20)
    return prec, rec


def avsbench_fscore_curve(prob, gt, *, num_thresholds: int = 255, beta2: float = 0.3) -> torch.Tensor:
    """F-measure of one frame at `torch.linspace(0, 1 - 1e-10, 255)` (float32, so the last threshold
    is exactly 1.0), F = (1+b2) P R / (b2 P + R), NaN -> 0. `prob` is (H, W) probabilities."""
    thresholds = torch.linspace(0, 1 - 1e-10, num_thresholds)
    prec, rec = _avsbench_pr(_tensor(prob), _tensor(gt), thresholds)
    f = (1 + beta2) * prec * rec / (beta2 * prec + rec)
    f[f != f] = 0
    return f


def _avsbench_batch_f(prob: torch.Tensor, gt: torch.Tensor, num_thresholds: int, beta2: float) -> float:
    """`Eval_Fmeasure` for one batch: average the F curves of the non-empty-GT frames, then max.
    A batch whose frames all have empty GT returns 0 (the reference's `score` stays zeros)."""
    curves = [avsbench_fscore_curve(p, g, num_thresholds=num_thresholds, beta2=beta2)
              for p, g in zip(prob, gt) if g.sum() > 0]      # empty-GT frames are left out
    if not curves:
        return 0.0
    total = curves[0]
    for c in curves[1:]:  # sequential float32 sum, as the reference accumulates frame by frame
        total = total + c
    return float((total / len(curves)).max().item())


def _split(n: int, batch_frames: int | None) -> list[slice]:
    if batch_frames is None:
        return [slice(0, n)]
    if batch_frames < 1:
        raise ValueError("batch_frames must be >= 1")
    return [slice(i, min(i + batch_frames, n)) for i in range(0, n, batch_frames)]


def avsbench_miou(pred, gt, *, batch_frames: int | None = None, from_logits: bool = True) -> float:
    """AVSBench mIoU ("Jaccard", S4/MS3): mean of `avsbench_mask_iou` over the frames of each batch,
    then the unweighted mean over batches (`AverageMeter` counts batches).

    Args:
        pred, gt: (N, H, W) frames in evaluation order.
        batch_frames: frames per evaluation batch; consecutive chunks, the last one may be short and
            is then over-weighted. None = one batch. AVSBench S4 `test.sh` uses 4 videos x 5 frames
            = 20; the `test.py` default (batch 1) is 5.
    """
    ious = avsbench_mask_iou(pred, gt, from_logits=from_logits)
    return float(np.mean([np.mean(ious[s]) for s in _split(len(ious), batch_frames)]))


def avsbench_fscore(pred, gt, *, batch_frames: int | None = None, from_logits: bool = True,
                    num_thresholds: int = 255, beta2: float = 0.3) -> float:
    """AVSBench F-score (beta^2 = 0.3, S4/MS3) with its batch dependence (docs/metrics.md#avsbench-f-score).

    Per batch of `batch_frames` consecutive frames: the F curves (255 thresholds) of the frames with
    non-empty GT are averaged, then the max over thresholds is taken (one operating threshold per
    batch); a batch with only empty-GT frames contributes 0. Final = mean over batches. The value
    therefore changes with the batch size and composition (COMBO-AVS issue #7).
    """
    prob, target = _probs(pred, from_logits), _frames(gt)
    if prob.shape != target.shape:
        raise ValueError(f"pred {tuple(prob.shape)} and gt {tuple(target.shape)} differ")
    vals = [_avsbench_batch_f(prob[s], target[s], num_thresholds, beta2) for s in _split(prob.shape[0], batch_frames)]
    return float(np.mean(vals))


class AVSBenchEvaluator:
    """Streaming AVSBench mIoU and F-score with the batch structure made explicit.

    Args:
        batch_frames: None -> every `update` call is one evaluation batch (what the reference does
            with its DataLoader batches). An int k -> frames are buffered and scored in consecutive
            batches of k frames whatever the `update` sizes; the short remainder is a last batch at
            `compute()`. S4 `test.sh`: k = 20 (4 videos x 5 frames).
        from_logits: apply the reference's sigmoid to `pred` (False: `pred` already holds probabilities).

    `compute()` -> {"avsbench_miou", "avsbench_f", "n_batches", "n_frames"} (fractions).
    """

    def __init__(self, batch_frames: int | None = None, *, from_logits: bool = True,
                 num_thresholds: int = 255, beta2: float = 0.3):
        if batch_frames is not None and batch_frames < 1:
            raise ValueError("batch_frames must be >= 1")
        self.batch_frames, self.from_logits = batch_frames, from_logits
        self.num_thresholds, self.beta2 = num_thresholds, beta2
        self.reset()

    def reset(self) -> None:
        self.batch_miou: list[float] = []
        self.batch_f: list[float] = []
        self.n_frames = 0
        self._buf_p: list[torch.Tensor] = []
        self._buf_g: list[torch.Tensor] = []

    def _score_batch(self, prob: torch.Tensor, gt: torch.Tensor) -> None:
        self.batch_miou.append(float(np.mean(avsbench_mask_iou(prob, gt, from_logits=False))))
        self.batch_f.append(_avsbench_batch_f(prob, gt, self.num_thresholds, self.beta2))
        self.n_frames += prob.shape[0]

    def update(self, pred, gt) -> None:
        prob, target = _probs(pred, self.from_logits), _frames(gt)
        if prob.shape != target.shape:
            raise ValueError(f"pred {tuple(prob.shape)} and gt {tuple(target.shape)} differ")
        if self.batch_frames is None:
            self._score_batch(prob, target)
            return
        self._buf_p.append(prob)
        self._buf_g.append(target)
        prob, target = torch.cat(self._buf_p), torch.cat(self._buf_g)
        k, n_full = self.batch_frames, prob.shape[0] // self.batch_frames
        for i in range(n_full):
            self._score_batch(prob[i * k:(i + 1) * k], target[i * k:(i + 1) * k])
        self._buf_p, self._buf_g = [prob[n_full * k:]], [target[n_full * k:]]

    def compute(self) -> dict[str, float]:
        if self._buf_p and self._buf_p[0].shape[0] > 0:  # flush the short last batch
            self._score_batch(self._buf_p[0], self._buf_g[0])
            self._buf_p, self._buf_g = [], []
        nan = float("nan")
        return {
            "avsbench_miou": float(np.mean(self.batch_miou)) if self.batch_miou else nan,
            "avsbench_f": float(np.mean(self.batch_f)) if self.batch_f else nan,
            "n_batches": len(self.batch_miou),
            "n_frames": self.n_frames,
        }


# --------------------------------------------------------------------------------------------- #
# Segmentation, DeepAVFusion's own evaluator (docs/metrics.md#deepavfusion-evaluator;
# docs/official_implementation.md §3.5)
# stoneMo/DeepAVFusion eval_avsegm.py::AVSegmEvaluator (adapted from the AVSS code)
# --------------------------------------------------------------------------------------------- #

def davf_fscore_binary(prob, gt, *, beta2: float = 0.3, nbins: int = 256, eps: float = 1e-10) -> float:
    """`AVSegmEvaluator._batch_fscore_bin`: max over `linspace(0, 1-1e-10, 256)` of
    F = (1+b2) P R / (b2 P + R + eps), P = tp/(#pred + eps), R = tp/(#fg + eps), for ONE frame.
    `prob` (H, W) are foreground probabilities, `gt` (H, W) in {0, 1}."""
    p, g = _tensor(prob).reshape(-1), _tensor(gt).reshape(-1)
    fg = (g.int() + 1) == 2
    thresholds = torch.linspace(0, 1 - eps, nbins)
    order = torch.argsort(p)
    p_sorted, fg_sorted = p[order], fg[order].long()
    first = torch.searchsorted(p_sorted, thresholds.to(p_sorted.dtype), right=False)
    n_pred = p.numel() - first  # (ypred == 2).sum() at each threshold, int64
    tp = torch.cat([torch.flip(torch.cumsum(torch.flip(fg_sorted, [0]), 0), [0]), fg_sorted.new_zeros(1)])[first]
    prec = (tp / (n_pred + eps)).float()
    rec = (tp / (fg.long().sum() + eps)).float()
    f = (1 + beta2) * prec * rec / (beta2 * prec + rec + eps)
    return float(f.max().item())


def _davf_hist_stats(pred: torch.Tensor, target: torch.Tensor, nclass: int, beta2: float, eps: float = 1e-10):
    """Per-class statistics of one frame as `AVSegmEvaluator._batch_miou_fscore` (its `torch.histc`
    over [1, nclass] is a per-label pixel count). Labels 1..nclass; 0 (ignored) is not counted.

    Returns float32 (nclass,) tensors: IoU, precision, recall, F at the given labels, and a 0/1
    indicator of the classes present in pred or GT (which frames count towards a class's mean).
    """
    pred, target = pred.long().reshape(-1), target.long().reshape(-1)

    def area(labels: torch.Tensor) -> torch.Tensor:  # pixels per label 1..nclass
        labels = torch.where((labels >= 1) & (labels <= nclass), labels, torch.zeros_like(labels))
        return torch.bincount(labels, minlength=nclass + 1)[1:].float()

    inter = area(torch.where(pred == target, pred, torch.zeros_like(pred)))
    area_pred, area_gt = area(pred), area(target)
    union = area_pred + area_gt - inter
    iou = inter / (union + eps)
    precision = inter / (area_pred + eps)
    recall = inter / (area_gt + eps)
    fscore = (1 + beta2) * precision * recall / (beta2 * precision + recall + eps)
    present = (union > 0).float()
    return iou, precision, recall, fscore, present


class DeepAVFusionSegEvaluator:
    """DeepAVFusion's `AVSegmEvaluator`: the protocol behind the README's "S4 mIoU 89.94 / F 92.34".

    **Not comparable with the AVSBench protocol** (`AVSBenchEvaluator`):
      * frames whose GT has no foreground are skipped (AVSBench scores them with the TN rule);
      * binary S4/MS3 is scored as two classes {bg, fg} with p = sigmoid > 0.5; per class the IoU of
        a frame is summed over the frames where the class occurs in pred or GT and divided by that
        count; `davf_miou` = mean over {bg, fg} (includes background), `davf_miou_nobg` = fg only;
      * binary F = per-frame max over 256 thresholds, averaged over frames (AVSBench takes the max
        of a batch-averaged curve), so it does not depend on batching;
      * multi-class (AVSS): `pred` (N, C, H, W) logits, argmax labels; per-class IoU/P/R/F from
        histograms at the argmax (no threshold sweep), averaged over the classes seen in pred or GT.

    Quirk kept from the reference: the `_nobg` values drop the first *seen* class, which is the
    background unless no kept frame had a background pixel in pred or GT.

    Args:
        from_logits: binary `pred` holds logits (reference: sigmoid applied). False: it holds fg
            probabilities. Multi-class only uses the argmax over C, so logits or probabilities both work.
        beta2: F-measure beta^2 (0.3).

    `update(pred, gt)`: binary `pred` (N, 1, H, W) or (N, H, W) with `gt` (N, H, W) in {0, 1};
    multi-class `pred` (N, C, H, W) with `gt` (N, H, W) labels 0..C-1 (0 = background, -1 = ignore).
    `compute()` -> davf_miou, davf_miou_nobg, davf_f, davf_f_nobg, davf_precision(_nobg),
    davf_recall(_nobg), n_frames (scored), n_skipped (empty-GT frames).
    """

    def __init__(self, *, from_logits: bool = True, beta2: float = 0.3):
        self.from_logits, self.beta2 = from_logits, beta2
        self.reset()

    def reset(self) -> None:
        self._sums: dict[str, torch.Tensor] = {}  # per-class sums over kept frames: iou, precision, ...
        self._present: torch.Tensor | None = None  # per class: number of frames where it occurs
        self._f_binary = 0.0                       # binary: sum of per-frame max F
        self.n_frames = 0
        self.n_skipped = 0
        self._nclass: int | None = None

    def update(self, pred, gt) -> None:
        pred, gt = _tensor(pred), _tensor(gt)
        if pred.ndim == 3:
            pred = pred[:, None]
        if pred.ndim != 4 or gt.ndim != 3 or pred.shape[0] != gt.shape[0] \
                or tuple(pred.shape[-2:]) != tuple(gt.shape[-2:]):
            raise ValueError(f"expected pred (N, C, H, W) and gt (N, H, W); got {tuple(pred.shape)}, {tuple(gt.shape)}")
        pred = pred if pred.is_floating_point() else pred.float()
        binary = pred.shape[1] == 1
        nclass = 2 if binary else pred.shape[1]  # binary = {bg, fg}
        if self._nclass is not None and self._nclass != nclass:
            raise ValueError(f"evaluator holds {self._nclass}-class results, got {nclass} classes")
        self._nclass = nclass

        target = gt.long() + 1                  # (N, H, W): 0 = ignore, 1 = background, 2.. = classes
        valid = target > 0
        if binary:
            fg_prob = (torch.sigmoid(pred) if self.from_logits else pred)[:, 0] * valid  # (N, H, W)
            labels = (fg_prob > 0.5).long() + 1
        else:
            labels = pred.argmax(1) + 1         # argmax of softmax == argmax of logits
        labels = labels * valid                 # ignored pixels take no label

        for i in range(target.shape[0]):
            if not (target[i] > 1).any():       # no foreground in the GT: skipped
                self.n_skipped += 1
                continue
            iou, precision, recall, fscore, present = _davf_hist_stats(labels[i], target[i], nclass, self.beta2)
            stats = {"iou": iou, "precision": precision, "recall": recall}
            if binary:
                self._f_binary += davf_fscore_binary(fg_prob[i], target[i] == 2, beta2=self.beta2)
            else:
                stats["fscore"] = fscore
            for k, v in stats.items():
                self._sums[k] = self._sums[k] + v if k in self._sums else v
            self._present = present if self._present is None else self._present + present
            self.n_frames += 1

    def compute(self) -> dict[str, float]:
        nan = float("nan")
        out = {k: nan for k in ("davf_miou", "davf_miou_nobg", "davf_f", "davf_f_nobg", "davf_precision",
                                "davf_precision_nobg", "davf_recall", "davf_recall_nobg")}
        out.update(n_frames=self.n_frames, n_skipped=self.n_skipped)
        if self.n_frames == 0:
            return out
        seen = self._present > 0
        per_class = {k: v[seen] / self._present[seen] for k, v in self._sums.items()}
        if "fscore" not in per_class:  # binary: one F per frame, reported for bg and fg alike
            per_class["fscore"] = torch.full((2,), self._f_binary / self.n_frames)

        def mean(x: torch.Tensor) -> float:  # mean of an empty selection is nan
            return float(x.mean().item()) if x.numel() else nan

        for name, key in (("miou", "iou"), ("f", "fscore"), ("precision", "precision"), ("recall", "recall")):
            out[f"davf_{name}"] = mean(per_class[key])
            out[f"davf_{name}_nobg"] = mean(per_class[key][1:])  # drops the first SEEN class (see above)
        return out


def davf_segmentation(pred, gt, *, from_logits: bool = True, beta2: float = 0.3) -> dict[str, float]:
    """One-shot `DeepAVFusionSegEvaluator` over all frames (the result does not depend on batching)."""
    ev = DeepAVFusionSegEvaluator(from_logits=from_logits, beta2=beta2)
    ev.update(pred, gt)
    return ev.compute()


# --------------------------------------------------------------------------------------------- #
# Separation (docs/metrics.md#separation; docs/official_implementation.md §3.6)
# mir_eval.separation.bss_eval_sources (BSS-Eval v3, mir_eval<0.9), skip rules of
# DeepAVFusion eval_avsrcsep.py::evaluate and Sound-of-Pixels main.py::calc_metrics.
# --------------------------------------------------------------------------------------------- #

#: a waveform row counts as silent (and its sample is skipped) when this holds
SKIP_RULES = {
    "deepavfusion": "sum(x**2) < 1e-5  (eval_avsrcsep.py, energy)",
    "sop": "sum(|x|) <= 1e-5  (Sound-of-Pixels main.py::calc_metrics)",
}


def is_silent(x, rule: str = "deepavfusion") -> list[bool]:
    """Per-row silence test of a (K, S) (or (S,)) waveform array under a named skip rule."""
    x = _numpy(x).astype(np.float64)
    x = x.reshape(-1, x.shape[-1])
    if rule == "deepavfusion":
        flags = (x ** 2).sum(-1) < 1e-5
    elif rule == "sop":
        flags = np.abs(x).sum(-1) <= 1e-5
    else:
        raise ValueError(f"rule must be one of {sorted(SKIP_RULES)}, got {rule!r}")
    return [bool(f) for f in flags]


def _as_sources(x) -> np.ndarray:
    x = _numpy(x)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2:
        raise ValueError(f"expected (K, S) sources, got shape {x.shape}")
    return x


def bss_eval(ref_sources, est_sources) -> dict[str, list[float]]:
    """SDR/SIR/SAR (dB) per source via `mir_eval.separation.bss_eval_sources(ref, est,
    compute_permutation=False)`, the call of both DeepAVFusion and Sound-of-Pixels.

    Args:
        ref_sources: (K, S) ground-truth waveforms; est_sources: (K, S) estimates, row k <-> row k.
            If the lengths differ both are cropped to the shorter (Sound-of-Pixels crops the
            references to the estimate length L).

    No permutation search: estimates are matched to references by position, so swapped estimates
    score a very low SIR. mir_eval raises ValueError on an all-zero reference or estimate; apply a
    skip rule (`is_silent`, `SeparationEvaluator`) first. Returns {"sdr": [K], "sir": [K], "sar": [K]}.
    """
    from mir_eval.separation import bss_eval_sources

    ref, est = _as_sources(ref_sources), _as_sources(est_sources)
    n = min(ref.shape[-1], est.shape[-1])
    ref, est = ref[:, :n], est[:, :n]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # bss_eval_sources deprecated in 0.8, removed 0.9
        sdr, sir, sar, _ = bss_eval_sources(ref, est, compute_permutation=False)
    return {"sdr": [float(v) for v in sdr], "sir": [float(v) for v in sir], "sar": [float(v) for v in sar]}


def bss_eval_sdr(ref_sources, est_sources) -> list[float]:
    """The SDR of ``bss_eval`` alone, one single-reference ``bss_eval_sources`` call per source.

    Exactly equal to ``bss_eval(ref, est)["sdr"]``: BSS-eval v3's SDR of source j is
    ``||P_j e||^2 / ||e - P_j e||^2`` with ``P_j`` the projection of estimate ``e = est[j]`` onto
    512-tap filtered versions of ``ref[j]`` alone (the other references only split the error into
    interference and artifacts, i.e. SIR and SAR). Skipping the joint projection onto all K references
    makes it ~10x cheaper, which matters for the mixture baseline ``sdr_mix`` (tested against ``bss_eval``).
    """
    from mir_eval.separation import bss_eval_sources

    ref, est = _as_sources(ref_sources), _as_sources(est_sources)
    n = min(ref.shape[-1], est.shape[-1])
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        for r, e in zip(ref[:, :n], est[:, :n]):
            out.append(float(bss_eval_sources(r[None], e[None], compute_permutation=False)[0][0]))
    return out


def _one_blas_thread():
    """A context in which numpy / scipy's BLAS and LAPACK use one thread (``threadpoolctl``).

    BSS-eval's cost is LAPACK solves of 512- to 1024-sized systems; with several BLAS threads on a busy
    machine they spin-wait for each other (measured 1-3 s per mixture instead of 0.3 s). The scores equal
    the multi-threaded ones up to the solver's float rounding (< 1e-9 dB; another thread count splits
    LAPACK's sums differently)."""
    from threadpoolctl import threadpool_limits
    return threadpool_limits(1, user_api="blas")


def _score_separation(ref: np.ndarray, est: np.ndarray, mix: np.ndarray, sdr_mix: bool) -> dict[str, list[float]]:
    """``bss_eval`` of one sample (plus ``sdr_mix``); what ``SeparationEvaluator`` scores, in or out of process."""
    res = bss_eval(ref, est)
    if sdr_mix:
        res["sdr_mix"] = bss_eval_sdr(ref, np.repeat(mix[None], ref.shape[0], axis=0))
    return res


def _init_scoring_worker() -> None:
    """A BSS-eval scoring process: one BLAS thread for its whole life (as ``_one_blas_thread``)."""
    from threadpoolctl import threadpool_limits
    threadpool_limits(1, user_api="blas")


class SeparationEvaluator:
    """Streaming SDR/SIR/SAR with a named skip rule, plus the mixture-as-estimate baseline.

    Args:
        skip_rule: "deepavfusion" (skip a sample if any reference or estimate has sum(x^2) < 1e-5),
            "sop" (Sound-of-Pixels: sum(|x|) <= 1e-5), or None (no skipping; mir_eval then raises
            on an all-zero signal).
        aggregate:
            "samples" -- DeepAVFusion `AVSrcSepEvaluator.average_sdr_sir_sar`: the mean of all
                per-source values of all kept samples (batches play no role).
            "batches" -- Sound-of-Pixels: per-sample mean over sources, mean over the kept samples
                of each `update` call, then the mean over calls; a call with no kept sample adds 0.
        compute_sdr_mix: also score the mixture as the estimate of every source (`sdr_mix`, SoP's
            baseline) and report `sdri = sdr - sdr_mix` (on the same kept samples). Costs ~10% more
            (`bss_eval_sdr`: the SDR needs no joint projection).

        workers: how the samples are scored (the same ``bss_eval`` calls, hence the same numbers):
            None -- in this process, with numpy's BLAS threads as they are (the reference);
            0 -- in this process with one BLAS thread (``_one_blas_thread``: equal to the reference up to
                LAPACK's rounding, < 1e-9 dB, and several x faster on a busy machine);
            n > 0 -- in a pool of n forked processes, one BLAS thread each (equal to ``workers=0`` bit
                for bit). ``close()`` (or ``compute()``) ends the pool.

    `update(ref_sources, est_sources, mix=None)`: (B, K, S) (one batch) or (K, S) (one sample);
    `mix` (B, S) / (S,) defaults to the sum of the references (the mixture of both references:
    DeepAVFusion sums waveforms; SoP sums the 1/N-scaled sources it also uses as references).
    `compute()` -> sdr, sir, sar, [sdr_mix, sdri], n_samples, n_kept, n_skipped.
    """

    def __init__(self, skip_rule: str | None = "deepavfusion", *, aggregate: str = "samples",
                 compute_sdr_mix: bool = True, workers: int | None = None):
        if skip_rule is not None and skip_rule not in SKIP_RULES:
            raise ValueError(f"skip_rule must be one of {sorted(SKIP_RULES)} or None, got {skip_rule!r}")
        if aggregate not in ("samples", "batches"):
            raise ValueError(f"aggregate must be 'samples' or 'batches', got {aggregate!r}")
        if workers is not None and workers < 0:
            raise ValueError(f"workers must be None or >= 0, got {workers}")
        self.skip_rule, self.aggregate, self.compute_sdr_mix = skip_rule, aggregate, compute_sdr_mix
        self.workers, self._pool = workers, None
        self.reset()

    def reset(self) -> None:
        self.values: dict[str, list[float]] = {"sdr": [], "sir": [], "sar": [], "sdr_mix": []}
        self.batch_means: dict[str, list[float]] = {"sdr": [], "sir": [], "sar": [], "sdr_mix": []}
        self.per_sample: list[dict | None] = []  # bss_eval output per sample (None = skipped)
        self.n_skipped = 0

    def _skip(self, ref: np.ndarray, est: np.ndarray) -> bool:
        if self.skip_rule is None:
            return False
        return any(is_silent(ref, self.skip_rule)) or any(is_silent(est, self.skip_rule))

    def update(self, ref_sources, est_sources, mix=None) -> list[dict | None]:
        """Score one batch; returns per-sample `bss_eval` dicts (None for skipped samples)."""
        ref, est = _numpy(ref_sources), _numpy(est_sources)
        if ref.ndim == 2:
            ref, est = ref[None], est[None]
            mix = None if mix is None else _numpy(mix)[None]
        if ref.ndim != 3 or est.ndim != 3 or ref.shape[:2] != est.shape[:2]:
            raise ValueError(f"expected (B, K, S) refs and estimates, got {ref.shape}, {est.shape}")
        mix = ref.sum(1) if mix is None else _numpy(mix)
        batch: dict[str, list[float]] = {"sdr": [], "sir": [], "sar": [], "sdr_mix": []}
        jobs: list[tuple | None] = []
        for r, e, m in zip(ref, est, mix):
            n = min(r.shape[-1], e.shape[-1])
            r, e = r[:, :n], e[:, :n]
            skip = self._skip(r, e)
            self.n_skipped += skip
            jobs.append(None if skip else (r, e, m[:n], self.compute_sdr_mix))
        results = self._score([j for j in jobs if j is not None])
        results = [None if j is None else results.pop(0) for j in jobs]
        for res in results:
            if res is None:
                continue
            for k, v in res.items():
                self.values[k].extend(v)
                batch[k].append(float(np.mean(v)))
        for k in self.batch_means:  # SoP: mean over valid samples of the batch, 0 if none
            self.batch_means[k].append(float(np.mean(batch[k])) if batch[k] else 0.0)
        self.per_sample.extend(results)
        return results

    def _score(self, jobs: list[tuple]) -> list[dict]:
        """``_score_separation`` of every job, as ``workers`` says (class docstring)."""
        if self.workers is None:
            return [_score_separation(*j) for j in jobs]
        if self.workers == 0 or len(jobs) <= 1:
            with _one_blas_thread():
                return [_score_separation(*j) for j in jobs]
        if self._pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("fork"),
                                             initializer=_init_scoring_worker)
        return list(self._pool.map(_score_separation, *zip(*jobs)))

    def close(self) -> None:
        """End the scoring processes (``workers > 0``); a later ``update`` starts new ones."""
        pool, self._pool = getattr(self, "_pool", None), None
        if pool is not None:
            pool.shutdown()

    def __del__(self):
        self.close()

    def compute(self) -> dict[str, float]:
        self.close()
        # "samples": nan when nothing was kept; "batches": every update call counts (0 if empty)
        src = self.values if self.aggregate == "samples" else self.batch_means
        n_kept = sum(r is not None for r in self.per_sample)

        def mean(v: list[float]) -> float:
            return float(np.mean(v)) if v else float("nan")

        out = {k: mean(src[k]) for k in ("sdr", "sir", "sar")}
        if self.compute_sdr_mix:
            out["sdr_mix"] = mean(src["sdr_mix"])
            out["sdri"] = out["sdr"] - out["sdr_mix"]
        out.update(n_samples=len(self.per_sample), n_kept=n_kept, n_skipped=self.n_skipped)
        return out
