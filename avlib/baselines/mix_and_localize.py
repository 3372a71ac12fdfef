"""Mix-and-Localize: Hu, Chen & Owens, "Mix and Localize: Localizing Sound Sources in Mixtures", CVPR 2022,
as a pre-training objective of the kit's late-fusion backbone. Public code: github.com/hxixixh/mix-and-localize
(commit bbdd56a) ``models/mixed_aud_model.py`` (``MixAudModelFeatMultiAud``), ``models/mixed_aud_loss.py``
(``MixAudSIS1FeatHardCycleLoss``), ``train.py`` (mixing, ``make_optimizer``), ``config/config.py``,
``data/voxceleb_img_aud_pair.py`` (``docs/baselines.md#mix-and-localize``).

Data: pairs of K = 2 sources, each with its own (unmixed) image, and *two* mixtures of the same pair:
M1 of the sources' clips, M2 of other clips of the same sources (VoxCeleb: another clip of the same
speaker). The kit reads ``AlternateMixtureDataset`` (``Objective.mixtures = "alternates"``): ``images``
(B, K, 3, H, W), ``mix_audio`` = M1 and ``alt_mix_audio`` = M2, another FSDD take of the same digit by the
same speaker (synthetic scenes: another draw of the class timbre).

Model: unit visual features per location v_{i,p} (two-layer projection) and K audio "nodes" per mixture
a_k(M) (K two-layer heads on the pooled audio vector). Objective, per pair (a cycle random walk):

    A_IS[i, k] = softmax over nodes k  of max_p <v_{i,p}, a_k(M1)> / T     (image -> node of M1)
    A_SI[k, i] = softmax over images i of max_p <a_k(M2), v_{i,p}> / T     (node of M2 -> image)
    loss = -mean_k log (A_SI A_IS)[k, k]

so node k must bind to the same source in both mixtures; the only negatives are the pair's other image.

Port to the kit and every change:

| published (ResNet-18s) | kit |
|---|---|
| visual: ResNet-18 (14x14), 1x1 conv 512 -> 128, ReLU, 1x1 conv 128 -> 128, L2 | tokens, Linear, ReLU, Linear, L2 |
| audio: ResNet-18, max pool, K heads 512 -> 128, ReLU, 128 -> 128, L2 | audio tokens, max pool, K such heads |
| 16 kHz mel (n_fft 160, hop 80, 64 mels), 20 log10, [-100, 100] -> [-1, 1] | the kit's log-mel |
| mixing: each clip RMS-normalized to 0.1, mixture = mean of the pair | the kit's: plain sum after the gain |
| pairs: consecutive batch items, no class filter | ``MixtureDataset`` pairs (two classes) |
| second clip: any clip of the speaker (VoxCeleb; may be the same clip) | another take, same digit and speaker |
| T 0.07 (``--cycle_temp``), K 2 (``--mix_audio_nodes``), width 128 | the same (``temperature``, ``num_nodes``, ``dim``)|
| Adam, lr 1e-3 / 10 = 1e-4 (MUSIC command), wd 5e-4 on all parameters | ``optimizer_overrides`` (biases: no wd) |

Mixing: MnL equalizes the two clips' RMS and averages them; the kit keeps its separation pairs as they are
(peak-normalized FSDD clips, each with its own random +-6 dB training gain, summed), so the two sources'
relative level varies more here (the mean instead of the sum is only a constant offset of the log-mel).
Initialization: PyTorch defaults, as the code (a 1x1 Conv2d and a Linear
share them). The model's ``conv_av`` (a bias-free 1x1 conv on the maps, one scalar) is left out: the
loss never uses it, so it stays at its random (possibly negative) initialization.

Zero-shot read-out: one cosine map per node (``av_map``, the raw cosines); the repository has no
localization evaluation, so the kit states its rule for a single-source test clip: the **maximum over the
nodes** at each location (``node_readout``; "mean" also offered): the node that binds the sounding source
gives the peak, and the other node's map does not dilute it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ..config import Config
from ..objectives import register_objective
from .common import (AUDIO_POOLS, LateFusionObjective, adam_recipe, as_grid, encode, eval_mode, late_fusion_encoder,
                     pool_tokens, unit, validation_loss)

__all__ = ["MixAndLocalizeModel", "MixAndLocalize", "cycle_loss"]

NODE_READOUTS = ("max", "mean")


def cycle_loss(v: torch.Tensor, a1: torch.Tensor, a2: torch.Tensor, temperature: float
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """The cycle random walk of ``MixAudSIS1FeatHardCycleLoss.compute_cycle_loss``.

    Args:
        v: (B, K, Nv, C) unit visual features of each pair's K images.
        a1, a2: (B, K, C) unit nodes of the pair's first and second mixture.

    Returns:
        the loss ``-mean log diag(A_SI A_IS)`` and the walk's accuracy (how often the walk from a node of
        M2 returns to the same node of M1 most likely; ``ASIS acc`` in the reference).
    """
    a_is = torch.einsum("bipc,bkc->bikp", v, a1).amax(dim=-1).div(temperature).softmax(dim=-1)   # (B, i, k)
    a_si = torch.einsum("bkc,bipc->bkip", a2, v).amax(dim=-1).div(temperature).softmax(dim=-1)   # (B, k, i)
    a_sis = a_si @ a_is                                                                          # (B, k, k)
    loss = -a_sis.diagonal(dim1=1, dim2=2).log().mean()
    target = torch.arange(a_sis.shape[1], device=a_sis.device)
    acc = (a_sis.argmax(dim=-1) == target).float().mean()
    return loss, acc


def _two_layers(d_in: int, dim: int) -> nn.Sequential:
    """``conv_v_1, ReLU, conv_v_2`` (1x1 convs) or ``fc_a_k`` = Linear, ReLU, Linear: d_in -> dim -> dim."""
    return nn.Sequential(nn.Linear(d_in, dim), nn.ReLU(), nn.Linear(dim, dim))


class MixAndLocalizeModel(nn.Module):
    """The late-fusion encoder, the visual projection and ``num_nodes`` audio-node heads;
    ``forward(images, mix_audio, alt_mix_audio) -> (loss, terms)``."""

    def __init__(self, cfg: Config, *, dim: int, num_nodes: int, temperature: float, audio_pool: str):
        super().__init__()
        self.encoder = late_fusion_encoder(cfg, "Mix-and-Localize")
        D = cfg.model.embed_dim
        self.img_proj = _two_layers(D, dim)                                          # conv_v_1, conv_v_2
        self.aud_nodes = nn.ModuleList([_two_layers(D, dim) for _ in range(num_nodes)])   # fc_a_1 ... fc_a_K
        self.temperature, self.audio_pool = float(temperature), audio_pool

    @property
    def num_nodes(self) -> int:
        return len(self.aud_nodes)

    def visual(self, image: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> unit features per visual token (N, Nv, dim)."""
        return unit(self.img_proj(encode(self.encoder, "image", image)))

    def nodes(self, audio: torch.Tensor) -> torch.Tensor:
        """(M, 1, F, T) log-mels -> unit audio nodes (M, K, dim)."""
        a = pool_tokens(encode(self.encoder, "audio", audio), self.audio_pool)        # (M, D)
        return unit(torch.stack([head(a) for head in self.aud_nodes], dim=1))

    def forward(self, images: torch.Tensor, mix_audio: torch.Tensor, alt_mix_audio: torch.Tensor
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        B, K = images.shape[:2]
        if K != self.num_nodes:
            raise ValueError(f"Mix-and-Localize with num_nodes={self.num_nodes} needs mixtures of as many sources; "
                             f"the batch's images are {tuple(images.shape)} (K={K})")
        v = self.visual(images.flatten(0, 1)).unflatten(0, (B, K))                     # (B, K, Nv, dim)
        a = self.nodes(torch.cat([mix_audio, alt_mix_audio])).unflatten(0, (2, B))     # (2, B, K, dim)
        loss, acc = cycle_loss(v, a[0], a[1], self.temperature)
        return loss, {"cycle_acc": acc.detach()}


@dataclass
class MixAndLocalize(LateFusionObjective):
    """Mix-and-Localize (``models/mixed_aud_*.py``, ``train.py``) on the late-fusion backbone; the fields are
    its published hyper-parameters and the kit's read-out rule (module docstring)."""

    name: str = "mix_and_localize"
    temperature: float = 0.07     # --cycle_temp 0.07
    num_nodes: int = 2            # --mix_audio_nodes 2 (= sources per mixture)
    dim: int = 128                # the projections' width (fixed in the code)
    audio_pool: str = "max"       # pooling_a = AdaptiveMaxPool2d((1, 1)); "mean" also offered
    node_readout: str = "max"     # the kit's rule for a single-source test clip (module docstring)

    mixtures = "alternates"       # AlternateMixtureDataset: the second mixture M2 (not a dataclass field)
    optimizer_overrides: ClassVar[dict[str, Any]] = adam_recipe(lr=1e-4, weight_decay=5e-4)   # README, config.py
    choices: ClassVar[dict[str, tuple]] = {"audio_pool": AUDIO_POOLS, "node_readout": NODE_READOUTS}
    published: ClassVar[dict[str, Any]] = {"temperature": 0.07, "num_nodes": 2, "dim": 128, "audio_pool": "max"}
    notes: ClassVar[dict[str, str]] = {"node_readout": "the kit's rule: the code has no localization evaluation"}

    def build(self, cfg: Config) -> MixAndLocalizeModel:
        return MixAndLocalizeModel(cfg, dim=self.dim, num_nodes=self.num_nodes, temperature=self.temperature,
                                   audio_pool=self.audio_pool)

    def loss(self, model, batch):
        if "alt_mix_audio" not in batch:
            raise KeyError("Mix-and-Localize needs a second mixture of the same sources (batch key 'alt_mix_audio'): "
                           "read AlternateMixtureDataset, make_loaders(cfg, mixtures='alternates') (tasks.pretrain "
                           "does so for this objective)")
        return model(batch["images"], batch["mix_audio"], batch["alt_mix_audio"])

    @torch.no_grad()
    def evaluate(self, model, loader, cfg, device="cpu"):
        """Monitors on the test mixtures (as ``train.py``'s validation): the cycle loss and walk accuracy."""
        return {f"val_{k}": v for k, v in validation_loss(self, model, loader, device).items()}

    @torch.no_grad()
    def localization_map(self, model: MixAndLocalizeModel, image: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """One cosine map per node (B, K, Nv), reduced over the nodes by ``node_readout`` -> (B, gh, gw)."""
        with eval_mode(model):
            cos = torch.einsum("npc,nkc->nkp", model.visual(image), model.nodes(audio))
            return as_grid(cos.amax(dim=1) if self.node_readout == "max" else cos.mean(dim=1), model.encoder)


register_objective(MixAndLocalize())
