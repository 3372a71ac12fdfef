"""Pre-training objectives, one small object each, registered by name.

    objective = OBJECTIVES["deepavfusion"]
    model = objective.build(cfg)                    # the model that pre-trains a DeepAVFusion encoder
    loss, logs = objective.loss(model, batch)        # what pre-training minimizes
    objective.evaluate(model, test_loader, cfg, device)   # monitors while training (losses, 1-NN probes)
    encoder = objective.encoder(model)               # what it hands to the downstream protocols

``avlib.tasks.pretrain(cfg, run_dir, objective=name)`` runs any of them through the one training loop
and writes ``objective.checkpoint(model, cfg)`` to ``run_dir/<objective.checkpoint_name>``; every
downstream protocol then starts from the encoder in that checkpoint. Adding a method means writing one
class (here or in a module of its own) and registering it. An objective may also offer *zero-shot*
read-outs, what the pre-trained model predicts with no downstream training: a localization map
(``localization_map``) or a separation mask (``separation_mask``); ``None`` where it has none.

| name | model | loss |
|---|---|---|
| ``deepavfusion`` | ``AVMAE``: the early-fusion encoder + one MAE decoder per modality | masked reconstruction of image and spectrogram patches (official ``loss_image + loss_audio``) |
| ``ezvsl``, ``slavc``, ``mix_and_localize`` | the supplement's localization methods on the two-stream backbone (``avlib.baselines``) | contrastive / cycle-walk localization objectives; see each module |
| ``sound_of_pixels``, ``ccol``, ``oneavm`` | the supplement's separation methods on the two-stream backbone (``avlib.baselines``) | mix-and-separate objectives; see each module |

The comparison methods live in ``avlib.baselines``, one module each, and register themselves when this
module is imported (the import at the end); ``docs/baselines.md`` describes them.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from .config import Config, config_to_dict
from .model import AVMAE, DeepAVFusion, build_avmae, inpainting_noise
from .probes import knn_probe
from .utils import Registry

__all__ = ["Objective", "OBJECTIVES", "register_objective", "DeepAVFusionMAE"]

OBJECTIVES: Registry = Registry("pre-training objective")


def register_objective(objective):
    """Add an objective (an instance, or a class taking no arguments) under its ``name``."""
    return OBJECTIVES.register(objective)


class Objective:
    """One pre-training objective. Subclasses set ``name`` and implement ``build`` and ``loss``; the
    rest has defaults that fit any model holding its encoder at ``.encoder``.

    Attributes:
        name: registry key, also stored in every checkpoint the objective writes.
        mixtures: pre-trains on mix-and-separate pairs (``MixtureDataset``) instead of single scenes;
            ``"alternates"``: pairs that also carry a second mixture of other recordings of the same sources
            (``AlternateMixtureDataset``, Mix-and-Localize).
        checkpoint_name: file written into the pre-training run directory.
    """

    name: str = ""
    mixtures: bool | str = False

    @property
    def checkpoint_name(self) -> str:
        return f"{self.name}.pt"

    def build(self, cfg: Config) -> nn.Module:
        """A fresh model (holding a ``DeepAVFusion`` encoder built from ``cfg.model`` at ``.encoder``)."""
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: Mapping[str, torch.Tensor]):
        """``(loss, {term: value})`` of one batch; ``model`` may be the DDP wrapper (call its forward)."""
        raise NotImplementedError

    def encoder(self, model: nn.Module) -> DeepAVFusion:
        """The pre-trained encoder every downstream protocol starts from."""
        return model.encoder

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader, cfg: Config, device="cpu") -> dict[str, float]:
        """Monitors computed every ``cfg.pretrain.eval_every`` epochs: by default the official 1-NN probe
        of the encoder's pooled tokens (``probes.knn_probe``)."""
        return knn_probe(self.encoder(model), loader, device)

    def checkpoint(self, model: nn.Module, cfg: Config) -> dict[str, Any]:
        """What ``run_dir/<checkpoint_name>`` holds: the official layout (``state_dict``, ``config``,
        ``epoch``) plus the objective's name; the encoder's keys start with ``encoder.``."""
        return {"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "config": config_to_dict(cfg), "epoch": cfg.pretrain.epochs, "objective": self.name}

    # zero-shot read-outs (None: this objective has none)
    localization_map = None     # (model, image (B,3,H,W), audio (B,1,F,T)) -> map (B, gh, gw)
    map_range = None            # the fixed range (lo, hi) of localization_map's scores, where they have one
    separation_mask = None      # (model, mix_audio (B,1,F,T), image (B,3,H,W)) -> mask probabilities (B,1,F,T)


@register_objective
class DeepAVFusionMAE(Objective):
    """The paper's pre-training: masked modeling of image and spectrogram patches through the
    early-fusion encoder (``AVMAE``, official ``models/avmae.py``). Monitors: the reconstruction losses
    on the test split with fixed masks (``val_loss*``) and the official 1-NN probes (``nn_*``).
    Checkpoints keep the official layout (``avmae.pt``, loadable by the official code's key names)."""

    name = "deepavfusion"
    checkpoint_name = "avmae.pt"

    def build(self, cfg: Config) -> AVMAE:
        return build_avmae(cfg.model)

    def loss(self, model, batch):
        mcfg = getattr(model, "module", model).cfg              # the DDP wrapper holds the AVMAE at .module
        noise_image = noise_audio = None
        if mcfg.masking == "inpainting":                         # kit deviation (ModelConfig.masking)
            if "sounding" not in batch:
                raise ValueError("model.masking='inpainting' needs scenes with sounding cells (AV-Digits or "
                                 "synthetic scenes); this dataset's batches have none: use masking='random'")
            noise_image, noise_audio = inpainting_noise(batch["sounding"], mcfg.image_grid, batch["audio"],
                                                        mcfg.patch_size, mcfg.inpaint_a2v, mcfg.inpaint_v2a)
        out = model(batch["image"], batch["audio"], noise_image=noise_image, noise_audio=noise_audio)
        return out.loss, {"loss_image": out.loss_image.detach(), "loss_audio": out.loss_audio.detach()}

    @torch.no_grad()
    def evaluate(self, model, loader, cfg, device="cpu"):
        model.eval()
        g = torch.Generator(device="cpu").manual_seed(cfg.seed)     # same masks at every evaluation
        tot = {"val_loss": 0.0, "val_loss_image": 0.0, "val_loss_audio": 0.0}
        n = 0
        for batch in loader:
            out = model(batch["image"].to(device), batch["audio"].to(device), generator=g)
            b = batch["image"].shape[0]
            tot["val_loss"] += out.loss.item() * b
            tot["val_loss_image"] += out.loss_image.item() * b
            tot["val_loss_audio"] += out.loss_audio.item() * b
            n += b
        res = {k: v / n for k, v in tot.items()}
        res.update(super().evaluate(model, loader, cfg, device))
        model.train()
        return res


from . import baselines  # noqa: E402,F401  (registers the comparison methods)
