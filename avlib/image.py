"""Image front end: ImageNet normalization and the official train / eval transforms [code §2.2],
built from ``torchvision.transforms.v2`` so that one call transforms an image *and* its targets
(``tv_tensors.Mask`` with nearest interpolation, ``tv_tensors.BoundingBoxes``) consistently::

    tf = eval_transform(224)
    img, mask, boxes = tf(pil_image, tv_tensors.Mask(m), tv_tensors.BoundingBoxes(b, format="XYXY",
                                                                                  canvas_size=(h, w)))

Train: ``RandomResizedCrop(size, scale=(crop_min, 1))`` + ``RandomHorizontalFlip``.
Eval: ``Resize(int(size / 0.875))`` (shorter side) + ``CenterCrop(size)``.
Both end with ``ToImage -> float32 / 255 -> Normalize(ImageNet)``; masks and boxes are left un-normalized.

The geometric ops run *before* ``ToImage``: a PIL input goes through PIL's resampling, exactly as the
official ``torchvision.transforms`` pipeline (bit-exact with ``mel_fixture.pt['image']``); a tensor input
uses torchvision's tensor kernels (antialiased bilinear), within about 0.02 of the PIL path.
"""
from __future__ import annotations

from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "normalize", "denormalize", "train_transform", "eval_transform",
           "to_normalized_tensor", "ToFloat01"]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def _size(size_or_cfg: Any) -> tuple[int, int]:
    """``224`` / ``(H, W)`` / a ``Config`` (uses ``cfg.model.image_size``) -> ``(H, W)``."""
    model = getattr(size_or_cfg, "model", None)
    if model is not None:
        size_or_cfg = model.image_size
    if isinstance(size_or_cfg, int):
        return (size_or_cfg, size_or_cfg)
    h, w = (int(s) for s in size_or_cfg)
    return (h, w)


def _stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (3, 1, 1) if x.dim() == 3 else (1, 3, 1, 1)
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(shape)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(shape)
    return mean, std


def normalize(x: torch.Tensor) -> torch.Tensor:
    """Float image(s) in [0, 1], ``(3, H, W)`` or ``(B, 3, H, W)`` -> ImageNet-normalized."""
    mean, std = _stats(x)
    return (x - mean) / std


def denormalize(x: torch.Tensor, clamp: bool = True) -> torch.Tensor:
    """Inverse of :func:`normalize` (for plotting): ``(3, H, W)`` / ``(B, 3, H, W)`` -> [0, 1]."""
    mean, std = _stats(x)
    y = x * std + mean
    return y.clamp(0.0, 1.0) if clamp else y


class ToFloat01(v2.Transform):
    """uint8 image -> float32 in [0, 1] as ``uint8 / 255`` (the v1 ``ToTensor`` arithmetic, bit-exact;
    ``v2.ToDtype(scale=True)`` multiplies by 1/255 and differs by an ulp). Float images pass unchanged;
    masks and boxes are untouched."""

    _transformed_types = (tv_tensors.Image, tv_tensors.Video)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if inpt.is_floating_point():
            return inpt
        return tv_tensors.wrap(inpt.to(torch.float32).div(255), like=inpt)


def _tail() -> list:
    return [v2.ToImage(), ToFloat01(), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]


def to_normalized_tensor() -> v2.Compose:
    """PIL / uint8 tensor -> float32 ImageNet-normalized tensor, no geometry."""
    return v2.Compose(_tail())


def train_transform(image_size: Any = 224, crop_min: float | None = None) -> v2.Compose:
    """Official train transform: ``RandomResizedCrop(size, scale=(crop_min, 1))``, horizontal flip,
    normalize. ``image_size`` may be an int, ``(H, W)`` or a full ``Config`` (then ``crop_min`` defaults
    to ``cfg.data.crop_min``). Applies jointly to masks / boxes passed in the same call."""
    if crop_min is None:
        data = getattr(image_size, "data", None)
        crop_min = float(data.crop_min) if data is not None else 0.5
    size = _size(image_size)
    return v2.Compose([v2.RandomResizedCrop(size, scale=(float(crop_min), 1.0), antialias=True),
                       v2.RandomHorizontalFlip(), *_tail()])


def eval_transform(image_size: Any = 224, resize_ratio: float | None = None) -> v2.Compose:
    """Official eval transform: ``Resize(int(size / resize_ratio))`` of the shorter side (0.875 -> 256 for
    224), ``CenterCrop(size)``, normalize. ``image_size`` may be an int, ``(H, W)`` or a ``Config``."""
    if resize_ratio is None:
        data = getattr(image_size, "data", None)
        resize_ratio = float(data.eval_resize_ratio) if data is not None else 0.875
    size = _size(image_size)
    resize = int(min(size) / float(resize_ratio))
    return v2.Compose([v2.Resize(resize, antialias=True), v2.CenterCrop(size), *_tail()])

