"""Task wiring (avlib.tasks) at the smoke profile on synthetic scenes: no files needed."""
from __future__ import annotations

import pytest
import torch

from avlib.config import make_config
from avlib.tasks import compare_inits, feature_subsets, pretrain, run_task


@pytest.fixture(scope="module")
def cfg():
    return make_config("smoke", **{"data.dataset": "synthetic"})


@pytest.fixture(scope="module")
def ckpt(cfg, tmp_path_factory):
    return pretrain(cfg, tmp_path_factory.mktemp("pre"), device="cpu").checkpoint


def test_cached_linear_probe_trains_the_classifier_heads(cfg, ckpt, tmp_path):
    assert cfg.linprobe.cache_features and cfg.linprobe.train.freeze_encoder
    res = run_task("linprobe", cfg, tmp_path, checkpoint=ckpt, device="cpu")
    assert 0.0 <= res.metrics["top1"] <= 100.0
    steps = res.history.meta["total_steps"]
    assert steps == cfg.linprobe.train.epochs * -(-cfg.data.train_size // cfg.linprobe.train.batch_size)
    # the returned classifier carries the trained head; its encoder is the checkpoint's, untouched
    ref = run_task("linprobe", cfg, tmp_path / "again", checkpoint=ckpt, device="cpu")
    for (k, v), (k2, v2) in zip(res.model.state_dict().items(), ref.model.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k                      # deterministic
    enc = torch.load(ckpt, weights_only=True)["state_dict"]
    for k, v in res.model.encoder.state_dict().items():
        assert torch.equal(v, enc[f"encoder.{k}"]), k


def test_a_changed_initialization_is_not_served_from_an_old_run(cfg, ckpt, tmp_path):
    pre = run_task("finetune", cfg, tmp_path, checkpoint=ckpt, device="cpu")
    with pytest.warns(UserWarning, match="init: checkpoint 'pretrained' != now 'scratch'"):
        scratch = run_task("finetune", cfg, tmp_path, init="scratch", device="cpu")     # same run_dir
    assert any(not torch.equal(a, b) for a, b in zip(pre.model.state_dict().values(),
                                                    scratch.model.state_dict().values()))


def test_cache_features_needs_a_frozen_encoder(cfg, ckpt, tmp_path):
    bad = make_config("smoke", **{"data.dataset": "synthetic", "linprobe.train.freeze_encoder": False})
    with pytest.raises(ValueError, match="frozen encoder"):
        run_task("linprobe", bad, tmp_path, checkpoint=ckpt, device="cpu")


def test_feature_subsets_every_nonempty_subset(cfg, ckpt, tmp_path):
    rows = feature_subsets(cfg, tmp_path, checkpoint=ckpt, device="cpu")
    assert [r["features"] for r in rows] == ["audio", "visual", "fusion", "audio+visual", "audio+fusion",
                                             "visual+fusion", "audio+visual+fusion"]
    assert all(0.0 <= r["top1"] <= 100.0 for r in rows)


# ---------------------------------------------------------------------------------------------- token probe
class _PixelEncoder(torch.nn.Module):
    """A stand-in encoder whose tokens are the raw patches: a cell's pixels show its object, so a
    linear read-out of correctly pooled cells must find the class; ``flip`` mirrors the token grid."""

    def __init__(self, cfg, flip: bool = False):
        super().__init__()
        self.p, self.flip = cfg.model.patch_size, flip
        self.image_grid = cfg.model.image_grid

    def forward(self, image, audio):
        from types import SimpleNamespace
        p = self.p
        v = image.unfold(2, p, p).unfold(3, p, p)                          # (B, C, gh, gw, p, p)
        if self.flip:
            v = v.flip(3)
        v = v.permute(0, 2, 3, 1, 4, 5).flatten(3).flatten(1, 2)           # (B, gh * gw, C * p * p) row-major
        return SimpleNamespace(image=v, audio=audio.flatten(2))           # audio: (B, 1, F * T)


def test_linear_probe_accuracy_finds_linear_labels_and_not_random_ones():
    from avlib.probes import linear_probe_accuracy
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (800,), generator=g)
    x = torch.randn(800, 16, generator=g) + 4.0 * torch.nn.functional.one_hot(y, 16)
    assert linear_probe_accuracy(x[:600], y[:600], x[600:], y[600:]) > 95.0
    shuffled = y[torch.randperm(800, generator=g)]
    assert linear_probe_accuracy(x[:600], shuffled[:600], x[600:], shuffled[600:]) < 45.0   # chance 25


def test_token_probe_reads_each_cell_in_the_order_of_its_class(monkeypatch):
    import avlib.tasks as tasks
    cfg = make_config("smoke", **{"data.dataset": "synthetic", "model.image_size": (64, 64)})   # 4x4 tokens, 2x2 cells
    monkeypatch.setattr(tasks, "_encoder", lambda cfg, init, checkpoint: _PixelEncoder(cfg))
    res = tasks.token_probe(cfg, init="scratch", train_size=200, test_size=100, device="cpu")
    cells = cfg.data.grid ** 2
    assert res["n_train_visual_cell"] == 200 * cells and res["n_test_visual_cell"] == 100 * cells
    assert res["n_train_audio"] == 200
    assert res["visual_cell"] > 80.0 and res["audio"] > 80.0, res           # raw pixels / mels show the class
    # the same pixels pooled into the wrong cells: the read-out falls towards chance
    monkeypatch.setattr(tasks, "_encoder", lambda cfg, init, checkpoint: _PixelEncoder(cfg, flip=True))
    flipped = tasks.token_probe(cfg, init="scratch", train_size=200, test_size=100, device="cpu")
    assert flipped["visual_cell"] < res["visual_cell"] - 30.0, (res, flipped)


# ---------------------------------------------------------------------------------------------- fingerprints
def _weights(path):
    return torch.load(path, weights_only=True)["model"]


def test_a_performance_setting_reuses_a_finished_pretraining(cfg, tmp_path):
    small = make_config("smoke", **{"data.dataset": "synthetic", "pretrain.max_steps": 2})
    first = pretrain(small, tmp_path, device="cpu")
    before = _weights(tmp_path / "checkpoint_last.pt")
    again = pretrain(make_config("smoke", **{"data.dataset": "synthetic", "pretrain.max_steps": 2,
                                             "data.num_workers": 1}), tmp_path, device="cpu")
    assert again.history.meta.get("resumed_from_step") == [2] and again.history.steps == first.history.steps
    for k, v in _weights(tmp_path / "checkpoint_last.pt").items():
        assert torch.equal(v, before[k]), k                                  # not retrained


def test_an_evaluation_setting_re_evaluates_without_retraining(tmp_path):
    base = {"data.dataset": "synthetic", "pretrain.max_steps": 2}
    first = pretrain(make_config("smoke", **base), tmp_path, device="cpu")
    before = _weights(tmp_path / "checkpoint_last.pt")
    again = pretrain(make_config("smoke", **base, **{"data.test_size": 8}), tmp_path, device="cpu")
    assert len(again.history.evals) == len(first.history.evals) + 1          # one more evaluation
    assert again.history.steps == first.history.steps                        # no more training
    for k, v in _weights(tmp_path / "checkpoint_last.pt").items():
        assert torch.equal(v, before[k]), k
    with pytest.warns(UserWarning, match="data.train_size: checkpoint 32 != now 24"):   # a result-relevant field
        pretrain(make_config("smoke", **base, **{"data.train_size": 24}), tmp_path, device="cpu")


def test_a_checkpoint_of_another_architecture_is_refused(cfg, tmp_path):
    other = make_config("smoke", **{"data.dataset": "synthetic", "pretrain.max_steps": 1, "model.depth": 3,
                                    "model.embed_dim": 48, "model.fusion_arch": "dense"})
    ckpt = pretrain(other, tmp_path / "pre", device="cpu").checkpoint
    with pytest.raises(ValueError, match=r"(?s)another encoder.*embed_dim: checkpoint 48 != config 32.*"
                                         r"depth: checkpoint 3 != config 2.*fusion_arch: checkpoint 'dense'"):
        run_task("finetune", cfg, tmp_path / "ft", checkpoint=ckpt, device="cpu")


# ---------------------------------------------------------------------------------------------- warm starts
def test_warm_start_takes_the_modality_vits_and_keeps_the_fresh_fusion_stream(tmp_path):
    from avlib.model import build_encoder
    from avlib.tasks import load_branches
    base = {"data.dataset": "synthetic", "pretrain.max_steps": 2}
    unimodal = make_config("smoke", **base, **{"model.fusion_arch": "none"})        # two independent MAEs
    stage1 = pretrain(unimodal, tmp_path / "unimodal", device="cpu")
    av = make_config("smoke", **base, **{"pretrain.pretrained_lr_ramp": True})
    torch.manual_seed(av.seed)
    fresh = build_encoder(av.model).state_dict()
    torch.manual_seed(av.seed)
    encoder = build_encoder(av.model)
    loaded = load_branches(encoder, stage1.checkpoint)
    assert loaded and all(k.startswith(("image.", "audio.")) for k in loaded)
    trained = {k.removeprefix("encoder."): v for k, v in torch.load(stage1.checkpoint, weights_only=True)["state_dict"].items()}
    for k, v in encoder.state_dict().items():
        want = trained[k] if k in loaded else fresh[k]                  # fusion blocks / tokens: as initialized
        assert torch.equal(v, want), k
    assert any(k.startswith("fusion_blocks.") for k in fresh)
    # the AV stage starts from it (with the lr ramp), and so does a downstream warm-start run
    stage2 = pretrain(av, tmp_path / "av", warm_start=stage1.checkpoint, device="cpu")
    assert stage2.history.meta["total_steps"] == 2
    runs = compare_inits("linprobe", av, tmp_path / "probe", {"scratch": ("scratch", None),
                                                             "unimodal": ("warm_start", stage1.checkpoint),
                                                             "av": ("pretrained", stage2.checkpoint)}, device="cpu")
    assert list(runs) == ["scratch", "unimodal", "av"] and runs["unimodal"].init == "unimodal"
    for k, v in runs["unimodal"].model.encoder.state_dict().items():
        assert torch.equal(v, encoder.state_dict()[k]), k                # linprobe: the encoder stays frozen
    with pytest.raises(ValueError, match="cannot warm-start"):
        load_branches(build_encoder(make_config("smoke", **{"model.embed_dim": 48}).model), stage1.checkpoint)


def test_chance_top1_is_one_over_the_classes():
    from avlib.tasks import chance_top1
    cfg = make_config("smoke")                                    # AV-Digits: 10 digits, answered without data
    assert chance_top1(cfg) == chance_top1(cfg, "linprobe") == 10.0
