"""The one training loop of the kit: pre-training and every downstream protocol call ``fit``.

    history = fit(model, train_loader, cfg.pretrain, loss_fn=avmae_loss, eval_fn=knn_probe,
                  run_dir=RUNS / "cpu" / "pretrain", device="auto")
    history.last_eval        # {"epoch": ..., "step": ..., "nn_acc": ...}

Only ``loss_fn(model, batch) -> (loss, {term: value})`` and ``eval_fn(model) -> {metric: float}``
differ between tasks. Everything else follows the official recipe (docs/official_implementation.md §1.5, §3), which
inherits MAE's ``util/lr_sched.py`` / ``util/lr_decay.py`` conventions:

1. lr = ``cfg.lr`` or ``blr * eff_batch / 256`` with ``eff_batch = batch_size * accum_steps * world``;
2. linear warmup over ``warmup_epochs`` then cosine to ``min_lr`` (or constant), evaluated at every
   optimizer step at the fractional epoch ``epoch + micro_batch / len(loader)``;
3. no weight decay on 1-D params, biases, names containing ``norm`` and ``no_weight_decay()`` names;
4. optional layer-wise lr decay: scale ``layer_decay ** (num_layers + 1 - layer_id)``;
5. optional pretrained-branch ramp: the image/audio ViTs' lr is multiplied by a half-cosine that
   rises from 0 to 1 over ``pretrained_ramp_epochs * epochs`` epochs;
6. AdamW / Adam / SGD / LARS, AMP (bf16 autocast, or fp16 with a GradScaler), grad clipping,
   gradient accumulation, DDP, atomic checkpoints with bit-exact resume, non-finite loss stop;
7. the fast-path switches of ``TrainConfig`` (each off = the reference): ``amp="auto"``, the attention
   kernel (``utils.resolve_attention_kernel``), fused optimizers on CPU, ``threads`` while ``fit`` runs.

Resume is bit-identical to an uninterrupted run (tested): the checkpoint stores the RNG states at the
last optimizer step *and* at the start of the current epoch; resuming restores the epoch-start
states, rebuilds the epoch's iterator (same shuffle order, same worker seeds), replays the consumed
micro-batches, then restores the step-boundary states. See ``fit`` for the details and limits.

Loaders come from the data layer (``avlib.data.make_loader``: a ``DistributedSampler`` under torchrun,
an ``EpochSampler`` otherwise, both shuffling with a generator seeded ``seed + epoch``); ``fit`` calls
``set_epoch`` on the sampler (and on the dataset, if it has ``set_epoch``) at the start of every epoch.
Plain ``DataLoader(shuffle=True)`` works too.

Reading order: the lr schedule and optimizers, then the small pieces ``fit`` is made of (resume state
``_RunState`` / ``_Checkpoints``, the epoch iterator with its RNG replay ``_epoch_batches``, gradient
accumulation ``_accumulate``, logging ``_LogWindow``, evaluation ``_evaluate``, DDP ``_wrap_for_training``),
then ``fit`` itself: setup, resume, the loop.

References: MAE ``util/lr_sched.py``, ``util/lr_decay.py``, ``engine_pretrain.py`` (the recipe);
nanoGPT ``train.py`` (the log line, ``asdict(cfg)`` in checkpoints); STYLE.md section 2, rows 8/9/16/17.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import random
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig, config_to_dict
from .timing import torch_threads
from .utils import (atomic_write, attention_kernel, autocast, barrier, check_amp, is_distributed, is_main_process,
                    progress_bar, rank, resolve_amp, resolve_attention_kernel, resolve_device, world_size)

__all__ = [
    "fit", "History", "StepInfo", "NonFiniteLossError", "StopTraining", "ResumeError",
    "build_optimizer", "param_groups", "LRSchedule", "LARS", "layer_id_for", "effective_batch",
    "resolve_lr", "CHECKPOINT_NAME", "RESULT_NEUTRAL_FIELDS",
]

CHECKPOINT_NAME = "checkpoint_last.pt"
HISTORY_NAME = "history.json"
PRETRAINED_PREFIXES = ("encoder.image.", "encoder.audio.")   # the two initialized ViTs [code §1.5]
# TrainConfig fields that do not change the trained weights: a checkpoint may be resumed with
# different values (e.g. a larger max_steps continues a capped run). Every other field must match.
RESULT_NEUTRAL_FIELDS = frozenset({"log_every", "eval_every", "ckpt_every", "max_steps", "compile", "threads"})


class NonFiniteLossError(FloatingPointError):
    """The loss (or one of its logged terms) became NaN/inf; training stopped before the update."""

    def __init__(self, step: int, epoch: float, terms: Mapping[str, float]):
        self.step, self.epoch, self.terms = step, epoch, dict(terms)
        bad = ", ".join(f"{k}={v}" for k, v in self.terms.items())
        super().__init__(f"non-finite loss at step {step} (epoch {epoch:.3f}): {bad}. The weights are those "
                         f"after step {step - 1}; lower the lr, enable clip_grad, or check the inputs.")


class StopTraining(Exception):
    """Raise from a callback to stop cleanly: ``fit`` writes a checkpoint at the current optimizer
    step (resumable) and returns the history with ``history.meta['stopped'] = True``."""


class ResumeError(ValueError):
    """``checkpoint_last.pt`` was written by a run that would train differently from this one."""


# ----------------------------------------------------------------------------------------------
# Learning rate, parameter groups, optimizers
# ----------------------------------------------------------------------------------------------
def effective_batch(cfg: TrainConfig, world: int | None = None) -> int:
    """Samples per optimizer step over all processes: ``batch_size * accum_steps * world_size``."""
    return cfg.batch_size * cfg.accum_steps * (world_size() if world is None else world)


def resolve_lr(cfg: TrainConfig, eff_batch: int) -> float:
    """``cfg.lr`` if set, else the linear scaling rule ``blr * eff_batch / 256`` [code §3]."""
    return float(cfg.lr) if cfg.lr is not None else cfg.blr * eff_batch / 256


_ZERO_LAYER = re.compile(r"^(?:(?:image|audio)\.(?:patch_embed|pos_embed|cls_token)|fusion_tokens)(?:\.|$)")
_BLOCK = re.compile(r"^(?:(?:image|audio)\.blocks|fusion_blocks)\.(\d+)\.")


def layer_id_for(name: str, num_layers: int, prefix: str = "encoder.") -> int:
    """Layer index used by layer-wise lr decay, following the official ``param_groups_lrd`` mapping.

    Under ``prefix`` (the encoder of a task model): patch/pos embeds and fusion tokens -> 0; ViT block
    ``i`` of either modality and fusion block ``i`` -> ``i + 1``; everything else (final norms,
    ``fusion_norm``) -> ``num_layers + 1``. Names outside the encoder (heads, decoders) ->
    ``num_layers + 1`` too, i.e. the full lr.
    """
    if not name.startswith(prefix):
        return num_layers + 1
    name = name[len(prefix):]
    if _ZERO_LAYER.match(name):
        return 0
    m = _BLOCK.match(name)
    return int(m.group(1)) + 1 if m else num_layers + 1


def _infer_num_layers(names: Iterable[str], prefix: str = "encoder.") -> int:
    ids = [int(m.group(1)) for n in names if n.startswith(prefix) and (m := _BLOCK.match(n[len(prefix):]))]
    return max(ids) + 1 if ids else 0


def _no_weight_decay_names(model: nn.Module) -> set[str]:
    """Names returned by the trained model's own ``no_weight_decay()`` (timm convention).

    Only the top-level model is asked, as in the official scripts: pre-training (MAE-style
    ``add_weight_decay``) consults no list, so ``fusion_tokens`` and the decoder pos-embeds *are*
    decayed [code §3.1], even though the encoder's own ``no_weight_decay()`` lists ``fusion_tokens``.
    A task model that wants its encoder's list must return it (prefixed) from its own method."""
    fn = getattr(model, "no_weight_decay", None)
    return set(fn()) if callable(fn) else set()


def param_groups(model: nn.Module, cfg: TrainConfig, *, layer_id: Callable[[str], int] | None = None,
                 num_layers: int | None = None,
                 pretrained_prefixes: tuple[str, ...] | None = None) -> list[dict]:
    """Split the trainable parameters into optimizer groups.

    Each group holds ``params``, ``weight_decay`` (0 for 1-D params, biases, ``*norm*`` names and
    ``no_weight_decay()`` names), ``lr_scale`` (layer-wise decay; 1.0 when ``cfg.layer_decay`` is None),
    ``pretrained`` (True under ``encoder.image.`` / ``encoder.audio.``, for the lr ramp) and a readable
    ``name``. Frozen parameters (``requires_grad=False``) are left out.

    Args:
        layer_id: ``name -> layer index``; default ``model.layer_id`` if the model has one, else
            ``layer_id_for`` (the official mapping on the ``encoder.*`` naming).
        num_layers: encoder depth; default ``model.num_layers`` if present, else inferred from the
            ``encoder.*.blocks.N`` names.
        pretrained_prefixes: default ``model.pretrained_prefixes`` if present, else ``PRETRAINED_PREFIXES``.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    skip = _no_weight_decay_names(model)
    if pretrained_prefixes is None:
        pretrained_prefixes = tuple(getattr(model, "pretrained_prefixes", PRETRAINED_PREFIXES))
    if cfg.layer_decay is not None:
        if num_layers is None:
            num_layers = getattr(model, "num_layers", None)
            if not isinstance(num_layers, int):
                num_layers = _infer_num_layers(n for n, _ in model.named_parameters())
        if layer_id is None:
            model_fn = getattr(model, "layer_id", None)
            layer_id = model_fn if callable(model_fn) and not isinstance(model_fn, nn.Module) else (
                lambda n: layer_id_for(n, num_layers))
    groups: dict[tuple, dict] = {}
    for name, p in named:
        no_decay = p.ndim <= 1 or name.endswith(".bias") or "norm" in name or name in skip
        wd = 0.0 if no_decay else cfg.weight_decay
        if cfg.layer_decay is not None:
            lid = int(layer_id(name))
            scale = cfg.layer_decay ** (num_layers + 1 - lid)
        else:
            lid, scale = None, 1.0
        pretrained = name.startswith(pretrained_prefixes)
        key = (wd, lid, pretrained)
        if key not in groups:
            label = ("no_decay" if wd == 0 else "decay") + ("" if lid is None else f"/layer{lid}") + (
                "/pretrained" if pretrained else "")
            groups[key] = {"name": label, "params": [], "weight_decay": wd, "lr_scale": scale,
                           "pretrained": pretrained}
        groups[key]["params"].append(p)
    return list(groups.values())


class LARS(torch.optim.Optimizer):
    """LARS (You et al., 2017) as used by the official linear probe: SGD with momentum whose update
    for every weight matrix/kernel is rescaled by the trust ratio ``eta * ||w|| / ||g + wd * w||``.
    1-D parameters (biases, norms) get neither weight decay nor the trust ratio.

    Args:
        lr, weight_decay, momentum (0.9), trust_coefficient (``eta``, 0.001).
    """

    def __init__(self, params, lr: float = 0.0, weight_decay: float = 0.0, momentum: float = 0.9,
                 trust_coefficient: float = 0.001):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum,
                                      trust_coefficient=trust_coefficient))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad
                if p.ndim > 1:
                    update = update.add(p, alpha=group["weight_decay"])
                    w_norm, u_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(update)
                    # ratio 1 when either norm is 0 (fresh zero-init weights, or no gradient signal)
                    ratio = torch.where((w_norm > 0) & (u_norm > 0),
                                        group["trust_coefficient"] * w_norm / u_norm, torch.ones_like(w_norm))
                    update = update * ratio
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.mul_(group["momentum"]).add_(update)
                p.add_(buf, alpha=-group["lr"])
        return loss


def build_optimizer(model: nn.Module, cfg: TrainConfig, eff_batch: int, **group_kwargs) -> torch.optim.Optimizer:
    """The optimizer named by ``cfg.optimizer`` over ``param_groups(model, cfg, **group_kwargs)``.

    Each group's initial lr is ``resolve_lr(cfg, eff_batch) * lr_scale``; ``LRSchedule.apply`` then
    sets it at every step. Built-in optimizers use ``fused=True`` on CUDA (and on CPU with
    ``cfg.fused_optimizer``: one kernel per step instead of a dozen ``foreach`` ops, ~4x faster at the
    small profiles, same update up to float rounding) and ``foreach=True`` elsewhere.
    """
    groups = param_groups(model, cfg, **group_kwargs)
    if not groups:
        raise ValueError("build_optimizer: the model has no trainable parameters (all requires_grad=False)")
    lr = resolve_lr(cfg, eff_batch)
    for g in groups:
        g["lr"] = lr * g["lr_scale"]
    on_cuda = all(p.is_cuda for g in groups for p in g["params"])
    fast = {"fused": True} if on_cuda or cfg.fused_optimizer else {"foreach": True}
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=cfg.betas, **fast)
    if cfg.optimizer == "adam":      # weight_decay per group = classic L2 (the supplement uses 0)
        return torch.optim.Adam(groups, lr=lr, betas=cfg.betas, **fast)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, **fast)
    if cfg.optimizer == "lars":
        return LARS(groups, lr=lr, momentum=cfg.momentum)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}")


class LRSchedule:
    """Per-step learning rate: linear warmup, then cosine to ``min_lr`` (or constant).

    ``lr(e)`` at fractional epoch ``e``:
    1. ``e < warmup``: ``base * e / warmup`` (starts at 0, as in MAE);
    2. cosine: ``min_lr + (base - min_lr) * 0.5 * (1 + cos(pi * (e - warmup) / (epochs - warmup)))``;
    3. constant: ``base``.
    ``ramp(e)`` (pretrained branches, when enabled): ``0.5 * (1 - cos(pi * e / ramp_epochs))`` rising
    0 -> 1, then 1. A group gets ``lr(e) * lr_scale * (ramp(e) if pretrained else 1)``.
    """

    def __init__(self, base_lr: float, epochs: float, warmup_epochs: float = 0.0, min_lr: float = 0.0,
                 schedule: str = "cosine", pretrained_ramp_epochs: float | None = None):
        if schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule={schedule!r}: cosine | constant")
        self.base_lr, self.epochs, self.warmup_epochs = float(base_lr), float(epochs), float(warmup_epochs)
        self.min_lr, self.schedule, self.ramp_epochs = float(min_lr), schedule, pretrained_ramp_epochs

    @classmethod
    def from_config(cls, cfg: TrainConfig, base_lr: float) -> "LRSchedule":
        ramp = cfg.pretrained_ramp_epochs * cfg.epochs if cfg.pretrained_lr_ramp else None
        return cls(base_lr, cfg.epochs, cfg.warmup_epochs, cfg.min_lr, cfg.schedule, ramp)

    def lr(self, epoch: float) -> float:
        if epoch < self.warmup_epochs:
            return self.base_lr * epoch / self.warmup_epochs
        if self.schedule == "constant":
            return self.base_lr
        span = self.epochs - self.warmup_epochs
        progress = min(1.0, (epoch - self.warmup_epochs) / span) if span > 0 else 1.0
        return self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def ramp(self, epoch: float) -> float:
        if not self.ramp_epochs or epoch >= self.ramp_epochs:
            return 1.0
        return 0.5 * (1.0 - math.cos(math.pi * epoch / self.ramp_epochs))

    def apply(self, optimizer: torch.optim.Optimizer, epoch: float) -> float:
        """Set every group's lr for the step at ``epoch``; returns the un-scaled schedule value."""
        lr, ramp = self.lr(epoch), self.ramp(epoch)
        for g in optimizer.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0) * (ramp if g.get("pretrained", False) else 1.0)
        return lr


# ----------------------------------------------------------------------------------------------
# RNG states (stored with weights_only-safe types: tensors, ints, floats, tuples, dicts)
# ----------------------------------------------------------------------------------------------
def _rng_state() -> dict:
    _, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping) -> None:
    random.setstate(_as_tuple(state["python"]))
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def _loader_rng_state(loader: DataLoader) -> dict:
    """Everything that decides an epoch's order and worker seeds, taken just before ``iter(loader)``:
    the global RNGs (``RandomSampler`` without a generator draws from them) and the generators."""
    state = _rng_state()
    state["generators"] = {k: g.get_state() for k, g in _generators(loader).items()}
    return state


def _set_loader_rng_state(loader: DataLoader, state: Mapping) -> None:
    _set_rng_state(state)
    gens = _generators(loader)
    for k, s in state.get("generators", {}).items():
        if k in gens:
            gens[k].set_state(s)


def _generators(loader) -> dict[str, torch.Generator]:
    gens = {"loader": getattr(loader, "generator", None),
            "sampler": getattr(getattr(loader, "sampler", None), "generator", None)}
    return {k: g for k, g in gens.items() if isinstance(g, torch.Generator)}


@contextlib.contextmanager
def _isolated_rng():
    """Run a block (evaluation) without moving the training RNG streams, so the eval cadence never
    changes the trained weights."""
    state = _rng_state()
    try:
        yield
    finally:
        _set_rng_state(state)


def _gather(obj) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` (all ranks must call it)."""
    if not is_distributed():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


# ----------------------------------------------------------------------------------------------
# History
# ----------------------------------------------------------------------------------------------
@dataclass
class History:
    """What ``fit`` returns (and writes to ``run_dir/history.json``).

    ``steps``: one dict per log line (``step``, ``epoch``, ``lr``, ``loss``, each loss term averaged
    over the steps since the previous line, ``samples_per_s``). ``evals``: one dict per evaluation
    (``epoch``, ``step``, metrics). ``meta``: run facts (``lr``, ``eff_batch``, ``steps_per_epoch``,
    ``total_steps``, ``resumed_from_step``, ``stopped``, ``completed``, ``eval_seconds``: time spent in
    evaluations).
    """

    steps: list[dict] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    @property
    def last_eval(self) -> dict | None:
        return self.evals[-1] if self.evals else None

    def to_dict(self) -> dict:
        return {"steps": self.steps, "evals": self.evals, "meta": self.meta}

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=1)
        if path is not None:
            atomic_write(path, text, mode="w")
        return text

    @classmethod
    def from_dict(cls, d: Mapping) -> "History":
        return cls(steps=list(d.get("steps", [])), evals=list(d.get("evals", [])), meta=dict(d.get("meta", {})))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "History":
        return cls.from_dict(json.loads(Path(path).read_text()))


@dataclass
class StepInfo:
    """Passed to every callback after each optimizer step (``step`` is 1-based)."""

    step: int
    epoch: float
    lr: float
    logs: dict
    model: nn.Module           # the unwrapped model
    optimizer: torch.optim.Optimizer


# ----------------------------------------------------------------------------------------------
# fit helpers
# ----------------------------------------------------------------------------------------------
def _to_device(obj, device: torch.device, non_blocking: bool = False):
    """Tensors anywhere inside dicts / lists / tuples (namedtuples kept) go to ``device``."""
    if torch.is_tensor(obj):
        return obj.to(device, non_blocking=non_blocking)
    if isinstance(obj, Mapping):
        return {k: _to_device(v, device, non_blocking) for k, v in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(_to_device(v, device, non_blocking) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, device, non_blocking) for v in obj)
    return obj


def _batch_len(batch) -> int:
    if torch.is_tensor(batch):
        return int(batch.shape[0]) if batch.ndim else 1
    values = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (list, tuple)) else ()
    for v in values:
        n = _batch_len(v)
        if n:
            return n
    return 0


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def _config_diff(saved: Mapping, cfg: TrainConfig) -> list[str]:
    """``_dict_diff`` of the TrainConfig fields that change the result (all but RESULT_NEUTRAL_FIELDS)."""
    drop = lambda d: {k: v for k, v in d.items() if k not in RESULT_NEUTRAL_FIELDS}   # noqa: E731
    return _dict_diff(drop(saved), drop(config_to_dict(cfg)))


def _dict_diff(saved: Mapping, now: Mapping, prefix: str = "") -> list[str]:
    """Differences between two nested dicts, as ``key: checkpoint X != now Y`` lines (sorted keys)."""
    out = []
    for k in sorted(set(saved) | set(now)):
        a, b = saved.get(k, "<missing>"), now.get(k, "<missing>")
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += _dict_diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: checkpoint {a!r} != now {b!r}")
    return out


def _format_logs(values: Mapping[str, float]) -> str:
    return " | ".join(f"{k} {v:.4f}" for k, v in values.items())


@dataclass
class _Position:
    epoch: int = 0        # current epoch (0-based)
    batch: int = 0        # micro-batches of this epoch already consumed
    step: int = 0         # optimizer steps done so far (all epochs)


# ----------------------------------------------------------------------------------------------
# fit: the pieces around the loop (setup, resume, checkpoints, logging)
# ----------------------------------------------------------------------------------------------
def _set_epoch(loader: DataLoader, epoch: int) -> None:
    """``set_epoch`` on the sampler(s) and the dataset, each object once."""
    seen = set()
    for obj in (getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None),
                getattr(getattr(loader, "batch_sampler", None), "sampler", None), getattr(loader, "dataset", None)):
        if obj is not None and id(obj) not in seen and callable(getattr(obj, "set_epoch", None)):
            seen.add(id(obj))
            obj.set_epoch(epoch)


def _prepare_model(model: nn.Module, cfg: TrainConfig, device: torch.device) -> nn.Module:
    """Freeze the encoder of a linear probe (``cfg.freeze_encoder``), move to ``device``; returns the
    unwrapped model."""
    raw = _unwrap(model)
    if cfg.freeze_encoder:
        encoder = getattr(raw, "encoder", None)
        if not isinstance(encoder, nn.Module):
            raise ValueError("cfg.freeze_encoder=True but the model has no `encoder` submodule")
        if callable(getattr(raw, "freeze", None)):   # task models: requires_grad off + eval-mode encoder
            raw.freeze(True)
        else:
            encoder.requires_grad_(False)
    model.to(device)
    return raw


def _batches_per_epoch(train_loader, cfg: TrainConfig) -> tuple[int, int]:
    """``(micro-batches, optimizer steps)`` per epoch; a ragged tail of < ``accum_steps`` is skipped."""
    if cfg.accum_steps < 1:
        raise ValueError(f"accum_steps={cfg.accum_steps} must be >= 1")
    try:
        num_batches = len(train_loader)
    except TypeError:
        raise TypeError("fit needs a sized train_loader (len(loader)); iterable datasets need __len__") from None
    steps_per_epoch = num_batches // cfg.accum_steps
    if steps_per_epoch == 0:
        raise ValueError(f"the loader has {num_batches} batches, fewer than accum_steps={cfg.accum_steps}")
    if getattr(train_loader, "batch_size", None) not in (None, cfg.batch_size):
        warnings.warn(f"loader batch_size={train_loader.batch_size} but cfg.batch_size={cfg.batch_size}: "
                      f"the lr scaling uses cfg.batch_size", stacklevel=3)
    return num_batches, steps_per_epoch


def _wrap_for_training(model: nn.Module, cfg: TrainConfig, device: torch.device, ddp) -> nn.Module:
    """The module the loop calls: ``DistributedDataParallel`` under torchrun (or as ``ddp`` says), compiled
    on CUDA with ``cfg.compile``. Checkpoints always hold the unwrapped model's weights."""
    train_model = model
    use_ddp = is_distributed() if ddp is None else bool(ddp)
    if use_ddp and not isinstance(model, DistributedDataParallel):
        kwargs = dict(ddp) if isinstance(ddp, Mapping) else {}
        if device.type == "cuda":
            kwargs.setdefault("device_ids", [device.index if device.index is not None else torch.cuda.current_device()])
        train_model = DistributedDataParallel(model, **kwargs)
    if cfg.compile and device.type == "cuda":
        train_model.compile()
    return train_model


@dataclass
class _RunState:
    """What a checkpoint restores besides the weights: where the run is, what it logged, and the loader
    RNG states at the start of the current epoch (``None`` unless resuming mid-epoch)."""
    pos: _Position = field(default_factory=_Position)
    history: History = field(default_factory=History)
    window: list = field(default_factory=list)          # per-step values since the last log line
    epoch_start_rng: dict | None = None
    eval_stale: bool = False         # the checkpoint's evaluation scored different data than this run's


class _Checkpoints:
    """``run_dir/checkpoint_last.pt``: what it must match to be resumed, how it is written and read back.

    A checkpoint holds model, optimizer, GradScaler, the position (epoch, micro-batch, step), the RNG
    states of every rank at the last optimizer step and at the start of the current epoch, the
    ``TrainConfig``, the effective batch, steps per epoch, the history, the log window and the run's
    fingerprint. Only rank 0 writes; every rank calls ``save`` (the RNG states are gathered).
    """

    def __init__(self, run_dir: Path, raw: nn.Module, optimizer, scaler, cfg: TrainConfig, *, eff_batch: int,
                 steps_per_epoch: int, fingerprint: Mapping[str, Any], eval_fingerprint: Mapping[str, Any]):
        self.path, self.history_path = run_dir / CHECKPOINT_NAME, run_dir / HISTORY_NAME
        self.raw, self.optimizer, self.scaler, self.cfg = raw, optimizer, scaler, cfg
        self.eff_batch, self.steps_per_epoch = eff_batch, steps_per_epoch
        as_read_back = lambda d: json.loads(json.dumps(dict(d), default=str))     # noqa: E731
        self.fingerprint, self.eval_fingerprint = as_read_back(fingerprint), as_read_back(eval_fingerprint)

    def mismatches(self, ckpt: Mapping) -> list[str]:
        """Why ``ckpt`` was written by a run that trains differently (empty: it may be resumed)."""
        problems = _config_diff(ckpt["train_config"], self.cfg)
        for key, now in (("eff_batch", self.eff_batch), ("steps_per_epoch", self.steps_per_epoch)):
            if ckpt.get(key) != now:
                problems.append(f"{key}: checkpoint {ckpt.get(key)!r} != now {now!r}")
        return problems + _dict_diff(ckpt.get("fingerprint", {}), self.fingerprint)

    def restore(self, *, resume: bool, on_mismatch: str, desc: str, num_batches: int) -> _RunState:
        """Load ``checkpoint_last.pt`` into the model / optimizer / scaler and the RNGs, or start fresh."""
        if on_mismatch not in ("raise", "restart"):
            raise ValueError(f"on_mismatch={on_mismatch!r}: 'raise' or 'restart'")
        ckpt = load_checkpoint(self.path) if resume and self.path.exists() else None
        problems = self.mismatches(ckpt) if ckpt is not None else []
        if problems:
            msg = f"{self.path} was written by a run that trains differently:\n  " + "\n  ".join(problems)
            if on_mismatch == "raise":
                raise ResumeError(msg + "\nUse another run_dir, delete the checkpoint, or call "
                                        "fit(..., resume=False).")
            if is_main_process():
                warnings.warn(msg + "\nStarting over (the old checkpoint will be overwritten).", stacklevel=3)
            ckpt = None
        if ckpt is None:
            return _RunState()
        self.raw.load_state_dict(ckpt["model"])
        flags = [{k: g[k] for k in ("foreach", "fused") if k in g} for g in self.optimizer.param_groups]
        self.optimizer.load_state_dict(ckpt["optimizer"])
        for g, f in zip(self.optimizer.param_groups, flags):     # keep this device's fast-path choice
            g.update(f)
        self.scaler.load_state_dict(ckpt["scaler"])
        state = _RunState(_Position(ckpt["epoch"], ckpt["batch"], ckpt["step"]),
                          History.from_dict(ckpt["history"]), list(ckpt.get("window", [])),
                          eval_stale=ckpt.get("eval_fingerprint", {}) != self.eval_fingerprint)
        world, me = world_size(), rank()
        rngs = ckpt["rng"]
        if len(rngs) != world:
            warnings.warn(f"checkpoint has RNG states for {len(rngs)} process(es), this run has {world}: "
                          f"resuming with rank 0's (not bit-exact)", stacklevel=3)
        _set_rng_state(rngs[me if len(rngs) == world else 0])
        if state.pos.batch:
            starts = ckpt["epoch_start_rng"]
            state.epoch_start_rng = starts[me if len(starts) == world else 0]
        if is_main_process():
            print(f"[{desc}] resumed from {self.path} at step {state.pos.step} "
                  f"(epoch {state.pos.epoch + state.pos.batch / num_batches:.2f})", flush=True)
        state.history.meta.setdefault("resumed_from_step", []).append(state.pos.step)
        return state

    def save(self, at: _Position, rng_state: dict, start_state: dict | None, run: _RunState) -> None:
        rngs = _gather(rng_state)
        starts = _gather(start_state) if at.batch else None
        if is_main_process():
            save_checkpoint(self.path, {
                "model": self.raw.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(), "epoch": at.epoch, "batch": at.batch, "step": at.step,
                "rng": rngs, "epoch_start_rng": starts, "train_config": config_to_dict(self.cfg),
                "eff_batch": self.eff_batch, "steps_per_epoch": self.steps_per_epoch, "world_size": world_size(),
                "history": run.history.to_dict(), "window": list(run.window), "fingerprint": self.fingerprint,
                "eval_fingerprint": self.eval_fingerprint})
            run.history.to_json(self.history_path)


def _epoch_batches(train_loader: DataLoader, run: _RunState):
    """The iterator of the current epoch. A fresh epoch records the loader RNG states first; a
    mid-epoch resume restores the epoch-start states, rebuilds the iterator (same order, same worker
    seeds), skips the micro-batches already consumed, then restores the step-boundary states."""
    _set_epoch(train_loader, run.pos.epoch)
    if not run.pos.batch:
        run.epoch_start_rng = _loader_rng_state(train_loader)
        return iter(train_loader)
    now_state = _rng_state()
    _set_loader_rng_state(train_loader, run.epoch_start_rng)
    batches = iter(train_loader)
    for _ in range(run.pos.batch):
        next(batches)
    _set_rng_state(now_state)
    return batches


def _accumulate(train_model: nn.Module, batches, loss_fn, cfg: TrainConfig, scaler, device: torch.device,
                non_blocking: bool, amp: str, kernel: str) -> tuple[dict[str, float], int]:
    """Forward + backward of ``cfg.accum_steps`` micro-batches (gradients sync on the last one under DDP)
    under autocast ``amp`` and attention kernel ``kernel`` (both resolved for the device); returns the mean
    loss terms over micro-batches and ranks (one host sync) and the samples seen."""
    sums: dict[str, torch.Tensor] = {}
    samples = 0
    for micro in range(cfg.accum_steps):
        batch = _to_device(next(batches), device, non_blocking)
        samples += _batch_len(batch) * world_size()
        sync = (train_model.no_sync() if isinstance(train_model, DistributedDataParallel)
                and micro < cfg.accum_steps - 1 else contextlib.nullcontext())
        with sync:
            with autocast(amp, device), attention_kernel(kernel):
                loss, logs = loss_fn(train_model, batch)
            scaler.scale(loss / cfg.accum_steps).backward()
        terms = {"loss": loss.detach().float(), **{k: torch.as_tensor(v).detach().float().to(device)
                                                    for k, v in logs.items() if k != "loss"}}
        for k, v in terms.items():
            sums[k] = sums[k] + v if k in sums else v
    keys = list(sums)
    stacked = torch.stack([sums[k].reshape(()) for k in keys]) / cfg.accum_steps
    if is_distributed():
        dist.all_reduce(stacked, op=dist.ReduceOp.SUM)
        stacked /= world_size()
    return dict(zip(keys, stacked.tolist())), samples


class _LogWindow:
    """The plain log line every ``log_every`` steps: means of the loss terms since the last line and the
    throughput; each line also lands in ``history.steps`` and ``history.json``."""

    def __init__(self, desc: str, total_steps: int, history_path: Path):
        self.desc, self.total_steps, self.history_path = desc, total_steps, history_path
        self.samples, self.t0 = 0, time.perf_counter()

    def log(self, run: _RunState, lr: float, num_batches: int) -> None:
        now = time.perf_counter()
        window = run.window
        means = {k: sum(w[k] for w in window) / len(window) for k in window[-1]}
        entry = {"step": run.pos.step, "epoch": round(run.pos.epoch + run.pos.batch / num_batches, 6), "lr": lr,
                 **means, "samples_per_s": self.samples / max(now - self.t0, 1e-9)}
        run.history.steps.append(entry)
        window.clear()
        self.samples, self.t0 = 0, now
        if is_main_process():
            tqdm.write(f"[{self.desc}] step {run.pos.step}/{self.total_steps} | epoch {entry['epoch']:.2f} | "
                       f"{_format_logs(means)} | lr {lr:.3e} | {entry['samples_per_s']:.0f} samples/s")
            run.history.to_json(self.history_path)


def _buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the model's buffers (BatchNorm running statistics and counters; cheap: no weights)."""
    return {name: b.detach().clone() for name, b in model.named_buffers()}


@torch.no_grad()
def _restore_buffers(model: nn.Module, saved: Mapping[str, torch.Tensor]) -> None:
    for name, b in model.named_buffers():
        b.copy_(saved[name])


def _evaluate(eval_fn, raw: nn.Module, run: _RunState, num_batches: int, desc: str, history_path: Path) -> None:
    """``eval_fn(raw)`` in eval mode, without gradients and with the training RNG streams untouched."""
    was_training = raw.training
    raw.eval()
    t0 = time.perf_counter()
    with _isolated_rng(), torch.no_grad():
        metrics = {k: float(v) for k, v in eval_fn(raw).items()}
    raw.train(was_training)
    meta = run.history.meta            # evaluation time, so that curves can give training minutes alone
    meta["eval_seconds"] = round(meta.get("eval_seconds", 0.0) + time.perf_counter() - t0, 3)
    entry = {"epoch": round(run.pos.epoch + run.pos.batch / num_batches, 6), "step": run.pos.step, **metrics}
    run.history.evals.append(entry)
    run.eval_stale = False
    if is_main_process():
        tqdm.write(f"[{desc}] eval @ step {run.pos.step} (epoch {entry['epoch']:.2f}) | {_format_logs(metrics)}")
        run.history.to_json(history_path)


# ----------------------------------------------------------------------------------------------
# fit
# ----------------------------------------------------------------------------------------------
def fit(model: nn.Module, train_loader: DataLoader, cfg: TrainConfig, *,
        loss_fn: Callable[[nn.Module, Any], tuple[torch.Tensor, Mapping[str, Any]]],
        eval_fn: Callable[[nn.Module], Mapping[str, float]] | None = None,
        run_dir: str | os.PathLike, device: str | torch.device = "cpu", desc: str = "train",
        resume: bool = True, callbacks: Iterable[Callable[[StepInfo], None]] | None = None,
        ddp: bool | Mapping | None = None, fingerprint: Mapping[str, Any] | None = None,
        eval_fingerprint: Mapping[str, Any] | None = None, on_mismatch: str = "raise",
        step_bars: bool = True) -> History:
    """Train ``model`` on ``train_loader`` following ``cfg``; checkpoint, log and evaluate on the way.

    Args:
        model: any ``nn.Module``; it is moved to ``device``. With ``cfg.freeze_encoder`` (linear probe)
            ``model.freeze(True)`` is called if the model has it (task models: no grads, eval-mode
            encoder), else ``model.encoder.requires_grad_(False)``. Frozen parameters are never given
            to the optimizer. Layer-wise lr decay uses ``model.layer_id`` when the model has one.
        train_loader: a sized loader of batches (tensors / dicts / tuples of tensors), ideally from
            ``avlib.data.make_loader``. Its batches are moved to ``device`` before ``loss_fn`` sees them.
            ``len(loader) // accum_steps`` optimizer steps per epoch; a ragged tail of fewer than
            ``accum_steps`` micro-batches is skipped.
        cfg: the ``TrainConfig`` of this stage (e.g. ``cfg.pretrain``, ``cfg.task("finetune").train``).
        loss_fn: ``loss_fn(model, batch) -> (loss, {term: float | 0-d tensor})``. ``model`` may be the
            DDP wrapper: call ``model(...)`` (its forward), not submodules, for gradients to sync.
            The terms are logged (averaged over ranks and accumulation micro-batches).
        eval_fn: ``eval_fn(model) -> {metric: float}``, called with the unwrapped model in eval mode
            under ``torch.no_grad()`` every ``cfg.eval_every`` epochs and at the end, on every rank
            (rank 0 records it). It runs with isolated RNG state, so evaluating never changes training.
        run_dir: where ``checkpoint_last.pt`` and ``history.json`` go (rank 0 writes).
        device: ``"cpu"``, ``"cuda"``, ``"auto"`` ... (``avlib.utils.resolve_device``).
        desc: label for progress bars and log lines.
        resume: continue from ``run_dir/checkpoint_last.pt`` when it exists (a finished run returns its
            history at once). ``False`` starts over and overwrites it.
        callbacks: called with a ``StepInfo`` after every optimizer step. Raise ``StopTraining`` to
            stop with a resumable checkpoint; a ``KeyboardInterrupt`` (from a callback or Ctrl-C) also
            writes one (single process; not when it lands inside the parameter update) and re-raises.
        ddp: ``None`` wraps in ``DistributedDataParallel`` when ``torch.distributed`` is initialized with
            more than one process; ``True``/``False`` force it; a dict gives the DDP kwargs.
        fingerprint: what else decides the trained weights besides ``cfg`` (JSON-able: model / data
            config, the init checkpoint's content hash, ...). Stored in the checkpoint and compared on resume.
        eval_fingerprint: what decides the evaluation only (e.g. which test items ``eval_fn`` scores).
            A finished run whose checkpoint was evaluated under another one keeps its weights and is
            evaluated again (no retraining).
        on_mismatch: what resuming does when the checkpoint was written by a run that trains differently
            (a ``TrainConfig`` field outside ``RESULT_NEUTRAL_FIELDS``, the effective batch, the steps per
            epoch or the fingerprint differ): ``"raise"`` (``ResumeError``) or ``"restart"`` (warn, start
            over, overwrite).
        step_bars: a progress bar per epoch (besides the epoch bar); off for runs of many tiny epochs.

    Returns:
        ``History`` (also in ``run_dir/history.json``).

    Raises:
        NonFiniteLossError: the loss or a logged term is NaN/inf; raised before the update, naming the
            step (1-based) and the offending terms.

    Resume is bit-identical to an uninterrupted run (``_Checkpoints``, ``_epoch_batches``).
    """
    # -- setup ------------------------------------------------------------------------------------
    device = resolve_device(device)
    check_amp(cfg.amp, device)
    amp = resolve_amp(cfg.amp, device)                      # "auto": bf16 where the device has it natively
    kernel = resolve_attention_kernel(cfg.attention_kernel, amp, device)
    num_batches, steps_per_epoch = _batches_per_epoch(train_loader, cfg)
    run_dir = Path(run_dir)
    main = is_main_process()
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
    raw = _prepare_model(model, cfg, device)
    eff_batch = effective_batch(cfg)
    base_lr = resolve_lr(cfg, eff_batch)
    optimizer = build_optimizer(raw, cfg, eff_batch)
    schedule = LRSchedule.from_config(cfg, base_lr)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)

    # -- resume -----------------------------------------------------------------------------------
    ckpts = _Checkpoints(run_dir, raw, optimizer, scaler, cfg, eff_batch=eff_batch,
                         steps_per_epoch=steps_per_epoch, fingerprint=fingerprint or {},
                         eval_fingerprint=eval_fingerprint or {})
    run = ckpts.restore(resume=resume, on_mismatch=on_mismatch, desc=desc, num_batches=num_batches)
    run.history.meta.update(lr=base_lr, eff_batch=eff_batch, world_size=world_size(),
                            steps_per_epoch=steps_per_epoch, total_steps=total_steps, stopped=False,
                            amp=amp, attention_kernel=kernel, threads=cfg.threads or torch.get_num_threads())
    pos, history = run.pos, run.history

    train_model = _wrap_for_training(model, cfg, device, ddp)
    trainable = [p for g in optimizer.param_groups for p in g["params"]]
    non_blocking = bool(getattr(train_loader, "pin_memory", False)) and device.type == "cuda"
    logger = _LogWindow(desc, total_steps, ckpts.history_path)
    callbacks = list(callbacks or [])
    # the last consistent state: position, RNGs and buffers (BatchNorm statistics move in every forward,
    # so a checkpoint written between two optimizer steps restores them as they were at the last step)
    boundary = (_Position(pos.epoch, pos.batch, pos.step), _rng_state(), _buffers(raw))
    updating = False                       # inside the parameter update: an interrupt writes no checkpoint
    quiet = {} if main else {"disable": True}      # rank 0 only; TQDM_DISABLE etc. still apply there
    epoch_bar = progress_bar(total=cfg.epochs, initial=pos.epoch, desc=desc, dynamic_ncols=True, **quiet)
    step_bar = None
    threads = torch_threads(cfg.threads)          # cfg.threads intra-op threads until fit returns
    threads.__enter__()

    # -- the loop ---------------------------------------------------------------------------------
    try:
        while pos.epoch < cfg.epochs and pos.step < total_steps:
            train_model.train()
            batches = _epoch_batches(train_loader, run)
            step_bar = progress_bar(total=steps_per_epoch, initial=pos.batch // cfg.accum_steps, leave=False,
                            desc=f"{desc} epoch {pos.epoch + 1}/{cfg.epochs}", dynamic_ncols=True,
                            **(quiet if step_bars else {"disable": True}))
            while pos.batch + cfg.accum_steps <= steps_per_epoch * cfg.accum_steps and pos.step < total_steps:
                epoch_float = pos.epoch + pos.batch / num_batches
                values, samples = _accumulate(train_model, batches, loss_fn, cfg, scaler, device, non_blocking,
                                              amp, kernel)
                logger.samples += samples
                bad = {k: v for k, v in values.items() if not math.isfinite(v)}
                if bad:
                    raise NonFiniteLossError(pos.step + 1, epoch_float, bad)
                lr = schedule.apply(optimizer, epoch_float)
                if cfg.clip_grad is not None:
                    scaler.unscale_(optimizer)
                    values["grad_norm"] = float(nn.utils.clip_grad_norm_(trainable, cfg.clip_grad))
                updating = True
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                pos.step += 1
                pos.batch += cfg.accum_steps
                run.window.append(values)
                boundary = (_Position(pos.epoch, pos.batch, pos.step), _rng_state(), _buffers(raw))
                updating = False
                step_bar.update(1)
                step_bar.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{lr:.2e}", refresh=False)
                if (cfg.log_every and pos.step % cfg.log_every == 0) or pos.step == total_steps:
                    logger.log(run, lr, num_batches)
                info = StepInfo(pos.step, pos.epoch + pos.batch / num_batches, lr, values, raw, optimizer)
                for cb in callbacks:
                    cb(info)
            step_bar.close()
            if pos.batch >= steps_per_epoch * cfg.accum_steps:     # the epoch is complete
                pos.epoch, pos.batch = pos.epoch + 1, 0
                boundary = (_Position(pos.epoch, 0, pos.step), *boundary[1:])
                epoch_bar.update(1)
            finished = pos.epoch >= cfg.epochs or pos.step >= total_steps
            if eval_fn is not None and (finished or (cfg.eval_every and pos.batch == 0
                                                     and pos.epoch % cfg.eval_every == 0)):
                _evaluate(eval_fn, raw, run, num_batches, desc, ckpts.history_path)
            if finished or (cfg.ckpt_every and pos.batch == 0 and pos.epoch % cfg.ckpt_every == 0):
                history.meta["completed"] = finished
                ckpts.save(pos, _rng_state(), run.epoch_start_rng, run)
    except StopTraining as e:
        history.meta.update(stopped=True, stop_reason=str(e), completed=False)
        _restore_buffers(raw, boundary[2])
        ckpts.save(boundary[0], boundary[1], run.epoch_start_rng, run)
        if main:
            tqdm.write(f"[{desc}] stopped at step {pos.step}: {e}; checkpoint written to {ckpts.path}")
    except KeyboardInterrupt:
        if updating or is_distributed():
            if main:
                print(f"[{desc}] interrupted {'during a parameter update' if updating else 'under DDP'}: "
                      f"no new checkpoint (the previous one, if any, is intact)", flush=True)
        else:
            history.meta.update(stopped=True, stop_reason="KeyboardInterrupt", completed=False)
            _restore_buffers(raw, boundary[2])
            ckpts.save(boundary[0], boundary[1], run.epoch_start_rng, run)
            print(f"[{desc}] interrupted: checkpoint at step {boundary[0].step} written to {ckpts.path}; "
                  f"call fit again to resume", flush=True)
        raise
    finally:
        if step_bar is not None:
            step_bar.close()
        epoch_bar.close()
        threads.__exit__(None, None, None)
    if run.eval_stale and eval_fn is not None and history.meta.get("completed"):
        _evaluate(eval_fn, raw, run, num_batches, desc, ckpts.history_path)     # same weights, new test data
        ckpts.save(pos, _rng_state(), run.epoch_start_rng, run)
    if main and not history.meta.get("stopped"):
        history.to_json(ckpts.history_path)
    barrier()                     # every rank sees the final checkpoint before anyone moves on
    return history
