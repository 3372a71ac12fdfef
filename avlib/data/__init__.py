"""Data: what every stage reads (``loaders``), AV-Digits and synthetic scenes (``scenes``), the raw sources
(``sources``), the download step (``python -m avlib.data.download``); the real benchmarks live in
``benchmarks`` and media decoding in ``media``. Nothing here imports the training loop or the tasks.

    from avlib.data import make_loaders
    train_loader, test_loader = make_loaders(cfg)                   # pre-training
    train_loader, test_loader = make_loaders(cfg, "segmentation")   # a downstream protocol
"""
from __future__ import annotations

from avlib.data.loaders import EpochSampler, loader_throughput, make_dataset, make_loader, make_loaders
from avlib.data.scenes import NUM_CLASSES, AlternateMixtureDataset, MixtureDataset, SceneDataset
from avlib.data.sources import load_fsdd, load_mnist
from avlib.paths import DataNotFoundError

__all__ = ["NUM_CLASSES", "SceneDataset", "MixtureDataset", "AlternateMixtureDataset", "EpochSampler", "make_loader",
           "make_dataset", "make_loaders", "loader_throughput", "load_fsdd", "load_mnist", "DataNotFoundError"]


def __getattr__(name):
    if name == "build_benchmark":           # owned by avlib.data.benchmarks; imported on first use
        from avlib.data.benchmarks import build_benchmark
        return build_benchmark
    raise AttributeError(f"module 'avlib.data' has no attribute {name!r}")
