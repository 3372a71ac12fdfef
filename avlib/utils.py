"""Seeding, device resolution, the few ``torch.distributed`` helpers the kit needs, and safe file writes.

    seed_everything(0)                      # python / numpy / torch seeds + deterministic kernels
    device = resolve_device("auto")         # cuda (this rank's GPU) if available, else cpu
    info = init_distributed()               # no-op unless launched by torchrun (RANK/WORLD_SIZE set)
    atomic_write("run/state.json", text, mode="w")   # old or new file, never half of one
    with folder_lock("reports/cpu"): ...    # one writer per folder (LockedError names the holder)

Determinism follows ``STYLE.md`` (section 2, row 16): seeds first, ``cudnn.benchmark = False``,
``torch.use_deterministic_algorithms(True, warn_only=True)``; DataLoaders get a seeded ``generator``
and ``worker_init_fn=seed_worker`` (``avlib.data.make_loader`` does both).

Distributed: launch with ``torchrun --nproc_per_node=N -m your.module``; torchrun sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``. ``init_distributed`` picks NCCL on
GPUs and gloo on CPU. Every helper below also works (as the trivial single-process case) when
``torch.distributed`` was never initialized, so library code can call them unconditionally.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import gzip
import hashlib
import json
import os
import random
import re
import secrets
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist

__all__ = [
    "seed_everything", "resolve_device", "progress_bar", "check_amp", "autocast", "native_bf16", "resolve_amp",
    "resolve_attention_kernel", "attention_kernel", "stable_hash", "markdown_table", "Registry", "seed_worker",
    "DistInfo", "init_distributed",
    "is_distributed", "rank", "world_size", "is_main_process", "all_reduce_mean", "barrier", "cleanup",
    "sha256_file", "atomic_write", "folder_lock", "LockedError", "pid_alive",
]


def sha256_file(path: str | os.PathLike, *, gunzip: bool = False) -> str:
    """Hex sha256 of a file's content (of its decompressed content with ``gunzip``), read in 1 MiB chunks."""
    h = hashlib.sha256()
    opener = gzip.open if gunzip else open
    with opener(Path(path), "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------
# Files: atomic writes, folder locks
# ----------------------------------------------------------------------------------------------
# Our temp files: ".<target name>.tmp-<writer pid>-<8 hex>", in the target's folder (os.replace is only
# atomic within one file system). Nothing else is ever cleaned up by ``atomic_write``.
_TEMP = re.compile(r"^\..+\.tmp-(\d+)-[0-9a-f]{8}$")
STALE_TEMP_SECONDS = 60.0   # an orphan is also untouched this long (a live writer keeps updating its file)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (signal 0 checks without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:              # exists, owned by someone else
        return True
    return True


def _remove_stale_temps(folder: Path) -> list[Path]:
    """Delete ``atomic_write`` temp files in ``folder`` left by a writer that died (SIGKILL, power loss):
    the pid in the name no longer runs and the file was not modified for ``STALE_TEMP_SECONDS`` (the
    grace also protects a live writer whose pid we cannot see, e.g. from another container)."""
    removed = []
    now = time.time()
    for entry in os.scandir(folder):
        m = _TEMP.match(entry.name)
        if m is None or not entry.is_file(follow_symlinks=False):
            continue
        with contextlib.suppress(FileNotFoundError):    # another cleaner may be faster
            if not pid_alive(int(m.group(1))) and now - entry.stat().st_mtime >= STALE_TEMP_SECONDS:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def atomic_write(path: str | os.PathLike, data: bytes | str | Callable[[IO], object], *, mode: str = "wb") -> Path:
    """Write ``path`` so that a reader (or a crash) sees the old file or the new one, never half of one.

    ``data``: the bytes / text to write, or a function that writes into the open file (``torch.save``).
    It goes to a temp file in the same folder (created like any file, so the umask sets its
    permissions), which is flushed, fsynced and ``os.replace``-d over ``path``; the folder is fsynced
    so the rename itself survives a power loss. On any error, ``KeyboardInterrupt`` included, the temp
    file is removed and ``path`` is untouched. Temp files orphaned by a killed writer are removed on
    the next write to the same folder (``_remove_stale_temps``). ``mode``: ``"wb"`` or ``"w"`` (UTF-8).
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode={mode!r}: 'wb' or 'w'")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(path.parent)
    while True:                                          # O_EXCL: never reuse another writer's temp file
        tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)   # 0o666 & ~umask
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):   # persist the rename itself (not possible on every OS)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


class LockedError(RuntimeError):
    """Another live process holds the folder lock; the message names it (pid, host, since when)."""


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, name: str = ".lock") -> Iterator[Path]:
    """Hold an exclusive lock on ``folder`` for the ``with`` block, or raise ``LockedError`` at once.

    The lock is an ``flock`` on ``folder/<name>``, which also holds the holder's pid, host and start
    time for the message. The kernel drops an ``flock`` when its process dies, so a lock file left by a
    killed process is simply taken over. POSIX only (Linux, macOS).
    """
    import fcntl

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            raise LockedError(f"{folder} is in use by {_lock_holder(path)}") from None
        holder = {"pid": os.getpid(), "host": socket.gethostname(),
                  "since": _dt.datetime.now().isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)          # no stale holder to read; the flock goes with the close
    finally:
        os.close(fd)


def _lock_holder(path: Path) -> str:
    try:
        h = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        h = {}
    if not h:
        return "another process (no holder recorded yet)"
    return f"pid {h.get('pid')} on {h.get('host')} (since {h.get('since')})"


# ----------------------------------------------------------------------------------------------
# Seeding and devices
# ----------------------------------------------------------------------------------------------
def seed_everything(seed: int, deterministic: bool = True) -> int:
    """Seed python, numpy and torch (all devices); optionally ask for deterministic kernels.

    Args:
        seed: the seed (the same value is used for every library).
        deterministic: ``cudnn.deterministic = True``, ``cudnn.benchmark = False`` and
            ``torch.use_deterministic_algorithms(True, warn_only=True)`` (ops without a deterministic
            implementation warn instead of failing). ``False`` turns all three off (benchmark on).
    Returns:
        ``seed``, so ``seed = seed_everything(cfg.seed)`` reads naturally.
    """
    if deterministic:
        # cuBLAS needs this before its first use to be deterministic; it only helps if CUDA is not
        # initialized yet (the runner sets it in the environment for that reason).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)                 # also seeds every CUDA device
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    return seed


def seed_worker(worker_id: int) -> None:
    """``DataLoader(worker_init_fn=seed_worker)``: seed numpy and python in each worker from the
    torch seed the loader already gave it (``base_seed + worker_id``), so augmentations that use
    ``np.random`` / ``random`` are reproducible and differ between workers."""
    torch.set_num_threads(1)               # workers must not oversubscribe a small CPU
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> this rank's CUDA device if there is one (``cuda:LOCAL_RANK`` under torchrun),
    else ``cpu``. Explicit names (``"cpu"``, ``"cuda"``, ``"cuda:1"``) are checked, not guessed."""
    if isinstance(device, torch.device):
        device = str(device)
    device = device.lower()
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"device={device!r} but torch.cuda.is_available() is False; use 'cpu' or 'auto'")
        if device == "cuda":   # plain "cuda": the GPU this process owns
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return torch.device(device)


def progress_bar(iterable=None, **kwargs):
    """``tqdm.auto``'s bar (a widget in Jupyter, text in a terminal), off when ``TQDM_DISABLE`` is set:
    ``tqdm.notebook`` ignores that variable, so the kit applies it itself. The runner sets it, and
    executed copies keep the training loop's plain log lines instead of stale widgets."""
    from tqdm.auto import tqdm

    if os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true", "yes"):
        kwargs["disable"] = True
    return tqdm(iterable, **kwargs)


def native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` computes in bf16 natively: a GPU that supports it, or a CPU with AVX512-BF16 or
    AMX. Elsewhere oneDNN emulates bf16 and autocast runs slower than fp32."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def resolve_amp(amp: str, device: torch.device | str) -> str:
    """The mixed-precision mode a ``TrainConfig.amp`` value means on ``device``: ``"auto"`` is ``"bf16"``
    where the device has native bf16 (``native_bf16``) and ``"none"`` elsewhere; other values as given."""
    if amp != "auto":
        return amp
    return "bf16" if native_bf16(device) else "none"


def resolve_attention_kernel(kernel: str, amp: str, device: torch.device | str) -> str:
    """The attention kernel a ``TrainConfig.attention_kernel`` value means: ``"auto"`` is ``"math"`` under
    bf16 autocast on CPU (there the flash kernel's bf16 backward is ~10x slower than the math kernel at the
    small profiles' sequence lengths, measured with ``avlib.bench``) and ``"default"`` elsewhere."""
    if kernel != "auto":
        return kernel
    return "math" if resolve_amp(amp, device) == "bf16" and torch.device(device).type == "cpu" else "default"


def check_amp(amp: str, device: torch.device) -> None:
    """Refuse a mixed-precision mode the device cannot run (``"none"`` | ``"bf16"`` | ``"fp16"`` | ``"auto"``)."""
    amp = resolve_amp(amp, device)
    if amp == "fp16" and device.type != "cuda":
        raise ValueError(f"amp='fp16' needs a CUDA device (got {device}); on CPU use amp='none' or 'bf16'")
    if amp == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("amp='bf16' is not supported on this GPU; use amp='fp16'")


def autocast(amp: str, device: torch.device | str):
    """The autocast context of a ``TrainConfig.amp`` mode: ``"none"`` (a no-op context), ``"bf16"`` or
    ``"fp16"`` on ``device``'s type. Used by the training loop and the benchmark alike."""
    amp = resolve_amp(amp, device)
    if amp == "none":
        return contextlib.nullcontext()
    if amp not in ("bf16", "fp16"):
        raise ValueError(f"amp={amp!r}: none | bf16 | fp16 | auto")
    return torch.autocast(device_type=torch.device(device).type,
                          dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def attention_kernel(kernel: str = "default"):
    """The context of a resolved ``TrainConfig.attention_kernel`` (``resolve_attention_kernel``): ``"default"``
    (a no-op: torch picks the scaled-dot-product-attention kernel) or ``"math"`` (only the plain composite
    kernel: softmax(q k^T) v as separate ops). Same math; the kernels round differently."""
    if kernel == "default":
        return contextlib.nullcontext()
    if kernel != "math":
        raise ValueError(f"attention kernel {kernel!r}: default | math")
    from torch.nn.attention import SDPBackend, sdpa_kernel
    return sdpa_kernel(SDPBackend.MATH)


# ----------------------------------------------------------------------------------------------
# Small shared helpers: hashes and markdown tables
# ----------------------------------------------------------------------------------------------
def stable_hash(obj, length: int = 16) -> str:
    """Short sha256 of a JSON-able object (sorted keys; other objects by ``str``): the same value in
    every process and session, unlike ``hash()``."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


class Registry(dict):
    """Named entries of one kind (downstream protocols, pre-training objectives): ``register`` adds one,
    ``[name]`` finds it, an unknown name raises a ``KeyError`` that lists the registered ones."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def register(self, entry, name: str | None = None):
        """Add ``entry`` under ``name`` (default ``entry.name``); returns it, so it works as a decorator
        on a class whose instances take no arguments."""
        if isinstance(entry, type):
            self.register(entry(), name)
            return entry
        name = name or entry.name
        if name in self:
            raise ValueError(f"{self.kind} {name!r} is already registered ({type(self[name]).__name__})")
        self[name] = entry
        return entry

    def __missing__(self, name):
        raise KeyError(f"unknown {self.kind} {name!r}; registered: {', '.join(self) or 'none'}")


def markdown_table(header, rows, fmt=str) -> list[str]:
    """A GitHub-markdown table as lines (no trailing blank line); ``fmt`` renders each cell."""
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]


# ----------------------------------------------------------------------------------------------
# Distributed
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(backend: str | None = None) -> DistInfo:
    """Join the process group described by torchrun's environment variables.

    Without ``WORLD_SIZE`` (a plain ``python`` launch) or with ``WORLD_SIZE=1`` nothing is initialized
    and ``DistInfo()`` (rank 0 of 1) is returned. Backend: ``nccl`` when CUDA is available (and the
    process's GPU is set to ``LOCAL_RANK``), else ``gloo``. Calling it twice is harmless.
    """
    ws = int(os.environ.get("WORLD_SIZE", 1))
    rk, local = int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))
    if ws <= 1:
        return DistInfo()
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, init_method="env://", rank=rk, world_size=ws)
    return DistInfo(rank=rk, world_size=ws, local_rank=local, backend=dist.get_backend())


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """Rank 0 (or the only process): the one that writes checkpoints, logs and progress bars."""
    return rank() == 0


def all_reduce_mean(x):
    """Mean over ranks of a tensor or a number (returned as the same kind). Identity when not
    distributed. Tensors are reduced in place-free fashion (the input is not modified)."""
    if not is_distributed():
        return x
    is_tensor = torch.is_tensor(x)
    t = x.detach().clone() if is_tensor else torch.tensor(float(x), dtype=torch.float64)
    if dist.get_backend() == "nccl" and t.device.type != "cuda":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    t = t / dist.get_world_size()
    return t.to(x.device) if is_tensor else float(t.item())


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def cleanup() -> None:
    """Leave the process group (end of a torchrun script)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
