"""SLAVC: Mo & Morgado, "A Closer Look at Weakly-Supervised Audio-Visual Source Localization", NeurIPS 2022
(arXiv:2209.09634), as a pre-training objective of the kit's late-fusion backbone. Public code:
github.com/stoneMo/SLAVC (commit 05b429c) ``model.py`` (``SLAVC.forward``, ``_update_momentum_encoder``),
``train.py``, ``test.py``, ``scripts/train_vggsound144k.sh`` (``docs/baselines.md#slavc``).

Objective. Two projection pairs per modality, (v1, a1) and (v2, a2), and EMA ("momentum") copies of the
encoder and of all four projections that give the targets (marked with a bar). With dot products of unit
vectors over tau,

    p1(m | n, p) = softmax over clips m  of <v1_{n,p}, a1_m> / tau     (which clip sounds at location p)
    p2(p | n, m) = softmax over locations p of <v2_{n,p}, a2_m> / tau     (where clip m sounds in image n)
    s_nm = log sum_p p1 * p2                                              (``torch.log((i2a_1 * i2a_2).sum(2))``)

``loss_i2a`` = CE over clips m of s_nm (target n) with online images and EMA audio, ``loss_a2i`` the same
with EMA images and online audio; loss = their sum. Both terms are image-anchored (no softmax over
images). Here ``s_nm`` is computed as ``logsumexp_p(log p1 + log p2)``: the same value, but a far-off pair
cannot underflow to log 0 at tau = 0.03.

Tricks, as the code does them: dropout (p = 0.9) on the visual features before the projections, in the
EMA branch too (one ``nn.Dropout`` module serves both; the targets are computed in train mode); audio
dropout 0; the EMA update happens inside every training forward, *before* the targets are computed
(``mode == 'train'``), so the EMA weights live in the model's state dict and a resumed run continues bit for
bit. ``--use_momentum`` is parsed but never read in the code: the EMA is always on. The EMA copies start
equal to the online modules when training starts (after a warm start has been loaded; ``start_ema``).

Port to the kit and every change for the tiny scale:

| published (ResNet-18s, VGGSound 144k) | kit default |
|---|---|
| visual: 512x7x7 map, dropout, two 1x1 convs 512 -> D, L2 | visual tokens, dropout on them, two Linears, L2 |
| audio: ResNet-18, global max pool, dropout 0, two Linears 512 -> D | audio tokens, max pool, two Linears, L2 |
| tau 0.03, D 512, dropout_aud 0 | the same (``tau``, ``dim``, ``dropout_aud``) |
| dropout_img 0.9 on 512 channels | **1 - 51.2 / embed_dim** (``dropout_img=None``), see below: 0.47 at 96-d |
| EMA momentum 0.999 (``--m_img``, ``--m_aud``; argparse default 0.9) | **0.99** (``ema_momentum``), see below |
| maps: mean of the two heads' diagonal maps, EMA encoders (``--use_mom_eval``) | the same (``readout``), cosines |
| test maps blended with OGL (alpha 0.9) | dropped (AV-only maps) |
| Adam lr 1e-4, weight decay 0, constant, batch 128, 20 epochs | ``optimizer_overrides``; steps, batch: the run's |

The two changes. *Visual dropout*: the code drops 90 % of a 512-channel map, so each location's projection
sees ~51 surviving channels; on the kit's 96-d tokens (cpu profile) 0.9 would leave ~10, and at the smoke
profile's 32-d ~3. Measured (Adam lr 1e-3 on a fixed set of scenes, the loss in eval mode afterwards):
at the smoke profile, 32 steps on 64 synthetic scenes, 4.39 with 0.9 vs 1.51 without dropout (chance 4.16);
at the cpu profile, 40 steps on 256 AV-Digits scenes, 8.33 with 0.9, 8.27 with 0.5, 8.01 without (chance
8.32): 0.9 keeps SLAVC from fitting at all in that budget.
The kit keeps the published number of surviving channels instead: ``dropout_img=None`` means
``p = 1 - 0.1 * 512 / embed_dim`` (0 when that is negative): exactly 0.9 at the published width 512, 0.93
at ViT-B's 768, 0.47 at 96-d, 0 at 32-d; a float fixes it (0.9: the code's value).

*EMA momentum*: the published run takes 20 epochs x 144k clips / 128 = ~22.5k steps, so 0.999's horizon of
1 / (1 - m) = 1k steps is ~4 % of it; a kit run takes ~10^3 steps, where 0.999 would leave 0.999^1000 = 37 %
of the random initial weights in the targets at the end. 0.99 (a 100-step horizon, 5 % of 2k steps) keeps
the target's lag a similar fraction of the run. One momentum serves both modalities (the script sets both
to 0.999). The maps are cosines in [-1, 1]: the reference's cos / tau with its fixed range [-1/tau, 1/tau]
is the same map scaled.

The encoder handed downstream (``encoder``) is the online one, as for every method (the EMA copy is the
targets' device and the read-out's); its keys are ``encoder.*``, the EMA copy's ``ema_encoder.*``.
Initialization of the projections as ``model.py`` (kaiming-normal fan_out for the visual ones, like their
1x1 convs; trunc-normal 0.01 for the audio ones); the EMA copies start equal to the online modules.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Config
from ..objectives import register_objective
from .common import (AUDIO_POOLS, LateFusionObjective, adam_recipe, as_grid, encode, eval_mode, init_conv1x1_,
                     init_linear_, late_fusion_encoder, pool_tokens, unit)

__all__ = ["SLAVCHeads", "SLAVCModel", "SLAVC", "slavc_logits", "surviving_channels_dropout"]

READOUTS = ("ema", "online")
PUBLISHED_DROPOUT, PUBLISHED_WIDTH = 0.9, 512      # --dropout_img 0.9 on the ResNet-18's 512 channels


def surviving_channels_dropout(width: int) -> float:
    """The visual dropout that keeps SLAVC's published number of surviving channels per location,
    ``(1 - 0.9) * 512 = 51.2``, on features of ``width`` channels (0 when ``width`` <= 51.2)."""
    return max(0.0, 1.0 - (1.0 - PUBLISHED_DROPOUT) * PUBLISHED_WIDTH / width)


def slavc_logits(v1: torch.Tensor, v2: torch.Tensor, a1: torch.Tensor, a2: torch.Tensor, tau: float) -> torch.Tensor:
    """``s_nm = log sum_p softmax_m(<v1_{n,p}, a1_m>/tau) * softmax_p(<v2_{n,p}, a2_m>/tau)``.

    v1, v2: (B, Nv, C) unit visual features of images n; a1, a2: (B, C) unit audio features of clips m.
    Returns (B, B), image n on the rows (the cross-entropy's "logits" over clips m)."""
    s1 = torch.einsum("npc,mc->nmp", v1, a1) / tau                 # (n, m, p)
    s2 = torch.einsum("npc,mc->nmp", v2, a2) / tau
    return torch.logsumexp(s1.log_softmax(dim=1) + s2.log_softmax(dim=2), dim=2)


class SLAVCHeads(nn.Module):
    """The four projections: ``img_proj1/2`` (model.py: Conv2d(512, dim, 1)) and ``aud_proj1/2``
    (Linear(512, dim)), on features of width ``embed_dim``."""

    def __init__(self, embed_dim: int, dim: int):
        super().__init__()
        self.img_proj1 = init_conv1x1_(nn.Linear(embed_dim, dim))
        self.img_proj2 = init_conv1x1_(nn.Linear(embed_dim, dim))
        self.aud_proj1 = init_linear_(nn.Linear(embed_dim, dim))
        self.aud_proj2 = init_linear_(nn.Linear(embed_dim, dim))


class SLAVCModel(nn.Module):
    """Online encoder and heads, their EMA copies (``requires_grad=False``, in the state dict), the two
    dropouts; ``forward(image, audio) -> (loss, terms)`` updates the EMA copies first when training."""

    def __init__(self, cfg: Config, *, dim: int, tau: float, dropout_img: float | None, dropout_aud: float,
                 ema_momentum: float, audio_pool: str):
        super().__init__()
        self.encoder = late_fusion_encoder(cfg, "SLAVC")
        self.heads = SLAVCHeads(cfg.model.embed_dim, dim)
        self.ema_encoder = copy.deepcopy(self.encoder).requires_grad_(False)
        self.ema_heads = copy.deepcopy(self.heads).requires_grad_(False)
        # The EMA copies start as copies of the online modules *when training starts* (SLAVC builds both from
        # the same ImageNet weights): a warm start (tasks.pretrain's load_branches) loads the online encoder
        # after this constructor, so the first training forward (or read-out) copies it again. A buffer, so
        # a resumed run knows it has started.
        self.register_buffer("ema_started", torch.zeros((), dtype=torch.bool))
        self.img_dropout = nn.Dropout(surviving_channels_dropout(cfg.model.embed_dim) if dropout_img is None
                                      else dropout_img)
        self.aud_dropout = nn.Dropout(dropout_aud)
        self.tau, self.ema_momentum, self.audio_pool = float(tau), float(ema_momentum), audio_pool

    def branch(self, encoder: nn.Module, heads: SLAVCHeads, image: torch.Tensor, audio: torch.Tensor):
        """One branch's unit features: v1, v2 (B, Nv, dim) and a1, a2 (B, dim) (``forward_img_features``,
        ``forward_aud_features``; the dropouts act in train mode, in either branch)."""
        v = self.img_dropout(encode(encoder, "image", image))                              # (B, Nv, D)
        a = self.aud_dropout(pool_tokens(encode(encoder, "audio", audio), self.audio_pool))  # (B, D)
        return unit(heads.img_proj1(v)), unit(heads.img_proj2(v)), unit(heads.aud_proj1(a)), unit(heads.aud_proj2(a))

    @torch.no_grad()
    def start_ema(self) -> None:
        """Copy the online encoder and heads into the EMA copies, once (see ``ema_started``)."""
        if not bool(self.ema_started):
            self.ema_encoder.load_state_dict(self.encoder.state_dict())
            self.ema_heads.load_state_dict(self.heads.state_dict())
            self.ema_started.fill_(True)

    @torch.no_grad()
    def update_ema(self) -> None:
        """``ema <- m * ema + (1 - m) * online`` for every trainable online parameter (``_update_momentum_encoder``;
        the frozen pos-embeds and fusion stream are equal in both copies and stay so)."""
        m = self.ema_momentum
        for online, ema in ((self.encoder, self.ema_encoder), (self.heads, self.ema_heads)):
            for p, q in zip(online.parameters(), ema.parameters()):
                if p.requires_grad:
                    q.mul_(m).add_(p.detach(), alpha=1.0 - m)

    def forward(self, image: torch.Tensor, audio: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        v1, v2, a1, a2 = self.branch(self.encoder, self.heads, image, audio)
        with torch.no_grad():
            self.start_ema()
            if self.training:
                self.update_ema()
            tv1, tv2, ta1, ta2 = self.branch(self.ema_encoder, self.ema_heads, image, audio)   # targets
        target = torch.arange(image.shape[0], device=image.device)
        loss_i2a = F.cross_entropy(slavc_logits(v1, v2, ta1, ta2, self.tau), target)   # online images
        loss_a2i = F.cross_entropy(slavc_logits(tv1, tv2, a1, a2, self.tau), target)   # online audio
        return loss_i2a + loss_a2i, {"loss_i2a": loss_i2a.detach(), "loss_a2i": loss_a2i.detach()}


@dataclass
class SLAVC(LateFusionObjective):
    """SLAVC (``model.py``, ``scripts/train_vggsound144k.sh``) on the late-fusion backbone; the fields are
    its hyper-parameters, published values except ``ema_momentum`` (module docstring)."""

    name: str = "slavc"
    tau: float = 0.03             # --tau 0.03
    dim: int = 512                # --out_dim 512
    dropout_img: float | None = None   # --dropout_img 0.9 at 512 channels; None: the same surviving channels
    dropout_aud: float = 0.0      # --dropout_aud 0
    ema_momentum: float = 0.99    # published 0.999 (--m_img / --m_aud), scaled to the kit's run length
    audio_pool: str = "max"       # the audio ResNet's AdaptiveMaxPool2d; "mean" also offered
    readout: str = "ema"          # zero-shot maps from the EMA copies (--use_mom_eval) or the online ones

    optimizer_overrides: ClassVar[dict[str, Any]] = adam_recipe(lr=1e-4, weight_decay=0.0)   # train_vggsound144k.sh
    choices: ClassVar[dict[str, tuple]] = {"audio_pool": AUDIO_POOLS, "readout": READOUTS}
    published: ClassVar[dict[str, Any]] = {"tau": 0.03, "dim": 512, "dropout_img": 0.9, "dropout_aud": 0.0,
                                           "ema_momentum": 0.999, "audio_pool": "max", "readout": "ema"}
    notes: ClassVar[dict[str, str]] = {
        "dropout_img": "None: keep the published 51.2 surviving channels per location, p = 1 - 51.2 / embed_dim",
        "ema_momentum": "scaled to the kit's ~10^3-step runs (a 100-step horizon)"}

    def __post_init__(self):
        super().__post_init__()
        if self.dropout_img is not None and not 0.0 <= self.dropout_img < 1.0:
            raise ValueError(f"dropout_img={self.dropout_img}: a value in [0, 1), or None (module docstring)")
        if not 0.0 <= self.ema_momentum < 1.0:
            raise ValueError(f"ema_momentum={self.ema_momentum}: a value in [0, 1)")

    def build(self, cfg: Config) -> SLAVCModel:
        return SLAVCModel(cfg, dim=self.dim, tau=self.tau, dropout_img=self.dropout_img,
                          dropout_aud=self.dropout_aud, ema_momentum=self.ema_momentum, audio_pool=self.audio_pool)

    @torch.no_grad()
    def localization_map(self, model: SLAVCModel, image: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """``model.py`` (``Savl``): the mean of the two heads' diagonal maps, cosines per visual token,
        with the EMA encoder and heads (``readout="ema"``) -> (B, gh, gw)."""
        model.start_ema()                     # an untrained (e.g. only warm-started) model: EMA = online
        with eval_mode(model):
            enc, heads = ((model.ema_encoder, model.ema_heads) if self.readout == "ema"
                          else (model.encoder, model.heads))
            v1, v2, a1, a2 = model.branch(enc, heads, image, audio)
            cos = (torch.einsum("npc,nc->np", v1, a1) + torch.einsum("npc,nc->np", v2, a2)) / 2
            return as_grid(cos, model.encoder)


register_objective(SLAVC())
