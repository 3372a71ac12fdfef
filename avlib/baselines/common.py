"""What the comparison methods share: the two-stream late-fusion backbone, their objective base class,
the zero-shot read-outs' evaluation and SLAVC's extended (silent / off-screen) test scenes.

Every prior method pre-trains the *same* backbone as DeepAVFusion's late-fusion variant ([supp A.2]:
their own pre-training objectives train the same ViT-Base backbones): the kit's ``DeepAVFusion`` encoder with ``model.fusion_arch="none"``, i.e. two independent
ViTs. Where a method's public code reads a ResNet-18 feature map, the kit reads the visual tokens
``(B, Nv, D)`` (the 7x7 map becomes the ``gh x gw`` token grid, a 1x1 conv a per-token Linear); where it
reads the audio network's globally pooled vector, the kit pools the audio tokens ``(B, Na, D) -> (B, D)``
(``docs/baselines.md#the-two-stream-backbone``).
"""
from __future__ import annotations

import contextlib
from dataclasses import asdict, replace
from typing import Any, ClassVar, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..checkpoint import extract_state_dict, load_checkpoint
from ..config import Config, config_from_dict
from ..data.loaders import SCENE_DATASETS, make_dataset
from ..metrics import SLAVCEvaluator
from ..model import DeepAVFusion, build_encoder
from ..objectives import OBJECTIVES, Objective
from ..probes import knn_probe
from ..protocols import PROTOCOLS

__all__ = ["late_fusion_encoder", "encode", "pool_tokens", "unit", "as_grid", "eval_mode", "init_conv1x1_",
           "init_linear_", "LateFusionObjective", "adam_recipe", "validation_loss", "load_objective_model",
           "with_readout", "zero_shot_localization", "extended_test_scenes", "zero_shot_slavc"]

AUDIO_POOLS = ("max", "mean")


# ----------------------------------------------------------------------------------------------
# The backbone
# ----------------------------------------------------------------------------------------------
def late_fusion_encoder(cfg: Config, method: str) -> DeepAVFusion:
    """The kit's encoder as the two-stream late-fusion backbone every comparison method pre-trains.

    Raises a ``ValueError`` naming the override unless ``cfg.model.fusion_arch == "none"``. The fusion
    stream (``fusion_tokens``, ``fusion_norm``) then only carries its initial tokens through: no loss of
    these methods reads it, so it is frozen (no optimizer state, no DDP "unused parameter" error); a
    downstream protocol builds its encoder afresh from the checkpoint, trainable again.
    """
    arch = cfg.model.fusion_arch
    if arch != "none":
        raise ValueError(f"{method} pre-trains the two-stream late-fusion backbone (two independent ViTs, "
                         f"DeepAVFusion's late-fusion variant), but model.fusion_arch={arch!r}. Pass "
                         "model.fusion_arch='none': make_config(profile, **{'model.fusion_arch': 'none'}) or "
                         "--set model.fusion_arch=none")
    encoder = build_encoder(cfg.model)
    encoder.fusion_tokens.requires_grad_(False)
    encoder.fusion_norm.requires_grad_(False)
    return encoder


def encode(encoder: DeepAVFusion, modality: str, x: torch.Tensor) -> torch.Tensor:
    """One stream of the late-fusion encoder alone: image (B, 3, H, W) -> (B, Nv, D) or audio (B, 1, F, T)
    -> (B, Na, D), after that stream's final norm. With ``fusion_arch="none"`` the two streams never meet,
    so this equals ``encoder(image, audio).image`` / ``.audio``, and lets a method encode different numbers
    of images and clips (Mix-and-Localize: K images per mixture, two mixtures)."""
    vit = getattr(encoder, modality)
    tokens = vit.embed(x)
    ckpt = encoder.cfg.grad_checkpointing and encoder.training
    for block in vit.blocks:
        tokens = checkpoint(block, tokens, use_reentrant=False) if ckpt else block(tokens)
    return vit.norm(tokens)


def pool_tokens(tokens: torch.Tensor, how: str) -> torch.Tensor:
    """(B, N, D) -> (B, D): ``"max"`` (the published audio ResNets' global max pool) or ``"mean"``."""
    if how == "max":
        return tokens.amax(dim=1)
    if how == "mean":
        return tokens.mean(dim=1)
    raise ValueError(f"audio_pool={how!r}: one of {AUDIO_POOLS}")


def unit(x: torch.Tensor) -> torch.Tensor:
    """L2-normalize the last dimension (every method compares unit vectors)."""
    return F.normalize(x, dim=-1)


def as_grid(values: torch.Tensor, encoder: DeepAVFusion) -> torch.Tensor:
    """(B, Nv) per-token values -> (B, gh, gw) map on the visual token grid (tokens are row-major)."""
    gh, gw = encoder.image_grid
    return values.reshape(values.shape[0], int(gh), int(gw))


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Run a read-out as the method's test code does (``model.train(False)``: no dropout, no EMA update),
    then put the model back in the mode it was in."""
    was = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was)


@torch.no_grad()
def init_conv1x1_(layer: nn.Linear) -> nn.Linear:
    """EZ-VSL / SLAVC ``model.py`` init of the visual projection, a 1x1 Conv2d there (here the same map per
    token): ``kaiming_normal_(mode='fan_out', nonlinearity='relu')``, std sqrt(2 / out); bias left at default."""
    nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
    return layer


@torch.no_grad()
def init_linear_(layer: nn.Linear) -> nn.Linear:
    """EZ-VSL / SLAVC ``model.py`` init of the audio projection: ``trunc_normal_(std=0.01)``; bias default."""
    nn.init.trunc_normal_(layer.weight, mean=0.0, std=0.01)
    return layer


# ----------------------------------------------------------------------------------------------
# The objectives' base class
# ----------------------------------------------------------------------------------------------
class LateFusionObjective(Objective):
    """Base of the comparison methods (subclasses are dataclasses whose fields are the method's
    hyper-parameters, ``name`` first).

    ``optimizer_overrides``: the method's published optimizer as dotted ``pretrain.*`` overrides
    (``make_config(profile, **objective.optimizer_overrides)``); not applied by default, since the
    comparison gives every method the same pre-training run (steps, batch) and the profile's optimizer
    unless a notebook says otherwise. Checkpoints add the hyper-parameters (``objective_options``).

    A variant with other hyper-parameters must be registered under its own ``name``: the pre-training run
    directory is keyed on the objective's name (``tasks.run_fingerprint``), not on its fields.

    ``published`` holds each field's published value and ``notes`` why the kit's default differs, where it
    does (``hyperparameters()``, the same table as the mix-and-separate objectives'); ``map_range`` is the
    fixed range of ``localization_map``'s scores (cosines: (-1, 1)), which SLAVC's evaluation normalizes by.
    """

    name: str = ""
    optimizer_overrides: ClassVar[dict[str, Any]] = {}
    choices: ClassVar[dict[str, tuple]] = {"audio_pool": AUDIO_POOLS}    # fields that name one of a few options
    published: ClassVar[dict[str, Any]] = {}
    notes: ClassVar[dict[str, str]] = {}
    map_range: ClassVar[tuple[float, float] | None] = (-1.0, 1.0)

    def __post_init__(self):
        for field, allowed in self.choices.items():
            if getattr(self, field) not in allowed:
                raise ValueError(f"{field}={getattr(self, field)!r}: one of {allowed}")

    def loss(self, model, batch):
        """Scene methods: ``model(image, audio) -> (loss, terms)``."""
        return model(batch["image"], batch["audio"])

    def options(self) -> dict[str, Any]:
        """The hyper-parameters (dataclass fields) of this objective."""
        return asdict(self)

    def config_overrides(self) -> dict[str, Any]:
        """``make_config`` overrides for this method: the two-stream backbone and its published optimizer
        (``optimizer_overrides``; never the batch size or the number of steps: every method pre-trains for
        the same steps). ``make_config(profile, **objective.config_overrides())``."""
        return {"model.fusion_arch": "none", **self.optimizer_overrides}

    def hyperparameters(self) -> list[dict[str, Any]]:
        """One row per field: ``{"name", "kit", "published", "note"}`` (for the notebooks' tables)."""
        return [{"name": f, "kit": v, "published": self.published.get(f, "(none)"), "note": self.notes.get(f, "")}
                for f, v in self.options().items() if f != "name"]

    def checkpoint(self, model: nn.Module, cfg: Config) -> dict[str, Any]:
        return {**super().checkpoint(model, cfg), "objective_options": self.options()}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader, cfg: Config, device="cpu") -> dict[str, float]:
        """Monitors on the pre-training test data: the loss (``val_*``, eval mode: no dropout, no EMA
        update), the zero-shot localization where the data has ground-truth maps (``zs_*``, AV-Digits /
        synthetic scenes; ``zero_shot_localization``) and the official 1-NN probes (``nn_*``)."""
        out = {f"val_{k}": v for k, v in validation_loss(self, model, loader, device).items()}
        if "loc_map" in next(iter(loader)):
            out.update({f"zs_{k}": v for k, v in zero_shot_localization(self, model, loader, cfg, device).items()
                        if k != "n"})
        with eval_mode(model):
            out.update(knn_probe(self.encoder(model), loader, device))
        return out


def adam_recipe(lr: float, weight_decay: float) -> dict[str, Any]:
    """A published optimizer as ``pretrain.*`` overrides: Adam (L2 weight decay), default betas, constant lr."""
    return {"pretrain.optimizer": "adam", "pretrain.lr": lr, "pretrain.weight_decay": weight_decay,
            "pretrain.betas": (0.9, 0.999), "pretrain.schedule": "constant", "pretrain.warmup_epochs": 0.0}


def _to(batch: Mapping[str, Any], device) -> dict[str, Any]:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


@torch.no_grad()
def validation_loss(objective: Objective, model: nn.Module, loader, device="cpu") -> dict[str, float]:
    """The objective's loss terms averaged over ``loader``'s items (``loss`` plus its logged terms), in
    eval mode (no dropout, no EMA update). In-batch objectives depend on the batch size: a monitor."""
    sums: dict[str, float] = {}
    n = 0
    with eval_mode(model):
        for batch in loader:
            loss, logs = objective.loss(model, _to(batch, device))
            b = next(v for v in batch.values() if torch.is_tensor(v)).shape[0]
            for k, v in {"loss": loss, **logs}.items():
                sums[k] = sums.get(k, 0.0) + float(v) * b
            n += b
    return {k: v / max(n, 1) for k, v in sums.items()}


def load_objective_model(checkpoint, device="cpu") -> tuple[Objective, nn.Module, Config]:
    """The objective, its whole pre-trained model (heads and EMA copies included, for the zero-shot
    read-outs) and the config of a checkpoint that ``tasks.pretrain`` wrote for a comparison method.
    Refuses a checkpoint whose stored hyper-parameters differ from the registered objective's."""
    ckpt = load_checkpoint(checkpoint)
    obj = OBJECTIVES[ckpt.get("objective", "?")]
    stored = ckpt.get("objective_options")
    if stored is not None and stored != obj.options():
        raise ValueError(f"{checkpoint}: written with {obj.name} options {stored}, registered now: {obj.options()}; "
                         f"register the variant under its own name to read it")
    cfg = config_from_dict(ckpt["config"])
    model = obj.build(cfg)
    model.load_state_dict(extract_state_dict(ckpt), strict=True)
    return obj, model.to(device).eval(), cfg


# ----------------------------------------------------------------------------------------------
# Zero-shot read-outs
# ----------------------------------------------------------------------------------------------
ZERO_SHOT_READOUTS = ("localization_map", "separation_mask")


def with_readout(names, readout: str) -> list[str]:
    """The entries of ``names`` whose registered objective has the zero-shot read-out ``readout``
    (``"localization_map"`` or ``"separation_mask"``), in order. A zoo entry that is no objective of its own
    (the data control ``deepavfusion_curated``) or whose objective lacks the read-out is left out."""
    if readout not in ZERO_SHOT_READOUTS:
        raise ValueError(f"readout={readout!r}: one of {ZERO_SHOT_READOUTS}")
    return [n for n in names if getattr(OBJECTIVES.get(n), readout, None) is not None]


class _ZeroShotLocalizer(nn.Module):
    """The localization protocol's view of an objective's zero-shot read-out: its ``similarity_map`` is
    the objective's ``localization_map`` (so ``Localization.evaluate`` scores it unchanged)."""

    def __init__(self, objective: Objective, model: nn.Module):
        super().__init__()
        self.model = model
        self.objective = objective

    def similarity_map(self, image: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        return self.objective.localization_map(self.model, image, audio)


def _objective(objective) -> Objective:
    obj = OBJECTIVES[objective] if isinstance(objective, str) else objective
    if obj.localization_map is None:
        raise ValueError(f"objective {obj.name!r} has no zero-shot localization map (localization_map is None)")
    return obj


@torch.no_grad()
def zero_shot_localization(objective: Objective | str, model: nn.Module, loader, cfg: Config,
                           device="cpu") -> dict[str, float]:
    """Score an objective's zero-shot maps with the localization protocol's evaluation
    (``protocols.Localization.evaluate``: cIoU success rate at 0.5, ``ciou_mean``, AUC, and ``cell_acc``
    on AV-Digits scenes; items with an empty GT map are skipped), exactly as a trained localization head
    would be scored. ``loader`` yields scenes (``image``, ``audio``, ``loc_map``); ``model`` is the
    objective's pre-trained model (``objective.build(cfg)`` with its weights), on ``device``."""
    obj = _objective(objective)
    with eval_mode(model):
        return PROTOCOLS["localization"].evaluate(_ZeroShotLocalizer(obj, model), loader, cfg, device)


def extended_test_scenes(cfg: Config, *, p_offscreen: float = 0.5, size: int | None = None, root=None):
    """The localization protocol's AV-Digits (or synthetic) test scenes with silent and off-screen sounds,
    for SLAVC's evaluation: a fraction ``p_offscreen`` of the scenes has nothing on screen that sounds,
    half of them silent, half with a digit that is not on screen speaking (``data.p_offscreen``). Their
    ground truth: an empty ``loc_map`` (and ``label`` -1, ``sounding`` all 0, ``box`` zeros). The default
    0.5 mirrors SLAVC's extended test lists (``metadata/flickr_test_plus_silent.csv``: the 249 Flickr
    test items plus 249 "non-sounding" image-audio pairs)."""
    name, _ = cfg.task("localization").data_spec(cfg.data.dataset, "test")
    if name not in SCENE_DATASETS:
        raise ValueError(f"SLAVC's silent / off-screen scenes are composed from scene data ({SCENE_DATASETS}); "
                         f"the localization test data is {name!r}")
    cfg = replace(cfg, data=replace(cfg.data, p_offscreen=float(p_offscreen)))
    return make_dataset(cfg, "test", "localization", root=root, size=size)


@torch.no_grad()
def zero_shot_slavc(objective: Objective | str, model: nn.Module, loader, device="cpu",
                    **evaluator: Any) -> dict[str, float]:
    """SLAVC's evaluation of an objective's zero-shot maps on scenes with silent and off-screen sounds
    (``extended_test_scenes``): ``metrics.SLAVCEvaluator`` (AP, max-F1, LocAcc, AUC) with the maps' fixed
    range ``objective.map_range`` ((-1, 1) for cosine maps); ``evaluator`` overrides its options (e.g.
    ``relative_prediction``, ``value_range``). A map without a fixed range (``map_range`` None, e.g.
    Sound-of-Pixels' energies) needs an explicit ``value_range``: the confidence depends on it."""
    obj = _objective(objective)
    value_range = evaluator.pop("value_range", getattr(obj, "map_range", None))
    if value_range is None:
        raise ValueError(f"objective {obj.name!r}'s localization maps have no fixed range (map_range is None); "
                         "SLAVC's confidence needs one: pass value_range=(lo, hi)")
    ev = SLAVCEvaluator(value_range=tuple(value_range), **evaluator)
    with eval_mode(model):
        for b in loader:
            maps = obj.localization_map(model, b["image"].to(device), b["audio"].to(device))
            ev.update(maps.float().cpu(), b["loc_map"])
    return ev.compute()
