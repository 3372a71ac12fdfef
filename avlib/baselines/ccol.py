"""CCoL (Tian, Hu, Xu, "Cyclic Co-Learning of Sounding Object Visual Grounding and Sound Separation",
CVPR 2021) as a pre-training objective of the kit's two-stream ViT backbone.

Read from github.com/YapengTian/CCOL-CVPR21 (commit 0f9cf3b), all under ``code/``: ``main_grd.py``,
``main_col.py``, ``main_ccol.py`` (``NetWrapper.forward``: the three stages' losses; ``create_optimizer``),
``models/grounding_net.py`` (``Grounding``), ``models/__init__.py`` (``weights_init``),
``dataset/base.py`` (``_mix_n_and_stft``), ``dataset/music.py`` and ``scripts/train_{grd,col,ccol}.sh``.
No code is copied; the separation stack is this package's Sound-of-Pixels port (CCoL builds on SoP's);
``docs/baselines.md#ccol``.

**The method.** A video holds objects (detector crops), some sounding, some silent. A grounding
classifier ``g(a, o) = 2 MLP([f_a ; f_o])`` (class 0 = "o sounds in a") gates the separation: video V's
predicted mask on the mixture is ``sum_{o in V} round(P_g(mix, o)) mask_o`` (the rounding passes no
gradient), and its error against V's ratio target trains the separation. Separation in turn relabels
grounding: the object of V whose own mask is closest to V's target is V's sounding object (positive),
the others, where their error exceeds ``th``, are silent (negative). Three stages:

| stage | loss (this module's terms) | published epochs |
|---|---|---|
| ``grd`` | ``mil_solo``: MIL over A's objects with A's solo audio, + solo B vs A's object as a negative | 40 |
| ``col`` | ``sep`` + 0.25 (``mil_solo`` + ``mil_mix``: MIL over each video's objects with the mixture) | 60 |
| ``ccol`` | ``sep`` + 0.25 (``pos`` + ``neg``) + 0.5 ``cyc`` (A's solo audio with A's relabeled object, + solo B with it as a negative) | 60 |

**On the kit.** Video A / B = the two scenes of a ``MixtureDataset`` item (``images[:, 0]``, ``images[:, 1]``),
the mixture = ``mix_audio``, the solo audios = ``source_audio``. Every term is computed at every step and
the stage only sets the weights (``STAGE_WEIGHTS``), so every parameter is in every step's graph.

Invented or changed (each a field of ``CCoL`` where it is a number):

1. **Objects = the four grid quadrants** of each scene image (the cells of a 2 x 2 AV-Digits scene),
   not detector crops: the quadrant's visual tokens mean-pooled (grounding feature ``f_o``) and its
   ``SoPVisualHead`` logits max-pooled (the separation's image vector). This is a layout prior the other
   methods lack; the tokens also see the rest of the image through attention, a crop would not.
2. **Silent objects = the other quadrants of the same scene.** In CCoL each video = one sounding crop +
   one silent crop taken from another video with its audio removed; in a scene exactly one digit speaks,
   so the other quadrants (distractor digits or empty cells) are its silent objects, with no extra data.
   Which quadrant sounds is never read (no labels): the relabeling decides, as CCoL's does. With 4
   objects instead of 2: the positive is the argmin of the errors (CCoL: ``round(1 - e0 / (e0 + e1))``,
   ties go to the first quadrant here, to object 1 there), every other object is a gated negative and
   the negatives of a video are averaged (divided by ``4 - 1``; CCoL has one), so positives and negatives
   keep CCoL's 1 : 1 weight per video.
3. **"Object 0 of A"** (the known sounding crop CCoL pairs with B's solo audio as a negative, and the
   target of A's solo audio): ``cyc`` uses A's relabeled object, ``mil_solo`` the object A's solo audio
   currently grounds best (the MIL argmin, detached). A's sounding class differs from B's
   (``MixtureDataset`` draws distinct classes), as CCoL's four distinct classes guarantee. Like the code,
   these solo terms use video A only.
4. ``col``'s mixture MIL: the code takes the min over objects of *batch-mean* CEs, which works there
   because entry 0 is always the sounding crop; a quadrant index means nothing across scenes, so the
   min is per sample (as the solo MIL's is).
5. One shared two-stream backbone for grounding and separation (CCoL: a VGGish-like audio net and a
   ResNet-18 for grounding, a U-Net and a dilated ResNet-18 for separation, the ResNets frozen): the
   audio feature ``f_a`` is the mean of the audio tokens, ``f_o`` the quadrant's mean visual token; the
   ViTs train. The grounding MLP keeps the published widths (2D -> 512 -> 128 -> 2, logits x 2).
6. **Stages by step count within one run**: ``schedule`` (published epochs 40 / 60 / 60) splits the run's
   optimizer steps in those proportions; ``(0, 0, 1)`` runs ``ccol`` throughout. The model counts its
   training forwards in a buffer (``calls``, in every checkpoint; rounded down to a whole optimizer step
   when loaded, so ``fit``'s resume stays exact); the run's total comes from ``planned_steps(cfg)``.
7. Targets and weights on the mel grid: ratio masks = amplitude ratio ``sqrt(P_src / P_mix)`` clamped
   to [0, ``max_ratio``] (``mixsep.ratio_targets``), L1 weighted by ``heads.separation_weight``
   (published: STFT magnitudes, ``log1p |S_mix|``); plain-sum mixtures (published: ``(a0 + a2) / 2``).
8. Optimizer (``config_overrides``): Adam, default betas, no weight decay, lr 1e-4 for every module,
   cosine. Published: lr 1e-4, x0.1 at epochs 20/30 (grd) and 30/50 (col, ccol), the grounding nets at
   1e-5 in ``col``; ``LRSchedule`` has no step decay and one run has one lr per module. Batch 48 ->
   the profile's (every method pre-trains for the same steps).

**Zero-shot separation** (CCoL's own inference for a video, its training-time rule): the scene's gated
mask ``sum_o round(P_g(mix, o)) mask_o``, clamped to [0, 1]; when no quadrant passes the gate, the
mask of the most probable one (so an estimate is never silent; BSS-eval would skip it). No localization
map (CCoL scores objects, not locations).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Config
from ..heads import separation_weight
from ..model import build_encoder
from ..objectives import register_objective
from .mixsep import (MixSepObjective, freeze_fusion_stream, planned_steps, quadrant_pool, ratio_targets,
                     two_stream, unwrap)
from .sound_of_pixels import SoPAudioNet, SoPVisualHead, Synthesizer, sop_init_

__all__ = ["Grounding", "CCoLModel", "CCoL", "ccol_loss", "ccol_terms", "STAGES", "STAGE_WEIGHTS", "stage_bounds"]

STAGES = ("grd", "col", "ccol")
# the weight of each term in each stage (main_grd.py, main_col.py, main_ccol.py); absent = 0
STAGE_WEIGHTS = {
    "grd": {"mil_solo": 1.0},
    "col": {"sep": 1.0, "mil_solo": 0.25, "mil_mix": 0.25},
    "ccol": {"sep": 1.0, "pos": 0.25, "neg": 0.25, "cyc": 0.5},
}
SOUNDING, SILENT = 0, 1          # the grounding classifier's classes (CCoL: label 0 = sounding)


def stage_bounds(total_steps: int, schedule) -> tuple[int, int]:
    """Optimizer steps at which ``col`` and ``ccol`` start, splitting ``total_steps`` in the proportions
    of ``schedule`` (epochs of grd, col, ccol)."""
    if len(schedule) != 3 or min(schedule) < 0 or sum(schedule) <= 0:
        raise ValueError(f"schedule={schedule!r}: three non-negative stage lengths (grd, col, ccol), not all 0")
    tot = float(sum(schedule))
    return (round(total_steps * schedule[0] / tot), round(total_steps * (schedule[0] + schedule[1]) / tot))


class Grounding(nn.Module):
    """CCoL's grounding classifier: ``g(a, o) = 2 * fc3(relu(fc2(relu(fc1([a ; o])))))``, 2 logits
    (class 0 = sounding). ``forward(a (..., D), o (..., D)) -> (..., 2)``."""

    def __init__(self, embed_dim: int, hidden: tuple[int, int] = (512, 128)):
        super().__init__()
        self.fc1 = nn.Linear(2 * embed_dim, hidden[0])
        self.fc2 = nn.Linear(hidden[0], hidden[1])
        self.fc3 = nn.Linear(hidden[1], 2)
        sop_init_(self)                  # CCoL applies weights_init to the grounding net: N(0, 1e-4)

    def forward(self, a: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        x = torch.cat([a, o], dim=-1)
        return 2 * self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


class CCoLModel(nn.Module):
    """The late-fusion encoder at ``.encoder`` plus the SoP separation stack (``audio_unet``,
    ``visual_head``, ``synthesizer``) and the ``grounding`` classifier, over quadrant objects.

    ``forward(images (B, 2, 3, H, W), mix_audio (B, 1, F, T), source_audio (B, 2, 1, F, T)) -> dict``:
    ``mask_logits (B, 2, 4, F, T)`` (each object's mask on the mixture), grounding logits
    ``g_mix (B, 2, 4, 2)`` (the mixture with each object), ``g_solo (B, 2, 4, 2)`` (scene k's solo
    audio with scene k's objects), ``g_cross (B, 2, 4, 2)`` (the other scene's solo audio with scene k's
    objects) and ``stage`` (a name of ``STAGES``). Training forwards advance the stage counter.
    """

    def __init__(self, cfg: Config, num_maps: int = 32, min_width: int = 8, hidden=(512, 128),
                 schedule=(40, 60, 60), total_steps: int | None = None):
        super().__init__()
        self.encoder = build_encoder(cfg.model)
        freeze_fusion_stream(self.encoder)
        D, p = cfg.model.embed_dim, cfg.model.patch_size
        gh, gw = self.encoder.image_grid
        if gh % 2 or gw % 2:
            raise ValueError(f"CCoL's quadrant objects need an even visual token grid, got {gh}x{gw}")
        self.audio_unet = SoPAudioNet(D, num_maps, levels=max(1, math.ceil(math.log2(p))), min_width=min_width)
        self.visual_head = SoPVisualHead(D, num_maps)
        self.synthesizer = Synthesizer(num_maps)
        self.grounding = Grounding(D, tuple(hidden))
        self.accum_steps = int(cfg.pretrain.accum_steps)
        total = planned_steps(cfg) if total_steps is None else int(total_steps)
        self.register_buffer("stage_starts", torch.tensor(stage_bounds(total, schedule), dtype=torch.long))
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))      # training forwards so far
        self.register_load_state_dict_post_hook(_whole_steps)

    @property
    def step(self) -> int:
        """Optimizer steps taken so far (training forwards // accum_steps)."""
        return int(self.calls) // self.accum_steps

    @property
    def stage(self) -> str:
        col, ccol = (int(s) for s in self.stage_starts)
        return "grd" if self.step < col else "col" if self.step < ccol else "ccol"

    def objects(self, image_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Visual tokens ``(N, Nv, D)`` -> per quadrant: the separation's image vector ``(N, 4, K)``
        (sigmoid of the max of the visual head over the quadrant) and the grounding feature ``(N, 4, D)``."""
        grid = self.encoder.image_grid
        logits = self.visual_head(image_tokens, grid).flatten(2).transpose(1, 2)      # (N, Nv, K)
        vec = torch.sigmoid(quadrant_pool(logits, grid, "max"))                       # (N, 4, K)
        return vec, quadrant_pool(image_tokens, grid, "mean")                         # (N, 4, K), (N, 4, D)

    def object_masks(self, vec: torch.Tensor, mix_tokens: torch.Tensor, size) -> torch.Tensor:
        """``vec (B, O, K)`` image vectors of O objects, ``mix_tokens (B, Na, D)`` -> mask logits ``(B, O, F, T)``."""
        sound = self.audio_unet(mix_tokens, self.encoder.audio_grid, size)            # (B, K, F, T)
        return self.synthesizer.pixelwise(vec.transpose(1, 2), sound)                 # (B, O, F, T)

    def forward(self, images: torch.Tensor, mix_audio: torch.Tensor, source_audio: torch.Tensor) -> dict:
        stage = self.stage
        if self.training:
            self.calls += 1
        B, K = images.shape[:2]
        audios = torch.cat([mix_audio, source_audio.flatten(0, 1)])                   # (B + B*K, 1, F, T)
        out = two_stream(self.encoder, images.flatten(0, 1), audios)
        vec, f_obj = self.objects(out.image)                                          # (B*K, 4, Kmaps), (B*K, 4, D)
        n_obj = vec.shape[1]
        masks = self.object_masks(vec.reshape(B, K * n_obj, -1), out.audio[:B], mix_audio.shape[-2:])
        f_audio = out.audio.mean(1)                                                   # (B + B*K, D)
        f_mix = f_audio[:B, None, None].expand(B, K, n_obj, -1)                       # (B, K, 4, D)
        f_solo = f_audio[B:].view(B, K, 1, -1).expand(B, K, n_obj, -1)                # scene k's solo audio
        f_obj = f_obj.view(B, K, n_obj, -1)
        return {"mask_logits": masks.view(B, K, n_obj, *masks.shape[-2:]),
                "g_mix": self.grounding(f_mix, f_obj),
                "g_solo": self.grounding(f_solo, f_obj),
                "g_cross": self.grounding(f_solo.flip(1), f_obj),     # K = 2: the other scene's solo audio
                "stage": stage}


def _whole_steps(module: CCoLModel, incompatible_keys) -> None:
    """After loading a checkpoint: round the forward counter down to a whole optimizer step (a checkpoint
    written on an interrupt inside gradient accumulation holds the weights of the last step boundary)."""
    with torch.no_grad():
        module.calls.copy_(module.calls // module.accum_steps * module.accum_steps)


def _ce(logits: torch.Tensor, cls: int) -> torch.Tensor:
    """Per-item cross-entropy ``(..., 2) -> (...)`` to class ``cls``."""
    flat = logits.reshape(-1, logits.shape[-1]).float()
    target = torch.full((flat.shape[0],), cls, dtype=torch.long, device=flat.device)
    return F.cross_entropy(flat, target, reduction="none").view(logits.shape[:-1])


def _take(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``x (..., O)``, ``idx (...)`` -> ``x[..., idx]`` ``(...)``."""
    return x.gather(-1, idx.unsqueeze(-1)).squeeze(-1)


def ccol_terms(out: dict, source_audio: torch.Tensor, mix_audio: torch.Tensor, th: float = 0.1,
               max_ratio: float = 5.0) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Every CCoL term of one batch (each a mean over the batch) and the gates ``round(P_g(mix, o))``.

    ``out``: ``CCoLModel``'s forward; ``source_audio (B, 2, 1, F, T)``, ``mix_audio (B, 1, F, T)``.
    Scene 0 is CCoL's video A, scene 1 video B:

    - ``sep``   = mean_{k,f,t} w |sum_o round(P_g(mix, o)) mask_o - r_k|       (r_k: ratio target of scene k)
    - ``pos``   = sum_k CE(g(mix, o*_k), sounding),  o*_k = argmin_o e_ko,  e_ko = mean_{f,t} w |mask_ko - r_k|
    - ``neg``   = sum_k mean_{o != o*_k} [(1 + sign(e_ko - th)) / 2] CE(g(mix, o), silent)
    - ``cyc``   = CE(g(solo_A, o*_A), sounding) + CE(g(solo_B, o*_A), silent)
    - ``mil_solo`` = min_o CE(g(solo_A, o), sounding) + CE(g(solo_B, o_A), silent),  o_A = that argmin
    - ``mil_mix``  = sum_k min_o CE(g(mix, o in scene k), sounding)

    The gates (round, argmin, the sign gate) pass no gradient, as in the code. Returns
    ``({term: 0-d tensor}, gates (B, 2, O))``.
    """
    m = torch.sigmoid(out["mask_logits"].float())                             # (B, 2, O, F, T)
    n_obj = m.shape[2]
    r = ratio_targets(source_audio[:, :, 0], mix_audio, max_ratio)            # (B, 2, F, T)
    w = separation_weight(mix_audio)                                          # (B, 1, F, T)
    gate = torch.round(torch.softmax(out["g_mix"].float(), -1)[..., SOUNDING]).detach()   # (B, 2, O)
    pred = (gate[..., None, None] * m).sum(2)                                 # (B, 2, F, T)
    err = (w[:, :, None] * (m - r[:, :, None]).abs()).mean(dim=(-2, -1)).detach()        # (B, 2, O)
    star = err.argmin(-1)                                                     # (B, 2) relabeled sounding object
    ce_mix_pos, ce_mix_neg = _ce(out["g_mix"], SOUNDING), _ce(out["g_mix"], SILENT)      # (B, 2, O)
    ce_solo_pos, ce_cross_neg = _ce(out["g_solo"], SOUNDING), _ce(out["g_cross"], SILENT)
    others = torch.ones_like(err).scatter(-1, star.unsqueeze(-1), 0.0)
    neg_gate = others * (1 + torch.sign(err - th)) / 2
    a_star, mil_idx = star[:, 0], ce_solo_pos[:, 0].detach().argmin(-1)
    terms = {
        "sep": (w * (pred - r).abs()).mean(),
        "pos": _take(ce_mix_pos, star).sum(1).mean(),
        "neg": ((neg_gate * ce_mix_neg).sum(-1) / max(n_obj - 1, 1)).sum(1).mean(),
        "cyc": _take(ce_solo_pos[:, 0], a_star).mean() + _take(ce_cross_neg[:, 0], a_star).mean(),
        "mil_solo": ce_solo_pos[:, 0].amin(-1).mean() + _take(ce_cross_neg[:, 0], mil_idx).mean(),
        "mil_mix": ce_mix_pos.amin(-1).sum(1).mean(),
    }
    return terms, gate


def ccol_loss(out: dict, source_audio: torch.Tensor, mix_audio: torch.Tensor, stage: str | None = None,
              th: float = 0.1, max_ratio: float = 5.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The stage's weighted sum of ``ccol_terms`` (``STAGE_WEIGHTS``; ``stage`` defaults to
    ``out["stage"]``) and the logged terms, the stage's index and ``gate_on`` (the fraction of objects the
    grounding lets through). Every term is in the graph at every stage (weight 0 where unused)."""
    stage = stage or out["stage"]
    terms, gate = ccol_terms(out, source_audio, mix_audio, th, max_ratio)
    weights = STAGE_WEIGHTS[stage]
    loss = sum(weights.get(k, 0.0) * v for k, v in terms.items())
    logs = {k: v.detach() for k, v in terms.items()}
    logs.update(stage=torch.tensor(float(STAGES.index(stage))), gate_on=gate.mean())
    return loss, logs


@register_objective
class CCoL(MixSepObjective):
    """CCoL's cyclic co-learning of grounding and separation (module docstring: changes and choices)."""

    name = "ccol"
    fields = ("num_maps", "min_width", "hidden", "schedule", "th", "max_ratio")
    num_maps = 32
    min_width = 8
    hidden = (512, 128)
    schedule = (40, 60, 60)
    th = 0.1
    max_ratio = 5.0
    published = {"num_maps": 32, "min_width": "ngf 64 (7-level U-Net)", "hidden": (512, 128),
                 "schedule": "40 + 60 + 60 epochs, three runs (grd, col, ccol)", "th": 0.1, "max_ratio": 5.0}
    notes = {"min_width": "the up path from ViT tokens (sound_of_pixels.SoPAudioNet)",
             "schedule": "stages by step count within one run, in the published proportions",
             "max_ratio": "amplitude ratio on the mel grid (mixsep.ratio_targets)"}
    pretrain_recipe = {"optimizer": "adam", "lr": 1e-4, "betas": (0.9, 0.999), "weight_decay": 0.0,
                       "warmup_epochs": 0.0, "schedule": "cosine"}

    def build(self, cfg: Config) -> CCoLModel:
        self.check_config(cfg)
        return CCoLModel(cfg, num_maps=self.num_maps, min_width=self.min_width, hidden=self.hidden,
                         schedule=self.schedule)

    def loss(self, model, batch):
        out = model(batch["images"], batch["mix_audio"], batch["source_audio"])
        return ccol_loss(out, batch["source_audio"], batch["mix_audio"], th=self.th, max_ratio=self.max_ratio)

    @torch.no_grad()
    def separation_mask(self, model, mix_audio: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """``(B, 1, F, T)``: the image's gated mask ``sum_o round(P_g(mix, o)) mask_o`` clamped to [0, 1];
        the most probable quadrant's mask where none passes the gate."""
        inner = unwrap(model)
        out = two_stream(inner.encoder, image, mix_audio)
        vec, f_obj = inner.objects(out.image)                                         # (B, 4, K), (B, 4, D)
        masks = torch.sigmoid(inner.object_masks(vec, out.audio, mix_audio.shape[-2:]))   # (B, 4, F, T)
        p = torch.softmax(inner.grounding(out.audio.mean(1, keepdim=True).expand_as(f_obj), f_obj), -1)[..., SOUNDING]
        gate = torch.round(p)                                                         # (B, 4)
        none = gate.sum(-1) == 0
        gate[none] = F.one_hot(p[none].argmax(-1), p.shape[-1]).to(gate.dtype)
        return (gate[..., None, None] * masks).sum(1, keepdim=True).clamp(0.0, 1.0)
