"""The two registries: downstream protocols (``avlib.protocols``) and pre-training objectives
(``avlib.objectives``). Adding a method must touch one module: a toy objective registered here in a few
lines pre-trains end to end at ``smoke`` and hands its encoder to a downstream protocol."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from avlib.config import TASKS, ConfigError, make_config
from avlib.data import make_dataset
from avlib.model import build_encoder
from avlib.objectives import OBJECTIVES, Objective, register_objective
from avlib.protocols import PROTOCOLS, Protocol, register_protocol
from avlib.tasks import build_task_model, pretrain, run_task


# ---------------------------------------------------------------------------------------------- protocols
def test_every_task_has_one_protocol_and_a_config_section():
    assert tuple(PROTOCOLS) == TASKS
    cfg = make_config("smoke")
    for name, protocol in PROTOCOLS.items():
        assert protocol.name == name and protocol.config(cfg) is cfg.task(name)
        assert protocol.main_metric
    with pytest.raises(ConfigError, match="unknown task 'localisation'.*'localization'"):
        cfg.task("localisation")
    with pytest.raises(KeyError, match="unknown protocol 'dance'; registered: linprobe, finetune"):
        PROTOCOLS["dance"]


def test_a_protocol_needs_a_config_section_and_a_unique_name():
    class Counting(Protocol):
        name = "counting"
    with pytest.raises(ValueError, match="no config section"):
        register_protocol(Counting())

    class Again(Protocol):
        name = "localization"
    with pytest.raises(ValueError, match="already registered"):
        register_protocol(Again())


def test_separation_predictions_are_the_evaluated_separation():
    # one inference path: predict() returns exactly the waveforms evaluate() scores
    cfg = make_config("smoke", **{"data.dataset": "synthetic"})
    sep = PROTOCOLS["separation"]
    torch.manual_seed(0)
    model = sep.build(build_encoder(cfg.model), cfg).eval()
    batch = next(iter(torch.utils.data.DataLoader(make_dataset(cfg, "test", "separation", size=3), batch_size=3)))
    probs, est = sep.separate(model, batch, cfg)
    pred = sep.predict(model, batch, cfg)
    assert est.shape == batch["source_waveforms"].shape and probs.shape[:2] == batch["images"].shape[:2]
    assert torch.equal(pred["pred_waveforms"], est) and torch.equal(pred["mask"], probs)


# ---------------------------------------------------------------------------------------------- objectives
class _TwoTowers(nn.Module):
    """The toy's model: the kit's encoder plus one projection; forward returns unit audio / visual codes."""

    def __init__(self, cfg):
        super().__init__()
        self.encoder = build_encoder(cfg.model)
        self.proj = nn.Linear(cfg.model.embed_dim, cfg.model.embed_dim)

    def forward(self, image, audio):
        out = self.encoder(image, audio)
        return F.normalize(self.proj(out.audio.mean(1)), dim=-1), F.normalize(out.image.mean(1), dim=-1)


class ToyContrastive(Objective):
    """A new pre-training method in a few lines: in-batch InfoNCE between pooled audio and visual codes."""
    name = "toy_contrastive"

    def build(self, cfg):
        return _TwoTowers(cfg)

    def loss(self, model, batch):
        a, v = model(batch["image"], batch["audio"])                  # (B, D) each
        logits = a @ v.T / 0.1                                        # (B, B): item i's own pair on the diagonal
        return F.cross_entropy(logits, torch.arange(len(a), device=a.device)), {}


@pytest.fixture
def toy():
    register_objective(ToyContrastive())
    yield OBJECTIVES["toy_contrastive"]
    del OBJECTIVES["toy_contrastive"]


def test_the_deepavfusion_objective_is_registered_first():
    assert next(iter(OBJECTIVES)) == "deepavfusion"
    with pytest.raises(KeyError, match="unknown pre-training objective 'mae2'"):
        OBJECTIVES["mae2"]


def test_a_registered_objective_pretrains_and_hands_its_encoder_downstream(toy, tmp_path):
    cfg = make_config("smoke", **{"data.dataset": "synthetic", "pretrain.epochs": 2, "pretrain.log_every": 1})
    pre = pretrain(cfg, tmp_path / "pre", objective="toy_contrastive", device="cpu")
    losses = [s["loss"] for s in pre.history.steps]
    assert pre.checkpoint.name == "toy_contrastive.pt" and len(losses) >= 2
    assert all(torch.isfinite(torch.tensor(losses))) and "nn_fusion" in pre.metrics   # default monitor: 1-NN
    stored = torch.load(pre.checkpoint, weights_only=True)
    assert stored["objective"] == "toy_contrastive" and "proj.weight" in stored["state_dict"]
    # the downstream model starts from exactly the pre-trained encoder (its own head dropped)
    train = make_dataset(cfg, "train", "finetune")
    model = build_task_model("finetune", cfg, "pretrained", pre.checkpoint, train_data=train)
    for k, v in model.encoder.state_dict().items():
        assert torch.equal(v, pre.model.encoder.state_dict()[k]), k
    res = run_task("localization", cfg, tmp_path / "loc", checkpoint=pre.checkpoint, device="cpu")
    assert {"ciou", "auc", "cell_acc"} <= set(res.metrics)


def test_pretraining_runs_of_two_objectives_never_share_a_run(toy, tmp_path):
    cfg = make_config("smoke", **{"data.dataset": "synthetic", "pretrain.max_steps": 2})
    pretrain(cfg, tmp_path, objective="deepavfusion", device="cpu")
    with pytest.warns(UserWarning, match="objective: checkpoint 'deepavfusion' != now 'toy_contrastive'"):
        pretrain(cfg, tmp_path, objective="toy_contrastive", device="cpu")
