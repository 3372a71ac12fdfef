"""The multi-GPU entry point, exercised on CPU: `torchrun --nproc_per_node 2 -m avlib.pretrain` with the
gloo backend on synthetic scenes (no data files needed) writes one loadable checkpoint."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from avlib.checkpoint import load_pretrained
from avlib.config import make_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_torchrun_two_process_pretraining(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun not found next to the interpreter")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "PYTHONPATH": str(ROOT)}
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "avlib.pretrain", "--profile", "smoke",
           "--run-dir", str(tmp_path / "run"), "--device", "cpu",
           "--set", "data.dataset='synthetic'", "pretrain.max_steps=2"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "pre-training done" in proc.stdout
    model, mcfg = load_pretrained(tmp_path / "run" / "avmae.pt")
    assert mcfg == make_config("smoke").model
    meta = json.loads((tmp_path / "run" / "history.json").read_text())["meta"]
    assert meta["eff_batch"] == 2 * make_config("smoke").pretrain.batch_size    # two processes


def test_cli_rejects_unknown_override(tmp_path):
    from avlib.config import ConfigError
    from avlib.pretrain import main
    with pytest.raises(ConfigError, match="pretrain.epochs"):
        main(["--profile", "smoke", "--run-dir", str(tmp_path), "--set", "pretrain.epoch=3"])


@pytest.mark.parametrize("item, match", [("model.norm_pix_loss=false", None),
                                         ("model.norm_pix_loss=maybe", "'model.norm_pix_loss' = 'maybe'"),
                                         ("model.depth=0", "'model.depth' = 0"),
                                         ("pretrain.epochs=2.5", "'pretrain.epochs' = '2.5'")])
def test_cli_values_are_typed_and_checked_before_training(tmp_path, monkeypatch, item, match):
    from types import SimpleNamespace

    import avlib.pretrain as cli
    from avlib.config import ConfigError
    seen = []                                # the config pretrain() would train with (training stubbed)
    monkeypatch.setattr(cli, "pretrain", lambda cfg, run_dir, device: seen.append(cfg) or
                        SimpleNamespace(seconds=0.0, checkpoint=tmp_path / "avmae.pt", metrics={}))
    argv = ["--profile", "smoke", "--run-dir", str(tmp_path), "--set", item]
    if match is None:                        # before: 'false' was stored as the (truthy) string 'false'
        assert cli.main(argv) == 0 and seen[0].model.norm_pix_loss is False
    else:
        with pytest.raises(ConfigError, match=match):
            cli.main(argv)
        assert not seen
