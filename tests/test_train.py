"""The training loop (``avlib.train``) and its helpers (``avlib.utils``), on tiny CPU models.

Covers: the lr schedule and its per-step application, weight-decay groups, layer-wise lr decay,
the pretrained-branch ramp, gradient accumulation, bit-exact resume (shuffled loaders, dropout,
augmentation RNG, workers), atomic checkpoints, the non-finite loss stop, frozen parameters,
history.json, the evaluation cadence and a learning sanity check.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import replace

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from avlib import train as T
from avlib.data import make_loader
from avlib.config import TrainConfig, config_to_dict
from avlib.utils import resolve_device, seed_everything, world_size


# ----------------------------------------------------------------------------------------------
# Fixtures and tiny models
# ----------------------------------------------------------------------------------------------
class FakeViT(nn.Module):
    def __init__(self, depth: int, dim: int = 4):
        super().__init__()
        self.patch_embed = nn.Linear(dim, dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, 3, dim))
        self.blocks = nn.ModuleList(nn.Linear(dim, dim) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)


class FakeEncoder(nn.Module):
    """Parameter names like the DeepAVFusion encoder (``image.blocks.N``, ``fusion_blocks.N``, ...)."""

    def __init__(self, depth: int = 3, dim: int = 4):
        super().__init__()
        self.image, self.audio = FakeViT(depth, dim), FakeViT(depth, dim)
        self.fusion_tokens = nn.Parameter(torch.zeros(1, 2, dim))
        self.fusion_blocks = nn.ModuleList(nn.Linear(dim, dim) for _ in range(depth))
        self.fusion_norm = nn.LayerNorm(dim)

    def forward(self, x):
        h = self.image.patch_embed(x) + self.audio.patch_embed(x) + self.fusion_tokens.sum()
        for a, b, c in zip(self.image.blocks, self.audio.blocks, self.fusion_blocks):
            h = a(h) + b(h) + c(h)
        return self.fusion_norm(self.image.norm(h) + self.audio.norm(h)) + self.image.pos_embed.sum()


class FakeTask(nn.Module):
    def __init__(self, depth: int = 3, dim: int = 4):
        super().__init__()
        self.encoder = FakeEncoder(depth, dim)
        self.head = nn.Linear(dim, 1)

    def forward(self, x):
        return self.head(self.encoder(x)).squeeze(-1)


class NoisyRegression(Dataset):
    """y = x @ w; ``__getitem__`` adds noise from the global torch RNG (an 'augmentation')."""

    def __init__(self, n: int = 40, dim: int = 4, noise: float = 0.01):
        g = torch.Generator().manual_seed(123)
        self.x = torch.randn(n, dim, generator=g)
        self.y = self.x @ torch.tensor([1.0, -2.0, 3.0, 0.5])[:dim]
        self.noise = noise

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i] + self.noise * torch.randn(self.x.shape[1]), "y": self.y[i]}


def mlp(dropout: float = 0.2) -> nn.Module:
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 1))


def mse_loss(model, batch):
    pred = model(batch["x"]).reshape(-1)
    loss = ((pred - batch["y"]) ** 2).mean()
    return loss, {"mse": loss.detach(), "abs": (pred - batch["y"]).abs().mean().item()}


def tuple_mse(model, batch):
    x, y = batch
    loss = ((model(x).reshape(-1) - y) ** 2).mean()
    return loss, {"mse": loss}


def small_cfg(**kw) -> TrainConfig:
    base = dict(epochs=3, batch_size=4, lr=1e-2, warmup_epochs=1, weight_decay=0.05, log_every=3,
                eval_every=1, ckpt_every=1)
    return TrainConfig(**{**base, **kw})


def state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------------------------
# Schedule, lr scaling, parameter groups
# ----------------------------------------------------------------------------------------------
def test_schedule_warmup_peak_cosine_end_and_constant():
    s = T.LRSchedule(1.0, epochs=10, warmup_epochs=2, min_lr=0.1, schedule="cosine")
    assert s.lr(0) == 0.0                                    # warmup starts at 0 (MAE)
    assert s.lr(1) == pytest.approx(0.5)
    assert s.lr(2) == pytest.approx(1.0)                     # peak at the end of warmup
    assert s.lr(6) == pytest.approx(0.1 + 0.9 * 0.5)         # half-way through the cosine
    assert s.lr(10) == pytest.approx(0.1)                    # cosine ends at min_lr
    assert s.lr(12) == pytest.approx(0.1)
    c = T.LRSchedule(1.0, epochs=10, warmup_epochs=2, schedule="constant")
    assert c.lr(1) == pytest.approx(0.5) and c.lr(2) == c.lr(9.9) == 1.0
    assert T.LRSchedule(3.0, epochs=4).lr(0) == 3.0          # no warmup: full lr at the first step


def test_lr_scaling_rule():
    cfg = TrainConfig(batch_size=64, accum_steps=2, blr=1.5e-4, lr=None)
    assert world_size() == 1 and T.effective_batch(cfg) == 128
    assert T.effective_batch(cfg, 8) == 1024
    assert T.resolve_lr(cfg, 512) == pytest.approx(3e-4)     # the VGGSound pre-training lr [code §3.1]
    assert T.resolve_lr(TrainConfig(lr=1e-3), 4096) == 1e-3


def test_schedule_is_applied_per_optimizer_step(tmp_path):
    cfg = small_cfg(epochs=2, warmup_epochs=0.5, min_lr=1e-4, accum_steps=2)
    loader = make_loader(NoisyRegression(32), 4, seed=0)   # 8 batches -> 4 steps per epoch
    seen = []
    T.fit(mlp(), loader, cfg, loss_fn=mse_loss, run_dir=tmp_path, callbacks=[lambda i: seen.append((i.step, i.lr))])
    sched = T.LRSchedule.from_config(cfg, 1e-2)
    expected = [(k + 1, sched.lr(k * 2 / 8)) for k in range(8)]  # epoch = micro-batch / len(loader)
    assert [s for s, _ in seen] == [s for s, _ in expected]
    assert [lr for _, lr in seen] == pytest.approx([lr for _, lr in expected])


def test_no_weight_decay_groups():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)
            self.norm = nn.LayerNorm(3)
            self.prenorm_proj = nn.Parameter(torch.ones(3, 3))      # 2-D but named *norm*
            self.fusion_tokens = nn.Parameter(torch.ones(1, 2, 3))  # decayed, as in the official code
            self.scale = nn.Parameter(torch.ones(3, 3))

        def no_weight_decay(self):
            return {"scale"}

    m = M()
    groups = T.param_groups(m, TrainConfig(weight_decay=0.05))
    wd = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    named = dict(m.named_parameters())
    assert wd[id(named["fc.weight"])] == 0.05 and wd[id(named["fusion_tokens"])] == 0.05
    for n in ("fc.bias", "norm.weight", "norm.bias", "prenorm_proj", "scale"):
        assert wd[id(named[n])] == 0.0, n
    opt = T.build_optimizer(m, TrainConfig(weight_decay=0.05, lr=1e-3), 8)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(named)


def test_layer_id_mapping():
    L = 12
    cases = {"encoder.image.patch_embed.proj.weight": 0, "encoder.audio.patch_embed.proj.bias": 0,
             "encoder.image.pos_embed": 0, "encoder.fusion_tokens": 0,
             "encoder.image.blocks.0.attn.qkv.weight": 1, "encoder.audio.blocks.11.mlp.fc1.weight": 12,
             "encoder.fusion_blocks.3.attn.q.weight": 4, "encoder.image.norm.weight": 13,
             "encoder.fusion_norm.bias": 13, "head.weight": 13, "image_decoder_blocks.0.attn.qkv.weight": 13}
    assert {n: T.layer_id_for(n, L) for n in cases} == cases
    assert T.layer_id_for("image.blocks.2.x", L, prefix="") == 3        # a bare encoder


def test_layer_decay_scales():
    m = FakeTask(depth=3)
    cfg = TrainConfig(layer_decay=0.5, lr=1.0)
    opt = T.build_optimizer(m, cfg, 8)
    scale = {id(p): g["lr_scale"] for g in opt.param_groups for p in g["params"]}
    lr = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    named = dict(m.named_parameters())
    expect = {"encoder.image.patch_embed.weight": 0.5 ** 4, "encoder.image.pos_embed": 0.5 ** 4,
              "encoder.fusion_tokens": 0.5 ** 4, "encoder.image.blocks.0.weight": 0.5 ** 3,
              "encoder.audio.blocks.1.bias": 0.5 ** 2, "encoder.fusion_blocks.2.weight": 0.5 ** 1,
              "encoder.image.norm.weight": 1.0, "encoder.fusion_norm.weight": 1.0, "head.weight": 1.0}
    for n, s in expect.items():
        assert scale[id(named[n])] == pytest.approx(s), n
        assert lr[id(named[n])] == pytest.approx(s), n
    # a model's own layer_id (and num_layers) take precedence over the default mapping
    m.layer_id = lambda name: 0 if name.startswith("encoder.") else 1
    m.num_layers = 0
    opt = T.build_optimizer(m, cfg, 8)
    scale = {id(p): g["lr_scale"] for g in opt.param_groups for p in g["params"]}
    assert scale[id(named["encoder.image.blocks.0.weight"])] == 0.5 and scale[id(named["head.weight"])] == 1.0


def test_pretrained_ramp():
    cfg = TrainConfig(epochs=10, warmup_epochs=0, lr=1.0, pretrained_lr_ramp=True, pretrained_ramp_epochs=0.5,
                      schedule="constant")
    sched = T.LRSchedule.from_config(cfg, 1.0)
    assert [sched.ramp(e) for e in (0, 2.5, 5, 7)] == pytest.approx([0.0, 0.5, 1.0, 1.0])
    assert sched.ramp(1.25) == pytest.approx(0.5 * (1 - math.cos(math.pi / 4)))
    m = FakeTask()
    opt = T.build_optimizer(m, cfg, 8)
    sched.apply(opt, 2.5)
    names = {id(p): n for n, p in m.named_parameters()}
    for g in opt.param_groups:
        for p in g["params"]:
            pretrained = names[id(p)].startswith(("encoder.image.", "encoder.audio."))
            assert g["pretrained"] == pretrained
            assert g["lr"] == pytest.approx(0.5 if pretrained else 1.0), names[id(p)]
    off = T.LRSchedule.from_config(TrainConfig(epochs=10, lr=1.0), 1.0)
    assert off.ramp(0) == 1.0


def test_lars_step_matches_definition():
    w = nn.Parameter(torch.tensor([[3.0, 4.0]]))          # ||w|| = 5
    b = nn.Parameter(torch.tensor([1.0]))
    w.grad, b.grad = torch.tensor([[0.0, 1.0]]), torch.tensor([2.0])
    opt = T.LARS([{"params": [w], "weight_decay": 0.1}, {"params": [b], "weight_decay": 0.1}], lr=0.5)
    opt.step()
    u = torch.tensor([[0.3, 1.4]])                        # grad + wd * w
    expected_w = torch.tensor([[3.0, 4.0]]) - 0.5 * (0.001 * 5.0 / u.norm()) * u
    assert torch.allclose(w, expected_w) and torch.allclose(b, torch.tensor([0.0]))   # 1-D: plain SGD step
    w.grad, b.grad = torch.zeros(1, 2), torch.zeros(1)
    before = b.detach().clone()
    opt.step()                                            # momentum keeps moving (buffer * 0.9)
    assert torch.allclose(b, before - 0.5 * 0.9 * 2.0)


@pytest.mark.parametrize("name", ["adamw", "adam", "sgd", "lars"])
def test_every_optimizer_trains(name, tmp_path):
    cfg = small_cfg(optimizer=name, epochs=1, lr=1e-3 if name != "lars" else 1.0, warmup_epochs=0)
    h = T.fit(mlp(0.0), make_loader(NoisyRegression(16), 4), cfg, loss_fn=mse_loss, run_dir=tmp_path)
    assert h.meta["completed"] and all(math.isfinite(s["loss"]) for s in h.steps)


# ----------------------------------------------------------------------------------------------
# Accumulation, resume, checkpoints
# ----------------------------------------------------------------------------------------------
def test_grad_accumulation_matches_big_batch(tmp_path):
    torch.manual_seed(0)
    x, y = torch.randn(8, 4), torch.randn(8)
    ds = TensorDataset(x, y)
    results = []
    for bs, accum in ((8, 1), (4, 2), (2, 4)):
        torch.manual_seed(1)
        model = nn.Linear(4, 1)
        cfg = TrainConfig(epochs=1, batch_size=bs, accum_steps=accum, optimizer="sgd", momentum=0.0, lr=0.1,
                          weight_decay=0.0, schedule="constant", max_steps=1)
        T.fit(model, make_loader(ds, bs, shuffle=False), cfg, loss_fn=tuple_mse, run_dir=tmp_path / f"{bs}")
        results.append(state(model))
    for other in results[1:]:
        for k in results[0]:
            torch.testing.assert_close(other[k], results[0][k], rtol=0, atol=1e-6)


def _loader(kind: str, seed: int = 0):
    ds = NoisyRegression(40)
    if kind == "make_loader":
        return make_loader(ds, 4, shuffle=True, seed=seed)
    if kind == "plain_shuffle":                    # RandomSampler drawing its seed from the global RNG
        return DataLoader(ds, batch_size=4, shuffle=True)
    if kind == "workers":                          # augmentation RNG inside 2 worker processes
        return make_loader(ds, 4, shuffle=True, seed=seed, num_workers=2)
    raise ValueError(kind)


def _run(run_dir, kind, cfg, **kw):
    torch.manual_seed(0)                           # same init for every run; loader built after
    model = mlp(0.3)
    loader = _loader(kind)
    return model, T.fit(model, loader, cfg, loss_fn=mse_loss, eval_fn=lambda m: {"one": 1.0},
                        run_dir=run_dir, **kw)


def _stop_at(step):
    """A callback that stops training (with a resumable checkpoint) after optimizer step ``step``."""
    def callback(info):
        if info.step >= step:
            raise T.StopTraining(f"stop at step {step}")
    return callback


def _ckpt(run_dir):
    return torch.load(run_dir / T.CHECKPOINT_NAME, weights_only=True)


def _strip_timing(steps):
    return [{k: v for k, v in s.items() if k != "samples_per_s"} for s in steps]


@pytest.mark.parametrize("kind,stop_at", [("make_loader", 7), ("plain_shuffle", 7), ("plain_shuffle", 5),
                                          ("workers", 7)])
def test_resume_is_bit_identical(tmp_path, kind, stop_at):
    # 40 samples / batch 4 = 10 micro-batches, accum 2 -> 5 steps per epoch; 3 epochs = 15 steps
    cfg = small_cfg(accum_steps=2, clip_grad=1.0)
    ref_model, ref_hist = _run(tmp_path / "ref", kind, cfg)
    _, stopped = _run(tmp_path / "b", kind, cfg, callbacks=[_stop_at(stop_at)])
    assert stopped.meta["stopped"] and not stopped.meta["completed"]
    torch.manual_seed(999)                         # the resumed process starts from a different RNG state
    model, hist = _run(tmp_path / "b", kind, cfg)
    assert hist.meta["resumed_from_step"] == [stop_at] and hist.meta["completed"]
    for k, v in state(ref_model).items():
        assert torch.equal(state(model)[k], v), k
    assert _strip_timing(hist.steps) == _strip_timing(ref_hist.steps)
    assert hist.evals == ref_hist.evals


def test_resume_after_keyboard_interrupt_and_max_steps(tmp_path):
    cfg = small_cfg(accum_steps=1, epochs=2)       # 10 steps per epoch
    ref, _ = _run(tmp_path / "ref", "plain_shuffle", cfg)

    def interrupt(info):
        if info.step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "b", "plain_shuffle", cfg, callbacks=[interrupt])
    assert _ckpt(tmp_path / "b")["step"] == 4
    _run(tmp_path / "b", "plain_shuffle", replace(cfg, max_steps=13))  # capped run
    assert _ckpt(tmp_path / "b")["step"] == 13
    model, hist = _run(tmp_path / "b", "plain_shuffle", cfg)                  # max_steps lifted: continue
    assert hist.meta["resumed_from_step"] == [4, 13]
    for k, v in state(ref).items():
        assert torch.equal(state(model)[k], v), k


def test_an_interrupt_between_steps_keeps_the_batchnorm_statistics_of_the_last_step(tmp_path):
    # Ctrl-C inside a forward pass: BatchNorm has already updated its running statistics with a batch whose
    # step never happened; the checkpoint must hold the statistics of the last step, or resuming counts it twice
    cfg = small_cfg(accum_steps=2, epochs=2)

    def bn_model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 1))

    ref = bn_model()
    T.fit(ref, _loader("make_loader"), cfg, loss_fn=mse_loss, run_dir=tmp_path / "ref")
    calls = []

    def interrupted(model, batch):
        calls.append(1)
        out = mse_loss(model, batch)               # the forward ran (statistics moved), then the user hits Ctrl-C
        if len(calls) == 7:                        # the first micro-batch of step 4
            raise KeyboardInterrupt
        return out

    model = bn_model()
    with pytest.raises(KeyboardInterrupt):
        T.fit(model, _loader("make_loader"), cfg, loss_fn=interrupted, run_dir=tmp_path / "b")
    assert _ckpt(tmp_path / "b")["step"] == 3
    model = bn_model()
    T.fit(model, _loader("make_loader"), cfg, loss_fn=mse_loss, run_dir=tmp_path / "b")
    for k, v in state(ref).items():                # weights and running statistics alike
        assert torch.equal(state(model)[k], v), k


def test_resume_refuses_a_different_config(tmp_path):
    cfg = small_cfg(max_steps=2)
    _run(tmp_path, "make_loader", cfg)
    _run(tmp_path, "make_loader", small_cfg(max_steps=3, log_every=1, eval_every=2))   # neutral fields: fine
    with pytest.raises(T.ResumeError, match=r"lr: checkpoint 0.01 != now 0.02"):
        _run(tmp_path, "make_loader", small_cfg(lr=2e-2, max_steps=4))
    _run(tmp_path, "make_loader", small_cfg(lr=2e-2, max_steps=4), resume=False)      # explicit restart


def test_resume_refuses_a_different_fingerprint(tmp_path):
    # same TrainConfig, different model / init: a finished run must not be handed back as if it were this one
    cfg = small_cfg(epochs=1)
    fp = {"model": {"depth": 2}, "checkpoint": "abc"}
    _run(tmp_path, "make_loader", cfg, fingerprint=fp)
    calls = []
    _run(tmp_path, "make_loader", cfg, fingerprint=fp, callbacks=[calls.append])    # same: re-used
    assert calls == []
    with pytest.raises(T.ResumeError, match=r"model.depth: checkpoint 2 != now 3"):
        _run(tmp_path, "make_loader", cfg, fingerprint={**fp, "model": {"depth": 3}})
    with pytest.warns(UserWarning, match=r"(?s)checkpoint: checkpoint 'abc' != now 'xyz'.*Starting over"):
        _run(tmp_path, "make_loader", cfg, fingerprint={**fp, "checkpoint": "xyz"}, on_mismatch="restart",
             callbacks=[calls.append])
    assert len(calls) == 10 and _ckpt(tmp_path)["fingerprint"]["checkpoint"] == "xyz"


def test_finished_run_returns_without_training(tmp_path):
    cfg = small_cfg(epochs=1)
    _, first = _run(tmp_path, "make_loader", cfg)
    calls = []
    model, again = _run(tmp_path, "make_loader", cfg, callbacks=[calls.append])
    assert calls == [] and again.steps == first.steps and again.evals == first.evals
    torch.manual_seed(0)
    ckpt = torch.load(tmp_path / T.CHECKPOINT_NAME, weights_only=True)
    for k, v in ckpt["model"].items():
        assert torch.equal(model.state_dict()[k], v)


def test_checkpoint_contents(tmp_path):
    cfg = small_cfg(epochs=1)
    _run(tmp_path, "make_loader", cfg)
    ckpt = torch.load(tmp_path / T.CHECKPOINT_NAME, weights_only=True)   # loadable without pickle code
    assert {"model", "optimizer", "scaler", "epoch", "batch", "step", "rng", "train_config", "history"} <= set(ckpt)
    assert ckpt["train_config"] == config_to_dict(cfg) and ckpt["step"] == 10 and ckpt["epoch"] == 1
    assert {"python", "numpy", "torch"} <= set(ckpt["rng"][0])
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_atomic_checkpoint_save(tmp_path, monkeypatch):
    from avlib.checkpoint import load_checkpoint as load, save_checkpoint as save
    path = tmp_path / "ck.pt"
    save(path, {"w": torch.arange(3)})

    def broken_save(obj, f, *a, **kw):
        f.write(b"partial garbage")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save(path, {"w": torch.zeros(3)})
    monkeypatch.undo()
    assert torch.equal(load(path)["w"], torch.arange(3))   # the old checkpoint is intact
    assert os.listdir(tmp_path) == ["ck.pt"]                # and no partial file is left behind


# ----------------------------------------------------------------------------------------------
# Loop behaviour
# ----------------------------------------------------------------------------------------------
def test_non_finite_loss_names_step_and_term(tmp_path):
    calls = {"n": 0}

    def loss_fn(model, batch):
        loss, logs = mse_loss(model, batch)
        calls["n"] += 1
        bad = torch.tensor(float("nan")) if calls["n"] == 3 else torch.tensor(0.0)
        return loss + bad, {**logs, "loss_audio": bad}

    model = mlp()
    with pytest.raises(T.NonFiniteLossError, match=r"step 3 .*loss_audio=nan") as err:
        T.fit(model, make_loader(NoisyRegression(), 4), small_cfg(), loss_fn=loss_fn, run_dir=tmp_path)
    assert err.value.step == 3 and set(err.value.terms) == {"loss", "loss_audio"}
    assert all(torch.isfinite(p).all() for p in model.parameters())   # raised before the update


def test_frozen_params_untouched(tmp_path):
    torch.manual_seed(0)
    model = FakeTask()
    model.head.bias.requires_grad_(False)
    before = state(model)
    cfg = small_cfg(epochs=1, freeze_encoder=True)
    ds = TensorDataset(torch.randn(16, 4), torch.randn(16))
    T.fit(model, make_loader(ds, 4), cfg, loss_fn=tuple_mse, run_dir=tmp_path)
    after = state(model)
    assert all(torch.equal(after[k], before[k]) for k in before if k.startswith("encoder.") or k == "head.bias")
    assert not torch.equal(after["head.weight"], before["head.weight"])
    opt = T.build_optimizer(model, cfg, 4)
    assert [p for g in opt.param_groups for p in g["params"]] == [model.head.weight]


def test_history_json_and_eval_cadence(tmp_path):
    evals = []

    def eval_fn(m):
        assert not m.training
        evals.append(1)
        torch.rand(3)                                   # consumes RNG: must not change training
        return {"metric": float(len(evals))}

    cfg = small_cfg(epochs=5, eval_every=2, log_every=4)   # 10 steps per epoch
    torch.manual_seed(0)
    m1 = mlp()
    h = T.fit(m1, make_loader(NoisyRegression(), 4), cfg, loss_fn=mse_loss, eval_fn=eval_fn, run_dir=tmp_path)
    assert [e["epoch"] for e in h.evals] == [2, 4, 5] and [e["step"] for e in h.evals] == [20, 40, 50]
    assert h.last_eval["metric"] == 3.0
    on_disk = json.loads((tmp_path / T.HISTORY_NAME).read_text())
    assert on_disk == json.loads(h.to_json())
    assert [s["step"] for s in on_disk["steps"]] == list(range(4, 51, 4)) + [50]
    assert {"step", "epoch", "lr", "loss", "mse", "abs", "samples_per_s"} <= set(on_disk["steps"][0])
    # eval_every=0: only at the end; no eval_fn: same weights as with evaluation
    evals.clear()
    torch.manual_seed(0)
    m2 = mlp()
    h0 = T.fit(m2, make_loader(NoisyRegression(), 4), small_cfg(epochs=5, eval_every=0), loss_fn=mse_loss,
               eval_fn=eval_fn, run_dir=tmp_path / "b")
    assert len(evals) == 1 and h0.evals[0]["step"] == 50
    torch.manual_seed(0)
    m3 = mlp()
    T.fit(m3, make_loader(NoisyRegression(), 4), cfg, loss_fn=mse_loss, run_dir=tmp_path / "c")
    assert all(torch.equal(a, b) for a, b in zip(m1.parameters(), m3.parameters()))


def test_learns_a_simple_task(tmp_path, capsys):
    torch.manual_seed(0)
    cfg = small_cfg(epochs=15, lr=3e-2, warmup_epochs=1, weight_decay=0.0, log_every=10, batch_size=8)
    h = T.fit(mlp(0.0), make_loader(NoisyRegression(64), 8), cfg, loss_fn=mse_loss, run_dir=tmp_path,
              desc="sanity")
    assert h.steps[-1]["loss"] < 0.05 * h.steps[0]["loss"]
    out = capsys.readouterr().out
    assert "[sanity] step 10/120" in out and "samples/s" in out and "lr " in out


def test_amp_rules_on_cpu(tmp_path):
    with pytest.raises(ValueError, match="fp16"):
        T.fit(mlp(), make_loader(NoisyRegression(), 4), small_cfg(amp="fp16"), loss_fn=mse_loss,
              run_dir=tmp_path)
    h = T.fit(mlp(), make_loader(NoisyRegression(16), 4), small_cfg(amp="bf16", epochs=1), loss_fn=mse_loss,
              run_dir=tmp_path / "bf16")
    assert h.meta["completed"] and math.isfinite(h.steps[-1]["loss"])


def test_utils_seed_and_device():
    seed_everything(3)
    a = torch.rand(2)
    seed_everything(3)
    assert torch.equal(a, torch.rand(2)) and torch.are_deterministic_algorithms_enabled()
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    torch.use_deterministic_algorithms(False)
