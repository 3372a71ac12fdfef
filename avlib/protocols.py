"""The downstream protocols, one small object each, registered by name.

    protocol = PROTOCOLS["localization"]
    model = protocol.build(encoder, cfg, train_data)       # the protocol's head on a (pre-trained) encoder
    loss, logs = protocol.loss(model, batch)                # what training minimizes
    metrics = protocol.evaluate(model, test_loader, cfg, device)
    examples = protocol.predict(model, batch, cfg, device)  # predictions on a batch, for figures

``avlib.tasks.run_task`` runs any of them through the one training loop; adding a protocol means
writing one class here (and its ``TaskConfig`` section in ``avlib.config``). Every protocol follows the
seed paper's supplement by default, the official code's recipes being ``make_config(recipe="official")``:

| name | model (``heads.py``) | loss | metrics (``metrics.py``) |
|---|---|---|---|
| ``linprobe`` / ``finetune`` | ``AVClassifier`` | cross-entropy | top-1 (per head + averaged logits) |
| ``localization`` | ``AVLocalizer`` (audio-visual cosine map) | per-pixel BCE | cIoU (AP50), cIoU mean, AUC |
| ``segmentation`` | ``AVSegmenter`` | per-pixel BCE | AVSBench mIoU / F, DeepAVFusion-evaluator variants |
| ``separation`` | ``AVSeparator`` (U-Net on the mixture) | BCE to T-F masks | SDR / SIR / SAR (mir_eval), SDRi |
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .audio import apply_mel_mask
from .config import TASKS, Config, config_to_dict
from .heads import AVClassifier, AVLocalizer, AVSegmenter, AVSeparator, localization_loss, segmentation_loss
from .metrics import (AVSBenchEvaluator, DeepAVFusionSegEvaluator, LocalizationEvaluator, SeparationEvaluator,
                      cell_hits, multi_head_top1, top1)
from .model import DeepAVFusion
from .probes import feature_table, fit_cached_probe
from .train import History, fit
from .utils import Registry

__all__ = ["Protocol", "PROTOCOLS", "register_protocol", "Classification", "Localization", "Segmentation",
           "Separation", "foreground_prior", "separation_inputs"]

PROTOCOLS: Registry = Registry("protocol")


def register_protocol(protocol):
    """Add a protocol (an instance, or a class taking no arguments) under its ``name``; every name must
    have a ``TaskConfig`` section in ``avlib.config.Config`` (``config.TASKS``)."""
    name = protocol.name
    if name not in TASKS:
        raise ValueError(f"protocol {name!r} has no config section; add it to avlib.config (TASKS, Config)")
    return PROTOCOLS.register(protocol)


class Protocol:
    """One downstream protocol. Subclasses set ``name`` and ``main_metric`` (the number summary tables
    compare; higher is better) and implement ``build``, ``loss``, ``evaluate`` and ``predict``."""

    name: str = ""
    main_metric: str = ""
    # TaskConfig fields that decide only what the evaluation scores (not the trained weights)
    eval_fields: tuple[str, ...] = ("test_data",)

    def config(self, cfg: Config):
        """This protocol's ``TaskConfig`` (recipe, data, head options)."""
        return cfg.task(self.name)

    def build(self, encoder: DeepAVFusion, cfg: Config, train_data=None) -> nn.Module:
        """The task model: this protocol's head on ``encoder`` (``train_data`` gives data-dependent
        settings such as the number of classes)."""
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: Mapping[str, torch.Tensor]):
        """``(loss, {term: value})`` of one training batch; ``model`` may be the DDP wrapper."""
        raise NotImplementedError

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader, cfg: Config, device="cpu") -> dict[str, float]:
        """The protocol's metrics over ``loader`` (reference definitions, ``avlib.metrics``)."""
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, model: nn.Module, batch: Mapping[str, torch.Tensor], cfg: Config, device="cpu") -> dict:
        """Predictions on one batch as CPU tensors, ready for ``avlib.viz``."""
        raise NotImplementedError

    def fingerprint(self, cfg: Config) -> dict[str, Any]:
        """What of the protocol's config decides the trained weights besides its ``TrainConfig`` (head,
        training data, targets)."""
        return {k: v for k, v in config_to_dict(self.config(cfg)).items()
                if k != "train" and k not in self.eval_fields}

    def eval_fingerprint(self, cfg: Config) -> dict[str, Any]:
        """What of the protocol's config decides only its evaluation (``eval_fields``)."""
        d = config_to_dict(self.config(cfg))
        return {k: d[k] for k in self.eval_fields}

    def train(self, model: nn.Module, train_loader, cfg: Config, *, eval_fn, run_dir, device, desc: str,
              resume: bool = True, fingerprint: Mapping[str, Any] | None = None,
              eval_fingerprint: Mapping[str, Any] | None = None) -> History:
        """Train ``model`` with the protocol's recipe: the one training loop (``avlib.train.fit``)."""
        return fit(model, train_loader, self.config(cfg).train, loss_fn=self.loss, eval_fn=eval_fn,
                   run_dir=run_dir, device=device, desc=desc, resume=resume, fingerprint=fingerprint,
                   eval_fingerprint=eval_fingerprint, on_mismatch="restart")


# ----------------------------------------------------------------------------------------------
# Classification [supp A.1]
# ----------------------------------------------------------------------------------------------
class Classification(Protocol):
    """Linear probe (``linprobe``, frozen encoder) or fine-tuning (``finetune``) of an ``AVClassifier``
    on pooled features. A linear probe with ``cache_features`` trains its head on features the frozen
    encoder pooled once (``probes.fit_cached_probe``) instead of running the encoder every epoch."""

    main_metric = "top1"

    def __init__(self, name: str):
        self.name = name

    def build(self, encoder, cfg, train_data=None):
        tcfg = self.config(cfg)
        if getattr(train_data, "num_classes", None) is None:
            raise ValueError(f"{self.name}: the classifier's size comes from the training set's num_classes; "
                             f"pass train_data (got {type(train_data).__name__})")
        return AVClassifier(encoder, int(train_data.num_classes), features=tcfg.features, head=tcfg.head,
                            freeze_encoder=tcfg.train.freeze_encoder)

    def loss(self, model, batch):
        logits = model(batch["image"], batch["audio"])
        return F.cross_entropy(logits, batch["label"], ignore_index=-1), {}

    @torch.no_grad()
    def evaluate(self, model, loader, cfg, device="cpu"):
        model.eval()
        device = torch.device(device)
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

    @torch.no_grad()
    def predict(self, model, batch, cfg, device="cpu"):
        model.eval().to(device)
        logits = model(batch["image"].to(device), batch["audio"].to(device)).cpu()
        return {"image": batch["image"], "audio": batch["audio"], "label": batch["label"], "pred": logits.argmax(1)}

    def train(self, model, train_loader, cfg, *, eval_fn, run_dir, device, desc, resume=True, fingerprint=None,
              eval_fingerprint=None):
        tcfg = self.config(cfg)
        if not tcfg.cache_features:
            return super().train(model, train_loader, cfg, eval_fn=eval_fn, run_dir=run_dir, device=device,
                                 desc=desc, resume=resume, fingerprint=fingerprint, eval_fingerprint=eval_fingerprint)
        if not tcfg.train.freeze_encoder:
            raise ValueError(f"{self.name}.cache_features needs a frozen encoder ({self.name}.train.freeze_encoder=True)")
        feats, labels = feature_table(model.encoder, train_loader, device)
        return fit_cached_probe(model, feats, labels, tcfg.train, seed=cfg.seed, run_dir=run_dir, device=device,
                                desc=desc, eval_fn=eval_fn, resume=resume, fingerprint=fingerprint,
                                eval_fingerprint=eval_fingerprint)


register_protocol(Classification("linprobe"))
register_protocol(Classification("finetune"))


# ----------------------------------------------------------------------------------------------
# Localization and segmentation [supp A.2]
# ----------------------------------------------------------------------------------------------
@register_protocol
class Localization(Protocol):
    """Sound source localization: the cosine map between the global audio token and every visual
    token, trained with per-pixel BCE to the ground-truth map (``AVLocalizer``)."""

    name, main_metric = "localization", "auc"

    def build(self, encoder, cfg, train_data=None):
        return AVLocalizer(encoder, freeze_encoder=self.config(cfg).train.freeze_encoder)

    def loss(self, model, batch):
        return localization_loss(model(batch["image"], batch["audio"]), batch["loc_map"]), {}

    @torch.no_grad()
    def evaluate(self, model, loader, cfg, device="cpu"):
        model.eval()
        device = torch.device(device)
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

    @torch.no_grad()
    def predict(self, model, batch, cfg, device="cpu"):
        model.eval().to(device)
        pred = torch.sigmoid(model(batch["image"].to(device), batch["audio"].to(device))).cpu()
        return {"image": batch["image"], "gt": batch["loc_map"], "pred": pred, **_label(batch)}


def foreground_prior(dataset, n: int = 64) -> float | None:
    """Mean of the segmentation masks of the first ``n`` training items (``None`` if all empty)."""
    n = min(n, len(dataset))
    rate = sum(float(dataset[i]["seg_mask"].float().mean()) for i in range(n)) / max(n, 1)
    return rate if 0.0 < rate < 1.0 else None


@register_protocol
class Segmentation(Protocol):
    """Sound source segmentation: an upsampling decoder on the fused audio-visual tokens, per-pixel BCE
    to the sounding object's mask (``AVSegmenter``). The default head starts at the training masks'
    foreground rate (``foreground_prior``)."""

    name, main_metric = "segmentation", "avsbench_miou"

    def build(self, encoder, cfg, train_data=None):
        tcfg = self.config(cfg)
        prior = foreground_prior(train_data) if (train_data is not None and tcfg.head == "upsample") else None
        return AVSegmenter(encoder, num_classes=1, head=tcfg.head, freeze_encoder=tcfg.train.freeze_encoder,
                           prior=prior)

    def loss(self, model, batch):
        return segmentation_loss(model(batch["image"], batch["audio"]), batch["seg_mask"]), {}

    @torch.no_grad()
    def evaluate(self, model, loader, cfg, device="cpu"):
        model.eval()
        device = torch.device(device)
        avs, davf = AVSBenchEvaluator(batch_frames=None), DeepAVFusionSegEvaluator()
        for b in loader:
            logits = model(b["image"].to(device), b["audio"].to(device)).cpu()[:, 0]   # (B, H, W)
            avs.update(logits, b["seg_mask"])
            davf.update(logits, b["seg_mask"])
        res = {k: v for k, v in avs.compute().items() if k.startswith("avsbench")}
        res.update({k: v for k, v in davf.compute().items() if k in ("davf_miou", "davf_miou_nobg", "davf_f")})
        return {k: float(v) for k, v in res.items()}

    @torch.no_grad()
    def predict(self, model, batch, cfg, device="cpu"):
        model.eval().to(device)
        pred = torch.sigmoid(model(batch["image"].to(device), batch["audio"].to(device))).cpu()[:, 0]
        return {"image": batch["image"], "gt": batch["seg_mask"], "pred": pred, **_label(batch)}


def _label(batch) -> dict:
    """The sounding class and the scene's sound, where the data has them (AV-Digits has both; the
    benchmarks' evaluation items have neither), so figures can name and play each row."""
    return {k: batch[k] for k in ("label", "waveform") if k in batch}


# ----------------------------------------------------------------------------------------------
# Separation [supp A.3]
# ----------------------------------------------------------------------------------------------
def separation_inputs(batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mix-and-separate: one prediction per (mixture, source image) pair, all K sources at once.
    Returns ``mix_audio (B*K, 1, F, T)``, ``images (B*K, 3, H, W)``, ``source_audio (B*K, 1, F, T)``."""
    images = batch["images"]                                   # (B, K, 3, H, W)
    B, K = images.shape[:2]
    mix = batch["mix_audio"].repeat_interleave(K, 0)           # (B*K, 1, F, T)
    return mix, images.flatten(0, 1), batch["source_audio"].flatten(0, 1)


@register_protocol
class Separation(Protocol):
    """Visually-guided source separation (mix-and-separate): a U-Net on the mixture's tokens predicts a
    mel-grid mask per source image; masks are scored as waveforms (``AVSeparator``, ``separate``)."""

    name, main_metric = "separation", "sdr"
    eval_fields = ("test_data", "eval_mixtures", "eval_workers")        # BSS-eval scores the first eval_mixtures test items

    def build(self, encoder, cfg, train_data=None):
        tcfg = self.config(cfg)
        return AVSeparator(encoder, binary_mask=tcfg.binary_mask, weighted_loss=tcfg.weighted_loss,
                           mask_rule=tcfg.mask_rule, freeze_encoder=tcfg.train.freeze_encoder)

    def loss(self, model, batch):
        mix, images, sources = separation_inputs(batch)
        inner = model.module if hasattr(model, "module") else model
        return inner.loss(model(mix, images), sources, mix), {}

    @staticmethod
    def head_mask(model, mix_audio: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """The downstream head's mask probabilities: ``sigmoid(AVSeparator(mix_audio, image))`` ``(B, 1, F, T)``."""
        return torch.sigmoid(model(mix_audio, image))

    @torch.no_grad()
    def separate(self, model, batch, cfg: Config, device="cpu", mask_fn=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Separation inference: mask probabilities ``(B, K, 1, F, T)`` and the separated waveforms
        ``(B, K, S)`` (the mixture's STFT masked by each source's mask, back through the iSTFT).

        ``mask_fn(model, mix_audio (N, 1, F, T), image (N, 3, H, W)) -> (N, 1, F, T)`` in [0, 1] makes the
        masks (default ``head_mask``, the ``AVSeparator``); a pre-training objective's zero-shot
        ``separation_mask`` goes through the same waveform path and scoring (``avlib.baselines``)."""
        mix, images, _ = separation_inputs(batch)
        B, K = batch["images"].shape[:2]
        probs = (mask_fn or self.head_mask)(model, mix.to(device), images.to(device)).float().cpu()  # (B*K, 1, F, T)
        est = apply_mel_mask(batch["mix_waveform"].repeat_interleave(K, 0), probs, cfg.data)   # (B*K, S)
        return probs.view(B, K, *probs.shape[1:]), est.view(B, K, -1)

    @torch.no_grad()
    def evaluate(self, model, loader, cfg, device="cpu", mask_fn=None):
        model.eval()
        ev = SeparationEvaluator(skip_rule="deepavfusion", workers=self.config(cfg).eval_workers)
        for b in loader:
            _, est = self.separate(model, b, cfg, device, mask_fn)
            ev.update(b["source_waveforms"], est, b["mix_waveform"])
        res = ev.compute()
        return {k: float(res[k]) for k in ("sdr", "sir", "sar", "sdr_mix", "sdri", "n_kept", "n_skipped")}

    @torch.no_grad()
    def predict(self, model, batch, cfg, device="cpu", mask_fn=None):
        from .audio import AudioFrontEnd
        model.eval().to(device)
        probs, est = self.separate(model, batch, cfg, device, mask_fn)
        B, K = est.shape[:2]
        pred_audio = AudioFrontEnd(cfg.data)(est.flatten(0, 1)).view(B, K, *batch["mix_audio"].shape[1:])
        return {"mix_audio": batch["mix_audio"], "mix_waveform": batch["mix_waveform"], "images": batch["images"],
                "gt_audio": batch["source_audio"], "gt_waveforms": batch["source_waveforms"],
                "pred_audio": pred_audio, "pred_waveforms": est, "mask": probs}
