"""Read-outs of a frozen encoder: what its tokens already say, without training the encoder.

    feats, labels = feature_table(encoder, loader, device)       # pooled audio / visual / fusion features
    knn_probe(encoder, test_loader)                             # the official 1-NN pre-training monitor
    fit_cached_probe(classifier, feats, labels, cfg.linprobe.train, ...)   # a linear probe on cached features
    linear_probe_accuracy(x_train, y_train, x_test, y_test)      # logistic regression (scikit-learn)

Every read-out runs the encoder once per item (``feature_table`` / ``token_table``) and works on the
cached tensors afterwards, so a probe can train to convergence in seconds on a small profile.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from .heads import AVClassifier, tokens_to_map
from .model import DeepAVFusion
from .train import History, fit

__all__ = ["feature_table", "knn_probe", "PooledProbe", "fit_cached_probe", "token_table", "linear_probe_accuracy"]


@torch.no_grad()
def feature_table(encoder: DeepAVFusion, loader, device) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Mean-pooled (not normalized) ``{"audio", "visual", "fusion"}: (N, D)`` features of every item with
    a label (``label >= 0``), and those labels ``(N,)``."""
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


def knn_probe(encoder: DeepAVFusion, loader, device="cpu") -> dict[str, float]:
    """The official pre-training monitor (``util/knn_probe.py``): leave-one-out 1-nearest-neighbour
    accuracy (%) with mean-pooled, L2-normalized tokens; ``nn_all`` sums the three cosine matrices."""
    pooled, y = feature_table(encoder, loader, device)             # items with a label only
    feats = {"image": pooled["visual"], "audio": pooled["audio"], "fusion": pooled["fusion"]}
    feats = {k: F.normalize(v, dim=-1) for k, v in feats.items()}
    sims = {k: v @ v.T for k, v in feats.items()}                 # (N, N) cosine similarities
    sims["all"] = sims["image"] + sims["audio"] + sims["fusion"]
    out = {}
    for k, s in sims.items():
        s = s.clone().fill_diagonal_(-float("inf"))                 # leave one out
        out[f"nn_{k}"] = 100.0 * (y[s.argmax(1)] == y).float().mean().item()
    return out


class PooledProbe(nn.Module):
    """A frozen-encoder classifier's heads alone, fed cached pooled features ``{feature: (B, D)}``.
    The heads are the classifier's own modules (shared), so training this trains the classifier."""

    def __init__(self, classifier: AVClassifier):
        super().__init__()
        self.heads = nn.ModuleDict({n: m for n, m in classifier.named_children() if n != "encoder"})
        self._classifier = (classifier,)            # a tuple: not registered as a submodule

    def forward(self, feats: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self._classifier[0].classify_pooled(feats)["all"]


def fit_cached_probe(classifier: AVClassifier, feats: Mapping[str, torch.Tensor], labels: torch.Tensor,
                     tcfg, *, seed: int, run_dir, device, desc, eval_fn=None, resume=True,
                     fingerprint=None, eval_fingerprint=None) -> History:
    """Train ``classifier``'s heads on cached pooled features with the one training loop (``fit``)."""
    names = classifier.features
    data = TensorDataset(*[feats[f] for f in names], labels)
    loader = DataLoader(data, batch_size=tcfg.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    probe = PooledProbe(classifier)

    def loss(m, b):                                  # b = (feature tensors in ``names`` order..., labels)
        return F.cross_entropy(m(dict(zip(names, b[:-1]))), b[-1]), {}

    # many tiny epochs: no per-epoch progress bars, a log line every 5 epochs (both result-neutral)
    quiet = replace(tcfg, freeze_encoder=False, log_every=max(tcfg.log_every, 5 * len(loader)))
    return fit(probe, loader, quiet, loss_fn=loss,
               eval_fn=None if eval_fn is None else (lambda _: eval_fn(classifier)), run_dir=run_dir,
               device=device, desc=desc, resume=resume, fingerprint=fingerprint, eval_fingerprint=eval_fingerprint,
               on_mismatch="restart", step_bars=False)


@torch.no_grad()
def token_table(encoder: DeepAVFusion, loader, device, grid: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
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
