"""Hand-computed cases for `avlib.metrics` (definitions: shared/reference/PEERS_AND_METRICS.md B1-B4).

Every expected number is derived in the comment next to it, so a failing test says which convention
broke. Random-data tests compare the vectorized code with naive loops or with the library the
reference calls (sklearn, mir_eval, timm).
"""
from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch

from avlib import metrics as M


def _approx(x, rel=1e-5, abs=1e-6):
    return pytest.approx(x, rel=rel, abs=abs)


# =============================================================================================== #
# Classification (B4)
# =============================================================================================== #

LOGITS = torch.tensor([[2.0, 1.0, 0.0],   # pred 0, target 0: correct
                       [0.0, 3.0, 1.0],   # pred 1, target 1: correct
                       [1.0, 0.0, 2.0],   # pred 2, target 2: correct
                       [3.0, 2.0, 1.0]])  # pred 0, target 1: wrong (target is 2nd best)
TARGET = torch.tensor([0, 1, 2, 1])


def test_top1_topk_hand():
    assert M.top1(LOGITS, TARGET) == _approx(75.0)          # 3 of 4
    assert M.topk(LOGITS, TARGET, k=2) == _approx(100.0)    # sample 3: target ranked 2nd
    assert M.topk(LOGITS, TARGET, k=10) == _approx(100.0)   # k clamps to C = 3
    assert M.top1(LOGITS.numpy(), TARGET.numpy()) == _approx(75.0)  # numpy in
    onehot = torch.nn.functional.one_hot(TARGET, 3).float()
    assert M.top1(LOGITS, onehot) == _approx(75.0)          # (N, C) targets -> argmax
    assert isinstance(M.top1(LOGITS, TARGET), float)


def test_top1_matches_timm_accuracy():
    timm_utils = pytest.importorskip("timm.utils")
    g = torch.Generator().manual_seed(1)
    logits, target = torch.randn(50, 7, generator=g), torch.randint(0, 7, (50,), generator=g)
    ref1, ref5 = timm_utils.accuracy(logits, target, topk=(1, 5))
    assert M.top1(logits, target) == _approx(ref1.item())
    assert M.topk(logits, target, k=5) == _approx(ref5.item())


def test_multi_head_top1_averages_logits():
    # 2 classes, 3 samples, all targets 0.
    # image  logits: correct on s0 (margin +4), wrong on s1 (-1) and s2 (-1) -> 33.33 %
    # audio  logits: wrong on s0 (-1), correct on s1 (+4), wrong on s2 (-1)  -> 33.33 %
    # fusion logits: wrong on s0 (-1), wrong on s1 (-1), correct on s2 (+1)  -> 33.33 %
    # mean margin: s0 (4-1-1)/3 > 0, s1 (-1+4-1)/3 > 0, s2 (-1-1+1)/3 < 0  -> 66.67 %
    def head(margins):
        m = torch.tensor(margins, dtype=torch.float32)
        return torch.stack([m, torch.zeros_like(m)], 1)  # logit of class 0 = margin, class 1 = 0
    heads = {"image": head([4, -1, -1]), "audio": head([-1, 4, -1]), "fusion": head([-1, -1, 1])}
    out = M.multi_head_top1(heads, torch.zeros(3, dtype=torch.long))
    assert out == {"image": _approx(100 / 3), "audio": _approx(100 / 3),
                   "fusion": _approx(100 / 3), "all": _approx(200 / 3)}
    with pytest.raises(ValueError):
        M.multi_head_top1({"all": heads["image"]}, torch.zeros(3, dtype=torch.long))


# class 0: targets [1,0,1,0], scores [.9,.8,.7,.1] -> ranked pos, neg, pos: AP = (1/1 + 2/3)/2 = 5/6
#          ROC-AUC: pos {.9,.7} vs neg {.8,.1}: 3 of 4 pairs ordered -> 0.75
# class 1: targets [0,1,0,0], scores [.2,.3,.9,.1] -> ranked neg, pos: AP = 1/2
#          ROC-AUC: pos .3 beats negs .2, .1 but not .9 -> 2/3
# class 2: no positives (AP = 0.0 in sklearn 1.9, ROC-AUC = nan)
AP_SCORES = np.array([[.9, .2, .5], [.8, .3, .4], [.7, .9, .3], [.1, .1, .2]])
AP_TARGETS = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0]])


def test_mean_ap_seen_vs_all():
    assert M.mean_ap(AP_SCORES, AP_TARGETS) == _approx((5 / 6 + 1 / 2) / 2 * 100)          # 66.667
    assert M.mean_ap(AP_SCORES, AP_TARGETS, classes="all") == _approx((5 / 6 + 1 / 2 + 0) / 3 * 100)  # 44.444
    # both agree when every class has a positive
    s2, t2 = AP_SCORES[:, :2], AP_TARGETS[:, :2]
    assert M.mean_ap(s2, t2, "all") == _approx(M.mean_ap(s2, t2))
    # rank-invariant: logits and sigmoid(logits) give the same mAP
    logits = torch.logit(torch.tensor(AP_SCORES))
    assert M.mean_ap(logits, torch.tensor(AP_TARGETS)) == _approx(M.mean_ap(torch.sigmoid(logits), AP_TARGETS))
    with pytest.raises(ValueError):
        M.mean_ap(AP_SCORES, np.zeros_like(AP_TARGETS))  # no seen class at all


def test_mean_ap_matches_sklearn_per_class():
    from sklearn.metrics import average_precision_score
    rng = np.random.default_rng(0)
    scores, targets = rng.normal(size=(40, 6)), (rng.random((40, 6)) < 0.3).astype(int)
    ref = np.mean([average_precision_score(targets[:, c], scores[:, c]) for c in range(6)]) * 100
    assert M.mean_ap(scores, targets) == _approx(ref)


def test_mean_roc_auc_and_multi_head_map():
    assert M.mean_roc_auc(AP_SCORES, AP_TARGETS) == _approx((0.75 + 2 / 3) / 2 * 100)
    assert math.isnan(M.mean_roc_auc(AP_SCORES, AP_TARGETS, classes="all"))  # undefined class -> nan
    heads = {"image": AP_SCORES, "audio": AP_SCORES[::-1].copy()}
    out = M.multi_head_mean_ap(heads, AP_TARGETS)
    assert out["image"] == _approx(M.mean_ap(AP_SCORES, AP_TARGETS))
    assert out["all"] == _approx(M.mean_ap((AP_SCORES + AP_SCORES[::-1]) / 2, AP_TARGETS))


# =============================================================================================== #
# Localization: cIoU / AUC (B1)
# =============================================================================================== #

def test_ciou_soft_gt_hand():
    # pred = 0..15 row-major (already at GT size); normalized = v/15; sorted index floor(0.5*16) = 8
    # -> thr = 8/15 -> B = rows 2 and 3 (8 pixels).
    # GT: row 1 = [.5,.5,0,0], row 2 = [1,1,.5,.5], rows 0 and 3 = 0  -> sum(G) = 1 + 3 = 4
    # sum(B*G) = row 2 = 3 ; false positives on G == 0: row 3 = 4 pixels
    # cIoU = 3 / (4 + 4) = 0.375   (the 0.5 pixels count half in both numerator and denominator)
    pred = np.arange(16.0).reshape(4, 4)
    gt = np.zeros((4, 4))
    gt[1, :2] = 0.5
    gt[2] = [1, 1, 0.5, 0.5]
    assert M.ciou_per_sample(pred, gt) == _approx(0.375)
    assert M.ciou_per_sample(torch.tensor(pred, dtype=torch.float32)[None], torch.tensor(gt)) == _approx(0.375)


def test_ciou_upsamples_bilinear_align_corners():
    # 2x2 [[0,1],[2,3]] -> 3x3 with align_corners=True: [[0,.5,1],[1,1.5,2],[2,2.5,3]]
    # sorted: 0,.5,1,1,1.5,2,2,2.5,3 ; index floor(4.5) = 4 -> thr = 1.5 -> B = {1.5,2,2,2.5,3} (5 px)
    # GT = lower-right 2x2 block (values 1.5,2,2.5,3) -> sum(B*G) = 4, FP = the '2' at (2,0) -> 1
    # cIoU = 4 / (4 + 1) = 0.8
    gt = np.zeros((3, 3))
    gt[1:, 1:] = 1
    assert M.ciou_per_sample(torch.tensor([[0.0, 1.0], [2.0, 3.0]]), gt) == _approx(0.8)


def test_ciou_median_ties_and_constant_map():
    # 12 zeros + 4 ones: sorted index 8 is a 0 -> thr = 0 -> `pred >= thr` marks ALL 16 pixels.
    # GT = 2x2 block of ones -> cIoU = 4 / (4 + 12 false positives) = 0.25
    pred = np.zeros((4, 4))
    pred[:2, :2] = 1
    gt = np.zeros((4, 4))
    gt[:2, :2] = 1
    assert M.ciou_per_sample(pred, gt) == _approx(0.25)
    # a constant map is not normalized and is all positive too -> same 0.25
    assert M.ciou_per_sample(np.full((4, 4), 7.0), gt) == _approx(0.25)
    # absolute threshold (SLAVC without --relative_prediction): B = the 4 ones -> cIoU = 1
    assert M.ciou_per_sample(pred, gt, threshold=0.5) == _approx(1.0)
    # empty GT -> 0 with the median rule (half the image is a false positive)
    assert M.ciou_per_sample(np.arange(16.0).reshape(4, 4), np.zeros((4, 4))) == 0.0


def test_localization_metrics_known_curve():
    # cIoU = [0, .5, 1]: success(t) = 1 at t=0, 2/3 for t in (0, .5], 1/3 for t in (.5, 1]
    # ciou (AP50) = 2/3 ; mean = .5
    # AUC (trapezoid, step .05) = .05 * [(1 + 2/3)/2 + 9*(2/3) + (2/3 + 1/3)/2 + 9*(1/3)] = .05 * 31/3
    out = M.localization_metrics([0.0, 0.5, 1.0])
    assert out == {"ciou": _approx(2 / 3), "ciou_mean": _approx(0.5), "auc": _approx(0.05 * 31 / 3), "n": 3}
    assert M.localization_metrics([1.0, 1.0])["auc"] == _approx(1.0)
    assert M.localization_metrics([0.0])["auc"] == _approx(0.025)   # only success(0) = 1: .05 * 1/2


def test_localization_evaluator_streaming_per_sample_gt():
    g = torch.Generator().manual_seed(0)
    preds = torch.rand(5, 1, 7, 7, generator=g)            # (B, 1, h, w) similarity maps
    gts = (torch.rand(5, 28, 28, generator=g) > 0.6).float()
    gts[0] = 0.5 * gts[0]                                   # one soft map
    ev = M.LocalizationEvaluator()
    ev.update(preds[:3], gts[:3])
    ev.update(preds[3:], gts[3:])
    expected = [M.ciou_per_sample(p, g_) for p, g_ in zip(preds, gts)]  # each against ITS OWN gt
    assert ev.cious == [_approx(v) for v in expected]
    assert ev.compute() == M.localization_metrics(expected)
    json.dumps(ev.compute())


def test_cell_hits_hand_cases():
    # 4 x 4 maps on a 2 x 2 grid; cell means (row-major): scene 0 -> [1, 0, 0, 0], scene 1 -> [0, 0, 2, 3]
    maps = torch.zeros(2, 4, 4)
    maps[0, :2, :2] = 1.0
    maps[1, 2:, :2], maps[1, 2:, 2:] = 2.0, 3.0
    maps[1, 0, 0] = 10.0                                    # one hot pixel: cell 0's mean is 2.5 < 3
    sounding = torch.tensor([[1, 0, 0, 0], [0, 0, 1, 0]])
    assert M.cell_hits(maps, sounding, 2).tolist() == [True, False]
    assert M.cell_hits(maps, torch.tensor([[0, 1, 0, 0], [0, 0, 1, 1]]), 2).tolist() == [False, True]
    # a map that lights up both objects of a two-object scene equally: median cIoU 0.5 (the ceiling of a
    # quarter-image cell, counted as a success) but argmax picks one -- the map cannot say which sounds
    both = torch.zeros(1, 4, 4)
    both[0, :2, :2] = both[0, 2:, 2:] = 1.0
    gt = torch.zeros(1, 4, 4)
    gt[0, 2:, 2:] = 1.0
    both_ramp = both + torch.linspace(0, 1e-3, 16).reshape(1, 4, 4)
    assert M.ciou_per_sample(both_ramp[0], gt[0]) == _approx(0.5)
    assert M.cell_hits(both, torch.tensor([[0, 0, 0, 1]]), 2).tolist() == [False]    # ties -> first cell
    with pytest.raises(ValueError, match="cell_hits"):
        M.cell_hits(maps, sounding[:, :3], 2)


# =============================================================================================== #
# Segmentation (B2): AVSBench protocol and DeepAVFusion's evaluator
# =============================================================================================== #

# X: probs [[.9,.62],[.3,.1]], GT [[1,0],[1,0]]
#    F by threshold range: <=.1: P=2/4,R=1 -> .5652 ; (.1,.3]: P=2/3,R=1 -> .7222 ;
#    (.3,.62]: P=1/2,R=1/2 -> .5 ; (.62,.9]: P=1,R=1/2 -> 1.3*.5/(.3+.5) = .8125 ; >.9: 0
#    AVSBench IoU at p>.5: pred {.9,.62}, GT {(0,0),(1,0)}: inter 1, union 3 -> 1/3
# Y: probs [[.22,.12],[.07,.02]], GT [[1,0],[0,0]]
#    F: (.12,.22]: P=R=1 -> 1.0 (max) ; (.07,.12]: P=1/2 -> .5652 ; ... ; IoU: empty pred -> 0/1 = 0
# E: probs [[.7,.1],[.1,.1]], GT empty -> AVSBench TN rule: 3 of 4 pixels correctly empty -> .75
# (no threshold of either grid, k/254 or k/255, falls on one of these probabilities)
X, GX = [[0.9, 0.62], [0.3, 0.1]], [[1, 0], [1, 0]]
Y, GY = [[0.22, 0.12], [0.07, 0.02]], [[1, 0], [0, 0]]
E, GE = [[0.7, 0.1], [0.1, 0.1]], [[0, 0], [0, 0]]
PROBS = torch.tensor([X, Y, E], dtype=torch.float32)
GTS = torch.tensor([GX, GY, GE], dtype=torch.float32)
LOGITS3 = torch.logit(PROBS)


def test_avsbench_mask_iou_empty_gt_rule():
    # frame A: GT [[1,0],[0,0]], pred [[1,1],[0,0]] -> 1/2 ; frame B: empty GT, pred [[1,0],[0,0]] -> TN 3/4
    logits = torch.tensor([[[5.0, 5.0], [-5.0, -5.0]], [[5.0, -5.0], [-5.0, -5.0]]])
    gt = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    assert M.avsbench_mask_iou(logits, gt) == [_approx(0.5), _approx(0.75)]
    assert M.avsbench_miou(logits, gt) == _approx(0.625)
    assert M.avsbench_mask_iou(LOGITS3, GTS) == [_approx(1 / 3), _approx(0.0), _approx(0.75)]
    assert M.avsbench_mask_iou(PROBS, GTS, from_logits=False) == M.avsbench_mask_iou(LOGITS3, GTS)


def test_avsbench_miou_mean_of_batch_means():
    # one batch (or equal batches of 1): (1/3 + 0 + .75)/3 = .3611
    # batches of 2: [X,Y] -> 1/6, [E] -> .75 ; mean over batches = .4583 (short last batch over-weighted)
    assert M.avsbench_miou(LOGITS3, GTS) == _approx(13 / 36)
    assert M.avsbench_miou(LOGITS3, GTS, batch_frames=1) == _approx(13 / 36)
    assert M.avsbench_miou(LOGITS3, GTS, batch_frames=2) == _approx((1 / 6 + 0.75) / 2)


def test_avsbench_fscore_batch_dependence():
    f = lambda p, g, **kw: M.avsbench_fscore(p, g, from_logits=False, **kw)  # noqa: E731
    assert f(PROBS[:1], GTS[:1]) == _approx(0.8125)                        # X alone
    # [X, Y] in one batch: curves averaged, max at (.12,.22]: (.7222 + 1)/2 = 31/36 = .8611
    assert f(PROBS[:2], GTS[:2]) == _approx(31 / 36)
    # one frame per batch: mean of per-frame maxima (.8125 + 1)/2 = .90625
    assert f(PROBS[:2], GTS[:2], batch_frames=1) == _approx(0.90625)
    # with the empty-GT frame E: one batch ignores E -> .8611; batch size 1 -> E's batch adds 0:
    # (.8125 + 1 + 0)/3 = .6042 ; batches of 2: [X,Y] .8611, [E] 0 -> .4306
    assert f(PROBS, GTS) == _approx(31 / 36)
    assert f(PROBS, GTS, batch_frames=1) == _approx((0.8125 + 1) / 3)
    assert f(PROBS, GTS, batch_frames=2) == _approx(31 / 72)
    assert M.avsbench_fscore(LOGITS3, GTS) == _approx(31 / 36)              # logits in (default)


def test_avsbench_fscore_curve_matches_naive_loop():
    rng = np.random.default_rng(0)
    prob = rng.random((16, 16)).astype(np.float32)
    gt = (rng.random((16, 16)) < 0.3).astype(np.float32)
    thr = torch.linspace(0, 1 - 1e-10, 255).numpy()               # float32: last threshold is 1.0
    assert thr[-1] == 1.0
    naive = []
    for t in thr:
        y = prob >= t
        tp = float((y * gt).sum())
        p, r = tp / (y.sum() + 1e-20), tp / (gt.sum() + 1e-20)
        naive.append(0.0 if p + r == 0 else 1.3 * p * r / (0.3 * p + r))
    curve = M.avsbench_fscore_curve(prob, gt)
    np.testing.assert_allclose(curve.numpy(), naive, rtol=1e-5, atol=1e-7)


def test_avsbench_evaluator_batches():
    # batch_frames=None: each update is a batch -> updates [X], [Y, E]
    # miou: (1/3 + (0 + .75)/2)/2 ; F: (.8125 + 1.0)/2 (E ignored inside the [Y, E] batch)
    ev = M.AVSBenchEvaluator()
    ev.update(LOGITS3[:1], GTS[:1])
    ev.update(LOGITS3[1:], GTS[1:])
    out = ev.compute()
    assert out == {"avsbench_miou": _approx((1 / 3 + 0.375) / 2), "avsbench_f": _approx(0.90625),
                   "n_batches": 2, "n_frames": 3}
    # batch_frames=2 re-chunks whatever the update sizes: same as the function with batch_frames=2
    ev2 = M.AVSBenchEvaluator(batch_frames=2)
    ev2.update(LOGITS3[:1, None], GTS[:1])            # (N, 1, H, W) accepted
    ev2.update(LOGITS3[1:, None], GTS[1:])
    out2 = ev2.compute()
    assert out2["avsbench_miou"] == _approx(M.avsbench_miou(LOGITS3, GTS, batch_frames=2))
    assert out2["avsbench_f"] == _approx(31 / 72)
    assert out2["n_batches"] == 2
    json.dumps(out2)


def test_davf_evaluator_binary_hand():
    # E (empty GT) skipped. {bg, fg} at p > .5:
    # X: fg pred {(0,0),(0,1)} vs GT {(0,0),(1,0)}: inter 1, union 3 -> 1/3 ; bg likewise -> 1/3
    # Y: fg pred empty, GT {(0,0)}: IoU 0 (class present via GT) ; bg: pred 4, GT 3, inter 3 -> 3/4
    # per class: bg (1/3 + 3/4)/2 = 13/24, fg (1/3 + 0)/2 = 1/6
    # miou = (13/24 + 1/6)/2 = 17/48 ; miou_nobg = 1/6 ; F = mean of per-frame max = (.8125 + 1)/2
    out = M.davf_segmentation(LOGITS3[:, None], GTS)
    assert out["davf_miou"] == _approx(17 / 48)
    assert out["davf_miou_nobg"] == _approx(1 / 6)
    assert out["davf_f"] == _approx(0.90625) and out["davf_f_nobg"] == _approx(0.90625)
    assert (out["n_frames"], out["n_skipped"]) == (2, 1)
    # not batch dependent: frame-by-frame updates give the same result
    ev = M.DeepAVFusionSegEvaluator()
    for i in range(3):
        ev.update(LOGITS3[i:i + 1], GTS[i:i + 1])
    assert ev.compute() == {k: _approx(v) for k, v in out.items()}
    # the AVSBench protocol on the same frames gives different numbers
    assert M.avsbench_miou(LOGITS3, GTS) != _approx(out["davf_miou"])
    json.dumps(out)


def test_davf_fscore_binary_matches_naive_loop():
    rng = np.random.default_rng(1)
    prob = rng.random((12, 12)).astype(np.float32)
    gt = (rng.random((12, 12)) < 0.4).astype(np.float32)
    best, eps = 0.0, 1e-10
    for t in torch.linspace(0, 1 - eps, 256).numpy():
        y = prob >= t
        tp = float((y & (gt > 0)).sum())
        p, r = tp / (y.sum() + eps), tp / (gt.sum() + eps)
        best = max(best, 1.3 * p * r / (0.3 * p + r + eps))
    assert M.davf_fscore_binary(prob, gt) == _approx(best)


def test_davf_evaluator_multiclass_hand():
    # labels 0 = bg, 1, 2 ; -1 = ignore. GT [[0,1],[2,-1]], argmax pred [[0,1],[1,2]] (pixel (1,1) ignored)
    # bg: inter 1, pred 1, GT 1 -> IoU 1, P 1, R 1, F 1
    # c1: pred {(0,1),(1,0)}, GT {(0,1)}: inter 1, union 2 -> IoU .5 ; P .5, R 1 -> F 1.3*.5/1.15 = .5652
    # c2: pred none (its pixel is ignored), GT {(1,0)}: IoU 0, P 0, R 0, F 0
    # miou = 1.5/3 = .5 ; nobg = .25 ; F = (1 + .5652)/3 ; F_nobg = .5652/2 ; recall = 2/3
    gt = torch.tensor([[[0, 1], [2, -1]]])
    logits = 5.0 * torch.nn.functional.one_hot(torch.tensor([[[0, 1], [1, 2]]]), 3).permute(0, 3, 1, 2).float()
    out = M.davf_segmentation(logits, gt)
    f1 = 1.3 * 0.5 / (0.3 * 0.5 + 1)
    assert out["davf_miou"] == _approx(0.5) and out["davf_miou_nobg"] == _approx(0.25)
    assert out["davf_f"] == _approx((1 + f1) / 3) and out["davf_f_nobg"] == _approx(f1 / 2)
    assert out["davf_recall"] == _approx(2 / 3)
    # a frame with only background (and ignore) labels is skipped
    ev = M.DeepAVFusionSegEvaluator()
    ev.update(logits, gt)
    ev.update(logits, torch.tensor([[[0, 0], [0, -1]]]))
    assert ev.compute()["n_skipped"] == 1 and ev.compute()["davf_miou"] == _approx(0.5)


def test_davf_nobg_drops_first_seen_class_quirk():
    # every pixel is foreground in pred and GT: background never seen -> the only seen class is fg,
    # and `_nobg` (reference: miou_per_cls[1:]) drops it -> nan
    out = M.davf_segmentation(torch.full((1, 1, 2, 2), 5.0), torch.ones(1, 2, 2))
    assert out["davf_miou"] == _approx(1.0)
    assert math.isnan(out["davf_miou_nobg"])


def test_empty_evaluators_return_nan():
    ev = M.DeepAVFusionSegEvaluator()
    ev.update(torch.zeros(2, 1, 2, 2), torch.zeros(2, 2, 2))
    out = ev.compute()
    assert math.isnan(out["davf_miou"]) and out["n_skipped"] == 2
    assert math.isnan(M.AVSBenchEvaluator().compute()["avsbench_miou"])


# =============================================================================================== #
# Separation (B3)
# =============================================================================================== #

def _sources(seed: int, k: int = 2, n: int = 4000, noise: float = 0.3, leak: float = 0.2):
    rng = np.random.default_rng(seed)
    ref = rng.standard_normal((k, n))
    est = ref + noise * rng.standard_normal((k, n)) + leak * ref[::-1]  # leakage between sources
    return ref, est


def _mir_eval(ref, est):
    from mir_eval.separation import bss_eval_sources
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return bss_eval_sources(ref, est, compute_permutation=False)


def test_bss_eval_matches_mir_eval():
    ref, est = _sources(0)
    sdr, sir, sar, _ = _mir_eval(ref, est)
    out = M.bss_eval(ref, est)
    np.testing.assert_allclose(out["sdr"], sdr)
    np.testing.assert_allclose(out["sir"], sir)
    np.testing.assert_allclose(out["sar"], sar)
    assert all(isinstance(v, float) for v in out["sdr"])
    # torch in; different lengths are cropped to the shorter (SoP crops references to the estimate length)
    out_t = M.bss_eval(torch.tensor(np.pad(ref, ((0, 0), (0, 50)))), torch.tensor(est))
    np.testing.assert_allclose(out_t["sdr"], sdr)


def test_bss_eval_no_permutation():
    # estimate k is scored against reference k: swapping the estimates turns a clean separation into
    # pure interference (mir_eval's compute_permutation=True would have searched the best pairing)
    ref, est = _sources(1, n=8000, leak=0.0)
    good, swapped = M.bss_eval(ref, est), M.bss_eval(ref, est[::-1].copy())
    assert min(good["sir"]) > 15.0
    assert max(swapped["sir"]) < -5.0


def test_skip_rules():
    quiet = np.full(100, 1e-4)          # sum x^2 = 1e-6 < 1e-5 but sum |x| = 1e-2 > 1e-5
    silent = np.zeros(100)
    loud = np.ones(100)
    assert M.is_silent(np.stack([quiet, silent, loud])) == [True, True, False]
    assert M.is_silent(np.stack([quiet, silent, loud]), rule="sop") == [False, True, False]
    assert M.is_silent(np.full(100, 1e-8), rule="sop") == [True]   # sum |x| = 1e-6 <= 1e-5
    with pytest.raises(ValueError):
        M.is_silent(loud, rule="nope")


def test_separation_evaluator_skips_and_counts():
    ref0, est0 = _sources(2)
    ref1, est1 = _sources(3)
    ref_quiet, est_quiet = _sources(4)
    ref_quiet[1] *= np.sqrt(3e-6 / (ref_quiet[1] ** 2).sum())      # energy 3e-6 < 1e-5, sum|x| ~ 0.09
    refs = np.stack([ref0, ref1, ref_quiet])
    ests = np.stack([est0, est1, est_quiet])
    ests_silent = ests.copy()
    ests_silent[1, 0] = 0.0                                          # sample 1: a silent estimate

    davf = M.SeparationEvaluator("deepavfusion", compute_sdr_mix=False)
    davf.update(refs, ests_silent)
    out = davf.compute()
    assert (out["n_samples"], out["n_kept"], out["n_skipped"]) == (3, 1, 2)   # silent + quiet
    assert out["sdr"] == _approx(np.mean(M.bss_eval(ref0, est0)["sdr"]))

    sop = M.SeparationEvaluator("sop", compute_sdr_mix=False)
    sop.update(torch.tensor(refs), torch.tensor(ests_silent))
    assert (sop.compute()["n_kept"], sop.compute()["n_skipped"]) == (2, 1)     # quiet source kept

    with pytest.raises(ValueError):                                   # no rule: mir_eval refuses silence
        M.SeparationEvaluator(None, compute_sdr_mix=False).update(refs[1:2], ests_silent[1:2])


@pytest.mark.parametrize("noise", [0.1, 1.0])
def test_bss_eval_sdr_equals_the_joint_sdr(noise):
    # the SDR of source j depends on ref[j] and est[j] only: the single-reference calls give the same numbers
    ref, est = _sources(7, noise=noise)
    est = est + 0.5 * ref[::-1]                         # cross-talk, so SIR (not SDR) involves the other ref
    assert M.bss_eval_sdr(ref, est) == [_approx(v) for v in M.bss_eval(ref, est)["sdr"]]


def test_separation_evaluator_aggregation_and_sdr_mix():
    ref0, est0 = _sources(5)
    ref1, est1 = _sources(6, noise=1.0)
    # "samples" (DeepAVFusion): mean of all per-source values of kept samples
    ev = M.SeparationEvaluator()
    ev.update(ref0, est0)                      # (K, S) = one sample
    ev.update(np.stack([ref1, np.zeros_like(ref1)]), np.stack([est1, est1]))   # 2nd sample silent: skipped
    out = ev.compute()
    r0, r1 = ev.per_sample[0], ev.per_sample[1]          # bss_eval dicts (checked against mir_eval above)
    assert ev.per_sample[2] is None
    assert out["sdr"] == _approx(np.mean(r0["sdr"] + r1["sdr"]))
    assert out["sir"] == _approx(np.mean(r0["sir"] + r1["sir"]))
    assert out["n_skipped"] == 1 and out["n_kept"] == 2
    # sdr_mix: the mixture (sum of references) as the estimate of every source
    mix0 = ref0.sum(0)
    sdr_mix0 = M.bss_eval(ref0, np.stack([mix0, mix0]))["sdr"]
    assert ev.per_sample[0]["sdr_mix"] == [_approx(v) for v in sdr_mix0]
    assert out["sdri"] == _approx(out["sdr"] - out["sdr_mix"])
    assert out["sdri"] > 0                      # the estimates beat the mixture
    # "batches" (Sound-of-Pixels): per-sample source mean, batch mean, mean over batches; an
    # all-skipped batch adds 0 -> (mean(r0) + mean(r1) + 0) / 3 with batches [s0], [s1], [silent]
    ev_b = M.SeparationEvaluator("sop", aggregate="batches", compute_sdr_mix=False)
    ev_b.update(ref0[None], est0[None])
    ev_b.update(ref1, est1)
    ev_b.update(np.zeros_like(ref1), est1)
    out_b = ev_b.compute()
    assert out_b["sdr"] == _approx((np.mean(r0["sdr"]) + np.mean(r1["sdr"]) + 0.0) / 3)
    assert (out_b["n_kept"], out_b["n_skipped"]) == (2, 1)
    json.dumps(out)
