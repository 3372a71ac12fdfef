"""Checkpoints: official-layout files load into the right configuration, bad files fail readably,
unsafe pickles are refused, saves are atomic."""
from __future__ import annotations

import os
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import avlib.checkpoint as ckpt_mod
from avlib.checkpoint import (CheckpointError, infer_model_config, load_checkpoint, load_pretrained,
                              model_config_from_fixture, save_checkpoint)
from avlib.config import config_to_dict, make_config
from avlib.model import AVMAE, DeepAVFusion

FIXTURE_NAMES = ["avmae_factorized_r025_m1", "avmae_factorized_r1_m4", "avmae_dense_r025_m1",
                 "avmae_token_r025_m1", "avmae_nofusion"]
# what the tiny fixtures' shapes cannot tell (heads; a 2 x 3 audio grid is not square)
FIXTURE_UNINFERABLE = dict(num_heads=4, fusion_num_heads=2, decoder_num_heads=4, audio_size=(32, 48))


def load_fx(fixtures_dir, name):
    return torch.load(fixtures_dir / f"{name}.pt", weights_only=True)


@pytest.mark.fixtures
@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_official_layout_checkpoint_roundtrip(tmp_path, fixtures_dir, name):
    fx = load_fx(fixtures_dir, name)
    path = tmp_path / "checkpoint_latest.pth"
    torch.save({"state_dict": fx["state_dict"], "epoch": 3}, path)     # as the official CheckpointManager
    model, cfg = load_pretrained(path, **FIXTURE_UNINFERABLE)

    want = model_config_from_fixture(fx["config"])
    assert isinstance(model, AVMAE)
    assert cfg.fusion_layer_ids == want.fusion_layer_ids
    if want.fusion_layer_ids:
        assert (cfg.fusion_arch, cfg.fusion_attn_ratio, cfg.fusion_mlp_ratio) == \
               (want.fusion_arch, want.fusion_attn_ratio, want.fusion_mlp_ratio)
    for f in ("embed_dim", "depth", "patch_size", "image_size", "audio_size", "num_fusion_tokens",
              "num_aggr_image_tokens", "num_aggr_audio_tokens", "decoder_embed_dim", "decoder_depth"):
        assert getattr(cfg, f) == getattr(want, f), f
    assert not model.encoder.image.pos_embed.requires_grad and model.encoder.fusion_tokens.requires_grad
    assert all(p.device.type == "cpu" for p in model.parameters())

    with torch.no_grad():
        out = model.eval()(fx["inputs"]["image"], fx["inputs"]["audio"],
                           noise_image=fx["masking"]["image"]["noise"], noise_audio=fx["masking"]["audio"]["noise"])
    torch.testing.assert_close(out.pred_image, fx["decoder"]["pred_image"], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.pred_audio, fx["decoder"]["pred_audio"], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.loss, fx["loss"]["loss_total"], atol=1e-5, rtol=0)


@pytest.mark.fixtures
def test_other_layouts_and_encoder_only(tmp_path, fixtures_dir):
    fx = load_fx(fixtures_dir, "avmae_dense_r025_m1")
    sd = fx["state_dict"]
    for i, blob in enumerate([{"model": sd}, sd]):                       # ckpt['model'] and a bare state dict
        torch.save(blob, tmp_path / f"{i}.pth")
        model, cfg = load_pretrained(tmp_path / f"{i}.pth", **FIXTURE_UNINFERABLE)
        assert isinstance(model, AVMAE) and cfg.fusion_arch == "dense"
    encoder_sd = {k: v for k, v in sd.items() if k.startswith("encoder.")}
    torch.save({"state_dict": encoder_sd}, tmp_path / "enc.pth")
    model, cfg = load_pretrained(tmp_path / "enc.pth", **FIXTURE_UNINFERABLE)
    assert isinstance(model, DeepAVFusion)
    with torch.no_grad():
        out = model(fx["inputs"]["image"], fx["inputs"]["audio"])
    torch.testing.assert_close(out.fusion, fx["encoder_unmasked"]["x_fusion"], atol=1e-5, rtol=0)


@pytest.mark.fixtures
def test_uninferable_fields_are_named(tmp_path, fixtures_dir):
    fx = load_fx(fixtures_dir, "avmae_factorized_r025_m1")
    with pytest.raises(CheckpointError, match="num_heads.*fusion_num_heads.*audio_size"):
        infer_model_config(fx["state_dict"])


@pytest.mark.parametrize("profile", ["paper", "vggsound_release", "as2m_release"])
def test_release_configs_are_recognized(profile):
    cfg = make_config(profile).model
    with torch.device("meta"):
        sd = AVMAE(cfg).state_dict()
    assert infer_model_config(sd) == cfg
    encoder_sd = {k.removeprefix("encoder."): v for k, v in sd.items() if k.startswith("encoder.")}
    assert infer_model_config(encoder_sd) == cfg


def test_own_checkpoint_with_config(tmp_path):
    cfg = make_config("smoke", **{"model.fusion_arch": "token"})
    model = AVMAE(cfg.model)
    save_checkpoint(tmp_path / "last.pt", {"state_dict": model.state_dict(), "config": config_to_dict(cfg), "epoch": 1})
    loaded, model_cfg = load_pretrained(tmp_path / "last.pt")
    assert model_cfg == cfg.model
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    _, explicit = load_pretrained(tmp_path / "last.pt", pair_attention="explicit")
    assert explicit == replace(cfg.model, pair_attention="explicit")


# ----------------------------------------------------------------------------------------------
# failures
# ----------------------------------------------------------------------------------------------
def test_corrupted_file(tmp_path):
    model = AVMAE(make_config("smoke").model)
    path = save_checkpoint(tmp_path / "good.pt", {"state_dict": model.state_dict()})
    data = path.read_bytes()
    for cut in (len(data) // 2, 100, 0):
        bad = tmp_path / f"cut{cut}.pt"
        bad.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="truncated or corrupted"):
            load_checkpoint(bad)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


def test_mismatched_state_dict_names_every_problem(tmp_path):
    sd = AVMAE(make_config("smoke").model).state_dict()
    dropped, renamed, reshaped = ("encoder.image.blocks.1.norm1.weight", "encoder.audio.norm.bias",
                                  "encoder.fusion_blocks.1.mlp.fc2.bias")
    del sd[dropped]
    sd["encoder.audio.norm.offset"] = sd.pop(renamed)
    sd[reshaped] = torch.zeros(sd[reshaped].shape[0] + 1)
    torch.save({"state_dict": sd}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as err:
        load_pretrained(tmp_path / "bad.pth")
    msg = str(err.value)
    assert "missing (2)" in msg and dropped in msg and renamed in msg
    assert "unexpected (1)" in msg and "encoder.audio.norm.offset" in msg
    assert "wrong shape (1)" in msg and reshaped in msg and "(33,)" in msg


def test_long_mismatch_lists_are_truncated(tmp_path):
    sd = AVMAE(make_config("smoke").model).state_dict()
    sd = {k: v for k, v in sd.items() if not k.startswith("encoder.audio.blocks.")}
    torch.save({"state_dict": sd}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"\.\.\. and \d+ more"):
        load_pretrained(tmp_path / "bad.pth")


class _Evil:
    """Unpickling this would run a shell command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    sd = AVMAE(make_config("smoke").model).state_dict()
    torch.save({"state_dict": sd, "payload": _Evil(marker)}, tmp_path / "evil.pth")
    for load in (load_checkpoint, load_pretrained):
        with pytest.raises(CheckpointError, match="refusing to load.*system"):
            load(tmp_path / "evil.pth")
    assert not marker.exists()


# ----------------------------------------------------------------------------------------------
# atomic save
# ----------------------------------------------------------------------------------------------
def test_save_is_atomic_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "run" / "checkpoint_last.pt"
    save_checkpoint(path, {"epoch": 1, "x": torch.ones(3)})
    save_checkpoint(path, {"epoch": 2, "x": torch.zeros(3)})
    assert [p.name for p in path.parent.iterdir()] == ["checkpoint_last.pt"]
    assert load_checkpoint(path)["epoch"] == 2


def test_interrupted_save_keeps_the_old_file(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "checkpoint_last.pt", {"epoch": 1})

    def dies_halfway(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt("killed during save")
    monkeypatch.setattr(ckpt_mod.torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"epoch": 2})
    monkeypatch.undo()
    assert load_checkpoint(path) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint_last.pt"]


def test_flipped_bytes_inside_a_tensor_are_caught(tmp_path):
    model = AVMAE(make_config("smoke").model)
    path = save_checkpoint(tmp_path / "avmae.pt", {"state_dict": model.state_dict()})
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:                          # the largest tensor's bytes (a header would
        big = max(z.infolist(), key=lambda i: i.file_size)    # already fail in torch.load)
    mid = big.header_offset + 30 + len(big.filename) + len(big.extra) + big.file_size // 2 - 2048
    data[mid:mid + 4096] = bytes(b ^ 0x5A for b in data[mid:mid + 4096])   # the reproduction: XOR 4 KiB
    bad = tmp_path / "flipped.pt"
    bad.write_bytes(bytes(data))
    for load in (load_checkpoint, load_pretrained):
        with pytest.raises(CheckpointError, match=r"flipped\.pt .*fails its CRC-32 check"):
            load(bad)
    changed = load_checkpoint(bad, verify=False)["state_dict"]   # what torch.load alone did: loads it
    assert any(not torch.equal(changed[k], v) for k, v in model.state_dict().items())


def test_checkpoint_saved_without_crcs_still_loads(tmp_path):
    from torch import serialization
    before = serialization.get_crc32_options()
    serialization.set_crc32_options(False)                  # records then carry CRC 0: nothing to check
    try:
        torch.save({"x": torch.arange(5)}, tmp_path / "nocrc.pt")
    finally:
        serialization.set_crc32_options(before)
    assert torch.equal(load_checkpoint(tmp_path / "nocrc.pt")["x"], torch.arange(5))


@pytest.mark.parametrize("text, what", [("epoch: 3\nlr: 0.1\n", "a text file"),
                                        ("version https://git-lfs.github.com/spec/v1\noid sha256:ab\n", "Git LFS"),
                                        ("<!DOCTYPE html><html>Sign in</html>", "HTML"),
                                        ('{"state_dict": {}}', "JSON")])
def test_text_file_is_not_a_checkpoint(tmp_path, text, what):
    path = tmp_path / "checkpoint_latest.pth"
    path.write_text(text)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    msg = str(e.value)
    assert f"{path} is not a PyTorch checkpoint" in msg and what in msg and "execute code" not in msg


def test_checkpoints_honour_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        shared = save_checkpoint(tmp_path / "shared.pt", {"x": torch.ones(1)})
        os.umask(0o077)
        private = save_checkpoint(tmp_path / "private.pt", {"x": torch.ones(1)})
    finally:
        os.umask(old)
    assert (shared.stat().st_mode & 0o777, private.stat().st_mode & 0o777) == (0o644, 0o600)


KILLED_WRITER = """
import sys, time, torch
import avlib.checkpoint as c
def slow_save(obj, f, *a, **k):
    f.write(b"PK\\x03\\x04 half a checkpoint")
    f.flush()
    print("writing", flush=True)
    time.sleep(60)
c.torch.save = slow_save
c.save_checkpoint(sys.argv[1], {"epoch": 2})
"""


def test_temp_files_orphaned_by_sigkill_are_cleaned_up(tmp_path, monkeypatch):
    import signal
    import subprocess
    import sys

    import avlib.utils as U
    path = save_checkpoint(tmp_path / "checkpoint_last.pt", {"epoch": 1})
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path)], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    orphans = [p for p in tmp_path.iterdir() if p.name.startswith(".checkpoint_last.pt.tmp-")]
    assert len(orphans) == 1                                  # what SIGKILL leaves behind
    live = tmp_path / f".other.pt.tmp-{os.getpid()}-0123abcd"  # a writer that is still running (this process)
    mine = tmp_path / ".notes.tmp"                            # not our pattern: never touched
    live.write_bytes(b"x")
    mine.write_bytes(b"x")
    save_checkpoint(path, {"epoch": 3})                       # orphan too fresh (a writer may still be at it)
    assert orphans[0].exists()
    monkeypatch.setattr(U, "STALE_TEMP_SECONDS", 0.0)
    save_checkpoint(path, {"epoch": 4})
    assert not orphans[0].exists() and live.exists() and mine.exists()
    assert load_checkpoint(path)["epoch"] == 4
