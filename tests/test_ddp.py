"""DDP through ``fit``: two CPU processes (gloo, launched by torchrun exactly as a real script would
be) each train on half of every batch; the weights must equal one process training on the whole
batch. Covers plain steps and gradient accumulation (``no_sync`` on all but the last micro-batch),
logged losses averaged over ranks, and the rank-0-only checkpoint holding both ranks' RNG states."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from avlib.config import TrainConfig
from avlib.data import make_loader
from avlib.train import CHECKPOINT_NAME, fit

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent('''
    import json, sys
    from pathlib import Path
    import torch
    from torch.utils.data.distributed import DistributedSampler
    from avlib.data import make_loader
    from avlib.train import fit
    from avlib.utils import cleanup, init_distributed, rank
    sys.path.insert(0, sys.argv[2])
    from test_ddp import CASES, data, loss_fn, make_model, make_cfg

    out = Path(sys.argv[1])
    info = init_distributed()
    assert info.world_size == 2 and info.backend == "gloo", info
    for name, batch, accum in CASES:
        model = make_model()
        loader = make_loader(data(), batch, shuffle=False)
        assert isinstance(loader.sampler, DistributedSampler)
        hist = fit(model, loader, make_cfg(batch, accum), loss_fn=loss_fn, run_dir=out / name)
        torch.save(model.state_dict(), out / f"{name}_rank{rank()}.pt")
        if rank() == 0:
            (out / f"{name}_losses.json").write_text(json.dumps([s["loss"] for s in hist.steps]))
    cleanup()
''')

# (name, per-process batch, accum_steps): 2 processes x 4 x 1 and 2 x 2 x 2 both = one batch of 8
CASES = [("plain", 4, 1), ("accum", 2, 2)]


def data() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(16, 4, generator=g), torch.randn(16, generator=g))


def make_model() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))


def make_cfg(batch: int, accum: int) -> TrainConfig:
    # SGD (not Adam) so that a wrong gradient scale (sum instead of mean over ranks) would show
    return TrainConfig(epochs=2, batch_size=batch, accum_steps=accum, optimizer="sgd", momentum=0.9, lr=0.1,
                       weight_decay=0.01, schedule="cosine", warmup_epochs=0.5, log_every=1)


def loss_fn(model, batch):
    x, y = batch
    loss = ((model(x).squeeze(-1) - y) ** 2).mean()
    return loss, {"mse": loss.detach()}


def test_two_gloo_processes_match_one_process(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    script = tmp_path / "ddp_job.py"
    script.write_text(SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(script), str(tmp_path), str(Path(__file__).parent)]
    try:
        proc = subprocess.run(cmd, env={**env, "CUDA_VISIBLE_DEVICES": ""}, capture_output=True, text=True,
                              timeout=120)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"torchrun timed out\n{e.stdout}\n{e.stderr}")
    assert proc.returncode == 0, f"torchrun failed\nSTDOUT:\n{proc.stdout[-3000:]}\nSTDERR:\n{proc.stderr[-3000:]}"

    for name, batch, accum in CASES:
        ref = make_model()                 # one process, the combined batch of 8 (no accumulation)
        ref_hist = fit(ref, make_loader(data(), 8, shuffle=False), make_cfg(8, 1), loss_fn=loss_fn,
                       run_dir=tmp_path / f"ref_{name}", ddp=False)
        w0 = torch.load(tmp_path / f"{name}_rank0.pt", weights_only=True)
        w1 = torch.load(tmp_path / f"{name}_rank1.pt", weights_only=True)
        for k, v in ref.state_dict().items():
            torch.testing.assert_close(w0[k], v, rtol=0, atol=1e-6, msg=f"{name}: {k}")
            assert torch.equal(w0[k], w1[k]), f"{name}: ranks disagree on {k}"
        losses = json.loads((tmp_path / f"{name}_losses.json").read_text())
        assert losses == pytest.approx([s["loss"] for s in ref_hist.steps], abs=1e-6)
        ckpt = torch.load(tmp_path / name / CHECKPOINT_NAME, weights_only=True)
        assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2 and ckpt["eff_batch"] == 8
        assert ckpt["step"] == 4
