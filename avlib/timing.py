"""Measuring time and memory: the timing helpers of the benchmark (``avlib.bench``) and of notebook 01.

    t = measure(lambda: model(x))                                     # median of repeated calls, after warm-up
    ts = measure_interleaved({"explicit": f, "separable": g})         # round-robin: both see the same load
    with PeakMemory(device) as pm: step()                             # pm.peak_bytes

Every timing is a ``Timing`` (the timed calls and the cold first call); comparisons of two paths are
timed interleaved in one process, so background load drifts hit both sides alike.
"""
from __future__ import annotations

import contextlib
import ctypes
import gc
import re
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

__all__ = ["Timing", "measure", "measure_interleaved", "PeakMemory", "torch_threads"]


@dataclass
class Timing:
    """Wall-clock seconds of the timed calls, plus the very first call (cold: lazy init, compile)."""
    times: list[float]
    first_s: float

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def min(self) -> float:
        return min(self.times)

    @property
    def max(self) -> float:
        return max(self.times)

    @property
    def n(self) -> int:
        return len(self.times)


def _timed_call(fn: Callable[[], Any], sync: Callable[[], None]) -> float:
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def measure_interleaved(fns: dict[str, Callable[[], Any]], warmup: int = 2, repeats: int = 5, *,
                        sync: Callable[[], None] | None = None, max_seconds: float | None = None) -> dict[str, Timing]:
    """Like ``measure`` for several functions, called round-robin (a, b, a, b, ...), so that both sides
    of a comparison see the same background load: on a shared machine the load changes over seconds,
    and timing one path after the other would fold that drift into their ratio."""
    sync = sync or (lambda: None)
    first: dict[str, float] = {}
    for _ in range(warmup):
        for name, fn in fns.items():
            t = _timed_call(fn, sync)
            first.setdefault(name, t)
    times: dict[str, list[float]] = {name: [] for name in fns}
    start = time.perf_counter()
    for _ in range(max(1, repeats)):
        for name, fn in fns.items():
            times[name].append(_timed_call(fn, sync))
        if max_seconds is not None and time.perf_counter() - start > max_seconds:
            break
    return {name: Timing(times=t, first_s=first.get(name, t[0])) for name, t in times.items()}


def measure(fn: Callable[[], Any], warmup: int = 2, repeats: int = 5, *, sync: Callable[[], None] | None = None,
            max_seconds: float | None = None) -> Timing:
    """Call ``fn`` ``warmup`` times untimed, then time up to ``repeats`` calls (median, min, max in ``Timing``).

    Args:
        sync: called before every clock read (``torch.cuda.synchronize`` on GPU: kernels are asynchronous).
        max_seconds: stop the timed calls once they have used this much wall time (at least one call
            is always timed): a slow reference path gets fewer repeats instead of hours.
    """
    return measure_interleaved({"fn": fn}, warmup, repeats, sync=sync, max_seconds=max_seconds)["fn"]


def _proc_status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            m = re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.M)
        return int(m.group(1)) if m else None
    except OSError:
        return None


def _malloc_trim() -> None:
    """Return glibc's cached free heap pages to the OS, so their re-use shows up in RSS again."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakMemory:
    """Context manager: peak memory of the enclosed region (see the module docstring for the meaning).

    After exit: ``peak_bytes`` (rise above the start), ``absolute_bytes`` (process RSS high-water /
    CUDA max allocated) and ``method`` (how it was measured). ``before`` runs first (e.g. drop gradients).
    """

    def __init__(self, device: torch.device, before: Callable[[], None] | None = None):
        self.device, self.before = torch.device(device), before
        self.peak_bytes = self.absolute_bytes = None
        self.method = ""

    def __enter__(self):
        if self.before is not None:
            self.before()
        gc.collect(1)                                   # young cycles only: a full collect costs ~0.3 s
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            self.method = "cuda max_memory_allocated"
            return self
        _malloc_trim()
        self._start = (_proc_status_kib("VmRSS") or 0) * 1024
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")                            # reset the RSS high-water mark (Linux >= 4.0)
            self.method = "RSS high-water rise (VmHWM after clear_refs)"
        except OSError:                                 # no reset possible: ru_maxrss, may include earlier peaks
            self.method = "ru_maxrss rise (high-water not resettable: may include earlier peaks)"
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.absolute_bytes = torch.cuda.max_memory_allocated(self.device)
        else:
            hwm = _proc_status_kib("VmHWM")
            if hwm is None or self.method.startswith("ru_maxrss"):
                import resource
                hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss   # KiB on Linux
            self.absolute_bytes = hwm * 1024
        self.peak_bytes = max(0, self.absolute_bytes - self._start)
        return False


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run with ``torch.set_num_threads(n)`` and restore the previous count afterwards."""
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
