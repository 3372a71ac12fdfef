"""Image front end: parity with the official eval transform and joint image / mask / box transforms."""
from __future__ import annotations

import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from avlib.config import make_config
from avlib.image import (IMAGENET_MEAN, IMAGENET_STD, denormalize, eval_transform, normalize, to_normalized_tensor,
                         train_transform)


@pytest.fixture
def image_fixture(fixtures_dir):
    path = fixtures_dir / "mel_fixture.pt"
    if not path.exists():
        pytest.skip(f"golden fixture {path} not found")
    return torch.load(path, weights_only=True)["image"]


@pytest.mark.fixtures
def test_eval_transform_pil_bit_exact(image_fixture):
    x = image_fixture["input_uint8"]                      # (3, 360, 480) uint8
    pil = Image.fromarray(x.permute(1, 2, 0).numpy())
    out = eval_transform(224)(pil)
    assert out.dtype == torch.float32 and out.shape == (3, 224, 224)
    assert torch.equal(out.as_subclass(torch.Tensor), image_fixture["output"])
    assert image_fixture["params"]["normalize_mean"] == list(IMAGENET_MEAN)
    assert image_fixture["params"]["normalize_std"] == list(IMAGENET_STD)


@pytest.mark.fixtures
def test_eval_transform_tensor_path_close(image_fixture):
    out = eval_transform(224)(image_fixture["input_uint8"])
    diff = (out - image_fixture["output"]).abs().max()
    assert diff <= 0.02, diff                            # antialiased tensor resize: 1 grey level apart


def _block_image(h=90, w=120):
    img = torch.zeros(3, h, w, dtype=torch.uint8)
    img[0, 20:50, 30:80] = 255                           # a red block
    mask = torch.zeros(h, w, dtype=torch.uint8)
    mask[20:50, 30:80] = 1
    boxes = tv_tensors.BoundingBoxes([[30, 20, 80, 50]], format="XYXY", canvas_size=(h, w))
    return img, tv_tensors.Mask(mask), boxes


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_train_transform_is_joint(seed):
    img, mask, boxes = _block_image()
    torch.manual_seed(seed)
    out, m, b = train_transform(64, crop_min=0.5)(Image.fromarray(img.permute(1, 2, 0).numpy()), mask, boxes)
    assert out.shape == (3, 64, 64) and m.shape == (64, 64) and isinstance(m, tv_tensors.Mask)
    assert m.dtype == torch.uint8 and set(m.unique().tolist()) <= {0, 1}     # nearest for labels
    red = denormalize(out)[0] > 0.5
    inside = m.bool()
    if inside.sum() > 20:
        # the mask sits on the red pixels (up to the 1-pixel resampling seam)
        agree = (red == inside).float().mean()
        assert agree > 0.95, agree
        ys, xs = inside.nonzero(as_tuple=True)
        x0, y0, x1, y1 = b[0].tolist()
        assert abs(xs.min().item() - x0) <= 2 and abs(xs.max().item() + 1 - x1) <= 2
        assert abs(ys.min().item() - y0) <= 2 and abs(ys.max().item() + 1 - y1) <= 2


def test_eval_transform_joint_and_config_sizes():
    img, mask, boxes = _block_image(120, 160)
    out, m, b = eval_transform(64)(img, mask, boxes)
    assert out.shape == (3, 64, 64) and m.shape == (64, 64)
    red = denormalize(out)[0] > 0.5
    assert (red == m.bool()).float().mean() > 0.97
    cfg = make_config("cpu")
    assert eval_transform(cfg)(img).shape == (3, *cfg.model.image_size)
    assert train_transform(cfg)(img).shape == (3, *cfg.model.image_size)
    rrc = train_transform(cfg).transforms[0]
    assert rrc.scale == (cfg.data.crop_min, 1.0)


def test_normalize_roundtrip():
    x = torch.rand(2, 3, 8, 8)
    assert torch.allclose(denormalize(normalize(x)), x, atol=1e-6)
    assert torch.allclose(denormalize(normalize(x[0])), x[0], atol=1e-6)
    u8 = (x[0] * 255).to(torch.uint8)
    assert torch.allclose(to_normalized_tensor()(u8), normalize(u8.float() / 255), atol=1e-6)
    assert denormalize(torch.full((3, 2, 2), 100.0)).max() == 1.0
