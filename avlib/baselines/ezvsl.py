"""EZ-VSL: Mo & Morgado, "Localizing Visual Sounds the Easy Way", ECCV 2022 (arXiv:2203.09324), as a
pre-training objective of the kit's late-fusion backbone. Public code: github.com/stoneMo/EZ-VSL (commit
95ff5bf) ``model.py`` (``EZVSL``, ``max_xmil_loss``), ``train.py``, ``test.py`` (the test map),
``scripts/train_*.sh`` (``docs/baselines.md#ez-vsl``).

Objective (multiple-instance contrastive learning): with unit visual token features ``v_{n,p}`` and a
unit global audio vector ``a_m``, the score of image n and clip m is the best-matching location,
``s_nm = max_p <v_{n,p}, a_m> / tau``; the loss is the symmetric InfoNCE over the batch,
``CE over clips for each image + CE over images for each clip`` (target: the item's own pair), the other
B - 1 items being the negatives. No momentum encoder, no dropout, no queue.

Port to the kit (the published values are the defaults; nothing was changed for the tiny scale):

| published (ResNet-18s, 224 px) | kit |
|---|---|
| visual: 1x1 conv 512 -> D on the 7x7 ResNet-18 map, L2 per location | Linear embed_dim -> D per visual token, L2 |
| audio: ResNet-18 (1-channel), global **max** pool, Linear 512 -> D, L2 | audio tokens, max over tokens, Linear, L2 |
| tau 0.03, D 512 | the same (``tau``, ``dim``) |
| visual ResNet from ImageNet | the run's warm start or scratch ViT (no ImageNet weights) |
| Adam lr 1e-4, wd 0, constant, batch 128, 20 epochs | ``optimizer_overrides``; steps and batch: the run's |
| test map blended with the OGL object prior (alpha 0.4) | dropped: the AV-only map (OGL needs an ImageNet CNN) |

Initialization as ``model.py``: the visual projection like its 1x1 conv (kaiming-normal, fan_out), the
audio projection trunc-normal(0.01); the encoder keeps the kit's init (or the warm start).

Zero-shot read-out (``test.py``): the diagonal map ``<v_{n,p}, a_n>`` per visual token, as a cosine in
[-1, 1] (the reference divides by tau; the scale does not change any min-max-normalized metric).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Config
from ..objectives import register_objective
from .common import (LateFusionObjective, adam_recipe, as_grid, encode, eval_mode, init_conv1x1_, init_linear_,
                     late_fusion_encoder, pool_tokens, unit)

__all__ = ["EZVSLModel", "EZVSL", "max_xmil_logits"]


def max_xmil_logits(v: torch.Tensor, a: torch.Tensor, tau: float) -> torch.Tensor:
    """EZ-VSL's image-clip scores ``s_nm = max_p <v_{n,p}, a_m> / tau``: v (B, Nv, C) and a (B, C), both
    unit vectors, -> (B, B), image n on the rows, clip m on the columns (``model.py``: ``max_xmil_loss``)."""
    return torch.einsum("npc,mc->nmp", v, a).amax(dim=-1) / tau


class EZVSLModel(nn.Module):
    """The late-fusion encoder plus EZ-VSL's two projections; ``forward(image, audio) -> (loss, terms)``."""

    def __init__(self, cfg: Config, dim: int, tau: float, audio_pool: str):
        super().__init__()
        self.encoder = late_fusion_encoder(cfg, "EZ-VSL")
        D = cfg.model.embed_dim
        self.img_proj = init_conv1x1_(nn.Linear(D, dim))       # model.py: img_proj, Conv2d(512, dim, 1)
        self.aud_proj = init_linear_(nn.Linear(D, dim))        # model.py: aud_proj, Linear(512, dim)
        self.tau, self.audio_pool = float(tau), audio_pool

    def features(self, image: torch.Tensor, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit visual token features (B, Nv, dim) and unit global audio vectors (B, dim)."""
        v = unit(self.img_proj(encode(self.encoder, "image", image)))
        a = unit(self.aud_proj(pool_tokens(encode(self.encoder, "audio", audio), self.audio_pool)))
        return v, a

    def forward(self, image: torch.Tensor, audio: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = max_xmil_logits(*self.features(image, audio), self.tau)          # (B, B)
        target = torch.arange(logits.shape[0], device=logits.device)
        loss_i2a = F.cross_entropy(logits, target)          # each image: which clip is its own
        loss_a2i = F.cross_entropy(logits.T, target)        # each clip: which image is its own
        return loss_i2a + loss_a2i, {"loss_i2a": loss_i2a.detach(), "loss_a2i": loss_a2i.detach()}


@dataclass
class EZVSL(LateFusionObjective):
    """EZ-VSL (``model.py``, ``scripts/train_vggsound144k.sh``) on the late-fusion backbone; the fields are
    its published hyper-parameters (module docstring)."""

    name: str = "ezvsl"
    tau: float = 0.03             # --tau 0.03
    dim: int = 512                # --out_dim 512
    audio_pool: str = "max"       # the audio ResNet's AdaptiveMaxPool2d; "mean" also offered

    optimizer_overrides: ClassVar[dict[str, Any]] = adam_recipe(lr=1e-4, weight_decay=0.0)   # train.py, scripts
    published: ClassVar[dict[str, Any]] = {"tau": 0.03, "dim": 512, "audio_pool": "max"}

    def build(self, cfg: Config) -> EZVSLModel:
        return EZVSLModel(cfg, self.dim, self.tau, self.audio_pool)

    @torch.no_grad()
    def localization_map(self, model: EZVSLModel, image: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """``test.py``: the diagonal audio-patch map, a cosine per visual token -> (B, gh, gw)."""
        with eval_mode(model):
            v, a = model.features(image, audio)
            return as_grid(torch.einsum("npc,nc->np", v, a), model.encoder)


register_objective(EZVSL())
