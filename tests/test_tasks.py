"""Task wiring (avlib.tasks) at the smoke profile on synthetic scenes: no files needed."""
from __future__ import annotations

import pytest
import torch

from avlib.config import make_config
from avlib.tasks import feature_subsets, pretrain, run_task


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
