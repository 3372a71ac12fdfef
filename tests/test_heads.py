"""Tests of avlib.heads: shapes, gradient flow / freezing, official key names and parameter counts.

Most tests use ``FakeEncoder`` below: a STAND-IN for ``avlib.model.DeepAVFusion`` that exists only to
unit-test the heads. It satisfies the ENCODER CONTRACT of ARCHITECTURE.md (``out.image/audio/fusion``
post-norm, ``out.embs_*`` tuples of L pre-norm tensors, ``image_grid``/``audio_grid``/``embed_dim``/
``num_layers``) with a random linear patch embedding and per-layer residual MLPs -- it is not the model.
One integration test at the end uses the real smoke encoder when ``avlib.model.build_encoder`` exists.
"""
from __future__ import annotations

import itertools
import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from avlib.heads import (
    FEATURES, AVClassifier, AVLocalizer, AVSegmenter, AVSeparator, official_layer_ids,
    localization_loss, segmentation_loss, separation_loss, separation_targets, tokens_to_map,
)


# ----------------------------------------------------------------------------------------------
# Stand-in encoder (NOT the real model: only for unit-testing heads against the contract)
# ----------------------------------------------------------------------------------------------
class FakeEncoder(nn.Module):
    """Contract-satisfying stand-in for DeepAVFusion (unit tests of the heads only)."""

    def __init__(self, embed_dim=32, num_layers=2, patch_size=16, image_size=(32, 32), audio_size=(32, 64),
                 num_fusion=6):
        super().__init__()
        self.embed_dim, self.num_layers, self.patch_size = embed_dim, num_layers, patch_size
        self.image_grid = (image_size[0] // patch_size, image_size[1] // patch_size)
        self.audio_grid = (audio_size[0] // patch_size, audio_size[1] // patch_size)
        p, d = patch_size, embed_dim
        self.image_embed = nn.Linear(3 * p * p, d)            # random linear patch embedding
        self.audio_embed = nn.Linear(p * p, d)
        self.fusion_tokens = nn.Parameter(torch.randn(1, num_fusion, d) * 0.02)
        self.image_layers = nn.ModuleList([nn.Linear(d, d) for _ in range(num_layers)])
        self.audio_layers = nn.ModuleList([nn.Linear(d, d) for _ in range(num_layers)])
        self.fusion_layers = nn.ModuleList([nn.Linear(d, d) for _ in range(num_layers)])
        self.image_norm, self.audio_norm, self.fusion_norm = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.drop = nn.Dropout(0.1)                           # so train/eval mode matters

    def _patches(self, x):
        return F.unfold(x, self.patch_size, stride=self.patch_size).transpose(1, 2)   # (B, N, C p p)

    def forward(self, image, audio, return_embs=False):
        v = self.image_embed(self._patches(image))
        a = self.audio_embed(self._patches(audio))
        f = self.fusion_tokens.expand(image.shape[0], -1, -1)
        ev, ea, ef = [], [], []
        for lv, la, lf in zip(self.image_layers, self.audio_layers, self.fusion_layers):
            ctx = v.mean(1, keepdim=True) + a.mean(1, keepdim=True)     # a little cross-modal mixing
            f = f + torch.tanh(lf(f + ctx))
            fm = f.mean(1, keepdim=True)
            v = v + self.drop(torch.tanh(lv(v + fm)))
            a = a + self.drop(torch.tanh(la(a + fm)))
            ev.append(v), ea.append(a), ef.append(f)
        return SimpleNamespace(
            image=self.image_norm(v), audio=self.audio_norm(a), fusion=self.fusion_norm(f),
            embs_image=tuple(ev) if return_embs else None, embs_audio=tuple(ea) if return_embs else None,
            embs_fusion=tuple(ef) if return_embs else None, attn=None)


# smoke-like (D 32, L 2, patch 16, 32px image -> 2x2, 32x64 mel -> 2x4) and cpu-like (D 96, L 4, patch 8,
# 64px -> 8x8, 64x64 mel -> 8x8) grids, as in avlib.config's profiles
GRIDS = {
    "smoke": dict(embed_dim=32, num_layers=2, patch_size=16, image_size=(32, 32), audio_size=(32, 64)),
    "cpu": dict(embed_dim=96, num_layers=4, patch_size=8, image_size=(64, 64), audio_size=(64, 64)),
}


def make_inputs(cfg, batch=2):
    h, w = cfg["image_size"]
    f, t = cfg["audio_size"]
    return torch.randn(batch, 3, h, w), torch.randn(batch, 1, f, t) - 3.0


def _run(model, image, audio):
    if isinstance(model, AVSeparator):
        return model(audio, image)
    return model(image, audio)


def _builders(num_classes=5):
    return {
        "cls_linear": lambda enc, fr: AVClassifier(enc, num_classes, features=FEATURES, freeze_encoder=fr),
        "cls_official": lambda enc, fr: AVClassifier(enc, num_classes, features=FEATURES, head="official",
                                                     freeze_encoder=fr),
        "loc": lambda enc, fr: AVLocalizer(enc, freeze_encoder=fr),
        "seg_upsample": lambda enc, fr: AVSegmenter(enc, 1, freeze_encoder=fr),
        "seg_official": lambda enc, fr: AVSegmenter(enc, 3, head="official_unet", freeze_encoder=fr),
        "sep": lambda enc, fr: AVSeparator(enc, freeze_encoder=fr),
    }


# ----------------------------------------------------------------------------------------------
# Shapes
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("grid", list(GRIDS))
def test_shapes_every_head(grid):
    cfg = GRIDS[grid]
    image, audio = make_inputs(cfg)
    h, w = cfg["image_size"]
    f, t = cfg["audio_size"]
    gh, gw = h // cfg["patch_size"], w // cfg["patch_size"]
    torch.manual_seed(0)
    enc = FakeEncoder(**cfg)
    assert AVClassifier(enc, 7)(image, audio).shape == (2, 7)
    assert AVClassifier(enc, 7, head="official")(image, audio).shape == (2, 7)
    loc = AVLocalizer(enc)
    assert loc(image, audio).shape == (2, h, w)
    assert loc(image, audio, out_size=(5, 9)).shape == (2, 5, 9)
    assert loc.similarity_map(image, audio).shape == (2, gh, gw)
    for head, c in [("upsample", 1), ("upsample", 4), ("official_unet", 1), ("official_unet", 4)]:
        assert AVSegmenter(enc, c, head=head)(image, audio).shape == (2, c, h, w), head
    sep = AVSeparator(enc)
    assert sep.avss_decoder.levels == int(math.log2(cfg["patch_size"]))      # lands exactly on the mel grid
    assert sep(audio, image).shape == (2, 1, f, t)
    # the U-Net itself produces the mel grid (no fallback resize needed)
    out = enc(image, audio, return_embs=True)
    assert sep.avss_decoder(out.embs_audio, out.embs_image[-1], enc.audio_grid).shape == (2, 1, f, t)


def test_separator_levels_fallback_resize():
    """Fewer levels than log2(patch) -> the documented bilinear fallback still returns (B, 1, F, T)."""
    cfg = GRIDS["smoke"]
    image, audio = make_inputs(cfg)
    sep = AVSeparator(FakeEncoder(**cfg), levels=2)
    assert sep(audio, image).shape == (2, 1, *cfg["audio_size"])


# ----------------------------------------------------------------------------------------------
# Gradients and freezing
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(_builders()))
def test_gradients_reach_encoder_and_head(name):
    cfg = GRIDS["smoke"]
    image, audio = make_inputs(cfg)
    model = _builders()[name](FakeEncoder(**cfg), False).train()
    _run(model, image, audio).float().pow(2).mean().backward()
    head = dict(model.head_named_parameters())
    assert head, name
    for n, p in head.items():
        assert p.grad is not None and torch.isfinite(p.grad).all(), f"{name}: no grad for head param {n}"
    enc_grads = [p.grad for p in model.encoder.parameters()]
    assert any(g is not None and g.abs().sum() > 0 for g in enc_grads), f"{name}: encoder got no gradient"
    # the embedding layers are used by every head
    assert model.encoder.image_embed.weight.grad is not None and model.encoder.audio_embed.weight.grad is not None


@pytest.mark.parametrize("name", list(_builders()))
def test_frozen_encoder_gets_no_grad_and_stays_eval(name):
    cfg = GRIDS["smoke"]
    image, audio = make_inputs(cfg)
    model = _builders()[name](FakeEncoder(**cfg), True)
    assert model.train() is model                                  # official train() returns None
    assert model.training and not model.encoder.training
    assert not any(m.training for m in model.encoder.modules())
    assert all(not p.requires_grad for p in model.encoder.parameters())
    _run(model, image, audio).float().pow(2).mean().backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    for n, p in model.head_named_parameters():
        assert p.requires_grad and p.grad is not None, f"{name}: head param {n} got no grad"
    # eval/train round trip keeps the frozen encoder in eval
    assert model.eval() is model and not model.training
    model.train()
    assert not model.encoder.training
    # deterministic encoder features under train() (dropout off in the frozen encoder)
    if isinstance(model, AVClassifier):
        g1, g2 = model.pooled(image, audio), model.pooled(image, audio)
        assert all(torch.equal(g1[k], g2[k]) for k in g1)


def test_unfreeze_restores_training():
    model = AVClassifier(FakeEncoder(**GRIDS["smoke"]), 3, freeze_encoder=True)
    model.freeze(False)
    model.train()
    assert model.encoder.training and all(p.requires_grad for p in model.encoder.parameters())


# ----------------------------------------------------------------------------------------------
# Classifier
# ----------------------------------------------------------------------------------------------
SUBSETS = [c for r in (1, 2, 3) for c in itertools.combinations(FEATURES, r)]


@pytest.mark.parametrize("head", ["linear", "official"])
@pytest.mark.parametrize("features", SUBSETS, ids=["+".join(s) for s in SUBSETS])
def test_classifier_every_feature_subset(features, head):
    cfg = GRIDS["smoke"]
    image, audio = make_inputs(cfg)
    d = cfg["embed_dim"]
    model = AVClassifier(FakeEncoder(**cfg), 5, features=features, head=head).train()
    heads = model.forward_heads(image, audio)
    assert heads["all"].shape == (2, 5)
    if head == "linear":
        assert set(heads) == {"all"}
        assert model.head.in_features == len(features) * d
        # the linear head sees exactly the concatenated pooled features (canonical order)
        model.eval()
        g = model.pooled(image, audio)
        ref = model.head(model.norm(torch.cat([g[f] for f in FEATURES if f in features], 1)))
        assert torch.allclose(model(image, audio), ref, atol=1e-6)
    else:
        assert set(heads) == set(features) | {"all"}
        assert torch.allclose(heads["all"], torch.stack([heads[f] for f in features]).mean(0), atol=1e-6)
        stream = {"audio": "audio", "visual": "image", "fusion": "fusion"}
        keys = {k for k in model.state_dict() if not k.startswith("encoder.")}
        expect = set()
        for f in features:
            s = stream[f]
            expect |= {f"{s}_norm.running_mean", f"{s}_norm.running_var", f"{s}_norm.num_batches_tracked",
                       f"{s}_head.weight", f"{s}_head.bias"}
        assert keys == expect
        assert not getattr(model, f"{stream[features[0]]}_norm").affine


def test_classifier_rejects_bad_features():
    enc = FakeEncoder(**GRIDS["smoke"])
    for bad in [(), ("audio", "text"), ("image",)]:
        with pytest.raises(ValueError):
            AVClassifier(enc, 3, features=bad)
    with pytest.raises(ValueError):
        AVClassifier(enc, 3, head="mlp")


def test_classifier_bias_prior():
    model = AVClassifier(FakeEncoder(**GRIDS["smoke"]), 3, head="official")
    model.init_bias_from_frequency(torch.tensor([1.0, 1.0, 2.0]))
    assert torch.allclose(model.audio_head.bias, torch.log(torch.tensor([1 / 3, 1 / 3, 1.0])), atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Localization
# ----------------------------------------------------------------------------------------------
def test_localization_cosine_map_and_logits():
    cfg = GRIDS["cpu"]
    image, audio = make_inputs(cfg)
    model = AVLocalizer(FakeEncoder(**cfg)).eval()
    logits, cos = model(image, audio, return_similarity=True)
    assert cos.shape == (2, 8, 8) and logits.shape == (2, 64, 64)
    assert cos.min() >= -1.0 and cos.max() <= 1.0
    # reference cosine, computed by hand from the encoder outputs
    out = model.encoder(image, audio)
    ref = F.cosine_similarity(out.audio.mean(1, keepdim=True), out.image, dim=-1).reshape(2, 8, 8)
    assert torch.allclose(cos, ref, atol=1e-5)
    assert torch.allclose(model.scale, torch.tensor(10.0)) and model.bias.item() == -1.0
    # logits = bilinear(scale * cos + bias) to the image size, align_corners False
    up = F.interpolate((10.0 * ref - 1.0)[:, None], size=(64, 64), mode="bilinear", align_corners=False)[:, 0]
    assert torch.allclose(logits, up, atol=1e-4)
    # the learnable scale stays positive
    with torch.no_grad():
        model.log_scale.fill_(-20.0)
    assert model.scale > 0
    # loss on the image grid and on a different grid
    gt = (torch.rand(2, 64, 64) > 0.7).float()
    assert torch.isfinite(localization_loss(logits, gt))
    assert torch.allclose(localization_loss(logits, gt),
                          F.binary_cross_entropy_with_logits(logits, gt))
    small = model.logits_from_similarity(cos, (8, 8))
    assert torch.isfinite(localization_loss(small, gt))


# ----------------------------------------------------------------------------------------------
# Official heads at ViT-B size: key names, shapes, parameter counts (meta device: no memory)
# ----------------------------------------------------------------------------------------------
def _paper_encoder():
    return FakeEncoder(embed_dim=768, num_layers=12, patch_size=16, image_size=(224, 224), audio_size=(128, 192),
                       num_fusion=32)


def _head_manifest(manifests_dir, name):
    entries = json.loads((manifests_dir / name).read_text())
    return [(k, tuple(s)) for k, s in entries if not k.startswith("encoder.")]


def _head_state(model):
    return [(k, tuple(v.shape)) for k, v in model.state_dict().items() if not k.startswith("encoder.")]


def test_official_segmentation_head_matches_manifest(manifests_dir):
    index = json.loads((manifests_dir / "manifest_index.json").read_text())
    with torch.device("meta"):
        model = AVSegmenter(_paper_encoder(), 1, head="official_unet")
        model71 = AVSegmenter(_paper_encoder(), 71, head="official_unet")
    assert model.num_head_parameters() == index["avsegm_s4"]["head_params"] == 37_795_201
    assert model71.num_head_parameters() == index["avsegm_avss71_head_params"] == 37_875_911
    assert _head_state(model) == _head_manifest(manifests_dir, "manifest_vitb_avsegm_s4.json")   # order too
    assert model.layer_dims == [768, 384, 192, 128]
    assert official_layer_ids(12, 4) == [0, 3, 7, 11]
    # forward shapes at the paper size, still on meta (no compute)
    image, audio = torch.empty(2, 3, 224, 224, device="meta"), torch.empty(2, 1, 128, 192, device="meta")
    assert model(image, audio).shape == (2, 1, 224, 224)


def test_official_separation_head_matches_manifest(manifests_dir):
    index = json.loads((manifests_dir / "manifest_index.json").read_text())
    with torch.device("meta"):
        model = AVSeparator(_paper_encoder())
    assert model.avss_decoder.levels == 4 and model.avss_decoder.widths == [768, 384, 192, 96, 48]
    assert model.num_head_parameters() == index["avsrcsep"]["head_params"] == 46_926_241
    assert _head_state(model) == _head_manifest(manifests_dir, "manifest_vitb_avsrcsep.json")
    assert official_layer_ids(12, 5, reverse=True) == [11, 8, 5, 2, 0]
    image, audio = torch.empty(2, 3, 224, 224, device="meta"), torch.empty(2, 1, 128, 192, device="meta")
    assert model(audio, image).shape == (2, 1, 128, 192)


def test_official_linprobe_head_matches_manifest(manifests_dir):
    index = json.loads((manifests_dir / "manifest_index.json").read_text())
    with torch.device("meta"):
        model = AVClassifier(_paper_encoder(), 310, features=FEATURES, head="official", freeze_encoder=True)
    assert model.num_head_parameters() == index["linprobe_vggsound_heads"]["trainable_params"] == 715_170
    assert sorted(_head_state(model)) == sorted(_head_manifest(manifests_dir, "manifest_vitb_linprobe_vggsound.json"))
    buffers = sum(b.numel() for n, b in model.named_buffers() if not n.startswith("encoder."))
    assert buffers == index["linprobe_vggsound_heads"]["buffers_numel"]


def test_small_widths_scale_proportionally():
    seg = AVSegmenter(FakeEncoder(**GRIDS["cpu"]), 1, head="official_unet")
    assert seg.layer_dims == [96, 48, 24, 16]                     # D x (1, 1/2, 1/4, 1/6)
    sep = AVSeparator(FakeEncoder(**GRIDS["cpu"]))
    assert sep.avss_decoder.widths == [96, 48, 24, 12] and hasattr(sep.avss_decoder, "cond4")
    assert not hasattr(sep.avss_decoder, "cond5") and not hasattr(sep.avss_decoder, "lat4")
    sep_smoke = AVSeparator(FakeEncoder(**GRIDS["smoke"]))
    assert sep_smoke.avss_decoder.widths == [32, 16, 8, 8, 8]      # floored at min_width
    assert official_layer_ids(4, 4, reverse=True) == [3, 2, 1, 0]


# ----------------------------------------------------------------------------------------------
# Separation targets / losses, segmentation loss
# ----------------------------------------------------------------------------------------------
def test_separation_targets_hand_example():
    # powers (not logs): S_src vs S_mix per bin
    s_src = torch.tensor([[1.0, 10.0], [0.5, 100.0]])
    s_mix = torch.tensor([[2.0, 5.0], [0.5, 150.0]])
    src, mix = torch.log10(s_src)[None, None], torch.log10(s_mix)[None, None]
    binary = separation_targets(src, mix, binary=True)
    assert binary.shape == (1, 1, 2, 2)
    # official: target power strictly above the mixture's
    assert torch.equal(binary[0, 0], torch.tensor([[0.0, 1.0], [0.0, 0.0]]))
    # bin (1, 0): the mixture IS the source (other source silent) -> official 0 (strict >), dominant 1
    dominant = separation_targets(src, mix, binary=True, rule="dominant")   # S_src > S_mix - S_src
    assert torch.equal(dominant[0, 0], torch.tensor([[0.0, 1.0], [1.0, 1.0]]))
    ratio = separation_targets(src, mix, binary=False)
    assert torch.allclose(ratio[0, 0], (s_src / (s_src + s_mix + 1e-5)).clamp(0, 1), atol=1e-6)
    assert ratio.max() <= 1 and ratio.min() >= 0


def test_separation_loss_weighting():
    logits = torch.randn(2, 1, 4, 6)
    target = (torch.rand(2, 1, 4, 6) > 0.5).float()
    mix = torch.randn(2, 1, 4, 6)
    plain = separation_loss(logits, target)
    assert torch.allclose(plain, F.binary_cross_entropy_with_logits(logits, target))
    w = torch.log1p(10.0 ** mix).clamp(1e-3, 10)
    weighted = separation_loss(logits, target, mix, weighted=True)
    assert torch.allclose(weighted, (w * F.binary_cross_entropy_with_logits(logits, target, reduction="none")).mean())
    with pytest.raises(ValueError):
        separation_loss(logits, target, weighted=True)
    # the model's own loss path
    cfg = GRIDS["smoke"]
    image, audio = make_inputs(cfg)
    sep = AVSeparator(FakeEncoder(**cfg), binary_mask=False, weighted_loss=True)
    loss = sep.loss(sep(audio, image), audio - 0.5, audio)
    assert loss.ndim == 0 and torch.isfinite(loss)
    dom = AVSeparator(FakeEncoder(**cfg), mask_rule="dominant")
    assert torch.equal(dom.targets(audio - 0.1, audio), separation_targets(audio - 0.1, audio, rule="dominant"))
    with pytest.raises(ValueError):
        AVSeparator(FakeEncoder(**cfg), mask_rule="max")


def test_segmentation_prior_sets_the_starting_rate():
    torch.manual_seed(0)
    cfg = GRIDS["cpu"]
    image, audio = make_inputs(cfg, batch=4)
    mask = torch.zeros(4, *cfg["image_size"])
    mask[:, 10:20, 10:20] = 1.0                                           # ~2.4% foreground
    prior = mask.mean().item()
    seg = AVSegmenter(FakeEncoder(**cfg), 1, prior=prior).eval()
    with torch.no_grad():
        p = torch.sigmoid(seg(image, audio))
    assert p.mean().item() == pytest.approx(prior, rel=0.2)               # starts at the base rate
    base = AVSegmenter(FakeEncoder(**cfg), 1).eval()
    with torch.no_grad():
        # at the base rate the BCE is the entropy of the prior (~0.11 here), well below the default start
        assert segmentation_loss(seg(image, audio), mask) < 0.2 < segmentation_loss(base(image, audio), mask)
    with pytest.raises(ValueError, match="prior"):
        AVSegmenter(FakeEncoder(**cfg), 1, prior=1.0)


def test_segmentation_loss_binary_and_multiclass():
    logits1 = torch.randn(2, 1, 8, 8)
    mask = (torch.rand(2, 8, 8) > 0.5).float()
    assert torch.allclose(segmentation_loss(logits1, mask), F.binary_cross_entropy_with_logits(logits1[:, 0], mask))
    assert torch.allclose(segmentation_loss(logits1, mask[:, None]), segmentation_loss(logits1, mask))
    logits4 = torch.randn(2, 4, 8, 8)
    lab = torch.randint(0, 4, (2, 8, 8))
    assert torch.allclose(segmentation_loss(logits4, lab), F.cross_entropy(logits4, lab))
    assert torch.isfinite(segmentation_loss(torch.randn(2, 1, 4, 4), mask))    # resized to the mask grid


def test_tokens_to_map_row_major():
    x = torch.arange(6.0).reshape(1, 6, 1)
    m = tokens_to_map(x, (2, 3))
    assert torch.equal(m[0, 0], torch.tensor([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]))
    with pytest.raises(ValueError):
        tokens_to_map(x, (2, 2))


# ----------------------------------------------------------------------------------------------
# Integration with the real encoder (when avlib.model exists)
# ----------------------------------------------------------------------------------------------
def test_heads_on_real_smoke_encoder():
    model_mod = pytest.importorskip("avlib.model", reason="avlib.model not written yet")
    if not hasattr(model_mod, "build_encoder"):
        pytest.skip("avlib.model.build_encoder not available yet")
    from avlib.config import make_config

    cfg = make_config("smoke")
    image = torch.randn(2, 3, *cfg.model.image_size)
    audio = torch.randn(2, 1, *cfg.model.audio_size) - 3.0
    enc = model_mod.build_encoder(cfg.model)
    h, w = cfg.model.image_size
    assert AVClassifier(enc, 4, features=FEATURES, head="official")(image, audio).shape == (2, 4)
    assert AVLocalizer(enc)(image, audio).shape == (2, h, w)
    for head in ("upsample", "official_unet"):
        assert AVSegmenter(enc, 1, head=head)(image, audio).shape == (2, 1, h, w)
    sep = AVSeparator(enc)                           # levels inferred from the encoder's patch size
    assert sep.avss_decoder.levels == int(math.log2(cfg.model.patch_size))
    logits = sep(audio, image)
    assert logits.shape == (2, 1, *cfg.model.audio_size)
    logits.mean().backward()
    assert any(p.grad is not None for p in enc.parameters())
