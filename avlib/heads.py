"""Downstream heads on a DeepAVFusion encoder: classification, localization, segmentation, separation.

Every task model holds the encoder at ``.encoder`` (so the training loop finds ``encoder.*`` names for
layer-wise lr decay) and reuses its features through the ENCODER CONTRACT (ARCHITECTURE.md)::

    out = encoder(image, audio, return_embs=True)
    out.image (B, Nv, D)  out.audio (B, Na, D)  out.fusion (B, Nf, D)        # after the final norms
    out.embs_image / embs_audio / embs_fusion: tuples of L tensors          # BEFORE the final norms
    encoder.image_grid, encoder.audio_grid = (rows, cols)   (tokens row-major), encoder.embed_dim, num_layers

Sources: ``[supp A.x]`` = docs/protocols.md (the DEFAULT protocols); ``[code §3.x]`` =
docs/official_implementation.md (the official heads, kept as named alternatives with the official
state-dict key names; at ViT-B size they match manifest_vitb_{linprobe_vggsound,avsegm_s4,avsrcsep}.json
key for key and shape for shape).

| model | default head [supp] | official alternative [code] |
|---|---|---|
| ``AVClassifier`` | ``head="linear"``: pooled subset -> one Linear (A.1) | ``head="official"``: BN + one Linear per stream, logits averaged (§3.2) |
| ``AVLocalizer`` | ``scale * cos(global audio, local visual) + bias`` (A.2) | none released (§3.4) |
| ``AVSegmenter`` | ``head="upsample"``: audio-visual fusion + 3 up-conv blocks (A.2) | ``head="official_unet"``: AVSegmSimple (§3.5) |
| ``AVSeparator`` | AVSrcSep U-Net on the mixture + target image (A.3, same as §3.6) | ``binary_mask`` / ``weighted`` loss switches |

Freezing (``freeze_encoder=True``, the linear probe): encoder parameters get ``requires_grad=False``,
the encoder runs under ``torch.no_grad()`` and stays in eval mode under ``model.train()``. Unlike the
official ``AVClassifier.train()`` (which returns ``None``), ``train()`` returns ``self``.

Small profiles shrink sizes, never structure: channel widths scale with ``embed_dim`` by the official
ratios (never below ``min_width``=8 channels), and the separation U-Net uses ``log2(patch_size)`` up
levels so that it lands exactly on the mel grid (4 at patch 16 = official).
"""
from __future__ import annotations

import math
import warnings
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "FEATURES", "AVClassifier", "AVLocalizer", "AVSegmenter", "AVSeparator", "AVSrcSepUNet",
    "DoubleConv", "Up", "tokens_to_map", "official_layer_ids",
    "separation_targets", "separation_loss", "separation_weight", "localization_loss", "segmentation_loss",
]

FEATURES = ("audio", "visual", "fusion")
# our feature names -> the official module prefixes (image_norm / image_head, ...) [code §3.2]
_OFFICIAL_STREAM = {"audio": "audio", "visual": "image", "fusion": "fusion"}


# ----------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------
def tokens_to_map(x: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """Row-major tokens ``(B, N, D)`` -> feature map ``(B, D, rows, cols)`` with ``N = rows * cols``."""
    b, n, d = x.shape
    rows, cols = int(grid[0]), int(grid[1])
    if n != rows * cols:
        raise ValueError(f"{n} tokens do not fill a {rows}x{cols} grid (masked tokens? heads need all tokens)")
    return x.transpose(1, 2).reshape(b, d, rows, cols)


def official_layer_ids(num_layers: int, n: int, reverse: bool = False) -> list[int]:
    """``np.linspace(0, L-1, n).astype(int)`` (truncation), the official per-layer feature pick.

    Segmentation [code §3.5]: ``n=4`` -> ``[0, 3, 7, 11]`` for L=12. Separation [code §3.6]:
    ``n=5, reverse=True`` -> ``[11, 8, 5, 2, 0]``. Repeats are allowed when ``n > L`` (tiny encoders).
    """
    ids = np.linspace(0, num_layers - 1, n, endpoint=True)
    if reverse:
        ids = ids[::-1]
    return [int(i) for i in ids.astype(int)]


def _width(x: float, min_width: int) -> int:
    return max(int(min_width), int(x))


def _broadcast(v: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``(B, C)`` -> ``(B, C, *size)`` (the official ``[:, :, None, None].repeat``, as a view)."""
    return v[:, :, None, None].expand(-1, -1, int(size[0]), int(size[1]))


def _init_official(m: nn.Module, conv_bias_zero: bool = True) -> None:
    """Official decoder init: xavier Linear (zero bias), kaiming-normal(fan_out, relu) convs, norms (1, 0).
    AVSegmSimple zeroes conv biases, AVSrcSepUNet keeps PyTorch's default conv bias init."""
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if conv_bias_zero and m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)):
        if m.weight is not None:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _infer_patch_size(encoder: nn.Module) -> int | None:
    """Audio patch size of an encoder: ``.patch_size``, ``.cfg/.config.patch_size`` or the timm patch embed."""
    for obj in (encoder, getattr(encoder, "cfg", None), getattr(encoder, "config", None)):
        p = getattr(obj, "patch_size", None) if obj is not None else None
        if p is not None:
            return int(p[0] if isinstance(p, (tuple, list)) else p)
    pe = getattr(getattr(encoder, "audio", None), "patch_embed", None)
    p = getattr(pe, "patch_size", None)
    if p is not None:
        return int(p[0] if isinstance(p, (tuple, list)) else p)
    return None


class DoubleConv(nn.Module):
    """(Conv3x3 -> BN -> ReLU) x 2, bias-free convs; key names ``double_conv.{0,1,3,4}`` [code §3.5-3.6].
    ``(B, Cin, h, w) -> (B, Cout, h, w)``."""

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int | None = None):
        super().__init__()
        mid = mid_channels or out_channels
        self.double_conv = nn.Sequential(
            nn.Conv2d(in_channels, mid, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.double_conv(x)


class Up(nn.Module):
    """ConvTranspose (kernel = stride = ``factor``) then DoubleConv of ``cat[x_up, skip]`` [code §3.5-3.6].

    ``up: Cin -> up_channels`` (official: ``Cin // factor``), ``conv: up_channels + in2_channels -> Cout``.
    ``forward(x (B,Cin,h,w), skip (B,in2,h*f,w*f) | None) -> (B, Cout, h*f, w*f)``.
    """

    def __init__(self, in_channels: int, out_channels: int, in2_channels: int = 0, factor: int = 2,
                 up_channels: int | None = None):
        super().__init__()
        up_channels = up_channels or in_channels // factor
        self.up = nn.ConvTranspose2d(in_channels, up_channels, kernel_size=factor, stride=factor)
        self.conv = DoubleConv(up_channels + in2_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        x = self.up(x)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv(x)


class _Interpolate(nn.Module):
    """Parameter-free bilinear resize (align_corners=False). The official predictor resizes by x2
    (14x14 tokens -> 112 -> 224); here it resizes to the requested output size, which is the same op
    at the paper size and keeps the output on the image grid for any patch size."""

    def forward(self, x: torch.Tensor, size: Sequence[int] | None = None) -> torch.Tensor:
        if size is None:
            return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        if tuple(x.shape[-2:]) == tuple(size):
            return x
        return F.interpolate(x, size=tuple(int(s) for s in size), mode="bilinear", align_corners=False)


class _Predictor(nn.Sequential):
    """Official segmentation predictor ``Sequential(Conv3x3, Interpolate, Conv3x3)`` (keys ``predictor.0``,
    ``predictor.2``) whose resize targets the image size."""

    def forward(self, x: torch.Tensor, size: Sequence[int] | None = None) -> torch.Tensor:  # type: ignore[override]
        return self[2](self[1](self[0](x), size))


# ----------------------------------------------------------------------------------------------
# Shared base: holds the encoder, freezing, train() that returns self
# ----------------------------------------------------------------------------------------------
class _EncoderTaskModel(nn.Module):
    """Base of every task model: ``.encoder`` + the ``freeze_encoder`` switch."""

    def __init__(self, encoder: nn.Module, freeze_encoder: bool = False):
        super().__init__()
        self.encoder = encoder
        self.freeze_encoder = False
        if freeze_encoder:
            self.freeze()

    @property
    def embed_dim(self) -> int:
        return int(self.encoder.embed_dim)

    @property
    def num_layers(self) -> int:
        return int(self.encoder.num_layers)

    def freeze(self, flag: bool = True) -> "_EncoderTaskModel":
        """Freeze (or unfreeze) the encoder: ``requires_grad``, eval mode, ``no_grad`` forward."""
        self.freeze_encoder = bool(flag)
        self.encoder.requires_grad_(not flag)
        self.encoder.train(self.training and not flag)
        return self

    def train(self, mode: bool = True) -> "_EncoderTaskModel":
        """Like ``nn.Module.train`` but keeps a frozen encoder in eval mode. Returns ``self``
        (the official ``AVClassifier.train`` returns ``None``, which breaks chaining)."""
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.train(False)
        return self

    def encode(self, image: torch.Tensor, audio: torch.Tensor, return_embs: bool = False):
        """Run the encoder (under ``no_grad`` when frozen). Returns the contract's output object."""
        if self.freeze_encoder:
            with torch.no_grad():
                return self._call_encoder(image, audio, return_embs)
        return self._call_encoder(image, audio, return_embs)

    def _call_encoder(self, image, audio, return_embs):
        if return_embs:
            return self.encoder(image, audio, return_embs=True)
        return self.encoder(image, audio)

    def head_named_parameters(self) -> Iterable[tuple[str, nn.Parameter]]:
        """Every parameter that is not the encoder's (the task head)."""
        return ((n, p) for n, p in self.named_parameters() if not n.startswith("encoder."))

    def num_head_parameters(self) -> int:
        return sum(p.numel() for _, p in self.head_named_parameters())


# ----------------------------------------------------------------------------------------------
# 1. Classification
# ----------------------------------------------------------------------------------------------
def _check_features(features) -> tuple[str, ...]:
    if isinstance(features, str):
        features = (features,)
    feats = tuple(features)
    bad = set(feats) - set(FEATURES)
    if not feats or bad:
        raise ValueError(f"features={feats}: a non-empty subset of {FEATURES}")
    return tuple(f for f in FEATURES if f in feats)      # canonical order audio, visual, fusion


class AVClassifier(_EncoderTaskModel):
    """Audio-visual classifier on pooled encoder tokens.

    ``head="linear"`` [supp A.1]: mean-pool the audio tokens (all time-frequency patches), the visual
    tokens (all spatial patches) and the fusion tokens (post final norms) into three global ``(B, D)``
    vectors, concatenate the chosen ``features`` (always in the order audio, visual, fusion) and apply
    a parameter-free ``BatchNorm1d`` (key ``norm``) and one ``nn.Linear(len(features) * D, num_classes)``
    (key ``head``). The main paper uses
    ``("audio", "visual")``.

    ``head="official"`` [code §3.2]: per stream ``BatchNorm1d(D, affine=False, eps=1e-6)`` then one
    ``Linear(D, num_classes)`` (xavier-uniform, zero bias); the prediction is the **average** of the
    per-stream logits. Keys ``{image,audio,fusion}_norm`` / ``{image,audio,fusion}_head`` as in
    manifest_vitb_linprobe_vggsound.json (official = all three streams; "visual" is ``image_*``).
    (The official linear probe uses the BN, ``input_norm=True``; its fine-tune uses the same three heads.)

    ``forward(image (B,3,H,W), audio (B,1,F,T)) -> logits (B, C)``;
    ``forward_heads(...) -> {"all": (B,C), and for head="official" one entry per feature}``.
    """

    def __init__(self, encoder: nn.Module, num_classes: int, features=("audio", "visual"),
                 head: str = "linear", freeze_encoder: bool = False):
        super().__init__(encoder, freeze_encoder)
        self.features = _check_features(features)
        self.num_classes = int(num_classes)
        self.head_type = head
        d = self.embed_dim
        if head == "linear":
            # a parameter-free BatchNorm standardizes the pooled features (the MAE / official linear-probe
            # convention, input_norm=True); at evaluation it is a fixed affine map, so the classifier
            # stays linear in the features
            self.norm = nn.BatchNorm1d(len(self.features) * d, affine=False, eps=1e-6)
            self.head = nn.Linear(len(self.features) * d, self.num_classes)
            nn.init.xavier_uniform_(self.head.weight)
            nn.init.zeros_(self.head.bias)
        elif head == "official":
            for f in self.features:   # official registration order: norms, then heads
                setattr(self, f"{_OFFICIAL_STREAM[f]}_norm", nn.BatchNorm1d(d, affine=False, eps=1e-6))
            for f in self.features:
                lin = nn.Linear(d, self.num_classes)
                nn.init.xavier_uniform_(lin.weight)
                nn.init.zeros_(lin.bias)
                setattr(self, f"{_OFFICIAL_STREAM[f]}_head", lin)
        else:
            raise ValueError(f"head={head!r}: 'linear' [supp A.1] or 'official' [code §3.2]")

    def pooled(self, image: torch.Tensor, audio: torch.Tensor) -> dict[str, torch.Tensor]:
        """Mean-pooled global features ``{feature: (B, D)}`` for the chosen features."""
        out = self.encode(image, audio)
        tokens = {"audio": out.audio, "visual": out.image, "fusion": out.fusion}
        return {f: tokens[f].mean(dim=1) for f in self.features}

    def forward_heads(self, image: torch.Tensor, audio: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits per head: ``{"all": (B, C)}`` plus ``{feature: (B, C)}`` for ``head="official"``
        (per-head top-1 as in the official eval)."""
        return self.classify_pooled(self.pooled(image, audio))

    def classify_pooled(self, g: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``forward_heads`` from pooled features ``{feature: (B, D)}`` (e.g. cached by a frozen encoder)."""
        if self.head_type == "linear":
            return {"all": self.head(self.norm(torch.cat([g[f] for f in self.features], dim=1)))}
        logits = {}
        for f in self.features:
            s = _OFFICIAL_STREAM[f]
            logits[f] = getattr(self, f"{s}_head")(getattr(self, f"{s}_norm")(g[f]))
        logits["all"] = torch.stack([logits[f] for f in self.features], 0).mean(0)
        return logits

    def forward(self, image: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        return self.forward_heads(image, audio)["all"]

    @torch.no_grad()
    def init_bias_from_frequency(self, class_freq: torch.Tensor, eps: float = 1e-6) -> None:
        """Set every head's bias to the log-odds of the class frequencies (official fine-tune init
        [code §3.3]). ``class_freq``: ``(C,)`` counts or frequencies."""
        p = class_freq.float() / class_freq.float().sum()
        p = p.clamp(eps, 1 - eps)
        b = torch.log(p / (1 - p))
        heads = [self.head] if self.head_type == "linear" else \
            [getattr(self, f"{_OFFICIAL_STREAM[f]}_head") for f in self.features]
        for h in heads:
            h.bias.copy_(b.to(h.bias))


# ----------------------------------------------------------------------------------------------
# 2. Localization
# ----------------------------------------------------------------------------------------------
class AVLocalizer(_EncoderTaskModel):
    """Visually-guided sound source localization [supp A.2].

    The prediction map is the cosine similarity between the global audio representation (mean-pooled
    post-norm audio tokens, ``(B, D)``) and every local visual token (``(B, Nv, D)``), i.e. a
    ``(B, gh, gw)`` map in ``[-1, 1]``. For the per-pixel BCE the map is turned into logits
    ``scale * cos + bias`` with two learnable scalars, then bilinearly upsampled
    (``align_corners=False``) to the image size.

    Inits (documented choice): ``scale = 10`` -- stored as ``log_scale`` so it stays **positive** (a
    negative scale would let training invert the map while ``similarity_map``, the thing cIoU and the
    figures use, would then rank patches backwards); ``cos in [-1, 1]`` spans logits ``+-10`` (p from
    5e-5 to 0.99995), enough to fit hard maps without saturating at init. ``bias = -1`` ~ logit of a
    27% foreground prior (the RetinaNet prior-init argument): unrelated features start near
    ``cos ~ 0`` -> ``p ~ 0.27``, so positive pixels pull with ``1 - p = 0.73`` and each of the ~3x more
    background pixels pushes with 0.27 -- balanced gradients, initial loss near the prior entropy,
    instead of ``bias = -5`` (p ~ 0.007: only positives get a gradient) or ``bias = 0`` (p = 0.5 over
    a mostly-background map). Adam at lr 1e-4 moves these scalars slowly, so the inits matter.

    ``forward(image, audio, out_size=None) -> logits (B, H, W)`` (``out_size`` default: image size);
    ``similarity_map(image, audio) -> cos (B, gh, gw)``.
    """

    def __init__(self, encoder: nn.Module, init_scale: float = 10.0, init_bias: float = -1.0,
                 freeze_encoder: bool = False):
        super().__init__(encoder, freeze_encoder)
        if init_scale <= 0:
            raise ValueError("init_scale must be > 0")
        self.log_scale = nn.Parameter(torch.tensor(math.log(init_scale)))
        self.bias = nn.Parameter(torch.tensor(float(init_bias)))

    @property
    def scale(self) -> torch.Tensor:
        return self.log_scale.exp()

    def _similarity(self, out) -> torch.Tensor:
        a = F.normalize(out.audio.mean(dim=1), dim=-1)                  # (B, D) global audio
        v = F.normalize(out.image, dim=-1)                             # (B, Nv, D) local visual
        cos = torch.einsum("bd,bnd->bn", a, v).clamp(-1.0, 1.0)
        gh, gw = self.encoder.image_grid
        return cos.reshape(cos.shape[0], int(gh), int(gw))

    def similarity_map(self, image: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """Raw cosine map ``(B, gh, gw)`` in ``[-1, 1]`` (for cIoU and figures)."""
        return self._similarity(self.encode(image, audio))

    def logits_from_similarity(self, cos: torch.Tensor, out_size: Sequence[int]) -> torch.Tensor:
        """``(B, gh, gw)`` cosine -> ``(B, *out_size)`` logits ``scale * cos + bias`` (bilinear)."""
        logits = self.scale * cos + self.bias
        return F.interpolate(logits[:, None], size=tuple(int(s) for s in out_size), mode="bilinear",
                             align_corners=False)[:, 0]

    def forward(self, image: torch.Tensor, audio: torch.Tensor, out_size: Sequence[int] | None = None,
                return_similarity: bool = False):
        cos = self.similarity_map(image, audio)
        logits = self.logits_from_similarity(cos, out_size or image.shape[-2:])
        return (logits, cos) if return_similarity else logits


# ----------------------------------------------------------------------------------------------
# 3. Segmentation
# ----------------------------------------------------------------------------------------------
class _UpConvBlock(nn.Module):
    """One up-convolution block: ``ConvTranspose2d(x2)`` then Conv3x3-BN-ReLU. ``(B,Cin,h,w)->(B,Cout,2h,2w)``."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
        self.conv = nn.Sequential(nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.up(x))


class AVSegmenter(_EncoderTaskModel):
    """Sound source segmentation; ``forward(image, audio) -> logits (B, num_classes, H, W)``.

    ``head="upsample"`` [supp A.2], the default: "fuse the global audio representation with the local
    visual representations, and upsample ... with three sequential up-convolution blocks":

    1. global audio ``a = audio_proj(mean(out.audio))`` ``(B, D)``, broadcast over the visual grid;
       local visual ``v`` = post-norm visual tokens as ``(B, D, gh, gw)``.
    2. fusion (documented choice): ``fuse = Conv1x1-BN-ReLU(cat[v, a, v * a]) -> D`` channels. The
       concatenation keeps both streams, the product is an explicit per-location audio-visual
       agreement term (what the localizer's cosine measures), so "where is the sound" is linearly
       readable from the first layer; the 1x1 conv learns the mix.
    3. decoder: three ``_UpConvBlock`` (ConvTranspose2d x2 + Conv3x3-BN-ReLU), widths
       ``D/2, D/4, D/8`` (floor ``min_width``): ``gh -> 8 gh``.
    4. ``classifier`` Conv1x1 -> ``num_classes`` and a bilinear resize to the image size (a 1x1 conv
       commutes exactly with bilinear resizing, so this equals resize-then-conv at a fraction of the
       cost). Works on any grid: smoke 2x2 -> 16 -> 32 px, cpu 4x4 -> 32 -> 64 px, paper 14x14 -> 112 -> 224 px.
       With ``prior`` (the foreground fraction of the training masks) the classifier starts at that
       rate, as in RetinaNet (weights N(0, 0.01^2), bias logit(prior)): sounding pixels are a few
       percent of an image, and a kaiming-initialized 1x1 conv starts at a per-pixel BCE of ~3 that the
       first hundred steps spend on learning the base rate instead of the audio-visual cue.

    ``head="official_unet"`` [code §3.5], AVSegmSimple with the official key names (on this module):
    visual per-layer (pre-norm) tokens of layers ``official_layer_ids(L, 4)`` (``[0, 3, 7, 11]``),
    ``normv`` LayerNorm each; last-layer audio tokens ``proja[i]`` Linear -> ``norma[i]`` LayerNorm ->
    mean over tokens, broadcast; ``top`` DoubleConv(cat[v0, a0]); ``lat[i]`` ConvTranspose x2/x4/x8 +
    DoubleConv of layers 3/7/11; ``up[i]`` ConvTranspose x2 + DoubleConv(cat[x, lat, a]);
    ``predictor`` Conv3x3 -> bilinear -> Conv3x3. Widths: official ``max(128, D // s)`` for
    ``s = 1, 2, 4, 8`` = (768, 384, 192, 128) at ViT-B; for any D we use ``max(D // 6, D // s)``
    (128 = 768 / 6, so the same numbers at 768, and D x (1, 1/2, 1/4, 1/6) in general), the predictor's
    128 mid channels likewise become ``D // 6``; all floored at ``min_width``. The predictor's x2
    resize targets the image size (identical at patch 16; keeps patch-8 grids on the image grid).
    At ViT-B: 37,795,201 head parameters (1 class) / 37,875,911 (71 classes), as the manifests.
    """

    def __init__(self, encoder: nn.Module, num_classes: int = 1, head: str = "upsample",
                 freeze_encoder: bool = False, min_width: int = 8, prior: float | None = None):
        super().__init__(encoder, freeze_encoder)
        self.num_classes = int(num_classes)
        self.head_type = head
        d = self.embed_dim
        if head == "upsample":
            widths = [d] + [_width(d // s, min_width) for s in (2, 4, 8)]
            self.audio_proj = nn.Linear(d, d)
            self.fuse = nn.Sequential(nn.Conv2d(3 * d, widths[0], 1, bias=False), nn.BatchNorm2d(widths[0]),
                                      nn.ReLU(inplace=True))
            self.decoder = nn.ModuleList([_UpConvBlock(widths[i], widths[i + 1]) for i in range(3)])
            self.classifier = nn.Conv2d(widths[-1], self.num_classes, kernel_size=1)
            for n, m in self.named_modules():
                if not n.startswith("encoder"):
                    _init_official(m)
            if prior is not None:
                if not 0.0 < prior < 1.0:
                    raise ValueError(f"prior={prior}: the foreground fraction, strictly between 0 and 1")
                nn.init.normal_(self.classifier.weight, std=0.01)
                nn.init.constant_(self.classifier.bias, math.log(prior / (1.0 - prior)))
        elif head == "official_unet":
            scales = (1, 2, 4, 8)
            dims = [_width(max(d // 6, d // s), min_width) for s in scales]
            self.layer_dims = dims
            self.normv = nn.ModuleList([nn.LayerNorm(d) for _ in scales])
            self.proja = nn.ModuleList([nn.Linear(d, dims[i]) for i in range(len(scales))])
            self.norma = nn.ModuleList([nn.LayerNorm(dims[i]) for i in range(len(scales))])
            self.top = DoubleConv(d + dims[0], d)
            self.lat = nn.ModuleList([Up(d, dims[i], factor=scales[i], up_channels=_width(d // scales[i], min_width))
                                      for i in range(1, len(scales))])
            self.up = nn.ModuleList([Up(dims[i], dims[i + 1], in2_channels=2 * dims[i + 1],
                                        up_channels=_width(dims[i] // 2, min_width))
                                     for i in range(len(scales) - 1)])
            mid = _width(d // 6, min_width)
            self.predictor = _Predictor(nn.Conv2d(dims[-1], mid, 3, padding=1), _Interpolate(),
                                        nn.Conv2d(mid, self.num_classes, 3, padding=1))
            for n, m in self.named_modules():
                if not n.startswith("encoder"):
                    _init_official(m, conv_bias_zero=True)
        else:
            raise ValueError(f"head={head!r}: 'upsample' [supp A.2] or 'official_unet' [code §3.5]")

    def forward(self, image: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        size = image.shape[-2:]
        if self.head_type == "upsample":
            return self._forward_upsample(image, audio, size)
        return self._forward_official(image, audio, size)

    def _forward_upsample(self, image, audio, size):
        out = self.encode(image, audio)
        grid = self.encoder.image_grid
        v = tokens_to_map(out.image, grid)                              # (B, D, gh, gw)
        a = _broadcast(self.audio_proj(out.audio.mean(dim=1)), v.shape[-2:])
        x = self.fuse(torch.cat([v, a, v * a], dim=1))                 # (B, D, gh, gw)
        for block in self.decoder:
            x = block(x)                                                # -> (B, D/8, 8gh, 8gw)
        x = self.classifier(x)
        return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)

    def _forward_official(self, image, audio, size):
        out = self.encode(image, audio, return_embs=True)
        grid = self.encoder.image_grid
        ids = official_layer_ids(len(out.embs_image), len(self.normv))
        xv = [tokens_to_map(norm(out.embs_image[i]), grid) for norm, i in zip(self.normv, ids)]
        xa = [norm(proj(out.embs_audio[-1])).mean(dim=1) for norm, proj in zip(self.norma, self.proja)]
        x = self.top(torch.cat([xv[0], _broadcast(xa[0], grid)], dim=1))
        for i, (v, a) in enumerate(zip(xv[1:], xa[1:])):
            v = self.lat[i](v)
            x = self.up[i](x, torch.cat([v, _broadcast(a, v.shape[-2:])], dim=1))
        return self.predictor(x, size)                                  # (B, C, H, W)


# ----------------------------------------------------------------------------------------------
# 4. Separation
# ----------------------------------------------------------------------------------------------
class AVSrcSepUNet(nn.Module):
    """Audio U-Net decoder of AVSrcSep [code §3.6 / supp A.3], official key names.

    With ``levels = n`` (official 4) and widths ``w_j = max(min_width, D // 2**j)``, ``j = 0..n``
    (768/384/192/96/48 at ViT-B):

    - audio: per-layer (pre-norm) tokens of the mixture at layers ``official_layer_ids(L, n+1,
      reverse=True)`` (``[11, 8, 5, 2, 0]``), ``xa_norm[i]`` LayerNorm, as ``(B, D, Fg, Tg)``. The
      deepest layer feeds the finest skip, layer 0 feeds ``top``.
    - visual: last-layer tokens of the target image, ``xv_norm``, mean-pooled; ``cond{n+1}..cond1``
      Linear ``D -> w_0..w_n``, broadcast spatially.
    - ``top`` = DoubleConv(cat[audio, cond{n+1}] -> w_0) at ``Fg x Tg``; ``lat{k}`` = ConvTranspose
      x2^j (``j = n+1-k``) + DoubleConv -> w_j; ``up{k}`` = ConvTranspose x2 + DoubleConv(cat[x, lat,
      cond]) -> w_j; ``pred`` Conv3x3 -> 1 channel at ``(Fg 2^n, Tg 2^n)``.

    ``forward(xa_embs: L x (B, Na, D), xv (B, Nv, D), audio_grid) -> logits (B, 1, Fg 2^n, Tg 2^n)``.
    At ViT-B (n = 4): 46,926,241 parameters, keys/shapes of manifest_vitb_avsrcsep.json.
    """

    def __init__(self, embed_dim: int, levels: int = 4, min_width: int = 8):
        super().__init__()
        d, n = int(embed_dim), int(levels)
        if n < 1:
            raise ValueError("levels must be >= 1")
        self.levels = n
        w = [_width(d // 2 ** j, min_width) for j in range(n + 1)]
        self.widths = w
        self.xv_norm = nn.LayerNorm(d)
        self.xa_norm = nn.ModuleList([nn.LayerNorm(d) for _ in range(n + 1)])
        for k in range(n + 1, 0, -1):                   # cond5 (top, w0) ... cond1 (finest, w4)
            setattr(self, f"cond{k}", nn.Linear(d, w[n + 1 - k]))
        self.top = DoubleConv(d + w[0], w[0])
        for k in range(n, 0, -1):
            j = n + 1 - k
            setattr(self, f"lat{k}", Up(d, w[j], factor=2 ** j, up_channels=w[j]))
        for k in range(n, 0, -1):
            j = n + 1 - k
            setattr(self, f"up{k}", Up(w[j - 1], w[j], in2_channels=2 * w[j], up_channels=w[j]))
        self.pred = nn.Conv2d(w[-1], 1, kernel_size=3, padding=1)
        self.apply(lambda m: _init_official(m, conv_bias_zero=False))   # official: conv biases untouched

    def forward(self, xa_embs: Sequence[torch.Tensor], xv: torch.Tensor, audio_grid: Sequence[int]) -> torch.Tensor:
        n = self.levels
        ids = official_layer_ids(len(xa_embs), n + 1, reverse=True)
        xa = [tokens_to_map(norm(xa_embs[e]), audio_grid) for norm, e in zip(self.xa_norm, ids)]
        g = self.xv_norm(xv).mean(dim=1)                                   # (B, D)
        fg, tg = int(audio_grid[0]), int(audio_grid[1])
        x = self.top(torch.cat([xa[n], _broadcast(getattr(self, f"cond{n + 1}")(g), (fg, tg))], dim=1))
        for k in range(n, 0, -1):
            j = n + 1 - k
            lat = getattr(self, f"lat{k}")(xa[k - 1])
            cond = _broadcast(getattr(self, f"cond{k}")(g), lat.shape[-2:])
            x = getattr(self, f"up{k}")(x, torch.cat([lat, cond], dim=1))
        return self.pred(x)


class AVSeparator(_EncoderTaskModel):
    """Visually-guided source separation (mix-and-separate) [supp A.3 / code §3.6].

    The mixture log-mel and the target image go through the encoder together; the ``avss_decoder``
    (``AVSrcSepUNet``) predicts mask logits on the mel grid.
    ``forward(mix_audio (B,1,F,T), image (B,3,H,W)) -> mask logits (B, 1, F, T)``.

    ``levels`` (U-Net up levels) defaults to ``log2(patch_size)`` of the encoder so the output lands
    exactly on ``(F, T)``: 4 at patch 16 (official: 8x12 -> 128x192), 3 at the cpu profile's patch 8
    (8x8 -> 64x64), i.e. sizes shrink, structure does not. If the patch size cannot be found, the
    official 4; if the U-Net output still differs from ``(F, T)`` (non power-of-2 patch), the logits
    are bilinearly resized to it. ``binary_mask`` / ``weighted_loss`` / ``mask_rule`` record the loss
    variant for the task wiring (``targets``, ``loss``; see ``separation_targets`` / ``separation_loss``).
    """

    def __init__(self, encoder: nn.Module, binary_mask: bool = True, weighted_loss: bool = False,
                 levels: int | None = None, freeze_encoder: bool = False, min_width: int = 8,
                 mask_rule: str = "official"):
        super().__init__(encoder, freeze_encoder)
        self.binary_mask = bool(binary_mask)
        self.weighted_loss = bool(weighted_loss)
        if mask_rule not in ("official", "dominant"):
            raise ValueError(f"mask_rule={mask_rule!r}: 'official' or 'dominant' (see separation_targets)")
        self.mask_rule = mask_rule
        if levels is None:
            p = _infer_patch_size(encoder)
            if p is None:
                warnings.warn("AVSeparator: encoder patch size unknown; using the official 4 U-Net levels")
                levels = 4
            else:
                levels = max(1, int(math.ceil(math.log2(p))))
        self.avss_decoder = AVSrcSepUNet(self.embed_dim, levels=levels, min_width=min_width)

    def forward(self, mix_audio: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        out = self.encode(image, mix_audio, return_embs=True)
        logits = self.avss_decoder(out.embs_audio, out.embs_image[-1], self.encoder.audio_grid)
        if logits.shape[-2:] != mix_audio.shape[-2:]:
            logits = F.interpolate(logits, size=tuple(mix_audio.shape[-2:]), mode="bilinear", align_corners=False)
        return logits

    def targets(self, source_audio: torch.Tensor, mix_audio: torch.Tensor) -> torch.Tensor:
        return separation_targets(source_audio, mix_audio, binary=self.binary_mask, rule=self.mask_rule)

    def loss(self, logits: torch.Tensor, source_audio: torch.Tensor, mix_audio: torch.Tensor) -> torch.Tensor:
        """BCE of ``logits`` to this model's target kind (binary / ratio), weighted if configured."""
        return separation_loss(logits, self.targets(source_audio, mix_audio), mix_audio, weighted=self.weighted_loss)


# ----------------------------------------------------------------------------------------------
# 5. Losses and targets
# ----------------------------------------------------------------------------------------------
def separation_targets(source_audio: torch.Tensor, mix_audio: torch.Tensor, binary: bool = True,
                       rule: str = "official") -> torch.Tensor:
    """Time-frequency mask targets ``(B, 1, F, T)`` from log10-mels [code §3.6].

    ``S = 10 ** logmel`` (power mel; the front end's +1e-7 floor stays in).

    - ``binary=True, rule="official"``: ``M = [S_src > S_mix]`` (official ``binary_mask=True``).
    - ``binary=True, rule="dominant"``: ``M = [S_src > S_mix - S_src]``, i.e. the target has more
      power than the rest of the mixture (power additivity assumed), the literal reading of the
      supplement's "bins where the target source is the most dominant component" for K = 2. CAUTION:
      for a summed mixture ``S_mix ~ S_src + S_other`` (up to phase cross terms), so the official rule
      is only true where the interference happens to cancel destructively; the two rules differ.
      Measured on 100 random FSDD digit pairs with the cpu-profile front end (8 kHz, 64 mels): the
      official rule marks 21% of bins, the target truly dominates (S_src > S_other) in 48%; the
      official rule recalls 39% of those and agrees with true dominance on 70% of bins, the
      ``"dominant"`` rule on 93%.
    - ``binary=False``: ratio ``M = clamp(S_src / (S_src + S_mix + 1e-5), 0, 1)`` (official README
      setting; note the mixture in the denominator, so ``M <~ 0.5``).
    """
    s_src = torch.pow(10.0, source_audio.float())
    s_mix = torch.pow(10.0, mix_audio.float())
    if not binary:
        return (s_src / (s_src + s_mix + 1e-5)).clamp(0.0, 1.0)
    if rule == "official":
        return (s_src > s_mix).float()
    if rule == "dominant":
        return (s_src > s_mix - s_src).float()
    raise ValueError(f"rule={rule!r}: 'official' or 'dominant'")


def separation_loss(logits: torch.Tensor, target: torch.Tensor, mix_audio: torch.Tensor | None = None,
                    weighted: bool = False) -> torch.Tensor:
    """BCE-with-logits between mask logits and targets ``(B, 1, F, T)``; mean over all bins.

    ``weighted=True`` (official README): per-bin weights ``clamp(log1p(10 ** mix_audio), 1e-3, 10)``
    (the mixture's power), applied as ``mean(w * bce)`` like ``F.binary_cross_entropy_with_logits``.
    """
    weight = None
    if weighted:
        if mix_audio is None:
            raise ValueError("weighted separation loss needs mix_audio")
        weight = separation_weight(mix_audio)
    return F.binary_cross_entropy_with_logits(logits.float(), target.float(), weight=weight)


def separation_weight(mix_audio: torch.Tensor) -> torch.Tensor:
    """Per-bin loss weights ``clamp(log1p(10 ** mix_audio), 1e-3, 10)`` (the mixture's mel power), the
    official ``weighted_loss`` (and Sound-of-Pixels' ``log1p(|S_mix|)`` weighting on the mel grid)."""
    return torch.log1p(torch.pow(10.0, mix_audio.float())).clamp(1e-3, 10.0)


def localization_loss(logits: torch.Tensor, gt_map: torch.Tensor) -> torch.Tensor:
    """Average per-pixel BCE [supp A.2]: ``logits (B, H, W)`` (or ``(B, 1, H, W)``), ``gt_map (B, H, W)``
    in ``[0, 1]`` (soft maps allowed). Logits on another grid are bilinearly resized to the GT's."""
    if logits.dim() == 4:
        logits = logits[:, 0]
    if logits.shape[-2:] != gt_map.shape[-2:]:
        logits = F.interpolate(logits[:, None], size=tuple(gt_map.shape[-2:]), mode="bilinear",
                               align_corners=False)[:, 0]
    return F.binary_cross_entropy_with_logits(logits.float(), gt_map.float())


def segmentation_loss(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits for one class (``logits (B, 1, H, W)``, ``mask (B, H, W)`` or ``(B, 1, H, W)``
    in {0, 1}) [supp A.2, code §3.5]; cross-entropy for ``C > 1`` classes (``mask (B, H, W)`` long
    class ids). Logits on another grid are bilinearly resized to the mask's."""
    if mask.dim() == 4:
        mask = mask[:, 0]
    if logits.shape[-2:] != mask.shape[-2:]:
        logits = F.interpolate(logits, size=tuple(mask.shape[-2:]), mode="bilinear", align_corners=False)
    if logits.shape[1] == 1:
        return F.binary_cross_entropy_with_logits(logits[:, 0].float(), mask.float())
    return F.cross_entropy(logits.float(), mask.long())
