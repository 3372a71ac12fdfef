"""Notebook helpers (avlib.nb): recording metrics, shape checks, players, paths, overrides."""
from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from IPython.display import Audio, Code  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from avlib import nb  # noqa: E402
from avlib.config import ConfigError, config_hash, make_config  # noqa: E402


def test_record_writes_flat_json_with_provenance(tmp_path, capsys):
    cfg = make_config("smoke", seed=3)
    nb.record({"classification": {"pretrained": {"top1": torch.tensor(0.75)}, "scratch": {"top1": 0.5}},
               "loss": np.float32(1.25), "steps": 10}, tmp_path / "out", cfg=cfg, pretrain_ckpt=tmp_path / "c.pt")
    path = tmp_path / "out" / "metrics.json"
    data = json.loads(path.read_text())                    # valid JSON (no NaN tokens)
    assert data["classification/pretrained/top1"] == pytest.approx(0.75)
    assert data["classification/scratch/top1"] == 0.5 and data["loss"] == 1.25 and data["steps"] == 10
    assert data["profile"] == "smoke" and data["seed"] == 3 and data["config_hash"] == config_hash(cfg)
    assert data["pretrain_ckpt"] == str(tmp_path / "c.pt")
    assert "git_sha" not in data or len(data["git_sha"]) == 12
    assert "classification/pretrained/top1" in capsys.readouterr().out   # displayed as a table
    assert not list((tmp_path / "out").glob("*.tmp"))       # atomic write left nothing behind


def test_record_keeps_names_with_a_slash_as_one_level(tmp_path, capsys):
    # an ablation variant named "mask 0.75 / 0.8 (paper)" must stay one name: the summary splits keys on "/"
    from avlib.reproduce import comparisons
    nb.record({"ablation": {"mask 0.75 / 0.8 (paper)": {"top1": 42.2}, "default": {"top1": 40.0}}}, tmp_path)
    data = json.loads((tmp_path / "metrics.json").read_text())
    key = f"ablation/mask 0.75 {nb.SLASH} 0.8 (paper)/top1"
    assert data[key] == 42.2
    assert {(r["init"], r["value"]) for r in comparisons(data)} == {(f"mask 0.75 {nb.SLASH} 0.8 (paper)", 42.2),
                                                                     ("default", 40.0)}


def test_record_rejects_arrays_and_nulls_nan(tmp_path, capsys):
    with pytest.raises(TypeError, match="'per_class'.*flat table"):
        nb.record({"per_class": [0.1, 0.2]}, tmp_path, show=False)
    nb.record({"diverged": float("nan")}, tmp_path, show=False)
    assert json.loads((tmp_path / "metrics.json").read_text())["diverged"] is None
    with pytest.raises(ValueError, match="collide"):
        nb.record({"profile": 1.0}, tmp_path, show=False, profile="smoke")


def test_check_shape_binds_names_and_explains_mismatch():
    x = torch.zeros(2, 16, 32)
    assert nb.check_shape(x, ("B", "Nv", 32)) == {"B": 2, "Nv": 16}
    assert nb.check_shape(x, (None, "N", "D"), D=32) == {"N": 16, "D": 32}
    with pytest.raises(AssertionError) as e:
        nb.check_shape(x, ("B", "Nv", 64), name="out.image", Nv=17)
    msg = str(e.value)
    assert "out.image has shape (2, 16, 32), expected (B=2, Nv=17, 64)" in msg
    assert "dim 1 (Nv) is 16, expected Nv=17" in msg and "dim 2 is 32, expected 64" in msg
    with pytest.raises(AssertionError, match="expected 2 dims, got 3"):
        nb.check_shape(x, ("B", "D"))
    with pytest.raises(AssertionError, match=r"dim 1 \(N\) is 3, expected N=2"):
        nb.check_shape(torch.zeros(2, 3), ("N", "N"))     # a repeated name must repeat its size


def test_audio_player_is_playable_audio():
    player = nb.audio_player(torch.sin(torch.linspace(0, 100, 800)) * 0.1, 8000)
    assert isinstance(player, Audio) and player.data[:4] == b"RIFF"
    assert isinstance(nb.audio_player(np.zeros(800), 8000), Audio)        # silence does not divide by zero


def test_paths_for_defaults_and_explicit(tmp_path, monkeypatch):
    import avlib.nb as mod

    monkeypatch.setattr(mod, "REPORTS", tmp_path / "reports")
    monkeypatch.setattr(mod, "RUNS", tmp_path / "runs")
    p = nb.paths_for("03_classification", "cpu")
    assert p.out_dir == tmp_path / "reports" / "cpu" / "03_classification"
    assert p.run_dir == tmp_path / "runs" / "cpu" / "03_classification" and p.figures.is_dir()
    q = nb.paths_for("03_classification", "cpu", out_dir=str(tmp_path / "o"), run_dir=str(tmp_path / "r"))
    assert q.out_dir == tmp_path / "o" and q.run_dir.is_dir()


def test_save_fig_and_show_source(tmp_path):
    fig = Figure()
    fig.subplots().plot([0, 1])
    path = nb.save_fig(fig, tmp_path, "curve")
    assert path == tmp_path / "figures" / "curve.png" and path.read_bytes()[:4] == b"\x89PNG"
    code = nb.show_source(nb.check_shape)
    assert isinstance(code, Code) and "def check_shape" in code.data


def test_parse_overrides_feeds_make_config():
    assert nb.parse_overrides({}) == {} and nb.parse_overrides("") == {}
    over = nb.parse_overrides('{"model.depth": 3}')
    assert make_config("smoke", overrides=over).model.depth == 3
    with pytest.raises(ConfigError, match="model.depth"):            # typos rejected by make_config
        make_config("smoke", overrides=nb.parse_overrides({"model.detph": 3}))
    with pytest.raises(TypeError):
        nb.parse_overrides("[1, 2]")


@pytest.fixture
def restore_global_state():
    """nb.setup changes process-wide settings (theme, deterministic algorithms): undo for other tests."""
    det, bench = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    with matplotlib.rc_context():
        yield
    torch.use_deterministic_algorithms(det)
    torch.backends.cudnn.benchmark = bench


def test_setup_seeds_and_returns_device(capsys, restore_global_state):
    dev = nb.setup(seed=5, device="cpu")
    a = torch.rand(3)
    nb.setup(seed=5, device="cpu", quiet=True)
    assert dev == torch.device("cpu") and torch.equal(a, torch.rand(3))
    assert "torch threads" in capsys.readouterr().out
    with pytest.raises(RuntimeError, match="is_available"):
        if torch.cuda.is_available():
            pytest.skip("CUDA present")
        nb.resolve_device("cuda")


def test_narrate_fills_numbers_from_the_run_and_refuses_missing_ones():
    text = nb.narrate("""
        Fine-tuning reaches **{top1:.1f}%** ({delta:+.1f} points over scratch).
        """, top1=81.234, delta=7.06)
    assert text == "Fine-tuning reaches **81.2%** (+7.1 points over scratch)." and text._repr_markdown_() == text
    with pytest.raises(KeyError, match="delta"):
        nb.narrate("{top1:.1f} and {delta:+.1f}", top1=1.0)
    hanging = nb.narrate("""In this run the loss went from {a:.2f}
                         to {b:.2f}.""", a=1.0, b=0.5)                   # continuation lines aligned under the call
    assert hanging == "In this run the loss went from 1.00\nto 0.50."
