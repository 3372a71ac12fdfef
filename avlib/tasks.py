"""Pre-training and the four downstream protocols, each wired to the one training loop (``train.fit``).

    pre = pretrain(cfg, run_dir)                                   # masked audio-visual modeling
    res = run_task("localization", cfg, run_dir, init="pretrained", checkpoint=pre.checkpoint)
    both = compare_inits("segmentation", cfg, run_root, checkpoint=pre.checkpoint)   # vs from scratch

Every task accepts a pre-training checkpoint (ours or an official one: ``checkpoint.load_pretrained``),
random initialization (``init="scratch"``, the from-scratch baseline), and a frozen or trainable
encoder (``TrainConfig.freeze_encoder``). Only the loss and the evaluation differ between tasks:

| task | model (``heads.py``) | loss | metrics (``metrics.py``) |
|---|---|---|---|
| ``linprobe`` / ``finetune`` | ``AVClassifier`` | cross-entropy | top-1 (per head + averaged logits) |
| ``localization`` | ``AVLocalizer`` (audio-visual cosine map) | per-pixel BCE | cIoU (AP50), cIoU mean, AUC |
| ``segmentation`` | ``AVSegmenter`` | per-pixel BCE | AVSBench mIoU / F, DeepAVFusion-evaluator variants |
| ``separation`` | ``AVSeparator`` (U-Net on the mixture) | BCE to T-F masks | SDR / SIR / SAR (mir_eval), SDRi |

Protocol defaults come from the seed paper's supplement (A.1-A.3); the official code's recipes are
the named alternative ``make_config(..., recipe="official")``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .audio import AudioFrontEnd, apply_mel_mask
from .checkpoint import load_pretrained, save_checkpoint
from .config import Config, apply_overrides, config_to_dict
from .data.scenes import _task_config, make_dataset, make_loaders
from .heads import (AVClassifier, AVLocalizer, AVSegmenter, AVSeparator, localization_loss, segmentation_loss,
                    tokens_to_map)
from .metrics import (AVSBenchEvaluator, DeepAVFusionSegEvaluator, LocalizationEvaluator, SeparationEvaluator,
                      cell_hits, multi_head_top1, top1)
from .model import AVMAE, DeepAVFusion, build_avmae, build_encoder
from .train import History, fit
from .utils import barrier, is_main_process, resolve_device, seed_everything, sha256_file

__all__ = ["TASKS", "INITS", "RunResult", "pretrain", "build_task_model", "run_task", "compare_inits",
           "evaluate", "predict_examples", "ablation", "knn_probe", "feature_subsets", "token_probe",
           "linear_probe_accuracy", "MAIN_METRIC"]

TASKS = ("linprobe", "finetune", "localization", "segmentation", "separation")
INITS = ("pretrained", "scratch")
# the number each task is judged by in summary tables (higher is better for all of them)
MAIN_METRIC = {"linprobe": "top1", "finetune": "top1", "localization": "auc",
               "segmentation": "avsbench_miou", "separation": "sdr"}
PRETRAIN_CKPT = "avmae.pt"


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


def _fingerprint(cfg: Config, **extra) -> dict[str, Any]:
    """What decides a run besides its TrainConfig: model, data and seed, plus ``extra`` (task, init,
    the init checkpoint's content hash). ``fit`` refuses to resume a run directory written under a
    different fingerprint; tasks start such a run over (``on_mismatch="restart"``)."""
    return {"seed": cfg.seed, "model": config_to_dict(cfg.model), "data": config_to_dict(cfg.data), **extra}


def _checkpoint_id(init: str, checkpoint: str | Path | None) -> str | None:
    """Content hash of the checkpoint a ``pretrained`` run starts from (``None`` for scratch)."""
    if init != "pretrained" or not checkpoint:
        return None
    st = Path(checkpoint).stat()
    return _sha256_cached(str(Path(checkpoint).resolve()), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=32)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    """``sha256_file`` once per file version (size and mtime are the key): a ViT-B checkpoint is 1.4 GB
    and every downstream run of a notebook starts from the same one."""
    return sha256_file(path)


def _task_cfg(cfg: Config, task: str):
    if task not in TASKS:
        raise ValueError(f"task={task!r}: one of {TASKS}")
    return _task_config(cfg, task)


# ----------------------------------------------------------------------------------------------
# Pre-training
# ----------------------------------------------------------------------------------------------
def _avmae_loss(model: AVMAE, batch: Mapping[str, torch.Tensor]):
    out = model(batch["image"], batch["audio"])
    return out.loss, {"loss_image": out.loss_image.detach(), "loss_audio": out.loss_audio.detach()}


def knn_probe(encoder: DeepAVFusion, loader, device="cpu") -> dict[str, float]:
    """The official pre-training monitor (``util/knn_probe.py``): leave-one-out 1-nearest-neighbour
    accuracy (%) with mean-pooled, L2-normalized tokens; ``nn_all`` sums the three cosine matrices."""
    pooled, y = _feature_table(encoder, loader, device)           # items with a label only
    feats = {"image": pooled["visual"], "audio": pooled["audio"], "fusion": pooled["fusion"]}
    feats = {k: F.normalize(v, dim=-1) for k, v in feats.items()}
    sims = {k: v @ v.T for k, v in feats.items()}                 # (N, N) cosine similarities
    sims["all"] = sims["image"] + sims["audio"] + sims["fusion"]
    out = {}
    for k, s in sims.items():
        s = s.clone().fill_diagonal_(-float("inf"))                 # leave one out
        out[f"nn_{k}"] = 100.0 * (y[s.argmax(1)] == y).float().mean().item()
    return out


def pretrain(cfg: Config, run_dir: str | Path, *, device: str = "auto", resume: bool = True) -> RunResult:
    """Masked audio-visual pre-training (AVMAE) with ``cfg.pretrain``.

    Evaluation (every ``eval_every`` epochs): the masked-reconstruction losses on the test split with
    fixed masks, and the official 1-NN probe accuracies of the image, audio and fusion tokens.
    Writes ``run_dir/avmae.pt`` in the official checkpoint layout (``{'state_dict', 'config', ...}``).
    """
    run_dir = Path(run_dir)
    device = resolve_device(device)
    seed_everything(cfg.seed)
    t0 = time.time()
    train_loader, test_loader = make_loaders(cfg, "pretrain")
    model = build_avmae(cfg.model)

    @torch.no_grad()
    def eval_fn(m: AVMAE) -> dict[str, float]:
        m.eval()
        g = torch.Generator(device="cpu").manual_seed(cfg.seed)     # same masks at every evaluation
        tot = {"val_loss": 0.0, "val_loss_image": 0.0, "val_loss_audio": 0.0}
        n = 0
        for batch in test_loader:
            out = m(batch["image"].to(device), batch["audio"].to(device), generator=g)
            b = batch["image"].shape[0]
            tot["val_loss"] += out.loss.item() * b
            tot["val_loss_image"] += out.loss_image.item() * b
            tot["val_loss_audio"] += out.loss_audio.item() * b
            n += b
        res = {k: v / n for k, v in tot.items()}
        res.update(knn_probe(m.encoder, test_loader, device))
        m.train()
        return res

    history = fit(model, train_loader, cfg.pretrain, loss_fn=_avmae_loss, eval_fn=eval_fn, run_dir=run_dir,
                  device=device, desc="pretrain", resume=resume, fingerprint=_fingerprint(cfg, task="pretrain"),
                  on_mismatch="restart")
    ckpt = run_dir / PRETRAIN_CKPT
    if is_main_process():                   # under torchrun only rank 0 writes
        save_checkpoint(ckpt, {"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                               "config": config_to_dict(cfg), "epoch": cfg.pretrain.epochs})
    barrier()
    metrics = dict(history.last_eval or {})
    return RunResult("pretrain", "scratch", metrics, history, model, run_dir, ckpt, time.time() - t0)


# ----------------------------------------------------------------------------------------------
# Downstream
# ----------------------------------------------------------------------------------------------
def _encoder(cfg: Config, init: str, checkpoint: str | Path | None) -> DeepAVFusion:
    if init == "scratch":
        return build_encoder(cfg.model)
    if init != "pretrained":
        raise ValueError(f"init={init!r}: one of {INITS}")
    if not checkpoint:
        raise ValueError("init='pretrained' needs a checkpoint path (run pre-training first, "
                         "or pass an official checkpoint)")
    model, mcfg = load_pretrained(checkpoint)
    encoder = model.encoder if isinstance(model, AVMAE) else model
    if (mcfg.image_size, mcfg.audio_size) != (cfg.model.image_size, cfg.model.audio_size):
        raise ValueError(f"checkpoint {checkpoint} expects image {mcfg.image_size} / audio {mcfg.audio_size} "
                         f"inputs but the config gives {cfg.model.image_size} / {cfg.model.audio_size}")
    # downstream regularization comes from the task config (e.g. fine-tune drop_path)
    for m in encoder.modules():
        if hasattr(m, "drop_prob"):
            m.drop_prob = cfg.model.drop_path
    return encoder


def build_task_model(task: str, cfg: Config, init: str = "pretrained", checkpoint: str | Path | None = None,
                     num_classes: int = 10, seg_prior: float | None = None) -> nn.Module:
    """The task's head on a pre-trained (``init="pretrained"``) or randomly initialized encoder.
    ``seg_prior``: the segmentation head's starting foreground rate (``AVSegmenter(prior=...)``)."""
    tcfg = _task_cfg(cfg, task)
    encoder = _encoder(cfg, init, checkpoint)
    frozen = tcfg.train.freeze_encoder
    if task in ("linprobe", "finetune"):
        return AVClassifier(encoder, num_classes, features=tcfg.features, head=tcfg.head, freeze_encoder=frozen)
    if task == "localization":
        return AVLocalizer(encoder, freeze_encoder=frozen)
    if task == "segmentation":
        return AVSegmenter(encoder, num_classes=1, head=tcfg.head, freeze_encoder=frozen,
                           prior=seg_prior if tcfg.head == "upsample" else None)
    return AVSeparator(encoder, binary_mask=tcfg.binary_mask, weighted_loss=tcfg.weighted_loss,
                       mask_rule=tcfg.mask_rule, freeze_encoder=frozen)


def foreground_prior(dataset, n: int = 64) -> float | None:
    """Mean of the segmentation masks of the first ``n`` training items (``None`` if all empty)."""
    n = min(n, len(dataset))
    rate = sum(float(dataset[i]["seg_mask"].float().mean()) for i in range(n)) / max(n, 1)
    return rate if 0.0 < rate < 1.0 else None


def _separation_inputs(batch):
    """Mix-and-separate: one prediction per (mixture, source image) pair, all K sources at once."""
    images = batch["images"]                                   # (B, K, 3, H, W)
    B, K = images.shape[:2]
    mix = batch["mix_audio"].repeat_interleave(K, 0)           # (B*K, 1, F, T)
    return mix, images.flatten(0, 1), batch["source_audio"].flatten(0, 1)   # (B*K, ...)


def _loss_fn(task: str):
    if task in ("linprobe", "finetune"):
        def loss(model, batch):
            logits = model(batch["image"], batch["audio"])
            return F.cross_entropy(logits, batch["label"], ignore_index=-1), {}
    elif task == "localization":
        def loss(model, batch):
            return localization_loss(model(batch["image"], batch["audio"]), batch["loc_map"]), {}
    elif task == "segmentation":
        def loss(model, batch):
            return segmentation_loss(model(batch["image"], batch["audio"]), batch["seg_mask"]), {}
    else:
        def loss(model, batch):
            mix, images, sources = _separation_inputs(batch)
            inner = model.module if hasattr(model, "module") else model
            return inner.loss(model(mix, images), sources, mix), {}
    return loss


@torch.no_grad()
def evaluate(task: str, model: nn.Module, loader, cfg: Config, device="cpu") -> dict[str, float]:
    """The task's metrics on ``loader`` (reference definitions; see ``avlib.metrics``)."""
    model.eval()
    device = torch.device(device)
    if task in ("linprobe", "finetune"):
        logits, labels = {}, []
        for b in loader:
            heads = model.forward_heads(b["image"].to(device), b["audio"].to(device))
            for k, v in heads.items():
                logits.setdefault(k, []).append(v.cpu())
            labels.append(b["label"])
        y = torch.cat(labels)
        keep = y >= 0
        logits = {k: torch.cat(v)[keep] for k, v in logits.items()}
        joint = logits.pop("all")            # the prediction (official head: the averaged logits)
        out = {"top1": top1(joint, y[keep])}
        if logits:                           # official head: one accuracy per stream as well
            out.update({f"top1_{k}": v for k, v in multi_head_top1(logits, y[keep]).items() if k != "all"})
        return out
    if task == "localization":
        ev, hits = LocalizationEvaluator(), []
        for b in loader:
            gt = b["loc_map"]
            keep = gt.flatten(1).sum(1) > 0                     # nothing on screen sounds: no cIoU
            if keep.any():
                cos = model.similarity_map(b["image"].to(device), b["audio"].to(device)).cpu()
                ev.update(cos[keep], gt[keep])
                if "sounding" in b:                             # AV-Digits scenes: which cell sounds
                    hits.append(cell_hits(cos[keep], b["sounding"][keep], cfg.data.grid))
        out = {k: float(v) for k, v in ev.compute().items()}
        if hits:
            out["cell_acc"] = torch.cat(hits).float().mean().item()
        return out
    if task == "segmentation":
        avs, davf = AVSBenchEvaluator(batch_frames=None), DeepAVFusionSegEvaluator()
        for b in loader:
            logits = model(b["image"].to(device), b["audio"].to(device)).cpu()[:, 0]   # (B, H, W)
            avs.update(logits, b["seg_mask"])
            davf.update(logits, b["seg_mask"])
        res = {k: v for k, v in avs.compute().items() if k.startswith("avsbench")}
        res.update({k: v for k, v in davf.compute().items() if k in ("davf_miou", "davf_miou_nobg", "davf_f")})
        return {k: float(v) for k, v in res.items()}
    # separation: mask the mixture STFT with each source's predicted mask, back to waveforms
    ev = SeparationEvaluator(skip_rule="deepavfusion")
    for b in loader:
        mix, images, _ = _separation_inputs(b)
        B, K = b["images"].shape[:2]
        probs = torch.sigmoid(model(mix.to(device), images.to(device))).cpu()     # (B*K, 1, F, T)
        est = apply_mel_mask(b["mix_waveform"].repeat_interleave(K, 0), probs, cfg.data)   # (B*K, S)
        ev.update(b["source_waveforms"], est.view(B, K, -1), b["mix_waveform"])
    res = ev.compute()
    return {k: float(res[k]) for k in ("sdr", "sir", "sar", "sdr_mix", "sdri", "n_kept", "n_skipped")}


def run_task(task: str, cfg: Config, run_dir: str | Path, *, init: str = "pretrained",
             checkpoint: str | Path | None = None, device: str = "auto", resume: bool = True) -> RunResult:
    """Train and evaluate one downstream protocol; metrics land in ``result.metrics``."""
    run_dir = Path(run_dir)
    device = resolve_device(device)
    seed_everything(cfg.seed)
    t0 = time.time()
    tcfg = _task_cfg(cfg, task)
    # BSS-eval costs ~0.1 s per mixture: separation may score a fixed subset of the test mixtures
    test_size = cfg.separation.eval_mixtures if task == "separation" else None
    train_loader, test_loader = make_loaders(cfg, task, test_size=test_size)
    num_classes = getattr(train_loader.dataset, "num_classes", 10)
    prior = foreground_prior(train_loader.dataset) if task == "segmentation" else None
    model = build_task_model(task, cfg, init, checkpoint, num_classes=num_classes, seg_prior=prior)
    fp = _fingerprint(cfg, task=task, init=init, checkpoint=_checkpoint_id(init, checkpoint),
                      protocol={k: v for k, v in config_to_dict(tcfg).items() if k != "train"})
    eval_fn = lambda m: evaluate(task, model, test_loader, cfg, device)     # noqa: E731
    if getattr(tcfg, "cache_features", False):
        if not tcfg.train.freeze_encoder:
            raise ValueError(f"{task}.cache_features needs a frozen encoder ({task}.train.freeze_encoder=True)")
        feats, labels = _feature_table(model.encoder, train_loader, device)
        history = _fit_cached_probe(model, feats, labels, tcfg.train, seed=cfg.seed, run_dir=run_dir,
                                    device=device,
                                    desc=f"{task} ({init})", eval_fn=eval_fn, resume=resume, fingerprint=fp)
    else:
        history = fit(model, train_loader, tcfg.train, loss_fn=_loss_fn(task), eval_fn=eval_fn, run_dir=run_dir,
                      device=device, desc=f"{task} ({init})", resume=resume, fingerprint=fp, on_mismatch="restart")
    metrics = {k: v for k, v in (history.last_eval or {}).items() if k not in ("epoch", "step")}
    return RunResult(task, init, metrics, history, model, run_dir, run_dir / "checkpoint_last.pt",
                     time.time() - t0)


def compare_inits(task: str, cfg: Config, run_root: str | Path, *, checkpoint: str | Path | None,
                  device: str = "auto", inits: tuple[str, ...] = INITS) -> dict[str, RunResult]:
    """The same protocol from the pre-trained encoder and from scratch (``run_root/<init>/``)."""
    return {init: run_task(task, cfg, Path(run_root) / init, init=init, checkpoint=checkpoint, device=device)
            for init in inits}


@torch.no_grad()
def _feature_table(encoder: DeepAVFusion, loader, device) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Mean-pooled (not normalized) audio / visual / fusion features of every item, and the labels."""
    encoder.eval().to(device)
    feats: dict[str, list[torch.Tensor]] = {"audio": [], "visual": [], "fusion": []}
    labels = []
    for b in loader:
        out = encoder(b["image"].to(device), b["audio"].to(device))
        for k, v in (("audio", out.audio), ("visual", out.image), ("fusion", out.fusion)):
            feats[k].append(v.mean(1).cpu())
        labels.append(b["label"])
    y = torch.cat(labels)
    keep = y >= 0
    return {k: torch.cat(v)[keep] for k, v in feats.items()}, y[keep]


class _PooledProbe(nn.Module):
    """A frozen-encoder classifier's heads alone, fed cached pooled features ``{feature: (B, D)}``.
    The heads are the classifier's own modules (shared), so training this trains the classifier."""

    def __init__(self, classifier: AVClassifier):
        super().__init__()
        self.heads = nn.ModuleDict({n: m for n, m in classifier.named_children() if n != "encoder"})
        self._classifier = (classifier,)            # a tuple: not registered as a submodule

    def forward(self, feats: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self._classifier[0].classify_pooled(feats)["all"]


def _fit_cached_probe(classifier: AVClassifier, feats: Mapping[str, torch.Tensor], labels: torch.Tensor,
                      tcfg, *, seed: int, run_dir, device, desc, eval_fn=None, resume=True,
                      fingerprint=None) -> History:
    """Train ``classifier``'s heads on cached pooled features with the one training loop (``fit``)."""
    from torch.utils.data import DataLoader, TensorDataset
    names = classifier.features
    data = TensorDataset(*[feats[f] for f in names], labels)
    loader = DataLoader(data, batch_size=tcfg.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    probe = _PooledProbe(classifier)

    def loss(m, b):                                  # b = (feature tensors in ``names`` order..., labels)
        return F.cross_entropy(m(dict(zip(names, b[:-1]))), b[-1]), {}

    # many tiny epochs: no per-epoch progress bars, a log line every 5 epochs (both result-neutral)
    quiet = replace(tcfg, freeze_encoder=False, log_every=max(tcfg.log_every, 5 * len(loader)))
    return fit(probe, loader, quiet, loss_fn=loss,
               eval_fn=None if eval_fn is None else (lambda _: eval_fn(classifier)), run_dir=run_dir,
               device=device, desc=desc, resume=resume, fingerprint=fingerprint, on_mismatch="restart",
               step_bars=False)


def feature_subsets(cfg: Config, run_dir: str | Path, *, init: str = "pretrained",
                    checkpoint: str | Path | None = None, subsets=None, device: str = "auto") -> list[dict]:
    """Linear probes on every non-empty subset of the pooled {audio, visual, fusion} features [supp A.1].

    The frozen encoder runs once over the train and test splits; each subset then trains the
    ``linprobe`` head (``cfg.linprobe.head``) on the cached features with the same ``fit`` loop and the
    ``linprobe`` recipe (``_fit_cached_probe``, as ``run_task`` with ``linprobe.cache_features``).
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
    xtr, ytr = _feature_table(encoder, train_loader, device)
    xte, yte = _feature_table(encoder, test_loader, device)
    fp = _fingerprint(cfg, task="feature_subsets", init=init, checkpoint=_checkpoint_id(init, checkpoint))
    rows = []
    for subset in subsets:
        clf = AVClassifier(encoder, 10, features=subset, head=cfg.linprobe.head, freeze_encoder=True)
        _fit_cached_probe(clf, xtr, ytr, cfg.linprobe.train, seed=cfg.seed, run_dir=run_dir / "+".join(subset),
                          device=device,
                          desc=f"probe {'+'.join(subset)}", fingerprint={**fp, "head": cfg.linprobe.head})
        clf.eval()
        with torch.no_grad():
            logits = clf.classify_pooled({f: xte[f].to(device) for f in clf.features})["all"]
        rows.append({"features": "+".join(subset), "init": init, "top1": top1(logits.cpu(), yte)})
    return rows


@torch.no_grad()
def _token_table(encoder: DeepAVFusion, loader, device, grid: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Frozen-encoder tokens with the digit they show: ``{"audio": (mean audio token (N, D), sounding
    class (N,)), "visual_cell": (mean visual token of each grid cell (N * grid**2, D), the cell's class)}``.
    Cells are row-major like ``cell_classes``; items / cells with class -1 (silent, empty) are dropped."""
    encoder.eval().to(device)
    audio, labels, cells, cell_classes = [], [], [], []
    for b in loader:
        out = encoder(b["image"].to(device), b["audio"].to(device))
        fmap = tokens_to_map(out.image, encoder.image_grid)                     # (B, D, gh, gw)
        cell = F.adaptive_avg_pool2d(fmap, grid).flatten(2).transpose(1, 2)     # (B, grid * grid, D)
        audio.append(out.audio.mean(1).cpu())
        labels.append(b["label"])
        cells.append(cell.flatten(0, 1).cpu())
        cell_classes.append(b["cell_classes"].flatten())
    table = {"audio": (torch.cat(audio), torch.cat(labels)), "visual_cell": (torch.cat(cells), torch.cat(cell_classes))}
    return {k: (x[y >= 0], y[y >= 0]) for k, (x, y) in table.items()}


def linear_probe_accuracy(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor,
                          y_test: torch.Tensor, max_iter: int = 1000) -> float:
    """Top-1 (%) of a multinomial logistic regression on standardized features (scikit-learn, L-BFGS,
    default L2): how much of the label a *linear* read-out finds in the features. Deterministic."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter))
    clf.fit(x_train.double().numpy(), y_train.numpy())
    return 100.0 * float(clf.score(x_test.double().numpy(), y_test.numpy()))


def token_probe(cfg: Config, *, init: str = "pretrained", checkpoint: str | Path | None = None,
                train_size: int = 1500, test_size: int = 500, device: str = "auto") -> dict[str, float]:
    """What the frozen encoder's tokens say about the digits, read out linearly (a kit diagnostic).

    The localization, segmentation and separation heads read *local* visual tokens and the *global*
    audio token, so they start from whatever digit identity those tokens already carry. This fits a
    logistic regression (``linear_probe_accuracy``) on ``train_size`` task scenes and scores
    ``test_size`` test scenes for two questions: which digit is spoken (mean audio token, ``audio``) and
    which digit is drawn in each grid cell (mean of the cell's visual tokens, ``visual_cell``). Needs
    scenes with per-cell classes (AV-Digits / synthetic). Returns top-1 (%) and the sample counts.
    """
    device = resolve_device(device)
    seed_everything(cfg.seed)
    grid = int(cfg.data.grid)
    train = make_dataset(cfg, "train", "localization", size=train_size)
    test = make_dataset(cfg, "test", "localization", size=test_size)
    if "cell_classes" not in test[0]:
        raise ValueError(f"token_probe needs scenes with per-cell classes (AV-Digits / synthetic); "
                         f"{type(test).__name__} items have none")
    encoder = _encoder(cfg, init, checkpoint)
    bs = _task_cfg(cfg, "localization").train.batch_size
    tables = [_token_table(encoder, DataLoader(ds, batch_size=bs), device, grid) for ds in (train, test)]
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
    """The first ``n`` test items with the model's predictions, as CPU tensors ready for ``avlib.viz``.

    localization / segmentation: ``image, gt, pred`` (probabilities at image size);
    separation: ``mix_audio, mix_waveform, images, gt_audio, gt_waveforms, pred_audio, pred_waveforms``.
    """
    model.eval().to(device)
    _, test_loader = make_loaders(cfg, task, batch_size=n, test_size=max(n, 1))
    b = next(iter(test_loader))
    if task == "localization":
        pred = torch.sigmoid(model(b["image"].to(device), b["audio"].to(device))).cpu()
        return {"image": b["image"], "gt": b["loc_map"], "pred": pred, "label": b["label"]}
    if task == "segmentation":
        pred = torch.sigmoid(model(b["image"].to(device), b["audio"].to(device))).cpu()[:, 0]
        return {"image": b["image"], "gt": b["seg_mask"], "pred": pred, "label": b["label"]}
    if task == "separation":
        mix, images, _ = _separation_inputs(b)
        B, K = b["images"].shape[:2]
        probs = torch.sigmoid(model(mix.to(device), images.to(device))).cpu()
        est = apply_mel_mask(b["mix_waveform"].repeat_interleave(K, 0), probs, cfg.data).view(B, K, -1)
        fe = AudioFrontEnd(cfg.data)
        return {"mix_audio": b["mix_audio"], "mix_waveform": b["mix_waveform"], "images": b["images"],
                "gt_audio": b["source_audio"], "gt_waveforms": b["source_waveforms"],
                "pred_audio": fe(est.flatten(0, 1)).view(B, K, *b["mix_audio"].shape[1:]),
                "pred_waveforms": est, "mask": probs.view(B, K, *probs.shape[1:])}
    logits = model(b["image"].to(device), b["audio"].to(device)).cpu()
    return {"image": b["image"], "audio": b["audio"], "label": b["label"], "pred": logits.argmax(1)}


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
    for name, overrides in tqdm(list(variants.items()), desc="ablation", disable=not progress):
        vcfg = apply_overrides(cfg, overrides)
        pre = pretrain(vcfg, Path(run_root) / name / "pretrain", device=device)
        res = run_task(probe, vcfg, Path(run_root) / name / probe, checkpoint=pre.checkpoint, device=device)
        rows.append({"variant": name, **{f"{probe}_{k}": v for k, v in res.metrics.items()},
                     **{f"pretrain_{k}": v for k, v in pre.metrics.items() if k not in ("epoch", "step")},
                     "seconds": pre.seconds + res.seconds})
    return rows
