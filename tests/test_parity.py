"""Numerical parity with the official DeepAVFusion code through the golden fixtures
(../shared/reference/fixtures/FIXTURES.md): every stored output within 1e-5 absolute, no relative
slack (§6: legitimate implementation freedoms stay below 2e-6, the subtlest mistake moves 1.2e-5),
for both evaluations of the pair attention. float32 on the CPU."""
from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

from avlib.checkpoint import model_config_from_fixture
from avlib.model import AVMAE, random_masking, sincos_pos_embed_2d

pytestmark = pytest.mark.fixtures

FIXTURE_NAMES = ["avmae_factorized_r025_m1", "avmae_factorized_r1_m4", "avmae_dense_r025_m1",
                 "avmae_token_r025_m1", "avmae_nofusion"]
MODES = ["separable", "explicit"]
ATOL = 1e-5


@functools.lru_cache(maxsize=None)
def load_fixture(path: Path) -> dict:
    return torch.load(path, weights_only=True)


@functools.lru_cache(maxsize=None)
def fixture_model(path: Path, mode: str) -> AVMAE:
    fx = load_fixture(path)
    model = AVMAE(model_config_from_fixture(fx["config"], pair_attention=mode))
    model.load_state_dict(fx["state_dict"], strict=True)
    return model.eval()


@pytest.fixture(params=FIXTURE_NAMES)
def golden(request, fixtures_dir) -> tuple[Path, dict]:
    path = fixtures_dir / f"{request.param}.pt"
    return path, load_fixture(path)


def close(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0, msg=lambda m: f"{what}: {m}")


def test_state_dict_layout(golden):
    path, fx = golden
    model = fixture_model(path, "separable")
    assert list(model.state_dict()) == fx["state_dict_keys"]          # names AND official order
    assert {n: p.requires_grad for n, p in model.named_parameters()} == fx["requires_grad"]
    assert not list(model.buffers())


def test_sincos_tables(golden):
    path, fx = golden
    cfg = model_config_from_fixture(fx["config"])
    dims = {"encoder": cfg.embed_dim, "decoder": cfg.decoder_embed_dim}
    for name, table in fx["reference_sincos_pos_embed"].items():
        grid = cfg.image_grid if "image" in name else cfg.audio_grid
        ours = sincos_pos_embed_2d(dims["encoder" if name.startswith("encoder") else "decoder"], grid)
        torch.testing.assert_close(ours.unsqueeze(0), table, atol=1e-6, rtol=0, msg=name)


@pytest.mark.parametrize("modality", ["image", "audio"])
def test_masking_from_stored_noise(golden, modality):
    _, fx = golden
    rec = fx["masking"][modality]
    ids_keep, mask, ids_restore = random_masking(rec["noise"].shape[0], rec["num_patches"], rec["mask_ratio"],
                                                 noise=rec["noise"])
    assert ids_keep.shape[1] == rec["len_keep"]
    assert torch.equal(ids_keep, rec["ids_keep"])
    assert torch.equal(ids_restore, rec["ids_restore"])
    assert torch.equal(mask, rec["mask"])


def _check_encoder(out, rec: dict, what: str) -> None:
    for stream in ("image", "audio", "fusion"):
        close(getattr(out, stream), rec[f"x_{stream}"], f"{what} x_{stream}")
        close(torch.stack(getattr(out, f"embs_{stream}")), rec[f"embs_{stream}"], f"{what} embs_{stream}")


@pytest.mark.parametrize("mode", MODES)
@torch.no_grad()
def test_encoder_unmasked(golden, mode):
    path, fx = golden
    out = fixture_model(path, mode).encoder(fx["inputs"]["image"], fx["inputs"]["audio"], return_embs=True)
    _check_encoder(out, fx["encoder_unmasked"], "unmasked")


@pytest.mark.parametrize("mode", MODES)
@torch.no_grad()
def test_encoder_masked(golden, mode):
    path, fx = golden
    out = fixture_model(path, mode).encoder(fx["inputs"]["image"], fx["inputs"]["audio"],
                                            image_ids_keep=fx["masking"]["image"]["ids_keep"],
                                            audio_ids_keep=fx["masking"]["audio"]["ids_keep"], return_embs=True)
    _check_encoder(out, fx["encoder_masked"], "masked")


@pytest.mark.parametrize("mode", MODES)
@torch.no_grad()
def test_avmae_forward(golden, mode):
    path, fx = golden
    model = fixture_model(path, mode)
    image, audio, masking = fx["inputs"]["image"], fx["inputs"]["audio"], fx["masking"]
    out = model(image, audio, noise_image=masking["image"]["noise"], noise_audio=masking["audio"]["noise"])
    for m in ("image", "audio"):
        assert torch.equal(getattr(out, f"ids_keep_{m}"), masking[m]["ids_keep"])
        assert torch.equal(getattr(out, f"mask_{m}"), masking[m]["mask"])
    close(out.pred_image, fx["decoder"]["pred_image"], "pred_image")
    close(out.pred_audio, fx["decoder"]["pred_audio"], "pred_audio")
    close(out.loss_image, fx["loss"]["loss_image"], "loss_image")
    close(out.loss_audio, fx["loss"]["loss_audio"], "loss_audio")
    close(out.loss, fx["loss"]["loss_total"], "loss_total")
    for m, x, pred, mask in (("image", image, out.pred_image, out.mask_image),
                             ("audio", audio, out.pred_audio, out.mask_audio)):
        loss = model.forward_loss(model.patchify(x), pred, mask, norm_pix_loss=False)
        close(loss, fx["loss"][f"loss_{m}_no_norm_pix"], f"loss_{m}_no_norm_pix")
    if "targets" in fx:
        close(model.patchify(image), fx["targets"]["target_image"], "target_image")
        close(model.patchify(audio), fx["targets"]["target_audio"], "target_audio")
