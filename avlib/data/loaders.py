"""From a config to batches: which dataset each stage reads, the kit's one training loader, loader timing.

    train_loader, test_loader = make_loaders(cfg)                     # pre-training data (cfg.pretrain)
    train_loader, test_loader = make_loaders(cfg, "localization")     # a downstream protocol's data
    ds = make_dataset(cfg, "test", "separation")                      # one split, no loader

What a stage reads is decided by the config alone: pre-training reads ``cfg.data.dataset``; a downstream
protocol reads its ``TaskConfig``'s ``train_data`` / ``test_data`` (``"<dataset>[:<split>]"``, default
``data.dataset``), as scenes or, for protocols whose config says ``mixtures`` (separation), as
mix-and-separate pairs. AV-Digits / synthetic names give the scene datasets of ``avlib.data.scenes``;
every other name goes to ``avlib.data.benchmarks.build_benchmark``.

``make_loader`` is the loader every training run uses (the training loop, ``avlib.train.fit``, calls
``set_epoch`` on its sampler and dataset at the start of every epoch):

- single process: an ``EpochSampler``, whose order for epoch ``e`` depends only on ``(seed, e)``;
- under torchrun: a ``DistributedSampler`` with the same seed, so each rank reads a disjoint ``1/world``.
"""
from __future__ import annotations

import time
from dataclasses import replace
from typing import Callable

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler

from avlib.utils import is_distributed, seed_worker

__all__ = ["EpochSampler", "make_loader", "make_dataset", "make_loaders", "loader_throughput", "SCENE_DATASETS"]

SCENE_DATASETS = ("avdigits", "synthetic")      # composed on the fly by avlib.data.scenes


# ----------------------------------------------------------------------------------------------
# The training loader
# ----------------------------------------------------------------------------------------------
class EpochSampler(Sampler[int]):
    """Single-process twin of ``DistributedSampler``: the order of epoch ``e`` is
    ``randperm(n, generator=manual_seed(seed + e))`` (or ``range(n)`` without shuffling). The order
    depends only on ``(seed, epoch)``, never on how many random numbers were drawn before."""

    def __init__(self, data_source: Dataset | int, *, shuffle: bool = True, seed: int = 0):
        self.n = data_source if isinstance(data_source, int) else len(data_source)
        self.shuffle, self.seed, self.epoch = shuffle, int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        if not self.shuffle:
            return iter(range(self.n))
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


def make_loader(dataset: Dataset, batch_size: int, *, shuffle: bool = True, seed: int = 0, epoch: int = 0,
                drop_last: bool | None = None, num_workers: int = 0, pin_memory: bool = False,
                collate_fn: Callable | None = None, persistent_workers: bool = False) -> DataLoader:
    """The DataLoader every training run uses (``batch_size`` is per process).

    Distributed (torchrun): a ``DistributedSampler(shuffle, seed, drop_last)``, so each rank reads a
    disjoint ``1/world`` of the data. Otherwise an ``EpochSampler``. ``fit`` calls ``set_epoch`` every
    epoch; ``epoch`` here only sets the starting value (for loaders used outside ``fit``). Workers are
    seeded from a generator seeded with ``seed`` (``worker_init_fn=seed_worker``). ``drop_last``
    defaults to ``shuffle`` (training loaders drop the ragged last batch).

    Note: ``persistent_workers=True`` keeps worker RNG streams across epochs, which makes a mid-epoch
    resume inexact for augmentations drawn inside workers; it is off by default.
    """
    drop_last = shuffle if drop_last is None else drop_last
    if is_distributed():
        sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last)
    else:
        sampler = EpochSampler(dataset, shuffle=shuffle, seed=seed)
    sampler.set_epoch(epoch)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                      num_workers=num_workers, pin_memory=pin_memory, collate_fn=collate_fn,
                      worker_init_fn=seed_worker, generator=torch.Generator().manual_seed(seed),
                      persistent_workers=persistent_workers and num_workers > 0)


# ----------------------------------------------------------------------------------------------
# Which data a stage reads
# ----------------------------------------------------------------------------------------------
def _stage(cfg, task: str | None):
    """``(TrainConfig, TaskConfig | None)`` of pre-training (``task=None``) or a downstream protocol."""
    if task is None:
        return cfg.pretrain, None
    tcfg = cfg.task(task)
    return tcfg.train, tcfg


def make_dataset(cfg, split: str, task: str | None = None, *, mixtures: bool | str | None = None, root=None,
                 size: int | None = None):
    """The dataset pre-training (``task=None``) or protocol ``task`` reads for ``split`` (``"train"`` /
    ``"test"``).

    ``mixtures``: mix-and-separate pairs (``MixtureDataset``) instead of single scenes; ``"alternates"``:
    pairs that also carry a second mixture of other recordings of the same sources
    (``AlternateMixtureDataset``, Mix-and-Localize); default: what the protocol's config says
    (``TaskConfig.mixtures``; pre-training: scenes). ``root`` and ``size`` apply to the scene datasets only
    (benchmarks have their own roots and sizes).
    """
    from avlib.data.scenes import AlternateMixtureDataset, MixtureDataset, SceneDataset

    _, tcfg = _stage(cfg, task)
    name, split = (cfg.data.dataset, split) if tcfg is None else tcfg.data_spec(cfg.data.dataset, split)
    if mixtures is None:
        mixtures = tcfg is not None and tcfg.mixtures
    if name not in SCENE_DATASETS:
        try:
            from avlib.data.benchmarks import build_benchmark
        except ImportError as e:
            raise ValueError(f"dataset {name!r} needs avlib.data.benchmarks ({e})") from e
        return build_benchmark(name, split, cfg)
    if split not in ("train", "val", "test"):
        raise ValueError(f"{name}: split {split!r} does not exist (train, val or test)")
    if name != cfg.data.dataset:
        cfg = replace(cfg, data=replace(cfg.data, dataset=name))
    if mixtures:
        pairs = AlternateMixtureDataset if mixtures == "alternates" else MixtureDataset
        return pairs(cfg, split, pretraining=tcfg is None, root=root, size=size)
    return SceneDataset(cfg, split, pretraining=tcfg is None, root=root, size=size)


def make_loaders(cfg, task: str | None = None, *, mixtures: bool | str | None = None, root=None,
                 batch_size: int | None = None, num_workers: int | None = None, pin_memory: bool | None = None,
                 seed: int | None = None, train_size: int | None = None, test_size: int | None = None
                 ) -> tuple[DataLoader, DataLoader]:
    """``(train_loader, test_loader)`` for pre-training (``task=None``) or a downstream protocol.

    Batch size defaults to the stage's ``TrainConfig.batch_size``; workers / pinning to ``cfg.data``.
    The train loader (``make_loader``) shuffles with a generator seeded from ``seed`` (default
    ``cfg.seed``) and drops the last partial batch; the test loader keeps order and every item.
    """
    train_cfg, _ = _stage(cfg, task)
    bs = int(batch_size or train_cfg.batch_size)
    nw = int(cfg.data.num_workers if num_workers is None else num_workers)
    pin = bool(cfg.data.pin_memory if pin_memory is None else pin_memory) and torch.cuda.is_available()
    train_ds = make_dataset(cfg, "train", task, mixtures=mixtures, root=root, size=train_size)
    test_ds = make_dataset(cfg, "test", task, mixtures=mixtures, root=root, size=test_size)
    train = make_loader(train_ds, bs, shuffle=True, seed=int(cfg.seed if seed is None else seed),
                        drop_last=len(train_ds) >= bs, num_workers=nw, pin_memory=pin)
    # evaluation: every item, in order, on every process
    test = DataLoader(test_ds, batch_size=bs, shuffle=False, drop_last=False, num_workers=nw, pin_memory=pin,
                      worker_init_fn=seed_worker if nw > 0 else None)
    return train, test


def loader_throughput(cfg, *, task: str | None = None, split: str = "train", batch_size: int | None = None,
                      num_workers: int | None = None, num_batches: int = 20, warmup: int = 1, root=None
                      ) -> dict[str, float]:
    """Time a DataLoader over ``split`` of a stage's data: ``{batches_per_s, samples_per_s, batch_size,
    num_workers, num_batches, seconds, setup_s}``. ``warmup`` batches (worker start-up) are not timed."""
    t0 = time.perf_counter()
    train_cfg, _ = _stage(cfg, task)
    bs = int(batch_size or train_cfg.batch_size)
    nw = int(cfg.data.num_workers if num_workers is None else num_workers)
    size = bs * (num_batches + warmup)
    ds = make_dataset(cfg, split, task, root=root, size=size)
    loader = DataLoader(ds, batch_size=bs, shuffle=False, drop_last=True, num_workers=nw,
                        worker_init_fn=seed_worker if nw > 0 else None)
    setup = time.perf_counter() - t0
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    t1 = time.perf_counter()
    n = 0
    for _ in it:
        n += 1
    dt = time.perf_counter() - t1
    return {"batches_per_s": n / dt, "samples_per_s": n * bs / dt, "batch_size": bs, "num_workers": nw,
            "num_batches": n, "seconds": dt, "setup_s": setup, "dataset": cfg.data.dataset}
