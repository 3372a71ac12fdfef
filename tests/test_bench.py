"""The benchmark suite (``avlib.bench``) at smoke size: the report has its sections, both pair-attention
paths are timed with positive numbers, the memory guard skips what does not fit, and the analytic FLOP
model equals torch's own count. No speed assertions: speed goals are benchmarks, not tests."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from avlib import bench, flops, timing
from avlib.config import make_config
from avlib.model import build_avmae, build_encoder

SECTIONS = ["## Machine", "## 1. Pretraining step", "## 2. Inference", "## 3. Fusion block micro-benchmark",
            "## 4. Data loader", "## 5. Model FLOPs", "## 6. Small profiles"]


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: the suite shares a small CPU with other tests, where OpenMP barriers stall."""
    with timing.torch_threads(1):
        yield


def _assert_timed(res: dict) -> None:
    assert res["ok"], res
    assert res["n"] >= 1 and all(t > 0 for t in res["times"])
    assert res["median_s"] > 0 and res["samples_per_s"] > 0
    assert res["peak_bytes"] is not None and res["peak_bytes"] >= 0


def test_quick_report_in_process(tmp_path, capsys):
    out = tmp_path / "bench.json"
    results = bench.main(["--quick", "--configs", "smoke", "--micro-size", "smoke", "--repeats", "1", "--warmup", "0",
                          "--no-isolate", "--threads", "1", "--loader-config", "smoke", "--loader-batches", "2",
                          "--loader-workers", "0", "--small-config", "smoke", "--json", str(out)])
    report = capsys.readouterr().out
    for heading in SECTIONS:
        assert heading in report, heading
    saved = json.loads(out.read_text())
    assert saved["report"] == results["report"]
    for section in ("pretrain", "inference", "fusion"):
        assert saved[section], section
        for row in saved[section]:
            for mode in ("explicit", "separable"):                 # both paths timed, every row
                _assert_timed(row[mode])
    assert {r["block"] for r in saved["fusion"]} == {"dense", "factorized"}
    assert {r["pass"] for r in saved["fusion"]} == {"fwd", "fwd+bwd"}
    assert saved["loader"]["rows"] and all(r["ok"] and r["samples_per_s"] > 0 for r in saved["loader"]["rows"])
    (row,) = saved["small"]["rows"]                                   # --quick: the pre-training step only
    assert row["ok"] and row["stage"] == "pretrain" and row["flops"] > 0
    for path in bench.SMALL_PATHS:                                     # every path, data excluded / included / only
        for kind in ("excl", "incl", "data"):
            assert row["paths"][path][kind]["samples_per_s"] > 0, (path, kind)
    assert {k.split("|")[0] for k in row["gemm"]} == {"fp32", "bf16"} and all(
        g["gflops"] > 0 for g in row["gemm"].values())
    assert "**" in report and "x**" in report                       # the speedup column is filled


def test_small_section_times_every_protocol_step_and_the_scoring():
    opts = bench.BenchOptions(device="cpu", threads=1, warmup=0, repeats=1, isolate=False, small_config="smoke",
                              small_stages=("separation",), scoring_mixtures=2)
    small = bench.bench_small(opts)
    (row,) = small["rows"]
    assert row["ok"] and row["paths"]["fast"]["amp"] in ("bf16", "none")
    assert row["paths"]["reference"]["amp"] == "none" and row["paths"]["reference"]["attention_kernel"] == "default"
    sc = small["scoring"]
    assert sc["ok"] and sc["mixtures"] == 2 and sc["max_abs_diff_db"] < 1e-6
    report = "\n".join(bench._small_tables(small))
    assert "| separation | 4 | included |" in report and "BSS-eval" in report


def test_threads_restored_after_main():
    before = torch.get_num_threads()
    bench.main(["--configs", "smoke", "--sections", "inference", "--repeats", "1", "--warmup", "0", "--no-isolate",
                "--threads", "1"])
    assert torch.get_num_threads() == before


def test_subprocess_job_matches_contract():
    opts = bench.BenchOptions(device="cpu", threads=1, warmup=0, repeats=1, isolate=True)
    rows = bench.bench_models("pretrain", ["smoke"], opts)
    assert rows[0]["explicit"]["mem_method"] and rows[0]["separable"]["params"] > 0
    for mode in ("explicit", "separable"):
        _assert_timed(rows[0][mode])
        _assert_timed(rows[0]["fast"][mode])             # reference vs separable+bf16 (bench.FAST_MODE)
    assert "Fast path vs reference" in bench.format_report({"machine": {}, "pretrain": rows}, opts)
    no_fast = bench.bench_models("pretrain", ["smoke"], bench.BenchOptions(
        device="cpu", threads=1, warmup=0, repeats=1, isolate=True, fast_path=False))
    assert "fast" not in no_fast[0]


def test_memory_guard_skips_the_explicit_path():
    opts = bench.BenchOptions(device="cpu", threads=1, warmup=0, repeats=1, isolate=False, mem_fraction=0.0)
    rows = bench.bench_fusion_blocks(opts, batches=(2,), dims=bench.SMOKE_BLOCK, blocks=("dense",))
    for row in rows:
        assert row["explicit"].get("skipped") and row["explicit"]["error"].startswith("skipped (needs")
        _assert_timed(row["separable"])
    assert "skipped (needs" in bench._fusion_table(rows)


def test_explicit_pair_bytes_at_paper_sizes():
    cfg = bench.fusion_block_config(bench.PAPER_BLOCK, "dense", "explicit")
    shapes = flops.pair_shapes(cfg, 196, 96)
    assert shapes["n1"] * shapes["n2"] == 96 * 196
    b64 = flops.explicit_pair_bytes(64, **shapes)
    pair_tensor = 64 * 96 * 196 * 2 * 768 * 4                     # (B, Na·Nv, 2D) fp32
    logits = 64 * 12 * 32 * 96 * 196 * 4                          # (B, h, Nf, Na·Nv)
    assert b64 > pair_tensor + 2 * logits and b64 > 8 * 2 ** 30
    assert flops.explicit_pair_bytes(8, **shapes) * 8 == b64
    assert flops.explicit_pair_bytes(8, **shapes, backward=True) == 2 * flops.explicit_pair_bytes(8, **shapes)


def _counted(model, *args) -> int:
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:   # attention as counted bmm's
        model(*args)
    return counter.get_total_flops()


def test_analytic_flops_equal_torch_flop_counter():
    """The MFU numerator: the per-layer formulas count exactly the matmuls torch runs."""
    base = make_config("smoke").model
    image, audio = torch.randn(2, 3, *base.image_size), torch.randn(2, 1, *base.audio_size)
    for arch in ("none", "token", "dense", "factorized"):
        for mode in ("separable", "explicit"):
            cfg = replace(base, fusion_arch=arch, pair_attention=mode)
            assert _counted(build_avmae(cfg), image, audio) == flops.avmae_flops(cfg, 2)["forward"], (arch, mode)
    cfg = replace(base, fusion_arch="dense", pair_attention="explicit")       # unmasked: all pairs
    assert _counted(build_encoder(cfg).eval(), image, audio) == flops.encoder_flops(cfg, 2)


def test_measure_helpers():
    calls = []
    t = timing.measure(lambda: calls.append("f"), warmup=2, repeats=3)
    assert len(calls) == 5 and t.n == 3 and t.min <= t.median <= t.max and t.first_s > 0
    order = []
    timings = timing.measure_interleaved({"a": lambda: order.append("a"), "b": lambda: order.append("b")},
                                        warmup=1, repeats=2)
    assert order == ["a", "b"] * 3 and timings["a"].n == timings["b"].n == 2
    assert timing.measure(lambda: None, warmup=0, repeats=100, max_seconds=0.0).n == 1


def test_peak_memory_sees_an_allocation():
    with timing.PeakMemory("cpu") as mem:
        x = torch.ones(16 * 2 ** 20)                                 # 64 MiB, touched
    assert mem.peak_bytes >= 48 * 2 ** 20, (mem.peak_bytes, mem.method)
    del x


def test_gpu_peak_lookup():
    assert bench.gpu_peak_tflops("NVIDIA H100 80GB HBM3")[0] == 989.0
    assert bench.gpu_peak_tflops("NVIDIA H100 PCIe")[0] == 756.0
    assert bench.gpu_peak_tflops("NVIDIA H200")[0] == 989.0
    assert bench.gpu_peak_tflops("Some GPU")[0] is None
    assert bench.gpu_peak_tflops("Some GPU", 100.0) == (100.0, "--peak-tflops")
