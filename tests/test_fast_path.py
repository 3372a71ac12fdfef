"""The small profiles' fast path (config switches, README "Speed"): every switch agrees with its reference
path, bit for bit where the arithmetic is the same and within a stated tolerance where it is not, and
training stays deterministic and resumable with every switch on. No timings here: speed lives in
``python -m avlib.bench --sections small``."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from avlib import bench, train as T
from avlib.audio import MaskToWaveform, apply_mel_mask
from avlib.config import TASKS, make_config
from avlib.data import AlternateMixtureDataset, MixtureDataset, SceneDataset, make_loaders
from avlib.metrics import SeparationEvaluator
from avlib.model import build_avmae
from avlib.objectives import OBJECTIVES
from avlib.timing import torch_threads
from avlib.utils import attention_kernel, autocast, resolve_amp, resolve_attention_kernel
from test_train import _stop_at

# the fast switches of the small profiles (avlib.config._small) and their reference values
FAST_TRAIN = dict(amp="auto", attention_kernel="auto", fused_optimizer=True, threads=1)
REFERENCE_TRAIN = dict(amp="none", attention_kernel="default", fused_optimizer=False, threads=None)


@pytest.fixture(autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


def _cfg(profile="smoke", dataset="synthetic", **kw):
    return make_config(profile, **{"data.dataset": dataset, **kw})


def _equal_items(a, b):
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------
def test_small_profiles_turn_the_fast_path_on_and_the_paper_profile_keeps_the_reference():
    for profile in ("smoke", "cpu"):
        cfg = make_config(profile)
        assert cfg.data.batch_front_end and cfg.separation.eval_workers == 0
        for stage in [cfg.pretrain] + [cfg.task(t).train for t in TASKS]:
            assert {k: getattr(stage, k) for k in FAST_TRAIN} == FAST_TRAIN
    paper = make_config("paper")
    assert not paper.data.batch_front_end and paper.separation.eval_workers is None
    for stage in [paper.pretrain] + [paper.task(t).train for t in TASKS]:
        assert stage.attention_kernel == "default" and not stage.fused_optimizer and stage.threads is None
    # the benchmark's reference path switches every one of them off
    ref = bench.small_path_config("cpu", "reference")
    assert not ref.data.batch_front_end and ref.data.num_workers == 0
    for stage in [ref.pretrain] + [ref.task(t).train for t in TASKS]:
        assert {k: getattr(stage, k) for k in REFERENCE_TRAIN} == REFERENCE_TRAIN


def test_auto_precision_and_attention_kernel_resolve_by_device(monkeypatch):
    from avlib import utils
    for native, amp, kernel in ((True, "bf16", "math"), (False, "none", "default")):
        monkeypatch.setattr(utils, "native_bf16", lambda device, native=native: native)
        assert resolve_amp("auto", "cpu") == amp
        assert resolve_attention_kernel("auto", "auto", "cpu") == kernel
    assert resolve_amp("none", "cpu") == "none" and resolve_amp("bf16", "cpu") == "bf16"
    assert resolve_attention_kernel("auto", "none", "cpu") == "default"
    assert resolve_attention_kernel("math", "none", "cpu") == "math"


# ----------------------------------------------------------------------------------------------
# Data: the audio front end per batch is bit-identical
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dataset", ["synthetic", pytest.param("avdigits", marks=pytest.mark.data)])
@pytest.mark.parametrize("kind", ["scenes", "mixtures", "alternates"])
def test_batch_front_end_is_bit_identical(dataset, kind, request):
    root = request.getfixturevalue("data_root") if dataset == "avdigits" else None
    for split in ("train", "test"):
        ref_cfg, fast_cfg = (_cfg("cpu", dataset, **{"data.batch_front_end": on, "data.p_two_sources": 0.3})
                             for on in (False, True))
        make = {"scenes": lambda c: SceneDataset(c, split, pretraining=True, root=root, size=20),
                "mixtures": lambda c: MixtureDataset(c, split, root=root, size=20),
                "alternates": lambda c: AlternateMixtureDataset(c, split, root=root, size=20)}[kind]
        ref, fast = make(ref_cfg), make(fast_cfg)
        idx = [3, 0, 17, 5, 11, 2]
        batched = fast.__getitems__(idx)
        for i, item in zip(idx, batched):
            assert _equal_items(item, ref[i]) and _equal_items(item, fast[i])
        assert ref.__getitems__(idx[:2])[1]["index"] == 0                  # the reference fetches item by item
        with pytest.raises(IndexError):
            fast.__getitems__([0, 20])


def test_batched_loaders_give_the_reference_batches_for_any_worker_count():
    batches = {}
    for on in (False, True):
        for workers in (0, 2):
            cfg = _cfg(**{"data.batch_front_end": on, "data.p_two_sources": 0.3})
            train, test = make_loaders(cfg, batch_size=4, num_workers=workers, train_size=16, test_size=6)
            batches[on, workers] = list(train) + list(test)
    ref = batches[False, 0]
    for key, got in batches.items():
        assert len(got) == len(ref) and all(_equal_items(a, b) for a, b in zip(got, ref)), key


# ----------------------------------------------------------------------------------------------
# The training step: fused optimizers, the math attention kernel, bf16
# ----------------------------------------------------------------------------------------------
def _avmae_grads(cfg, amp="none", kernel="default"):
    torch.manual_seed(0)
    model = build_avmae(cfg.model)
    g = torch.Generator().manual_seed(1)
    image = torch.randn(4, 3, *cfg.model.image_size, generator=g)
    audio = torch.randn(4, 1, *cfg.model.audio_size, generator=g)
    with autocast(amp, "cpu"), attention_kernel(kernel):
        out = model(image, audio, generator=torch.Generator().manual_seed(2))
    out.loss.backward()
    return out.loss.detach().float(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def test_math_attention_kernel_matches_the_default_within_float_rounding():
    cfg = make_config("smoke")
    loss, grads = _avmae_grads(cfg)
    loss_m, grads_m = _avmae_grads(cfg, kernel="math")
    torch.testing.assert_close(loss_m, loss, rtol=1e-5, atol=1e-6)
    for n, g in grads.items():
        torch.testing.assert_close(grads_m[n], g, rtol=1e-4, atol=1e-5, msg=n)


def test_bf16_fast_step_matches_fp32_within_bf16_rounding():
    # bf16 keeps 8 bits of mantissa (relative rounding 2^-8 = 0.4 %); a loss over thousands of products
    # stays within ~1 % of fp32 and the gradients point the same way (cosine > 0.99)
    cfg = make_config("smoke")
    loss, grads = _avmae_grads(cfg)
    loss_b, grads_b = _avmae_grads(cfg, amp="bf16", kernel="math")
    assert abs(loss_b.item() - loss.item()) <= 0.01 * abs(loss.item())
    flat, flat_b = (torch.cat([g.flatten().float() for g in d.values()]) for d in (grads, grads_b))
    assert torch.nn.functional.cosine_similarity(flat, flat_b, dim=0) > 0.99


@pytest.mark.parametrize("optimizer", ["adamw", "adam", "sgd"])
def test_fused_optimizer_matches_foreach_within_float_rounding(optimizer):
    cfg = make_config("smoke")
    models = {}
    for fused in (False, True):
        torch.manual_seed(0)
        model = build_avmae(cfg.model)
        tcfg = replace(cfg.pretrain, optimizer=optimizer, fused_optimizer=fused, lr=1e-3)
        opt = T.build_optimizer(model, tcfg, 8)
        assert opt.defaults["fused"] is (True if fused else None) and opt.defaults["foreach"] is (None if fused else True)
        g = torch.Generator().manual_seed(1)
        for _ in range(5):
            for p in model.parameters():
                if p.requires_grad:
                    p.grad = torch.randn(p.shape, generator=g) * 1e-2
            opt.step()
        models[fused] = model
    for (n, a), b in zip(models[False].named_parameters(), models[True].parameters()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=n)


# ----------------------------------------------------------------------------------------------
# Determinism and resume with every fast switch on
# ----------------------------------------------------------------------------------------------
def _pretrain(run_dir, cfg, workers=0, **kw):
    obj = OBJECTIVES["deepavfusion"]
    torch.manual_seed(0)
    model = obj.build(cfg)
    loader, _ = make_loaders(cfg, num_workers=workers, train_size=32, test_size=4)
    hist = T.fit(model, loader, cfg.pretrain, loss_fn=obj.loss, run_dir=run_dir, device="cpu", **kw)
    return model, hist


def test_fast_path_training_is_deterministic_for_any_worker_count_and_resumes_bit_identically(tmp_path):
    cfg = _cfg(**{"pretrain.epochs": 2, "pretrain.amp": "bf16", "pretrain.attention_kernel": "math"})
    assert cfg.pretrain.fused_optimizer and cfg.pretrain.threads == 1 and cfg.data.batch_front_end
    with torch_threads(2):
        ref, hist = _pretrain(tmp_path / "ref", cfg)
        assert torch.get_num_threads() == 2                          # fit restores the caller's threads
    assert hist.meta["amp"] == "bf16" and hist.meta["attention_kernel"] == "math" and hist.meta["threads"] == 1
    same, _ = _pretrain(tmp_path / "same", cfg, workers=2)           # same seed, other worker count
    _, stopped = _pretrain(tmp_path / "b", cfg, callbacks=[_stop_at(3)])   # 4 steps per epoch: stop mid-epoch
    assert stopped.meta["stopped"]
    torch.manual_seed(999)
    resumed, rhist = _pretrain(tmp_path / "b", cfg)
    assert rhist.meta["resumed_from_step"] == [3] and rhist.meta["completed"]
    for (k, v), w, r in zip(ref.state_dict().items(), same.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(w, v) and torch.equal(r, v), k


# ----------------------------------------------------------------------------------------------
# Separation: the inverse path and the scoring
# ----------------------------------------------------------------------------------------------
def test_apply_mel_mask_reuses_one_module_with_the_same_output():
    for profile in ("cpu", "paper"):
        d = make_config(profile).data
        g = torch.Generator().manual_seed(0)
        wave, mask = torch.randn(3, d.clip_samples, generator=g), torch.rand(3, 1, d.n_mels, d.num_frames, generator=g)
        assert torch.equal(apply_mel_mask(wave, mask, d), MaskToWaveform(d)(wave, mask))
        assert torch.equal(apply_mel_mask(wave, mask, d, logits=True), MaskToWaveform(d)(wave, mask, logits=True))


def test_separation_scoring_paths_give_the_reference_scores():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(3, 2, 2000)).astype(np.float32)
    est = ref + 0.5 * rng.normal(size=ref.shape).astype(np.float32)
    ref[1, 0] = 0.0                                                   # a skipped sample
    out = {}
    for workers in (None, 0, 2):
        ev = SeparationEvaluator("deepavfusion", workers=workers)
        ev.update(ref, est)
        ev.update(ref[:1], est[:1])
        out[workers] = (ev.compute(), ev.per_sample)
    assert out[0] == out[2]                                           # one BLAS thread in or out of process: bit for bit
    (res, per), (res0, per0) = out[None], out[0]
    assert res["n_skipped"] == res0["n_skipped"] == 1 and [p is None for p in per] == [p is None for p in per0]
    for a, b in zip(per, per0):                                       # numpy's BLAS threads: LAPACK rounding only
        for k in (a or {}):
            np.testing.assert_allclose(b[k], a[k], rtol=0, atol=1e-8)
    with pytest.raises(ValueError, match="workers"):
        SeparationEvaluator(workers=-1)
