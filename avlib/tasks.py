"""Running the kit's experiments: pre-training with an objective, then downstream protocols, through the
one training loop (``train.fit``).

    pre = pretrain(cfg, run_dir)                                   # DeepAVFusion masked modeling (objective registry)
    res = run_task("localization", cfg, run_dir, init="pretrained", checkpoint=pre.checkpoint)
    both = compare_inits("segmentation", cfg, run_root, checkpoint=pre.checkpoint)   # vs from scratch

What each piece is lives in its registry: pre-training objectives in ``avlib.objectives`` (``OBJECTIVES``),
downstream protocols in ``avlib.protocols`` (``PROTOCOLS``: model, loss, evaluation, figure examples).
This module only runs them: every task accepts a pre-training checkpoint (ours or an official one:
``checkpoint.load_pretrained``) or random initialization (``init="scratch"``, the from-scratch
baseline), keys its run directory on what decides the result (``run_fingerprint``), and returns a
``RunResult``. The supplement's analyses built on the protocols are here too: ``feature_subsets``
(A.1), ``token_probe`` (a kit diagnostic) and ``ablation`` (notebook 07).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn
from torch.utils.data import DataLoader

from .checkpoint import extract_state_dict, load_checkpoint, load_pretrained, save_checkpoint
from .config import Config, apply_overrides, config_to_dict
from .data.loaders import make_dataset, make_loaders
from .heads import AVClassifier
from .metrics import top1
from .model import AVMAE, DeepAVFusion, build_encoder
from .objectives import OBJECTIVES
from .probes import feature_table, fit_cached_probe, linear_probe_accuracy, token_table
from .protocols import PROTOCOLS
from .train import History, fit
from .utils import barrier, is_main_process, progress_bar, resolve_device, seed_everything, sha256_file

__all__ = ["INITS", "RunResult", "pretrain", "build_task_model", "run_task", "compare_inits",
           "evaluate", "predict_examples", "ablation", "feature_subsets", "token_probe", "run_fingerprint",
           "chance_top1"]

# How a run's encoder starts: "scratch" (random), "warm_start" (the two modality ViTs from a checkpoint,
# everything else random: the official recipe's starting point, e.g. the unimodal MAEs) or "pretrained"
# (the whole encoder from a checkpoint).
INITS = ("pretrained", "scratch", "warm_start")
BRANCHES = ("image.", "audio.")          # the modality ViTs of a DeepAVFusion encoder (train.PRETRAINED_PREFIXES)

# Config fields that never change the trained weights: how fast the data arrives and where the files
# live (0 and 2 workers give bit-identical weights, tests/test_scenes.py), activation checkpointing, and
# which test items the evaluation scores. Run fingerprints leave them out, so changing one re-uses a
# finished run (a changed evaluation field re-runs the evaluation only: ``eval_fingerprint``).
PERFORMANCE_FIELDS = {"data": ("num_workers", "pin_memory", "root", "batch_front_end"), "model": ("grad_checkpointing",)}
EVAL_FIELDS = {"data": ("test_size",)}
# ModelConfig fields that decide the encoder's architecture (and so its state dict): a checkpoint must
# agree with the config on every one of them. Mask ratios, decoders, drop_path and the pair-attention
# evaluation mode may differ between pre-training and a downstream run.
ENCODER_FIELDS = ("embed_dim", "depth", "num_heads", "mlp_ratio", "patch_size", "image_size", "audio_size",
                  "fusion_arch", "fusion_layers", "num_fusion_tokens", "num_aggr_image_tokens",
                  "num_aggr_audio_tokens", "fusion_num_heads", "fusion_attn_ratio", "fusion_mlp_ratio")


@dataclass
class RunResult:
    """What a training run leaves behind."""
    task: str
    init: str
    metrics: dict[str, float]
    history: History
    model: nn.Module
    run_dir: Path
    checkpoint: Path | None = None
    seconds: float = 0.0


def _without(section: str, d: dict, *skip: Mapping[str, tuple[str, ...]]) -> dict:
    drop = {f for s in skip for f in s.get(section, ())}
    return {k: v for k, v in d.items() if k not in drop}


def run_fingerprint(cfg: Config, **extra) -> dict[str, Any]:
    """What decides a run's trained weights besides its TrainConfig: model, data and seed (without
    ``PERFORMANCE_FIELDS`` and ``EVAL_FIELDS``), plus ``extra`` (task, init, the init checkpoint's content
    hash, the protocol's options). ``fit`` refuses to resume a run directory written under a different
    fingerprint; tasks start such a run over (``on_mismatch="restart"``)."""
    return {"seed": cfg.seed,
            "model": _without("model", config_to_dict(cfg.model), PERFORMANCE_FIELDS, EVAL_FIELDS),
            "data": _without("data", config_to_dict(cfg.data), PERFORMANCE_FIELDS, EVAL_FIELDS), **extra}


def eval_fingerprint(cfg: Config, **extra) -> dict[str, Any]:
    """What decides only a run's evaluation (``EVAL_FIELDS`` plus ``extra``, e.g. a protocol's test data)."""
    sections = {"data": config_to_dict(cfg.data), "model": config_to_dict(cfg.model)}
    return {f"{s}.{k}": sections[s][k] for s, keys in EVAL_FIELDS.items() for k in keys} | extra


def _checkpoint_id(init: str, checkpoint: str | Path | None) -> str | None:
    """Content hash of the checkpoint a run starts from (``None`` for scratch)."""
    if init == "scratch" or not checkpoint:
        return None
    st = Path(checkpoint).stat()
    return _sha256_cached(str(Path(checkpoint).resolve()), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=32)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    """``sha256_file`` once per file version (size and mtime are the key): a ViT-B checkpoint is 1.4 GB
    and every downstream run of a notebook starts from the same one."""
    return sha256_file(path)


def load_branches(encoder: DeepAVFusion, checkpoint: str | Path) -> list[str]:
    """Warm start: copy the two modality ViTs (``image.*``, ``audio.*``) of the encoder in ``checkpoint``
    into ``encoder``, leaving its fusion stream as initialized. The official pre-training starts this way
    from unimodal MAE checkpoints (DeepAVFusion's ``pt_lr_mult`` ramp then brings the branches in).
    Any fusion architecture can start from any checkpoint with the same ViT sizes. Returns the loaded keys."""
    sd = extract_state_dict(load_checkpoint(checkpoint))
    if any(k.startswith("encoder.") for k in sd):
        sd = {k.removeprefix("encoder."): v for k, v in sd.items() if k.startswith("encoder.")}
    own = encoder.state_dict()
    wanted = [k for k in own if k.startswith(BRANCHES)]
    missing = [k for k in wanted if k not in sd]
    wrong = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in wanted
             if k in sd and sd[k].shape != own[k].shape]
    if missing or wrong:
        raise ValueError(f"cannot warm-start the modality ViTs from {checkpoint}: missing {missing[:4]}, "
                         f"shapes differ {wrong[:4]} (the checkpoint's ViTs must have this config's sizes)")
    encoder.load_state_dict({**own, **{k: sd[k].to(own[k].dtype) for k in wanted}})
    return wanted


def load_decoders(model: nn.Module, checkpoint: str | Path) -> list[str]:
    """Warm start of the two MAE decoders (``image_decoder_*``, ``audio_decoder_*``) from a masked-modeling
    checkpoint with the same decoder sizes (a kit option of the staged recipe, ``zoo.Recipe.warm_start_decoders``:
    the official audio-visual stage starts its decoders from random). Returns the loaded keys."""
    sd = extract_state_dict(load_checkpoint(checkpoint))
    own = model.state_dict()
    wanted = [k for k in own if k.startswith(("image_decoder_", "audio_decoder_"))]
    missing = [k for k in wanted if k not in sd or sd[k].shape != own[k].shape]
    if missing or not wanted:
        raise ValueError(f"cannot warm-start the decoders from {checkpoint}: missing or differently shaped "
                         f"{missing[:4] or 'all (the model has no MAE decoders)'}")
    model.load_state_dict({**own, **{k: sd[k].to(own[k].dtype) for k in wanted}})
    return wanted


# ----------------------------------------------------------------------------------------------
# Pre-training
# ----------------------------------------------------------------------------------------------
def pretrain(cfg: Config, run_dir: str | Path, *, objective: str = "deepavfusion",
             warm_start: str | Path | None = None, warm_start_decoders: bool = False, device: str = "auto",
             resume: bool = True, label: str = "") -> RunResult:
    """Pre-train with ``cfg.pretrain`` and the registered ``objective`` (``avlib.objectives``).

    ``warm_start``: a checkpoint whose modality ViTs the encoder starts from (``load_branches``; the
    official staged recipe, with ``cfg.pretrain.pretrained_lr_ramp``). ``label`` names the run in log
    lines (e.g. an ablation variant). Evaluation (every ``eval_every`` epochs and at the end): the
    objective's monitors on the test split (DeepAVFusion: masked-reconstruction losses with fixed masks
    and the official 1-NN probes). Writes ``run_dir/<objective.checkpoint_name>`` (DeepAVFusion:
    ``avmae.pt`` in the official checkpoint layout, ``{'state_dict', 'config', ...}``), the
    ``checkpoint`` of the result.
    """
    obj = OBJECTIVES[objective]
    run_dir = Path(run_dir)
    device = resolve_device(device)
    seed_everything(cfg.seed)
    t0 = time.time()
    train_loader, test_loader = make_loaders(cfg, mixtures=obj.mixtures)
    model = obj.build(cfg)
    if warm_start:
        load_branches(obj.encoder(model), warm_start)
        if warm_start_decoders:
            load_decoders(model, warm_start)
    desc = f"pretrain {objective}" + (f" [{label}]" if label else "")
    history = fit(model, train_loader, cfg.pretrain, loss_fn=obj.loss,
                  eval_fn=lambda m: obj.evaluate(m, test_loader, cfg, device), run_dir=run_dir, device=device,
                  desc=desc, resume=resume,
                  fingerprint=run_fingerprint(cfg, task="pretrain", objective=objective,
                                              warm_start=_checkpoint_id("warm_start", warm_start),
                                              **({"warm_start_decoders": True} if warm_start_decoders else {})),
                  eval_fingerprint=eval_fingerprint(cfg), on_mismatch="restart")
    ckpt = run_dir / obj.checkpoint_name
    if is_main_process():                   # under torchrun only rank 0 writes
        save_checkpoint(ckpt, obj.checkpoint(model, cfg))
    barrier()
    metrics = dict(history.last_eval or {})
    return RunResult("pretrain", "scratch", metrics, history, model, run_dir, ckpt, time.time() - t0)


# ----------------------------------------------------------------------------------------------
# Downstream
# ----------------------------------------------------------------------------------------------
def _encoder(cfg: Config, init: str, checkpoint: str | Path | None) -> DeepAVFusion:
    if init not in INITS:
        raise ValueError(f"init={init!r}: one of {INITS}")
    if init == "scratch":
        return build_encoder(cfg.model)
    if not checkpoint:
        raise ValueError(f"init={init!r} needs a checkpoint path (run pre-training first, "
                         "or pass an official checkpoint)")
    if init == "warm_start":
        encoder = build_encoder(cfg.model)
        load_branches(encoder, checkpoint)
        return encoder
    # how the encoder is evaluated is the run's choice, not the checkpoint's (exact either way)
    model, mcfg = load_pretrained(checkpoint, pair_attention=cfg.model.pair_attention,
                                  grad_checkpointing=cfg.model.grad_checkpointing)
    encoder = model.encoder if isinstance(model, AVMAE) else model
    differ = [f"{f}: checkpoint {getattr(mcfg, f)!r} != config {getattr(cfg.model, f)!r}"
              for f in ENCODER_FIELDS if getattr(mcfg, f) != getattr(cfg.model, f)]
    if differ:
        raise ValueError(f"checkpoint {checkpoint} holds another encoder than the config describes:\n  "
                         + "\n  ".join(differ) + "\nUse the profile / overrides it was pre-trained with "
                         "(its stored config), or another checkpoint.")
    # downstream regularization comes from the task config (e.g. fine-tune drop_path)
    for m in encoder.modules():
        if hasattr(m, "drop_prob"):
            m.drop_prob = cfg.model.drop_path
    return encoder


def build_task_model(task: str, cfg: Config, init: str = "pretrained", checkpoint: str | Path | None = None,
                     train_data=None) -> nn.Module:
    """Protocol ``task``'s model on a pre-trained (``init="pretrained"``) or randomly initialized encoder
    (``train_data``: the training set, for data-dependent settings such as the number of classes)."""
    protocol = PROTOCOLS[task]
    return protocol.build(_encoder(cfg, init, checkpoint), cfg, train_data)


@torch.no_grad()
def evaluate(task: str, model: nn.Module, loader, cfg: Config, device="cpu") -> dict[str, float]:
    """Protocol ``task``'s metrics on ``loader`` (reference definitions; see ``avlib.metrics``)."""
    return PROTOCOLS[task].evaluate(model, loader, cfg, device)


def run_task(task: str, cfg: Config, run_dir: str | Path, *, init: str = "pretrained",
             checkpoint: str | Path | None = None, device: str = "auto", resume: bool = True,
             label: str = "") -> RunResult:
    """Train and evaluate one downstream protocol from an ``init`` (``INITS``) and its ``checkpoint``;
    metrics land in ``result.metrics``. ``label`` names the run in log lines (default: ``init``)."""
    protocol = PROTOCOLS[task]
    run_dir = Path(run_dir)
    device = resolve_device(device)
    seed_everything(cfg.seed)
    t0 = time.time()
    tcfg = protocol.config(cfg)
    # BSS-eval costs ~0.1 s per mixture: separation may score a fixed subset of the test mixtures
    train_loader, test_loader = make_loaders(cfg, task, test_size=getattr(tcfg, "eval_mixtures", None))
    model = build_task_model(task, cfg, init, checkpoint, train_data=train_loader.dataset)
    fp = run_fingerprint(cfg, task=task, init=init, checkpoint=_checkpoint_id(init, checkpoint),
                         protocol=protocol.fingerprint(cfg))
    history = protocol.train(model, train_loader, cfg, eval_fn=lambda m: protocol.evaluate(model, test_loader,
                                                                                          cfg, device),
                             run_dir=run_dir, device=device, desc=f"{task} ({label or init})", resume=resume,
                             fingerprint=fp,
                             eval_fingerprint=eval_fingerprint(cfg, **protocol.eval_fingerprint(cfg)))
    metrics = {k: v for k, v in (history.last_eval or {}).items() if k not in ("epoch", "step")}
    metrics.update(_dropped(test_loader.dataset))
    return RunResult(task, label or init, metrics, history, model, run_dir, run_dir / "checkpoint_last.pt",
                     time.time() - t0)


def _dropped(dataset) -> dict[str, float]:
    """How many test items a benchmark could not read (listed but missing, or undecodable): the
    evaluation scores exactly the others (``avlib.data.benchmarks``), and the report says how many."""
    if not callable(getattr(dataset, "skip_summary", None)):
        return {}
    s = dataset.skip_summary()
    return {"n_test_dropped": float(s["missing"] + s["skipped_files"])}


def chance_top1(cfg: Config, task: str | None = None) -> float:
    """Top-1 accuracy (%) of guessing one class of ``task``'s training data (pre-training's with
    ``task=None``, e.g. for the 1-NN probe): ``100 / num_classes``, 10 % on AV-Digits. The scene datasets
    answer without being built; a benchmark is opened to count its classes."""
    from .data.loaders import SCENE_DATASETS, _stage
    from .data.scenes import NUM_CLASSES

    _, tcfg = _stage(cfg, task)
    name = cfg.data.dataset if tcfg is None else tcfg.data_spec(cfg.data.dataset, "train")[0]
    n = NUM_CLASSES if name in SCENE_DATASETS else make_dataset(cfg, "train", task).num_classes
    return 100.0 / int(n)


def compare_inits(task: str, cfg: Config, run_root: str | Path, inits: Mapping[str, tuple] | None = None, *,
                  checkpoint: str | Path | None = None, device: str = "auto") -> dict[str, RunResult]:
    """The same protocol from several initializations, each in ``run_root/<name>/``.

    ``inits``: ``{name: (init, checkpoint)}`` or ``{name: (init, checkpoint, overrides)}``, e.g.
    ``{"scratch": ("scratch", None), "unimodal": ("warm_start", unimodal_ckpt), "deepavfusion":
    ("pretrained", av_ckpt), "ezvsl": ("pretrained", ezvsl_ckpt, {"model.fusion_arch": "none"})}``:
    ``overrides`` give the config of an init whose encoder differs (``zoo.initializations`` builds the
    mapping). Default: the pre-trained ``checkpoint`` vs scratch.
    """
    if inits is None:
        inits = {"pretrained": ("pretrained", checkpoint), "scratch": ("scratch", None)}
    out = {}
    for name, (init, ckpt, *overrides) in inits.items():
        icfg = apply_overrides(cfg, overrides[0]) if overrides else cfg
        out[name] = run_task(task, icfg, Path(run_root) / name, init=init, checkpoint=ckpt, device=device, label=name)
    return out


# ----------------------------------------------------------------------------------------------
# Analyses built on the protocols
# ----------------------------------------------------------------------------------------------
def feature_subsets(cfg: Config, run_dir: str | Path, *, init: str = "pretrained",
                    checkpoint: str | Path | None = None, subsets=None, device: str = "auto") -> list[dict]:
    """Linear probes on every non-empty subset of the pooled {audio, visual, fusion} features [supp A.1].

    The frozen encoder runs once over the train and test splits; each subset then trains the
    ``linprobe`` head (``cfg.linprobe.head``) on the cached features with the same ``fit`` loop and the
    ``linprobe`` recipe (``probes.fit_cached_probe``, as ``run_task`` with ``linprobe.cache_features``).
    Returns one row per subset: ``{"features": "audio+visual", "init": ..., "top1": ...}``.
    """
    from itertools import combinations
    run_dir = Path(run_dir)
    device = resolve_device(device)
    seed_everything(cfg.seed)
    names = ("audio", "visual", "fusion")
    subsets = subsets or [c for r in (1, 2, 3) for c in combinations(names, r)]
    encoder = _encoder(cfg, init, checkpoint)
    train_loader, test_loader = make_loaders(cfg, "linprobe")
    xtr, ytr = feature_table(encoder, train_loader, device)
    xte, yte = feature_table(encoder, test_loader, device)
    fp = run_fingerprint(cfg, task="feature_subsets", init=init, checkpoint=_checkpoint_id(init, checkpoint))
    rows = []
    for subset in subsets:
        clf = AVClassifier(encoder, train_loader.dataset.num_classes, features=subset, head=cfg.linprobe.head,
                           freeze_encoder=True)
        fit_cached_probe(clf, xtr, ytr, cfg.linprobe.train, seed=cfg.seed, run_dir=run_dir / "+".join(subset),
                         device=device, desc=f"linprobe {'+'.join(subset)} ({init})",
                         fingerprint={**fp, "head": cfg.linprobe.head})
        clf.eval()
        with torch.no_grad():
            logits = clf.classify_pooled({f: xte[f].to(device) for f in clf.features})["all"]
        rows.append({"features": "+".join(subset), "init": init, "top1": top1(logits.cpu(), yte)})
    return rows


def token_probe(cfg: Config, *, init: str = "pretrained", checkpoint: str | Path | None = None,
                train_size: int | None = None, test_size: int | None = None, split: str = "test",
                device: str = "auto") -> dict[str, float]:
    """What the frozen encoder's tokens say about the digits, read out linearly (a kit diagnostic).

    The localization, segmentation and separation heads read *local* visual tokens and the *global*
    audio token, so they start from whatever digit identity those tokens already carry. This fits a
    logistic regression (``linear_probe_accuracy``) on ``train_size`` task scenes and scores
    ``test_size`` test scenes (default: 1,500 / 500, fewer at profiles with smaller splits) for two questions: which digit is spoken (mean audio token, ``audio``) and
    which digit is drawn in each grid cell (mean of the cell's visual tokens, ``visual_cell``), scored on
    ``split`` (``"val"`` when choosing a recipe). Needs scenes with per-cell classes (AV-Digits /
    synthetic). Returns top-1 (%) and the sample counts.
    """
    device = resolve_device(device)
    seed_everything(cfg.seed)
    grid = int(cfg.data.grid)
    # at most 1,500 / 500 scenes (the cpu profile's probe), never more than the profile composes per epoch
    train = make_dataset(cfg, "train", "localization", size=train_size or min(1500, cfg.data.train_size))
    test = make_dataset(cfg, split, "localization", size=test_size or min(500, cfg.data.test_size))
    if "cell_classes" not in test[0]:
        raise ValueError(f"token_probe needs scenes with per-cell classes (AV-Digits / synthetic); "
                         f"{type(test).__name__} items have none")
    encoder = _encoder(cfg, init, checkpoint)
    bs = cfg.task("localization").train.batch_size
    tables = [token_table(encoder, DataLoader(ds, batch_size=bs), device, grid) for ds in (train, test)]
    out: dict[str, float] = {}
    for key in ("audio", "visual_cell"):
        (xtr, ytr), (xte, yte) = tables[0][key], tables[1][key]
        out[key] = linear_probe_accuracy(xtr, ytr, xte, yte)
        out[f"n_train_{key}"], out[f"n_test_{key}"] = float(len(ytr)), float(len(yte))
    return out


# ----------------------------------------------------------------------------------------------
# Examples for figures and explorers
# ----------------------------------------------------------------------------------------------
@torch.no_grad()
def predict_examples(task: str, model: nn.Module, cfg: Config, n: int = 6, device="cpu") -> dict[str, Any]:
    """The first ``n`` test items with the model's predictions (``Protocol.predict``), as CPU tensors
    ready for ``avlib.viz``.

    localization / segmentation: ``image, gt, pred`` (probabilities at image size) and ``label`` where
    the data has one; separation: ``mix_audio, mix_waveform, images, gt_audio, gt_waveforms, pred_audio,
    pred_waveforms, mask``; classification: ``image, audio, label, pred``.
    """
    _, test_loader = make_loaders(cfg, task, batch_size=n, test_size=max(n, 1))
    return PROTOCOLS[task].predict(model, next(iter(test_loader)), cfg, device)


# ----------------------------------------------------------------------------------------------
# Ablations
# ----------------------------------------------------------------------------------------------
def ablation(cfg: Config, variants: Mapping[str, Mapping[str, Any]], run_root: str | Path, *,
             probe: str = "linprobe", device: str = "auto", progress: bool = True) -> list[dict[str, Any]]:
    """For each named variant (config overrides): pre-train, then run the ``probe`` protocol.

    Returns one row per variant: its name, the probe's metrics and the final pre-training losses and
    1-NN accuracies, ready for a table or ``viz.ablation_plot``.
    """
    rows = []
    for name, overrides in progress_bar(list(variants.items()), desc="ablation", disable=not progress):
        vcfg = apply_overrides(cfg, overrides)
        pre = pretrain(vcfg, Path(run_root) / name / "pretrain", device=device, label=name)
        res = run_task(probe, vcfg, Path(run_root) / name / probe, checkpoint=pre.checkpoint, device=device,
                       label=name)
        rows.append({"variant": name, **{f"{probe}_{k}": v for k, v in res.metrics.items()},
                     **{f"pretrain_{k}": v for k, v in pre.metrics.items() if k not in ("epoch", "step")},
                     "seconds": pre.seconds + res.seconds})
    return rows
