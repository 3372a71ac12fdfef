"""OneAVM-style (reconstructed): a re-construction of OneAVM (Mo & Morgado, "A Unified Audio-Visual
Learning Framework for Localization, Separation, and Recognition", ICML 2023, arXiv:2305.19458) as a
pre-training objective of the kit's two-stream ViT backbone.

**There is no public code.** github.com/stoneMo/OneAVM (commit bf33df8) holds a README ("We will
release our code soon!") and ``assets/framework.png``; the method section was not available. What is
known: the abstract (a shared audio-visual encoder and task decoders, trained with (1) a localized
audio-visual correspondence loss, (2) mix-and-separate, (3) mixed visual alignment: images mixed in
pixel space are aligned with all their sources), the framework figure (a "max sim" term between the
projected visual tokens of image i and its audio a_i plus a "sim" term on the pooled visual feature;
max sim between the mixed image's tokens and *each* of a_i and a_j; separation from pool(v_i) and the
mixed audio through a decoder to a mask on the mixed spectrogram) and the DeepAVFusion supplement
(OneAVM's separation: binary dominant-source masks, BCE). Everything else below is **invented** and
named; the numbers are fields of ``OneAVMStyle`` (``docs/baselines.md#oneavm-style-reconstructed``).

    v_{n,p} = L2(Wv x_{n,p})   a_m = L2(Wa mean_q y_{m,q})   (projected visual tokens, pooled audio)
    L_mil    = symmetric InfoNCE on  s_nm = max_p <v_{n,p}, a_m> / tau            (EZ-VSL's form)
    L_global = symmetric InfoNCE on  <L2(mean_p v_{n,p}), a_m> / tau
    L_mixvis = for the mixed image u_b = lam I_{b,0} + (1 - lam) I_{b,1}: each of its two sources' audio
               against the other audios, scores max_p <v_{u_b,p}, a_m> / tau
    L_sep    = BCE(decoder(mixture tokens, image n), [source n dominates the bin])
    L = w_mil L_mil + w_global L_global + w_mixvis L_mixvis + w_sep L_sep

Invented choices (with the field that holds each):

1. The pairs: the 2B (source image, source audio) pairs of a batch of B mixtures (``images``,
   ``source_audio``); negatives = the other 2B - 1 pairs, in-batch, no queue, no EMA, no dropout
   (SLAVC's EMA and dropout are not reused). Another pair of the same digit class is a negative too
   (a false negative, as for EZ-VSL: with 10 digits and 4 per scene, another scene holds the spoken digit
   about a third of the time).
2. Projections: one Linear D -> ``proj_dim`` per modality (default D) on the visual tokens and on the
   mean-pooled audio tokens, L2-normalized (EZ-VSL: a 1x1 conv and a Linear after a max pool).
3. ``tau`` = 0.03 (EZ-VSL and SLAVC, same authors); loss weights ``w_*`` = 1.
4. The global term: the mean of the projected visual tokens, re-normalized (the figure's pool + sim).
5. Image mixing: mixup of the pair's two images in (normalized) pixel space with ``mix_lambda`` = 0.5
   (the figure shows one mixed image; CutMix / tiling would be the other reading). Its term is
   image-anchored; each positive competes only with the 2B - 2 audios that are not in the mixed image
   (the other positive is masked out of its softmax), so the term can reach 0.
6. The separation decoder: the kit's ``AVSrcSepUNet`` (DeepAVFusion's separation U-Net, the same
   authors' decoder a year later) on the mixture's per-layer audio tokens, conditioned on the image's
   pooled tokens: it is the figure's pool(v_i) + mixed audio -> decoder -> mask. Masks on the mel grid;
   targets binary dominant (``mask_rule`` "dominant"), plain BCE (``weighted_loss`` False), i.e. exactly
   the kit's downstream separation loss (``heads.separation_targets``, ``heads.separation_loss``).
7. Mixtures: the kit's plain sums (``MixtureDataset``); the audio gain is not known.
8. Optimizer (``config_overrides``): EZ-VSL's (Adam, lr 1e-4, no weight decay, constant lr); OneAVM's
   is unknown.

**Zero-shot read-outs** (its own inference as reconstructed): ``localization_map`` = the max-sim map
``<v_p, a> / tau`` on the visual token grid; ``separation_mask`` = sigmoid of the decoder's logits.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Config
from ..heads import AVSrcSepUNet, separation_loss, separation_targets
from ..model import build_encoder
from ..objectives import register_objective
from .mixsep import MixSepObjective, freeze_fusion_stream, two_stream, unwrap

__all__ = ["OneAVMStyleModel", "OneAVMStyle", "oneavm_loss", "info_nce"]


def info_nce(logits: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE of a square score matrix ``(N, N)`` whose diagonal holds the pairs:
    ``(CE over columns for each row + CE over rows for each column) / 2``."""
    target = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


class OneAVMStyleModel(nn.Module):
    """The late-fusion encoder at ``.encoder`` plus ``visual_proj``, ``audio_proj`` and ``sep_decoder``
    (``AVSrcSepUNet``).

    ``forward(images (B, 2, 3, H, W), mix_audio (B, 1, F, T), source_audio (B, 2, 1, F, T)) -> dict``:
    ``v (2B, Nv, P)`` projected tokens of the source images (pair n = scene k of item b, n = 2b + k),
    ``a (2B, P)`` their audios, ``v_mix (B, Nv, P)`` the mixed images' tokens, ``sep_logits
    (B, 2, 1, F, T)`` each source image's mask logits on the mixture.
    """

    def __init__(self, cfg: Config, proj_dim: int | None = None, mix_lambda: float = 0.5):
        super().__init__()
        self.encoder = build_encoder(cfg.model)
        freeze_fusion_stream(self.encoder)
        D = cfg.model.embed_dim
        P = int(proj_dim or D)
        self.mix_lambda = float(mix_lambda)
        self.visual_proj = nn.Linear(D, P)
        self.audio_proj = nn.Linear(D, P)
        self.sep_decoder = AVSrcSepUNet(D, levels=max(1, math.ceil(math.log2(cfg.model.patch_size))))

    def embed_visual(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(N, Nv, D) -> (N, Nv, P)`` unit vectors."""
        return F.normalize(self.visual_proj(tokens), dim=-1)

    def embed_audio(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(N, Na, D) -> (N, P)`` unit vectors of the mean-pooled tokens."""
        return F.normalize(self.audio_proj(tokens.mean(1)), dim=-1)

    def separate(self, audio_embs, image_last: torch.Tensor, size) -> torch.Tensor:
        """Mask logits ``(N, 1, F, T)`` from the mixture's per-layer audio tokens (L x ``(N, Na, D)``) and
        the image's last-layer tokens ``(N, Nv, D)`` (pooled inside the decoder)."""
        logits = self.sep_decoder(audio_embs, image_last, self.encoder.audio_grid)
        if tuple(logits.shape[-2:]) != tuple(size):
            logits = F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)
        return logits

    def forward(self, images: torch.Tensor, mix_audio: torch.Tensor, source_audio: torch.Tensor) -> dict:
        B, K = images.shape[:2]
        lam = self.mix_lambda
        mixed = lam * images[:, 0] + (1 - lam) * images[:, 1]                        # (B, 3, H, W)
        out = two_stream(self.encoder, torch.cat([images.flatten(0, 1), mixed]),
                         torch.cat([source_audio.flatten(0, 1), mix_audio]), return_embs=True)
        n = B * K
        v_all = self.embed_visual(out.image)                                         # (2B + B, Nv, P)
        mix_embs = [e[n:].repeat_interleave(K, 0) for e in out.embs_audio]          # L x (B*K, Na, D)
        sep = self.separate(mix_embs, out.embs_image[-1][:n], mix_audio.shape[-2:])  # (B*K, 1, F, T)
        return {"v": v_all[:n], "v_mix": v_all[n:], "a": self.embed_audio(out.audio[:n]),
                "sep_logits": sep.view(B, K, *sep.shape[1:])}


def oneavm_loss(out: dict, source_audio: torch.Tensor, mix_audio: torch.Tensor, tau: float = 0.03,
                weights: dict[str, float] | None = None, mask_rule: str = "dominant",
                weighted_loss: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The four OneAVM-style terms (module docstring) and their weighted sum.

    ``out``: ``OneAVMStyleModel``'s forward (``v (2B, Nv, P)``, ``a (2B, P)``, ``v_mix (B, Nv, P)``,
    ``sep_logits (B, 2, 1, F, T)``); ``source_audio (B, 2, 1, F, T)``, ``mix_audio (B, 1, F, T)``.
    """
    w = {"mil": 1.0, "global": 1.0, "mixvis": 1.0, "sep": 1.0, **(weights or {})}
    v, a, v_mix = out["v"].float(), out["a"].float(), out["v_mix"].float()
    n = a.shape[0]
    sim = torch.einsum("npd,md->nmp", v, a).amax(-1) / tau                    # (2B, 2B) max over locations
    g = F.normalize(v.mean(1), dim=-1)                                        # (2B, P) pooled visual
    sim_mix = torch.einsum("bpd,md->bmp", v_mix, a).amax(-1) / tau            # (B, 2B)
    pos = torch.zeros_like(sim_mix, dtype=torch.bool)
    rows = torch.arange(sim_mix.shape[0], device=a.device)
    pos[rows, 2 * rows] = pos[rows, 2 * rows + 1] = True                      # the mixed image's two sources
    mixvis = 0.0
    for k in range(2):                                                        # each positive vs the negatives
        own = 2 * rows + k
        masked = sim_mix.masked_fill(pos & (torch.arange(n, device=a.device)[None] != own[:, None]), float("-inf"))
        mixvis = mixvis + F.cross_entropy(masked, own) / 2
    K = out["sep_logits"].shape[1]
    mix = mix_audio.repeat_interleave(K, 0)
    target = separation_targets(source_audio.flatten(0, 1), mix, binary=True, rule=mask_rule)
    terms = {"mil": info_nce(sim), "global": info_nce(g @ a.T / tau), "mixvis": mixvis,
             "sep": separation_loss(out["sep_logits"].flatten(0, 1), target, mix, weighted=weighted_loss)}
    loss = sum(w[k] * v for k, v in terms.items())
    return loss, {k: v.detach() for k, v in terms.items()}


@register_objective
class OneAVMStyle(MixSepObjective):
    """OneAVM-style (reconstructed): localized correspondence + mixed visual alignment + mix-and-separate
    (module docstring: every invented choice)."""

    name = "oneavm"
    fields = ("tau", "proj_dim", "mix_lambda", "w_mil", "w_global", "w_mixvis", "w_sep", "mask_rule",
              "weighted_loss")
    tau = 0.03
    proj_dim: int | None = None
    mix_lambda = 0.5
    w_mil = w_global = w_mixvis = w_sep = 1.0
    mask_rule = "dominant"
    weighted_loss = False
    published = {"mask_rule": "binary dominant-source mask, BCE (DeepAVFusion supplement)"}
    notes = {f: "invented (no public code); see the module docstring" for f in fields if f != "mask_rule"}
    pretrain_recipe = {"optimizer": "adam", "lr": 1e-4, "betas": (0.9, 0.999), "weight_decay": 0.0,
                       "warmup_epochs": 0.0, "schedule": "constant"}

    @property
    def map_range(self) -> tuple[float, float]:
        """The fixed range of the max-sim map ``<v_p, a> / tau``: (-1 / tau, 1 / tau)."""
        return (-1.0 / self.tau, 1.0 / self.tau)

    def build(self, cfg: Config) -> OneAVMStyleModel:
        self.check_config(cfg)
        return OneAVMStyleModel(cfg, proj_dim=self.proj_dim, mix_lambda=self.mix_lambda)

    def loss(self, model, batch):
        out = model(batch["images"], batch["mix_audio"], batch["source_audio"])
        weights = {"mil": self.w_mil, "global": self.w_global, "mixvis": self.w_mixvis, "sep": self.w_sep}
        return oneavm_loss(out, batch["source_audio"], batch["mix_audio"], self.tau, weights, self.mask_rule,
                           self.weighted_loss)

    @torch.no_grad()
    def separation_mask(self, model, mix_audio: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """``(B, 1, F, T)``: sigmoid of the decoder's mask logits for ``image`` on the mixture."""
        inner = unwrap(model)
        out = two_stream(inner.encoder, image, mix_audio, return_embs=True)
        return torch.sigmoid(inner.separate(out.embs_audio, out.embs_image[-1], mix_audio.shape[-2:]))

    @torch.no_grad()
    def localization_map(self, model, image: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """``(B, gh, gw)``: the max-sim map ``<v_p, a> / tau`` of each image with its own audio."""
        inner = unwrap(model)
        out = two_stream(inner.encoder, image, audio)
        v, a = inner.embed_visual(out.image), inner.embed_audio(out.audio)
        return torch.einsum("bpd,bd->bp", v, a).view(image.shape[0], *inner.encoder.image_grid) / self.tau
