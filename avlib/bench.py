"""The benchmark suite: ``python -m avlib.bench``. One markdown report, every timing a median after warm-up.

    python -m avlib.bench --quick                         # smoke + cpu + one fusion block at batch 8 (CI-like)
    python -m avlib.bench                                 # + the ViT-B release configs, batch 8 and 64 blocks
    python -m avlib.bench --configs vggsound_release,vggsound_release:dense --sections pretrain,inference
    python -m avlib.bench --device cuda --compile --json bench.json
    python -m avlib.bench --sections small --threads 1       # the cpu profile's training steps, fast vs reference

Sections (each one function, ``bench_*`` below):
  1. pretraining step: ``AVMAE`` forward + backward (+ AdamW with ``--optimizer``) at the configured mask
     ratios, ``pair_attention="explicit"`` (the reference: every pair materialized) vs ``"separable"``;
  2. inference: the encoder forward, no masking, ``no_grad``, the same two paths;
  3. one ``dense`` and one ``factorized`` fusion block at the paper's unmasked sizes (196 visual, 96 audio,
     32 fusion tokens, width 768), forward and forward + backward, batch 8 and 64. The explicit path only
     runs when its analytic memory fits in ``--mem-fraction`` of the free memory, else "skipped (needs X)";
  4. data-loader throughput (AV-Digits at the ``cpu`` profile, 0 and 2 workers; the synthetic scenes
     stand in, with a note, when the recordings are not available);
  5. analytic model FLOPs (formulas in ``avmae_flops``) and, on CUDA, bf16 autocast throughput and model
     FLOPs utilization (MFU) of ViT-B pretraining at batch 64, with ``--compile`` adding
     ``torch.compile`` and activation-checkpointing rows;
  6. the small profiles' training steps (``--small-config``, default ``cpu``): pre-training and each
     downstream protocol's step (``--small-stages``; ``--quick``: pre-training only), data excluded, data
     included and the data path alone, for three paths timed interleaved in one process (``SMALL_PATHS``:
     every fast switch off, the fast switches at the reference's threads, the profile as configured), with
     achieved GFLOP/s against fp32 / bf16 GEMM ceilings timed in the same rounds; plus the separation
     scoring (BSS-eval), reference vs fast.
The machine (CPU model, cores, threads, load, versions, GPU) heads the report: read timings with it.

Ratios are always reference / fast: "speedup" = explicit time / separable time (> 1: separable is
faster), "mem ratio" = explicit peak / separable peak. For the released configs at batch 2 on CPU a
second ratio compares with the official code's CPU timings (docs/official_implementation.md §1.7, a different CPU:
indicative only).

Timing: the explicit and separable paths of a row are built in one process and called round-robin
(explicit, separable, explicit, ...) after ``--warmup`` calls each, so both see the same background load;
medians of up to ``--repeats`` calls (``--max-seconds`` caps slow paths) with min–max, and the per-round
ratio range. ``torch.set_num_threads(--threads)`` (default: the usable cores) in every measurement.

Peak memory (sections 1-3): one more warm call per path, gradients dropped first, measured as
  * CPU: the rise of the process's resident set (RSS) above its steady state: ``gc`` and
    ``malloc_trim(0)`` hand cached free heap pages back to the OS (so their re-use counts again), the
    kernel's RSS high-water mark is reset (``/proc/self/clear_refs``) and read back (``VmHWM``) after
    the call. It counts what a step allocates and touches (activations, gradients, temporaries) and
    not weights, inputs or the torch runtime. On CPU each row runs in a fresh subprocess
    (``--no-isolate``: in-process), so rows share no allocator or thread-pool state;
  * CUDA: ``torch.cuda.max_memory_allocated`` above the memory allocated at the start (the allocator's
    cache not counted). Section 5's GPU rows report the absolute peak (weights, gradients, optimizer).
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable

import torch

from avlib.config import ModelConfig, make_config
from avlib.flops import avmae_flops, encoder_flops, explicit_pair_bytes, model_explicit_bytes, pair_shapes
from avlib.timing import PeakMemory, measure_interleaved, torch_threads
from avlib.utils import autocast, markdown_table

__all__ = [
    "BenchOptions", "machine_info", "run_job", "bench_models", "bench_fusion_blocks", "bench_loader", "bench_gpu",
    "format_report", "main",
]

MODES = ("explicit", "separable")       # reference first
FAST_MODE = "separable+bf16"            # every fast switch that applies on any device: exact pairs + bf16 autocast
RELEASE_PROFILES = ("paper", "vggsound_release", "as2m_release")
RESULT_TAG = "BENCH_RESULT "
# the stages timed (linprobe trains a linear layer on cached features: nothing to time per step)
SMALL_STAGES = ("pretrain", "finetune", "localization", "segmentation", "separation")
# reference = every fast switch off (today's path); "fast @ ref threads" = the fast switches but the
# reference's threads and no loader worker (what the switches buy at equal CPU resources); fast = the profile
SMALL_PATHS = ("reference", "fast @ ref threads", "fast")
_REFERENCE_DATA = {"batch_front_end": False, "num_workers": 0}
_REFERENCE_TRAIN = {"amp": "none", "attention_kernel": "default", "fused_optimizer": False, "threads": None}
# ceiling GEMMs: calls of 10 ms and more, which a busy machine time-slices as it does the steps (a 512
# GEMM finishes within one time slice and reads up to 3x "faster" than any long computation there)
GEMM_SIZES = (1024, 2048)
GiB, MiB = 2 ** 30, 2 ** 20

# The official code's CPU timings (docs/official_implementation.md §1.7): AVMAE fwd+bwd and encoder-only
# no_grad forward, batch 2, torch.set_num_threads(2) on a 2-core Intel Xeon, medians of 8 after 2 warm-ups.
OFFICIAL_CPU_S = {
    "vggsound_release": {"pretrain": 1.50, "inference": 0.56},
    "as2m_release": {"pretrain": 1.69, "inference": 0.60},
}

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) by GPU name; the first match wins (--peak-tflops overrides).
GPU_PEAK_BF16_TFLOPS = (("GH200", 989.0), ("H200", 989.0), ("H100 PCIe", 756.0), ("H100 NVL", 835.0),
                        ("H100", 989.0), ("H800", 989.0), ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0))

# The fusion micro-benchmark's sizes: the paper's unmasked token counts (224x224 / 128x192 at patch 16).
PAPER_BLOCK = dict(embed_dim=768, heads=12, attn_ratio=0.25, mlp_ratio=4.0, fusion=16, aggr_image=8,
                   aggr_audio=8, n_image=196, n_audio=96)
SMOKE_BLOCK = dict(embed_dim=48, heads=4, attn_ratio=0.25, mlp_ratio=4.0, fusion=4, aggr_image=2,
                   aggr_audio=2, n_image=16, n_audio=12)


def _log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# 1. Options and the machine
# ----------------------------------------------------------------------------------------------
@dataclass
class BenchOptions:
    device: str = "cpu"
    threads: int | None = None         # torch threads (None: the cores this process may use)
    warmup: int = 2
    repeats: int = 5
    max_seconds: float = 60.0          # per measurement, timed calls only
    batch: int | None = None           # overrides every model batch size
    optimizer: bool = False            # AdamW step inside the pretraining step
    amp: str = "none"                  # none | bf16 autocast for sections 1-3
    compile: bool = False              # torch.compile + grad checkpointing rows (section 5, CUDA)
    isolate: bool | None = None        # subprocess per model measurement (None: on CPU)
    mem_fraction: float = 0.5          # the explicit path runs if its analytic bytes < this * free memory
    peak_tflops: float | None = None   # override of the GPU's peak bf16 TFLOP/s
    loader_config: str = "cpu"
    loader_batches: int = 20
    loader_workers: tuple[int, ...] = (0, 2)
    seed: int = 0
    fast_path: bool = True             # section 1: also time every fast switch at once vs the reference
    small_config: str = "cpu"          # section 6: the small profile whose training steps are timed
    small_stages: tuple[str, ...] = SMALL_STAGES
    scoring_mixtures: int = 8          # section 6: separation test mixtures scored with BSS-eval

    def __post_init__(self):
        if self.threads is None:
            self.threads = _usable_cores()
        if self.isolate is None:
            self.isolate = not str(self.device).startswith("cuda")


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            m = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.M)
            if m:
                return m.group(1).strip()
    return platform.processor() or platform.machine()


def gpu_peak_tflops(name: str, override: float | None = None) -> tuple[float | None, str]:
    """Peak dense bf16 TFLOP/s of a GPU by name and where the number comes from."""
    if override:
        return float(override), "--peak-tflops"
    for key, tflops in GPU_PEAK_BF16_TFLOPS:
        if key.lower() in name.lower():
            return tflops, f"datasheet ({key}, dense bf16)"
    return None, "unknown GPU: pass --peak-tflops"


def machine_info(opts: BenchOptions) -> dict[str, Any]:
    """Everything that decides a timing: CPU, cores, threads, load, memory, versions, GPU."""
    import numpy
    import psutil
    import timm
    from timm.layers import use_fused_attn
    vm = psutil.virtual_memory()
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cpu capability (torch)": torch.backends.cpu.get_cpu_capability(),
        "cores (logical / physical / usable)": f"{os.cpu_count()} / {psutil.cpu_count(logical=False)} / "
                                               f"{_usable_cores()}",
        "torch threads (intra / inter-op)": f"{opts.threads} / {torch.get_num_interop_threads()}",
        "load average 1/5/15 min (at start)": " / ".join(f"{x:.2f}" for x in os.getloadavg()),
        "memory total / available": f"{vm.total / GiB:.1f} / {vm.available / GiB:.1f} GiB",
        "python / platform": f"{platform.python_version()} / {platform.platform()}",
        "torch / timm / numpy": f"{torch.__version__} / {timm.__version__} / {numpy.__version__}",
        "oneDNN / MKL": f"{torch.backends.mkldnn.is_available()} / {torch.backends.mkl.is_available()}",
        "timm fused attention (SDPA)": use_fused_attn(),
        "device": opts.device,
        "warm-up / repeats / max s per measurement": f"{opts.warmup} / {opts.repeats} / {opts.max_seconds:g}",
        "isolation": "subprocess per measurement" if opts.isolate else "in-process",
        "amp": opts.amp,
    }
    if str(opts.device).startswith("cuda"):
        dev = torch.device(opts.device)
        props = torch.cuda.get_device_properties(dev)
        peak, src = gpu_peak_tflops(props.name, opts.peak_tflops)
        info.update({
            "gpu": f"{props.name} (sm_{props.major}{props.minor}, {props.total_memory / GiB:.1f} GiB, "
                   f"{props.multi_processor_count} SMs)",
            "cuda / cudnn": f"{torch.version.cuda} / {torch.backends.cudnn.version()}",
            "tf32 matmul / cudnn": f"{torch.backends.cuda.matmul.allow_tf32} / {torch.backends.cudnn.allow_tf32}",
            "peak bf16 TFLOP/s": f"{peak} ({src})",
        })
    return info


def _free_bytes(device: str) -> int:
    if str(device).startswith("cuda"):
        return torch.cuda.mem_get_info(torch.device(device))[0]
    import psutil
    return psutil.virtual_memory().available


# ----------------------------------------------------------------------------------------------
# 2. Jobs: one measurement each, run in-process or in a fresh subprocess
# ----------------------------------------------------------------------------------------------
def model_config(spec: str, mode: str = "separable", grad_ckpt: bool = False) -> ModelConfig:
    """``profile[:fusion_arch]`` -> its ModelConfig with the pair-attention mode, e.g. ``vggsound_release:dense``."""
    profile, _, arch = spec.partition(":")
    cfg = make_config(profile).model
    return replace(cfg, pair_attention=mode, grad_checkpointing=grad_ckpt, **({"fusion_arch": arch} if arch else {}))


@dataclass
class Step:
    """One path to time: ``run()`` is the timed call, ``reset()`` drops gradients (memory baseline)."""
    run: Callable[[], None]
    reset: Callable[[], None] = lambda: None
    params: int = 0


def _time_modes(job: dict, make_step: Callable[[dict, str], Step]) -> dict:
    """Build one ``Step`` per mode in ``job["modes"]`` (all in this process), time them interleaved, then
    measure each one's peak memory on one more call. Returns ``{mode: result}``."""
    device = torch.device(job["device"])
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None
    steps = {mode: make_step(job, mode) for mode in job["modes"]}
    timings = measure_interleaved({m: s.run for m, s in steps.items()}, job["warmup"], job["repeats"], sync=sync,
                                  max_seconds=job["max_seconds"])
    out = {}
    for mode, step in steps.items():
        with PeakMemory(device, before=step.reset) as mem:
            step.run()
        t = timings[mode]
        out[mode] = {"ok": True, "times": t.times, "median_s": t.median, "min_s": t.min, "max_s": t.max, "n": t.n,
                     "first_s": t.first_s, "samples_per_s": job["batch"] / t.median, "peak_bytes": mem.peak_bytes,
                     "peak_abs_bytes": mem.absolute_bytes, "mem_method": mem.method, "params": step.params,
                     "threads": torch.get_num_threads()}
    return out


def _model_step(job: dict, mode: str) -> Step:
    """``pretrain``: AVMAE forward + backward (+ AdamW); ``inference``: encoder forward, no_grad, no masking."""
    from avlib.model import build_avmae, build_encoder
    pair, _, amp_mode = mode.partition("+")                           # e.g. "separable+bf16" (FAST_MODE)
    cfg = model_config(job["config"], pair, job.get("grad_ckpt", False))
    device, B = torch.device(job["device"]), job["batch"]
    g = torch.Generator().manual_seed(job.get("seed", 0))            # same inputs for every mode
    image = torch.randn(B, 3, *cfg.image_size, generator=g).to(device)
    audio = torch.randn(B, 1, *cfg.audio_size, generator=g).to(device)
    amp = autocast(amp_mode or job.get("amp", "none"), device)
    if job["kind"] == "inference":
        model = build_encoder(cfg).to(device).eval()
        fwd = torch.compile(model) if job.get("compile") else model

        def infer():
            with torch.no_grad(), amp:
                fwd(image, audio)
        return Step(infer, params=sum(p.numel() for p in model.parameters()))

    model = build_avmae(cfg).to(device).train()
    noise_v = torch.rand(B, math.prod(cfg.image_grid), generator=g).to(device)   # one fixed mask per mode
    noise_a = torch.rand(B, math.prod(cfg.audio_grid), generator=g).to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-4) if job.get("optimizer") else None
    fwd = torch.compile(model) if job.get("compile") else model

    def train_step():
        model.zero_grad(set_to_none=True)
        with amp:
            loss = fwd(image, audio, noise_v, noise_a).loss
        loss.backward()
        if opt is not None:
            opt.step()
    return Step(train_step, lambda: model.zero_grad(set_to_none=True), sum(p.numel() for p in model.parameters()))


def fusion_block_config(dims: dict, block: str, mode: str) -> ModelConfig:
    """A ModelConfig whose fusion block has the micro-benchmark's sizes (``PAPER_BLOCK`` keys)."""
    return replace(ModelConfig(), embed_dim=dims["embed_dim"], num_heads=dims["heads"], fusion_num_heads=dims["heads"],
                   fusion_attn_ratio=dims["attn_ratio"], fusion_mlp_ratio=dims["mlp_ratio"], fusion_arch=block,
                   num_fusion_tokens=dims["fusion"], num_aggr_image_tokens=dims["aggr_image"],
                   num_aggr_audio_tokens=dims["aggr_audio"], pair_attention=mode)


def _fusion_step(job: dict, mode: str) -> Step:
    """One fusion block: forward (no_grad) or forward + backward of sum(output) into weights and tokens."""
    from avlib.model import FUSION_BLOCKS
    dims, device, B, grad = job["dims"], torch.device(job["device"]), job["batch"], job["backward"]
    cfg = fusion_block_config(dims, job["block"], mode)
    torch.manual_seed(job.get("seed", 0))                              # same weights and tokens for every mode
    block = FUSION_BLOCKS[job["block"]](cfg).to(device)
    xf, xv, xa = (torch.randn(B, n, cfg.embed_dim, device=device, requires_grad=grad)
                  for n in (cfg.num_fusion_total, dims["n_image"], dims["n_audio"]))
    amp = autocast(job.get("amp", "none"), device)

    def reset():
        block.zero_grad(set_to_none=True)
        xf.grad = xv.grad = xa.grad = None

    def run():
        if not grad:
            with torch.no_grad(), amp:
                block(xf, xv, xa)
            return
        reset()
        with amp:
            y, _ = block(xf, xv, xa)
        y.float().sum().backward()
    return Step(run, reset, sum(p.numel() for p in block.parameters()))


def _job_loader(job: dict) -> dict:
    """``loader_throughput`` over ``repeats`` fresh passes (worker start-up excluded by one warm-up batch)."""
    from avlib.data.loaders import loader_throughput
    from avlib.paths import DataNotFoundError
    cfg = make_config(job["config"], **{"data.dataset": job["dataset"]})
    runs = []
    try:
        for _ in range(max(1, job["repeats"])):
            runs.append(loader_throughput(cfg, num_workers=job["workers"], num_batches=job["batches"],
                                          batch_size=job.get("batch"), root=job.get("root")))
    except DataNotFoundError as e:
        return {"ok": False, "data_missing": True, "error": str(e).splitlines()[0]}
    rates = [r["samples_per_s"] for r in runs]
    return {"ok": True, "samples_per_s": statistics.median(rates), "min": min(rates), "max": max(rates),
            "n": len(runs), "batches_per_s": statistics.median(r["batches_per_s"] for r in runs),
            "batch": runs[0]["batch_size"], "setup_s": statistics.median(r["setup_s"] for r in runs),
            "num_batches": runs[0]["num_batches"]}


# ----------------------------------------------------------------------------------------------
# Section 6: the small profiles' training steps, fast path vs reference
# ----------------------------------------------------------------------------------------------


def small_path_config(profile: str, path: str):
    """The ``Config`` of one path of section 6: the profile as it is (``"fast"``), with every fast switch
    off (``"reference"``), or with the fast switches but the reference's threads and loader workers."""
    cfg = make_config(profile)
    if path == "fast":
        return cfg
    if path not in SMALL_PATHS:
        raise ValueError(f"path {path!r}: one of {SMALL_PATHS}")
    from avlib.config import TASKS, apply_overrides
    train = _REFERENCE_TRAIN if path == "reference" else {"threads": None}
    data = _REFERENCE_DATA if path == "reference" else {"num_workers": 0}
    over = {f"data.{k}": v for k, v in data.items()}
    for stage in ("pretrain", *(f"{t}.train" for t in TASKS)):
        over.update({f"{stage}.{k}": v for k, v in train.items()})
    return apply_overrides(cfg, over)


def stage_flops(cfg, stage: str) -> int:
    """Model FLOPs of one training step of ``stage`` (``avlib.flops``): the AVMAE step for pre-training;
    3 x the unmasked encoder forward for a protocol (the heads are not counted), at the batch the encoder
    sees (separation: one mixture per source image, ``K = 2`` per item)."""
    from avlib.flops import encoder_flops
    if stage == "pretrain":
        return avmae_flops(cfg.model, cfg.pretrain.batch_size)["train"]
    B = cfg.task(stage).train.batch_size * (2 if stage == "separation" else 1)
    return 3 * encoder_flops(cfg.model, B)


class _SmallStep:
    """One path of one stage, stepped as ``avlib.train.fit`` steps it: the stage's model and optimizer
    (``build_optimizer``), forward under the resolved autocast and attention kernel, backward, optimizer
    step, all at the path's ``TrainConfig.threads``. ``excl()`` steps on one fixed batch (data excluded),
    ``incl()`` on the next batch of the stage's training loader (data included, workers as configured),
    ``data()`` only fetches a batch from a loader without workers (the data path's own cost)."""

    def __init__(self, cfg, stage: str, root, seed: int):
        from avlib.data.loaders import make_loaders
        from avlib.objectives import OBJECTIVES
        from avlib.protocols import PROTOCOLS
        from avlib.tasks import build_task_model
        from avlib.train import build_optimizer, effective_batch
        from avlib.utils import resolve_amp, resolve_attention_kernel
        task = None if stage == "pretrain" else stage
        self.tcfg = cfg.pretrain if task is None else cfg.task(task).train
        self.loader, _ = make_loaders(cfg, task, root=root, test_size=1)
        self.bare, _ = make_loaders(cfg, task, root=root, num_workers=0, test_size=1)
        torch.manual_seed(seed)                                      # the same initial weights on every path
        if task is None:
            obj = OBJECTIVES["deepavfusion"]
            self.model, self.loss_fn = obj.build(cfg), obj.loss
        else:
            self.model = build_task_model(task, cfg, "scratch", train_data=self.loader.dataset)
            self.loss_fn = PROTOCOLS[task].loss
        self.model.train()
        self.opt = build_optimizer(self.model, self.tcfg, effective_batch(self.tcfg, 1))
        self.amp = resolve_amp(self.tcfg.amp, "cpu")
        self.kernel = resolve_attention_kernel(self.tcfg.attention_kernel, self.amp, "cpu")
        self.fixed = next(iter(self.bare))
        self._it = self._bare_it = None
        self.batch = self.tcfg.batch_size

    def _step(self, batch) -> None:
        from avlib.utils import attention_kernel
        with torch_threads(self.tcfg.threads):
            with autocast(self.amp, "cpu"), attention_kernel(self.kernel):
                loss, _ = self.loss_fn(self.model, batch)
            loss.backward()
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)

    @staticmethod
    def _next(loader, it):
        try:
            return next(it), it
        except (StopIteration, TypeError):                          # exhausted (or not started): a new epoch
            it = iter(loader)
            return next(it), it

    def excl(self) -> None:
        self._step(self.fixed)

    def incl(self) -> None:
        batch, self._it = self._next(self.loader, self._it)
        self._step(batch)

    def data(self) -> None:
        with torch_threads(self.tcfg.threads):
            _, self._bare_it = self._next(self.bare, self._bare_it)


def _gemm(n: int, dtype: torch.dtype, threads: int) -> Callable[[], None]:
    g = torch.Generator().manual_seed(n)
    a, b = (torch.randn(n, n, generator=g).to(dtype) for _ in range(2))

    def run():
        with torch_threads(threads):
            torch.mm(a, b)
    return run


def _job_small(job: dict) -> dict:
    """Every path of one stage, data excluded / included / data only, plus the GEMM ceilings (fp32 and
    bf16 at each thread count the paths use, ``GEMM_SIZES``), all interleaved in one process."""
    stage = job["stage"]
    steps = {path: _SmallStep(small_path_config(job["config"], path), stage, job.get("root"), job.get("seed", 0))
             for path in job["paths"]}
    fns: dict[str, Callable[[], None]] = {}
    for path, st in steps.items():
        fns.update({f"{path}|excl": st.excl, f"{path}|incl": st.incl, f"{path}|data": st.data})
    threads = sorted({st.tcfg.threads or torch.get_num_threads() for st in steps.values()})
    for t in threads:
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            for n in GEMM_SIZES:
                fns[f"gemm|{name}|{t}|{n}"] = _gemm(n, dtype, t)
    timings = measure_interleaved(fns, job["warmup"], job["repeats"], max_seconds=job["max_seconds"])
    out = {"stage": stage, "config": job["config"], "threads": threads, "paths": {}, "gemm": {}}
    for key, t in timings.items():
        if key.startswith("gemm|"):
            _, name, th, n = key.split("|")
            gflops = 2 * int(n) ** 3 / t.median / 1e9
            best = out["gemm"].setdefault(f"{name}|{th}", {"gflops": 0.0})
            if gflops > best["gflops"]:
                best.update(gflops=gflops, n=int(n))
            continue
        path, kind = key.split("|")
        st = steps[path]
        res = out["paths"].setdefault(path, {"batch": st.batch, "amp": st.amp, "attention_kernel": st.kernel,
                                             "threads": st.tcfg.threads or torch.get_num_threads(),
                                             "workers": st.loader.num_workers})
        res[kind] = {"times": t.times, "median_s": t.median, "min_s": t.min, "max_s": t.max, "n": t.n,
                     "first_s": t.first_s, "samples_per_s": st.batch / t.median}
    out["flops"] = stage_flops(small_path_config(job["config"], "fast"), stage)
    return {"ok": True, **out}


def _job_scoring(job: dict) -> dict:
    """BSS-eval of ``job["mixtures"]`` separation test mixtures (estimates: the sources plus a share of the
    other source) with the reference ``SeparationEvaluator`` and the profile's (``separation.eval_workers``),
    interleaved; checks that the scores agree."""
    from avlib.data.loaders import make_dataset
    from avlib.metrics import SeparationEvaluator
    cfg = make_config(job["config"])
    ds = make_dataset(cfg, "test", "separation", root=job.get("root"), size=job["mixtures"])
    items = [ds[i] for i in range(len(ds))]
    ref = torch.stack([it["source_waveforms"] for it in items])
    est = 0.8 * ref + 0.2 * ref.flip(1)
    workers = cfg.separation.eval_workers
    scores = {}

    def score(w):
        def run():
            ev = SeparationEvaluator("deepavfusion", workers=w)
            ev.update(ref, est)
            scores[w] = ev.compute()
        return run
    t = measure_interleaved({"reference": score(None), "fast": score(workers)}, job["warmup"], job["repeats"],
                            max_seconds=job["max_seconds"])
    diff = max(abs(scores[None][k] - scores[workers][k]) for k in ("sdr", "sir", "sar", "sdr_mix"))
    return {"ok": True, "mixtures": len(items), "workers": workers, "max_abs_diff_db": diff,
            **{k: {"ok": True, "times": v.times, "median_s": v.median, "min_s": v.min, "max_s": v.max, "n": v.n}
               for k, v in t.items()}}


_JOBS = {"pretrain": lambda job: _time_modes(job, _model_step), "inference": lambda job: _time_modes(job, _model_step),
         "fusion": lambda job: _time_modes(job, _fusion_step), "loader": _job_loader, "small": _job_small,
         "scoring": _job_scoring}


def run_job(job: dict) -> dict:
    """Run one measurement in this process; failures come back as ``{"ok": False, "error": ...}``."""
    try:
        with torch_threads(job.get("threads")):
            return _JOBS[job["kind"]](job)
    except (RuntimeError, ValueError, MemoryError) as e:    # torch OOM is a RuntimeError
        return {"ok": False, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
    finally:
        if torch.cuda.is_available():
            gc.collect()
            torch.cuda.empty_cache()


def dispatch(job: dict, isolate: bool, timeout_s: float = 1800) -> dict:
    """``run_job`` in-process, or in a fresh ``python -m avlib.bench --job`` subprocess (CPU default)."""
    if not isolate:
        return run_job(job)
    env = dict(os.environ)
    if job.get("threads"):
        env.update(OMP_NUM_THREADS=str(job["threads"]), MKL_NUM_THREADS=str(job["threads"]))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    try:
        p = subprocess.run([sys.executable, "-m", "avlib.bench", "--job", json.dumps(job)], capture_output=True,
                           text=True, env=env, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {timeout_s:.0f} s"}
    for line in reversed(p.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    why = "killed (out of memory?)" if p.returncode in (-9, 137) else f"exit code {p.returncode}"
    tail = (p.stderr.strip().splitlines() or [""])[-1][:200]
    return {"ok": False, "error": f"worker {why}: {tail}"}


# ----------------------------------------------------------------------------------------------
# 3. Sections
# ----------------------------------------------------------------------------------------------
def _base_job(opts: BenchOptions, kind: str, **kw) -> dict:
    return dict(kind=kind, device=opts.device, threads=opts.threads, warmup=opts.warmup, repeats=opts.repeats,
                max_seconds=opts.max_seconds, amp=opts.amp, seed=opts.seed, **kw)


def default_batch(spec: str, opts: BenchOptions) -> int:
    """--batch, else the profile's pretraining batch (smoke 8, cpu 64); ViT-B configs: 2 on CPU, 64 on GPU."""
    if opts.batch:
        return opts.batch
    profile = spec.partition(":")[0]
    if profile in RELEASE_PROFILES:
        return 64 if str(opts.device).startswith("cuda") else 2
    return make_config(profile).pretrain.batch_size


def _skip(need: int, budget: int) -> dict:
    return {"ok": False, "skipped": True, "need_bytes": need,
            "error": f"skipped (needs {need / GiB:.1f} GiB, budget {budget / GiB:.1f} GiB)"}


def run_modes(job: dict, explicit_need: int, opts: BenchOptions) -> dict[str, dict]:
    """Time ``job`` for each mode in ``job["modes"]`` (default: explicit and separable, interleaved in
    one process). The explicit path is left out, as "skipped (needs X GiB)", when its analytic memory
    ``explicit_need`` exceeds ``opts.mem_fraction`` of the free memory. Returns ``{mode: result}``."""
    modes = list(job.get("modes", MODES))
    budget = int(opts.mem_fraction * _free_bytes(opts.device))
    out: dict[str, dict] = {}
    if "explicit" in modes and explicit_need > budget:
        modes.remove("explicit")
        out["explicit"] = _skip(explicit_need, budget)
    if modes:
        res = dispatch({**job, "modes": modes}, opts.isolate)
        for mode in modes:
            out[mode] = res[mode] if res.get("ok") is not False else dict(res)   # a failed job fails every mode
    for mode in out:
        out[mode]["analytic_bytes"] = explicit_need if mode == "explicit" else None
    return out


def _pair_stats(row: dict) -> None:
    """Per-round explicit / separable ratios of an interleaved pair (how much the speedup wobbles)."""
    e, s = row["explicit"], row["separable"]
    if e.get("ok") and s.get("ok"):
        row["round_speedups"] = [a / b for a, b in zip(e["times"], s["times"])]


def _log_row(prefix: str, row: dict) -> None:
    for mode in MODES:
        res = row[mode]
        _log(f"{prefix} {mode:9s} " + (_fmt_s(res["median_s"]) if res.get("ok") else res["error"]))


def bench_models(kind: str, specs: list[str], opts: BenchOptions) -> list[dict]:
    """Sections 1 (``kind="pretrain"``) and 2 (``"inference"``): explicit vs separable for each config."""
    rows = []
    for spec in specs:
        B = default_batch(spec, opts)
        cfg = model_config(spec)
        need = model_explicit_bytes(replace(cfg, pair_attention="explicit"), B, train=kind == "pretrain")
        job = _base_job(opts, kind, config=spec, batch=B, optimizer=opts.optimizer)
        row = {"config": spec, "batch": B, "fusion_arch": cfg.fusion_arch, **run_modes(job, need, opts),
               "flops": avmae_flops(cfg, B)["train"] if kind == "pretrain" else encoder_flops(cfg, B)}
        _pair_stats(row)
        _log_row(f"{kind:9s} {spec:24s} B={B:<3d}", row)
        if kind == "pretrain" and opts.fast_path and opts.amp == "none":
            # the reference (explicit pairs, fp32) against every fast switch at once, interleaved in one process
            fast = run_modes({**job, "modes": ["explicit", FAST_MODE]}, need, opts)
            row["fast"] = {"explicit": fast["explicit"], "separable": fast[FAST_MODE]}
            _pair_stats(row["fast"])
            _log(f"{kind:9s} {spec:24s} B={B:<3d} {FAST_MODE} " + (_fmt_s(fast[FAST_MODE]["median_s"])
                                                                  if fast[FAST_MODE].get("ok") else fast[FAST_MODE]["error"]))
        rows.append(row)
    return rows


def bench_fusion_blocks(opts: BenchOptions, batches: tuple[int, ...] = (8, 64), dims: dict | None = None,
                        blocks: tuple[str, ...] = ("dense", "factorized")) -> list[dict]:
    """Section 3: one fusion block at the paper's unmasked sizes, forward and forward + backward."""
    dims = dict(dims or PAPER_BLOCK)
    rows = []
    for block in blocks:
        shapes = pair_shapes(fusion_block_config(dims, block, "explicit"), dims["n_image"], dims["n_audio"])
        for B in batches:
            for backward in (False, True):
                need = explicit_pair_bytes(B, **shapes, backward=backward)
                job = _base_job(opts, "fusion", block=block, batch=B, backward=backward, dims=dims)
                row = {"block": block, "batch": B, "pass": "fwd+bwd" if backward else "fwd", "dims": dims,
                       "pairs": shapes["n1"] * shapes["n2"], "analytic_explicit_bytes": need,
                       **run_modes(job, need, opts)}
                _pair_stats(row)
                _log_row(f"fusion    {block:10s} B={B:<3d} {row['pass']:7s}", row)
                rows.append(row)
    return rows


def _find_data_root() -> str | None:
    """AVLIB_DATA_ROOT, else ../shared/data beside the checkout when it holds fsdd/ and mnist/, else the
    kit's default lookup (None)."""
    from avlib.paths import ROOT
    for cand in (os.environ.get("AVLIB_DATA_ROOT"), ROOT.parent / "shared" / "data"):
        if cand and os.path.isdir(os.path.join(cand, "fsdd")) and os.path.isdir(os.path.join(cand, "mnist")):
            return str(cand)
    return None


def bench_loader(opts: BenchOptions) -> tuple[list[dict], list[str]]:
    """Section 4: AV-Digits loader throughput at ``opts.loader_config`` for each worker count; the
    synthetic scenes (same composer and audio front end, drawn content) when the recordings are missing."""
    root = _find_data_root()
    notes = ["One warm-up batch (worker start-up) untimed per pass; median over passes."]
    for dataset in ("avdigits", "synthetic"):
        rows = []
        for workers in opts.loader_workers:
            job = {**_base_job(opts, "loader", config=opts.loader_config, dataset=dataset, workers=workers,
                               batches=opts.loader_batches, root=root), "repeats": min(opts.repeats, 3)}
            res = dispatch(job, opts.isolate)
            if res.get("data_missing"):
                notes.append(f"AV-Digits skipped: {res['error']} (set AVLIB_DATA_ROOT or run "
                             "`python -m avlib.data.download`); the synthetic scenes stand in.")
                break
            rows.append({"dataset": dataset, "config": opts.loader_config, "workers": workers, **res})
            _log(f"loader    {dataset:10s} workers={workers} " + (f"{res['samples_per_s']:.0f} samples/s"
                                                                   if res["ok"] else res["error"]))
        if rows:
            if dataset == "avdigits":
                notes.append(f"AV-Digits read from {root or 'the default data root (avlib.paths.data_root)'}.")
            return rows, notes
    return [], notes


def bench_small(opts: BenchOptions) -> dict:
    """Section 6: each stage of ``opts.small_config`` (``opts.small_stages``), every path of ``SMALL_PATHS``
    interleaved with the GEMM ceilings in one process; then the separation scoring, reference vs fast."""
    root = _find_data_root()
    rows = []
    for stage in opts.small_stages:
        job = _base_job(opts, "small", config=opts.small_config, stage=stage, paths=list(SMALL_PATHS), root=root)
        job["max_seconds"] = 10 * opts.max_seconds                   # a round times 3 paths x 3 kinds + GEMMs
        res = dispatch(job, opts.isolate)
        rows.append(res if res.get("ok") else {"stage": stage, **res})
        if res.get("ok"):
            ref, fast = res["paths"]["reference"]["incl"], res["paths"]["fast"]["incl"]
            _log(f"small     {stage:13s} data incl.: reference {ref['samples_per_s']:.0f} samples/s, "
                 f"fast {fast['samples_per_s']:.0f} ({ref['median_s'] / fast['median_s']:.2f}x)")
        else:
            _log(f"small     {stage:13s} {res.get('error')}")
    scoring = None
    if "separation" in opts.small_stages:
        job = {**_base_job(opts, "scoring", config=opts.small_config, mixtures=opts.scoring_mixtures, root=root),
               "repeats": min(opts.repeats, 3)}
        scoring = dispatch(job, opts.isolate)
        if scoring.get("ok"):
            _log(f"small     BSS-eval of {scoring['mixtures']} mixtures: reference {_fmt_s(scoring['reference']['median_s'])}"
                 f", fast {_fmt_s(scoring['fast']['median_s'])}")
    return {"rows": rows, "scoring": scoring, "root": root}


def bench_gpu(specs: list[str], opts: BenchOptions) -> list[dict]:
    """Section 5 on CUDA: pretraining of each ViT-B config at batch 64 (or --batch) in fp32 and bf16
    autocast (separable and explicit), plus torch.compile / grad checkpointing rows with ``compile``.
    One mode per measurement, so the peak memory is the absolute peak of that variant alone."""
    variants = [("fp32", "separable", {}), ("bf16", "separable", {}), ("bf16", "explicit", {})]
    if opts.compile:
        variants += [("bf16", "separable", {"compile": True}), ("bf16", "separable", {"grad_ckpt": True})]
    peak, _ = gpu_peak_tflops(torch.cuda.get_device_name(torch.device(opts.device)), opts.peak_tflops)
    rows = []
    for spec in specs:
        B = opts.batch or 64
        flops = avmae_flops(model_config(spec), B)["train"]
        for amp, mode, extra in variants:
            job = {**_base_job(opts, "pretrain", config=spec, batch=B, optimizer=opts.optimizer, modes=[mode],
                               **extra), "amp": "bf16" if amp == "bf16" else "none"}
            need = model_explicit_bytes(model_config(spec, "explicit"), B, train=True) if mode == "explicit" else 0
            res = run_modes(job, need, opts)[mode]
            row = {"config": spec, "variant": "+".join([amp, mode, *extra]), "batch": B, "flops": flops, **res}
            if res.get("ok"):
                row["tflops"] = flops / res["median_s"] / 1e12
                row["mfu"] = row["tflops"] / peak if peak else None
            _log(f"gpu       {spec:24s} {row['variant']:24s} " + (_fmt_s(res["median_s"]) if res.get("ok")
                                                                     else res["error"]))
            rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------------
# 4. The report
# ----------------------------------------------------------------------------------------------
def _fmt_s(t: float) -> str:
    return f"{t * 1e3:.1f} ms" if t < 1 else f"{t:.2f} s"


def _fmt_timing(res: dict) -> str:
    if not res.get("ok"):
        return res.get("error", "failed")
    spread = f"{_fmt_s(res['min_s'])}–{_fmt_s(res['max_s'])}" if res["n"] > 1 else "n=1"
    return f"{_fmt_s(res['median_s'])} ({spread})"


def _fmt_bytes(b: float | None) -> str:
    if b is None:
        return "–"
    if b >= GiB:
        return f"{b / GiB:.2f} GiB"
    return f"{b / MiB:.0f} MiB" if b >= 10 * MiB else f"{b / MiB:.2f} MiB"


def _ratio(a: dict, b: dict, key: str) -> str:
    if a.get("ok") and b.get("ok") and b.get(key):
        return f"{a[key] / b[key]:.2f}x"
    return "–"


def _speedup(row: dict) -> str:
    """**median ratio** (per-round min–max when the two paths were interleaved over several rounds)."""
    ratio = _ratio(row["explicit"], row["separable"], "median_s")
    rounds = row.get("round_speedups") or []
    return f"**{ratio}**" + (f" ({min(rounds):.2f}–{max(rounds):.2f})" if len(rounds) > 1 else "")


def _table(header: list[str], rows: list[list[Any]]) -> str:
    return "\n".join(markdown_table(header, rows))


def _mem_legend(opts: BenchOptions) -> str:
    what = ("torch.cuda.max_memory_allocated above the allocated memory at the start"
            if str(opts.device).startswith("cuda") else "the process RSS high-water mark above its steady RSS")
    return (f"peak mem (sections 1-3) = {what}, over one warm call with gradients dropped beforehand: what a "
            "step allocates (activations, gradients, temporaries), not weights, inputs or the runtime.")


def _busy_warning(load: float, opts: BenchOptions) -> str | None:
    if str(opts.device).startswith("cuda") or load < 0.5:
        return None
    return (f"**Busy machine** (1-min load {load:.2f} on {_usable_cores()} usable cores): other processes share "
            f"the CPU, so OpenMP's {opts.threads} threads stall at barriers and single timings can be several x "
            "slow. Each explicit / separable pair is interleaved in one process, so their ratio is fairer than "
            "either absolute time; the per-round speedup range shows the wobble. `--threads 1` is steadier.")


def _model_table(rows: list[dict], kind: str, opts: BenchOptions) -> str:
    official = (kind == "pretrain" and not opts.optimizer) or kind == "inference"
    header = ["config", "fusion", "B", "explicit (min–max)", "separable (min–max)", "explicit samples/s",
              "separable samples/s", "**speedup** (per-round range)", "explicit peak mem", "separable peak mem",
              "mem ratio"]
    if official:
        header.append("official §1.7 / separable")
    body = []
    for r in rows:
        e, s = r["explicit"], r["separable"]
        line = [r["config"], r["fusion_arch"], r["batch"], _fmt_timing(e), _fmt_timing(s),
                f"{e['samples_per_s']:.1f}" if e.get("ok") else "–",
                f"{s['samples_per_s']:.1f}" if s.get("ok") else "–",
                _speedup(r), _fmt_bytes(e.get("peak_bytes")), _fmt_bytes(s.get("peak_bytes")),
                _ratio(e, s, "peak_bytes")]
        if official:
            ref = OFFICIAL_CPU_S.get(r["config"], {}).get(kind)
            cpu_b2 = r["batch"] == 2 and not str(opts.device).startswith("cuda") and opts.amp == "none"
            line.append(f"{ref:.2f} s / {s['median_s']:.2f} s = {ref / s['median_s']:.2f}x"
                        if ref and cpu_b2 and s.get("ok") else "–")
        body.append(line)
    return _table(header, body)


def _fusion_table(rows: list[dict]) -> str:
    header = ["block", "pairs", "B", "pass", "explicit (min–max)", "separable (min–max)",
              "**speedup** (per-round range)",
              "explicit peak mem", "explicit analytic", "separable peak mem", "mem ratio"]
    body = [[r["block"], r["pairs"], r["batch"], r["pass"], _fmt_timing(r["explicit"]), _fmt_timing(r["separable"]),
             _speedup(r), _fmt_bytes(r["explicit"].get("peak_bytes")),
             _fmt_bytes(r["analytic_explicit_bytes"]), _fmt_bytes(r["separable"].get("peak_bytes")),
             _ratio(r["explicit"], r["separable"], "peak_bytes")] for r in rows]
    return _table(header, body)


def _loader_table(rows: list[dict]) -> str:
    header = ["dataset", "config", "B", "workers", "samples/s (min–max)", "batches/s", "setup s"]
    body = []
    for r in rows:
        if r.get("ok"):
            body.append([r["dataset"], r["config"], r["batch"], r["workers"],
                         f"{r['samples_per_s']:.0f} ({r['min']:.0f}–{r['max']:.0f})", f"{r['batches_per_s']:.1f}",
                         f"{r['setup_s']:.2f}"])
        else:
            body.append([r["dataset"], r["config"], "–", r["workers"], r.get("error"), "–", "–"])
    return _table(header, body)


def _flops_table(specs: list[str], pretrain_rows: list[dict], opts: BenchOptions) -> str:
    measured = {r["config"]: r for r in pretrain_rows}
    header = ["config", "B", "fwd GFLOP (separable)", "fwd GFLOP (explicit)", "train-step GFLOP (3 x fwd)",
              "achieved GFLOP/s (section 1, separable)", "MFU"]
    body = []
    for spec in specs:
        B = default_batch(spec, opts)
        sep, exp = avmae_flops(model_config(spec), B, "separable"), avmae_flops(model_config(spec), B, "explicit")
        r = measured.get(spec, {}).get("separable", {})
        rate = sep["train"] / r["median_s"] if r.get("ok") else None
        mfu = f"{rate / (opts.peak_tflops * 1e12):.1%}" if rate and opts.peak_tflops else "–"
        body.append([spec, B, f"{sep['forward'] / 1e9:.2f}", f"{exp['forward'] / 1e9:.2f}", f"{sep['train'] / 1e9:.2f}",
                     f"{rate / 1e9:.1f}" if rate else "–", mfu])
    return _table(header, body)


def _gpu_table(rows: list[dict]) -> str:
    header = ["config", "variant", "B", "step (min–max)", "samples/s", "model TFLOP/s", "MFU", "first call",
              "peak alloc"]
    body = [[r["config"], r["variant"], r["batch"], _fmt_timing(r), f"{r['samples_per_s']:.0f}" if r["ok"] else "–",
             f"{r['tflops']:.0f}" if r.get("tflops") else "–", f"{r['mfu']:.1%}" if r.get("mfu") else "–",
             _fmt_s(r["first_s"]) if r["ok"] else "–", _fmt_bytes(r.get("peak_abs_bytes"))] for r in rows]
    return _table(header, body)


def _small_rate(res: dict, flops: int) -> float:
    return flops / res["median_s"] / 1e9


def _round_ratios(a: dict, b: dict) -> str:
    """median a / b (per-round min–max) of two interleaved timings."""
    rounds = [x / y for x, y in zip(a["times"], b["times"])]
    spread = f" ({min(rounds):.2f}–{max(rounds):.2f})" if len(rounds) > 1 else ""
    return f"**{a['median_s'] / b['median_s']:.2f}x**{spread}"


def _small_tables(small: dict) -> list[str]:
    """Section 6's tables: samples/s and speedups per stage, GFLOP/s against the GEMM ceilings."""
    header = ["stage", "B", "data", "reference samples/s", "fast @ ref threads samples/s", "fast samples/s",
              "**fast / reference** (per-round range)", "fast @ ref threads / reference",
              "reference GFLOP/s (of fp32 ceiling)", "fast GFLOP/s (of its ceiling)"]
    body, ceil_rows, paths = [], [], {}
    for row in small["rows"]:
        if not row.get("ok"):
            body.append([row["stage"], "–", "–", row.get("error", "failed"), *["–"] * 6])
            continue
        P, flops, gemm = row["paths"], row["flops"], row["gemm"]
        ref, mid, fast = P["reference"], P["fast @ ref threads"], P["fast"]
        paths = {k: (v["amp"], v["attention_kernel"], v["threads"], v["workers"]) for k, v in P.items()}
        for kind, label in (("excl", "excluded"), ("incl", "included"), ("data", "data only")):
            r, m, f = ref[kind], mid[kind], fast[kind]
            if kind == "data":
                body.append([row["stage"], ref["batch"], label, f"{r['samples_per_s']:.0f}", f"{m['samples_per_s']:.0f}",
                             f"{f['samples_per_s']:.0f}", _round_ratios(r, f), f"{r['median_s'] / m['median_s']:.2f}x",
                             "–", "–"])
                continue
            c_ref = gemm[f"fp32|{ref['threads']}"]["gflops"]
            c_fast = gemm[f"{'bf16' if fast['amp'] == 'bf16' else 'fp32'}|{fast['threads']}"]["gflops"]
            rr, rf = _small_rate(r, flops), _small_rate(f, flops)
            body.append([row["stage"], ref["batch"], label, f"{r['samples_per_s']:.0f}", f"{m['samples_per_s']:.0f}",
                         f"{f['samples_per_s']:.0f}", _round_ratios(r, f), f"{r['median_s'] / m['median_s']:.2f}x",
                         f"{rr:.1f} ({rr / c_ref:.0%})", f"{rf:.1f} ({rf / c_fast:.0%})"])
        ceil_rows.append([row["stage"], f"{flops / 1e9:.2f}"] + [
            f"{gemm[k]['gflops']:.0f} (n={gemm[k]['n']})" if k in gemm else "–"
            for k in (f"fp32|{t}" for t in row["threads"])] + [
            f"{gemm[k]['gflops']:.0f} (n={gemm[k]['n']})" if k in gemm else "–"
            for k in (f"bf16|{t}" for t in row["threads"])])
    out = [_table(header, body), ""]
    if paths:
        out += ["Paths (amp, attention kernel, torch threads, loader workers): " + "; ".join(
            f"{k}: {', '.join(str(x) for x in v)}" for k, v in paths.items()) + ".", ""]
    if ceil_rows:
        threads = next(r["threads"] for r in small["rows"] if r.get("ok"))
        out += ["GEMM ceiling (square `torch.mm`, best size of " + ", ".join(str(n) for n in GEMM_SIZES) +
                ", median of the interleaved calls) and the model FLOPs per step (`stage_flops`: the AVMAE step; "
                "3 x the encoder forward for a protocol, heads not counted):", "",
                _table(["stage", "GFLOP / step"] + [f"fp32 GFLOP/s, {t} thread(s)" for t in threads]
                       + [f"bf16 GFLOP/s, {t} thread(s)" for t in threads], ceil_rows), ""]
    sc = small.get("scoring")
    if sc and sc.get("ok"):
        out += [f"Separation scoring (BSS-eval v3, `SeparationEvaluator`) of {sc['mixtures']} test mixtures: "
                f"reference (numpy's BLAS threads) {_fmt_timing(sc['reference'])}, fast "
                f"(`workers={sc['workers']}`) {_fmt_timing(sc['fast'])}: {_round_ratios(sc['reference'], sc['fast'])}; "
                f"largest score difference {sc['max_abs_diff_db']:.1e} dB.", ""]
    elif sc:
        out += [f"Separation scoring: {sc.get('error')}", ""]
    return out


def format_report(results: dict, opts: BenchOptions) -> str:
    """The markdown report of ``results`` (the dict ``main`` also writes as JSON)."""
    out = ["# avlib benchmark", "", "## Machine", "",
           _table(["item", "value"], [[k, v] for k, v in results["machine"].items()]), "",
           "Ratios: speedup = explicit / separable time (> 1: the separable path is faster); mem ratio = "
           "explicit / separable peak. Times: median (min–max) of the timed calls after warm-up.",
           _mem_legend(opts), ""]
    busy = _busy_warning(max(results.get("load_start", 0.0), os.getloadavg()[0]), opts)
    out += [busy, ""] if busy else []
    if "pretrain" in results:
        extra = " + AdamW step" if opts.optimizer else ""
        out += ["## 1. Pretraining step (AVMAE fwd+bwd" + extra + ", masked at the configured ratios)", "",
                _model_table(results["pretrain"], "pretrain", opts), "",
                "The release configs use the factorized block: its pair attention covers only the 8 x 8 "
                "aggregation tokens, so the whole-model difference between the paths is small; "
                "`name:dense` rows show the dense block in the same model. Official §1.7: AVMAE fwd+bwd at "
                "batch 2, 2 threads, 2-core Xeon, torch 2.14.1 (another CPU: indicative only).", ""]
        fast = [r for r in results["pretrain"] if "fast" in r]
        if fast:
            out += ["**Fast path vs reference**: explicit pairs in fp32 (the reference) against the exact "
                    "separable pairs under bf16 autocast (`TrainConfig.amp='bf16'`; on CPU it needs AVX512-BF16 "
                    "or AMX to pay off), timed interleaved in one process. bf16 changes the numbers within "
                    "bf16 rounding (tests/test_model.py checks the agreement).", "",
                    _table(["config", "B", "reference: explicit fp32 (min–max)", f"fast: {FAST_MODE} (min–max)",
                            "**speedup** (per-round range)", "reference peak mem", "fast peak mem"],
                           [[r["config"], r["batch"], _fmt_timing(r["fast"]["explicit"]),
                             _fmt_timing(r["fast"]["separable"]), _speedup(r["fast"]),
                             _fmt_bytes(r["fast"]["explicit"].get("peak_bytes")),
                             _fmt_bytes(r["fast"]["separable"].get("peak_bytes"))] for r in fast]), ""]
    if "inference" in results:
        out += ["## 2. Inference (encoder forward, no masking, no_grad)", "",
                _model_table(results["inference"], "inference", opts), ""]
    if "fusion" in results:
        dims = results["fusion"][0]["dims"] if results["fusion"] else PAPER_BLOCK
        out += ["## 3. Fusion block micro-benchmark", "",
                f"One block, width {dims['embed_dim']}, {dims['heads']} heads, attn ratio {dims['attn_ratio']}, "
                f"mlp {dims['mlp_ratio']}, {dims['fusion'] + dims['aggr_image'] + dims['aggr_audio']} fusion tokens, "
                f"{dims['n_image']} visual and {dims['n_audio']} audio tokens (unmasked). "
                "fwd = no_grad forward; fwd+bwd = forward and backward of sum(output) into weights and tokens. "
                "explicit analytic = pair tensor + K + V + logits + softmax weights in fp32 (the official "
                "manual-softmax computation; x2 with gradients): the explicit path only runs when this fits in "
                f"{opts.mem_fraction:.0%} of the free memory.", "",
                _fusion_table(results["fusion"]), ""]
    if "loader" in results:
        out += ["## 4. Data loader", "", _loader_table(results["loader"]["rows"]), ""]
        out += [f"- {n}" for n in results["loader"]["notes"]] + ([""] if results["loader"]["notes"] else [])
    if "flops_configs" in results:
        out += ["## 5. Model FLOPs" + (" and GPU throughput" if "gpu" in results else ""), "",
                "Analytic matmul FLOPs (2 per multiply-add; `avmae_flops`): ViT block on n tokens "
                "2n·D·3D + 4n²·D + 2n·D² + 4n·D·rD; fusion blocks per `fusion_block_flops`; decoders on "
                "Nf + N tokens; train step = 3 x forward (model FLOPs, recompute not counted).", "",
                _flops_table(results["flops_configs"], results.get("pretrain", []), opts), ""]
        if "gpu" in results:
            out += [_gpu_table(results["gpu"]), ""]
        elif results.get("gpu_note"):
            out += [results["gpu_note"], ""]
    if "small" in results:
        out += [f"## 6. Small profiles: training steps at `{opts.small_config}`, fast path vs reference", "",
                "One training step as `fit` runs it (forward, backward, optimizer step) for pre-training and each "
                "downstream protocol (the linear probe trains on cached features: not timed). Paths: *reference* "
                "= every fast switch off (fp32, torch's attention kernel, foreach optimizer, torch's threads, "
                "per-item audio front end, no loader worker); *fast* = the profile as configured; *fast @ ref "
                "threads* = the fast switches at the reference's threads without a worker (what the switches "
                "buy at equal CPU). Data excluded = one fixed batch; included = the next batch of the "
                "training loader; data only = fetching a batch without workers. All paths and the GEMMs are "
                "timed interleaved in one process (medians; per-round range of the ratio).", ""]
        out += _small_tables(results["small"])
    out.append("load average at end: " + results.get("load_end", "–"))
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------
# 7. Command line
# ----------------------------------------------------------------------------------------------
SECTIONS = ("pretrain", "inference", "fusion", "loader", "flops", "small")   # flops: section 5 (+ GPU rows on CUDA)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m avlib.bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke + cpu configs, fusion blocks at batch 8 only, "
                   "short loader runs, 1 warm-up and 3 repeats unless given")
    p.add_argument("--configs", help="comma list of profile[:fusion_arch] (default: smoke,cpu,vggsound_release,"
                   "as2m_release,vggsound_release:dense)")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list of {','.join(SECTIONS)}")
    p.add_argument("--batch", type=int,
                   help="batch for every model (default: the profile's; ViT-B configs 2 on CPU, 64 on GPU)")
    p.add_argument("--repeats", type=int, help="timed calls per measurement (median reported; default 5)")
    p.add_argument("--warmup", type=int, help="untimed calls first (default 2)")
    p.add_argument("--max-seconds", type=float, default=60.0, help="cap on the timed calls of one measurement")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: usable cores)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:i]")
    p.add_argument("--amp", choices=("none", "bf16"), default="none", help="autocast for sections 1-3")
    p.add_argument("--optimizer", action="store_true", help="include an AdamW step in the pretraining step")
    p.add_argument("--no-fast-path", action="store_true", help="skip section 1's explicit-fp32 vs separable+bf16 rows")
    p.add_argument("--compile", action="store_true", help="CUDA section 5: torch.compile and grad-checkpointing rows")
    p.add_argument("--peak-tflops", type=float, help="peak bf16 TFLOP/s for MFU (default: from the GPU name)")
    p.add_argument("--micro-batches", help="fusion block batches (default 8,64; --quick 8)")
    p.add_argument("--micro-size", choices=("paper", "smoke"), default="paper", help="smoke: tiny block (tests)")
    p.add_argument("--loader-config", default="cpu", help="profile of the loader benchmark")
    p.add_argument("--loader-batches", type=int, help="batches per loader pass (default 20; --quick 5)")
    p.add_argument("--loader-workers", default="0,2", help="comma list of worker counts")
    p.add_argument("--small-config", default="cpu", help="section 6: the small profile timed (default cpu)")
    p.add_argument("--small-stages", help=f"section 6: comma list of {','.join(SMALL_STAGES)} (default all; "
                   "--quick: pretrain)")
    p.add_argument("--mem-fraction", type=float, default=0.5, help="explicit path runs if its analytic memory < "
                   "this fraction of the free memory")
    p.add_argument("--no-isolate", action="store_true", help="measure in-process (default on CPU: a subprocess each)")
    p.add_argument("--json", help="also write every raw number here")
    p.add_argument("--job", help=argparse.SUPPRESS)     # internal: one measurement in this (sub)process
    return p


def _csv(s: str, cast=str) -> list:
    return [cast(x.strip()) for x in s.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark, print the report, return the raw results (also ``--json``)."""
    args = _parser().parse_args(argv)
    if args.job:                                    # worker mode
        print(RESULT_TAG + json.dumps(run_job(json.loads(args.job))), flush=True)
        return {}
    from avlib.utils import resolve_device
    device = str(resolve_device(args.device))
    cuda = device.startswith("cuda")
    default_configs = "smoke,cpu" if args.quick else "smoke,cpu,vggsound_release,as2m_release,vggsound_release:dense"
    specs = _csv(args.configs or default_configs)
    sections = _csv(args.sections)
    bad = set(sections) - set(SECTIONS)
    if bad:
        raise SystemExit(f"unknown sections {sorted(bad)}; choose from {SECTIONS}")
    bad = set(_csv(args.small_stages or "")) - set(SMALL_STAGES)
    if bad:
        raise SystemExit(f"unknown --small-stages {sorted(bad)}; choose from {SMALL_STAGES}")
    opts = BenchOptions(
        device=device, threads=args.threads,
        warmup=args.warmup if args.warmup is not None else (1 if args.quick else 2),
        repeats=args.repeats or (3 if args.quick else 5), max_seconds=args.max_seconds, batch=args.batch,
        optimizer=args.optimizer, amp=args.amp, compile=args.compile, isolate=False if args.no_isolate else None,
        mem_fraction=args.mem_fraction, peak_tflops=args.peak_tflops, loader_config=args.loader_config,
        loader_batches=args.loader_batches or (5 if args.quick else 20),
        loader_workers=tuple(_csv(args.loader_workers, int)), fast_path=not args.no_fast_path,
        small_config=args.small_config,
        small_stages=tuple(_csv(args.small_stages)) if args.small_stages else (("pretrain",) if args.quick
                                                                                else SMALL_STAGES))
    micro_batches = tuple(_csv(args.micro_batches, int)) if args.micro_batches else ((8,) if args.quick else (8, 64))

    results: dict[str, Any] = {"machine": machine_info(opts), "options": asdict(opts), "configs": specs,
                               "load_start": os.getloadavg()[0]}
    with torch_threads(opts.threads):
        if "pretrain" in sections:
            results["pretrain"] = bench_models("pretrain", specs, opts)
        if "inference" in sections:
            results["inference"] = bench_models("inference", specs, opts)
        if "fusion" in sections:
            dims = PAPER_BLOCK if args.micro_size == "paper" else SMOKE_BLOCK
            results["fusion"] = bench_fusion_blocks(opts, micro_batches, dims)
        if "loader" in sections:
            rows, notes = bench_loader(opts)
            results["loader"] = {"rows": rows, "notes": notes}
        if "small" in sections:
            results["small"] = bench_small(opts)
        if "flops" in sections:
            results["flops_configs"] = specs
            vit_b = [s for s in specs if s.partition(":")[0] in RELEASE_PROFILES and ":" not in s]
            if cuda and vit_b:
                results["gpu"] = bench_gpu(vit_b, opts)
            elif not cuda:
                results["gpu_note"] = ("No CUDA device: bf16 throughput, MFU, torch.compile and grad-checkpointing "
                                       "rows skipped (run with --device cuda on a GPU machine).")
    results["load_end"] = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    report = format_report(results, opts)
    print(report, flush=True)
    results["report"] = report
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=str)
    return results


if __name__ == "__main__":
    main()
