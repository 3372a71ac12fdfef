"""What the three mix-and-separate baselines share (Sound-of-Pixels, CCoL, OneAVM-style; ``docs/baselines.md``).

- ``MixSepObjective``: the ``Objective`` base of the three: pre-trains on ``MixtureDataset`` pairs
  (``mixtures = True``), requires the late-fusion two-stream backbone (``model.fusion_arch="none"``),
  keeps its hyper-parameters as instance fields (published values by default, each kit change named in
  ``notes``), offers the published optimizer recipe in kit terms (``config_overrides``) and monitors the
  validation losses.
- ``two_stream``: one call of a late-fusion encoder on different numbers of images and audios.
- ``quadrant_pool``: tokens of each grid quadrant pooled (CCoL's "objects").
- Targets on the kit's mel grid: ``ratio_targets`` (amplitude ratio, CCoL) next to ``heads.separation_targets``
  (binary dominant masks, Sound-of-Pixels and OneAVM-style) and ``heads.separation_weight``.
- ``planned_steps``: the optimizer steps ``tasks.pretrain`` will run (CCoL's stage schedule).
- ``zero_shot_separation``: an objective's zero-shot masks scored by the kit's separation evaluation
  (``protocols.Separation``: the same mel-mask -> waveform path, the same BSS-eval).

Every loss here reads only audio-visual inputs and mixtures (``images``, ``mix_audio``,
``mix_waveform``, ``source_audio``, ``source_waveforms``), never a label, map or ``sounding`` field.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..config import Config, ConfigError, ModelConfig
from ..data.loaders import make_loaders
from ..model import DeepAVFusion, EncoderOutput
from ..objectives import OBJECTIVES, Objective
from ..protocols import PROTOCOLS
from ..utils import world_size

__all__ = ["MixSepObjective", "require_two_stream", "two_stream", "freeze_fusion_stream", "quadrant_pool",
           "ratio_targets", "planned_steps", "unwrap", "zero_shot_separation", "MIX_KEYS"]

# the only batch keys a mix-and-separate pre-training loss may read (no labels, maps or `sounding`)
MIX_KEYS = ("images", "mix_audio", "mix_waveform", "source_audio", "source_waveforms")


def require_two_stream(model_cfg: ModelConfig, method: str = "this method") -> None:
    """Raise a ``ConfigError`` unless the encoder is the late-fusion two-stream backbone."""
    if model_cfg.fusion_arch != "none":
        raise ConfigError(
            f"{method} pre-trains the late-fusion two-stream backbone (two independent ViTs), but "
            f"model.fusion_arch={model_cfg.fusion_arch!r}; pass the override model.fusion_arch=none, e.g. "
            "make_config(profile, **{'model.fusion_arch': 'none'}) or "
            "make_config(profile, **OBJECTIVES[name].config_overrides())")


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (read-outs call its methods; training calls the wrapper's forward)."""
    return model.module if hasattr(model, "module") else model


def two_stream(encoder: DeepAVFusion, image: torch.Tensor, audio: torch.Tensor,
               return_embs: bool = False) -> EncoderOutput:
    """Both streams of a late-fusion encoder in one call: ``image (Bi, 3, H, W)``, ``audio (Ba, 1, F, T)``.

    With ``fusion_arch="none"`` the two ViTs never see each other (``DeepAVFusion.forward_layer`` runs
    each stream's block alone), so ``Bi`` and ``Ba`` may differ: e.g. the K source images of a mixture
    batch (B*K) and the mixture itself (B). Returns the encoder's output: ``.image (Bi, Nv, D)``,
    ``.audio (Ba, Na, D)`` (``.fusion`` is the untouched fusion-token stream and means nothing here).
    """
    require_two_stream(encoder.cfg)
    return encoder(image, audio, return_embs=return_embs)


def freeze_fusion_stream(encoder: DeepAVFusion) -> None:
    """With ``fusion_arch="none"`` the fusion tokens and ``fusion_norm`` take part in no loss: freeze them
    (they stay in every checkpoint, unchanged) so that every trainable parameter receives a gradient and
    DDP finds no unused parameter."""
    encoder.fusion_tokens.requires_grad_(False)
    encoder.fusion_norm.requires_grad_(False)


def quadrant_pool(tokens: torch.Tensor, grid: tuple[int, int], reduce: str = "mean") -> torch.Tensor:
    """Row-major tokens ``(B, gh*gw, C)`` -> one vector per grid quadrant ``(B, 4, C)``, in the order
    top-left, top-right, bottom-left, bottom-right (the cells of a 2 x 2 AV-Digits scene, row-major).
    ``reduce``: ``"mean"`` or ``"max"`` over the quadrant's tokens."""
    gh, gw = int(grid[0]), int(grid[1])
    if gh % 2 or gw % 2:
        raise ValueError(f"quadrant pooling needs an even token grid, got {gh}x{gw} "
                         "(choose model.image_size / patch_size so that both are even)")
    B, N, C = tokens.shape
    x = tokens.reshape(B, 2, gh // 2, 2, gw // 2, C)            # (B, qrow, h, qcol, w, C)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(B, 4, (gh // 2) * (gw // 2), C)
    if reduce == "mean":
        return x.mean(2)
    if reduce == "max":
        return x.amax(2)
    raise ValueError(f"reduce={reduce!r}: 'mean' or 'max'")


def ratio_targets(source_audio: torch.Tensor, mix_audio: torch.Tensor, max_ratio: float = 5.0) -> torch.Tensor:
    """Ratio-mask targets on the mel grid: the amplitude ratio ``|S_src| / |S_mix| = sqrt(P_src / P_mix)``
    of the mel powers ``P = 10 ** logmel``, clamped to ``[0, max_ratio]``.

    Sound-of-Pixels / CCoL (``gt = mags[n] / mag_mix`` clamped to [0, 5]) divide STFT magnitudes; the
    kit's masks live on the mel grid and multiply the mixture's STFT amplitude at inference
    (``audio.apply_mel_mask``), so the amplitude (not the power) ratio is the matching target. Where
    both are at the front end's floor (silence) the ratio is 1; the loss weight there is ~1e-3.
    ``source_audio``, ``mix_audio``: log10 mels of the same shape -> targets of that shape.
    """
    return torch.pow(10.0, (source_audio.float() - mix_audio.float()) / 2).clamp(0.0, max_ratio)


def planned_steps(cfg: Config) -> int:
    """The optimizer steps ``tasks.pretrain`` will run on a mixture dataset: ``fit``'s accounting
    (``len(loader) // accum_steps`` per epoch, capped by ``max_steps``) for ``make_loaders``' train loader
    of ``cfg.data.train_size`` mixtures (last partial batch dropped when at least one full batch exists;
    under torchrun each rank reads ``1 / world`` of them)."""
    p = cfg.pretrain
    n, bs = int(cfg.data.train_size), int(p.batch_size)
    drop_last = n >= bs
    world = world_size()
    if world > 1:
        n = n // world if drop_last else math.ceil(n / world)
    batches = n // bs if drop_last else math.ceil(n / bs)
    total = p.epochs * (batches // p.accum_steps)
    return total if p.max_steps is None else min(total, int(p.max_steps))


class MixSepObjective(Objective):
    """Base of the mix-and-separate baselines (see the module docstring).

    Subclasses list their configurable hyper-parameters in ``fields`` (class attributes holding the
    default), the published value of each in ``published`` and, where the kit's default differs, why in
    ``notes``; ``pretrain_recipe`` is the published optimizer in ``cfg.pretrain`` terms. A variant is a new
    instance with its own name (run directories are keyed on the objective's name)::

        register_objective(SoundOfPixels(name="sop_k16", num_maps=16))
    """

    mixtures = True
    fields: tuple[str, ...] = ()
    published: dict[str, Any] = {}
    notes: dict[str, str] = {}
    pretrain_recipe: dict[str, Any] = {}

    def __init__(self, name: str | None = None, **fields):
        unknown = sorted(set(fields) - set(self.fields))
        if unknown:
            raise TypeError(f"{type(self).__name__}: unknown field(s) {unknown}; fields: {', '.join(self.fields)}")
        if name is not None:
            self.name = name
        for k, v in fields.items():
            setattr(self, k, v)

    def check_config(self, cfg: Config) -> None:
        require_two_stream(cfg.model, f"the {self.name!r} objective")

    def config_overrides(self) -> dict[str, Any]:
        """``make_config`` overrides for this method: the two-stream backbone and the published optimizer
        recipe as far as ``TrainConfig`` expresses it (never the batch size or the number of steps: every
        method pre-trains for the same steps). ``make_config(profile, **objective.config_overrides())``."""
        return {"model.fusion_arch": "none", **{f"pretrain.{k}": v for k, v in self.pretrain_recipe.items()}}

    def hyperparameters(self) -> list[dict[str, Any]]:
        """One row per field: ``{"name", "kit", "published", "note"}`` (for the notebooks' tables)."""
        return [{"name": f, "kit": getattr(self, f), "published": self.published.get(f, "(none)"),
                 "note": self.notes.get(f, "")} for f in self.fields]

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader, cfg: Config, device="cpu") -> dict[str, float]:
        """Monitors: the loss and each logged term on the test mixtures (``val_*``), in eval mode.
        (The default 1-NN probe needs single scenes; a mixture objective's test split holds pairs.)"""
        was_training = model.training
        model.eval()
        sums: dict[str, float] = {}
        n = 0
        for batch in loader:
            batch = {k: batch[k].to(device) for k in MIX_KEYS if k in batch}
            loss, logs = self.loss(model, batch)
            b = batch["images"].shape[0]
            for k, v in {"loss": loss, **logs}.items():
                sums[f"val_{k}"] = sums.get(f"val_{k}", 0.0) + float(v) * b
            n += b
        model.train(was_training)
        return {k: v / max(n, 1) for k, v in sums.items()}


def zero_shot_separation(objective: str | Objective, model: nn.Module, cfg: Config, loader=None,
                         device="cpu") -> dict[str, float]:
    """Score an objective's zero-shot separation masks with the kit's separation evaluation.

    The masks come from ``objective.separation_mask(model, mix_audio, image)`` (no downstream training)
    and go through exactly the downstream protocol's path (``protocols.Separation.evaluate``: mel mask ->
    linear-frequency mask on the mixture's STFT -> iSTFT; BSS-eval with the DeepAVFusion skip rule).
    ``loader``: test mixtures (default: the separation protocol's test loader, its first
    ``eval_mixtures`` items). Returns ``sdr, sir, sar, sdr_mix, sdri, n_kept, n_skipped``.
    """
    obj = OBJECTIVES[objective] if isinstance(objective, str) else objective
    if obj.separation_mask is None:
        raise ValueError(f"objective {obj.name!r} has no zero-shot separation mask")
    sep = PROTOCOLS["separation"]
    if loader is None:
        _, loader = make_loaders(cfg, "separation", test_size=sep.config(cfg).eval_mixtures)
    model = unwrap(model).to(device)
    return sep.evaluate(model, loader, cfg, device, mask_fn=obj.separation_mask)
