"""Sound-of-Pixels (Zhao, Gan, Rouditchenko, Vondrick, McDermott, Torralba, "The Sound of Pixels",
ECCV 2018) as a pre-training objective of the kit's two-stream ViT backbone.

Read from github.com/hangzhaomit/Sound-of-Pixels (commit 4535034): ``main.py`` (``NetWrapper.forward``:
targets, weights, the forward pass; ``create_optimizer``), ``models/audio_net.py`` (``Unet``,
``UnetBlock``), ``models/vision_net.py`` (``ResnetDilated``: the 3x3 ``fc`` conv and the max pool),
``models/synthesizer_net.py`` (``InnerProd``, its ``forward_pixelwise``), ``models/criterion.py``
(``BCELoss``), ``models/__init__.py`` (``weights_init``), ``arguments.py`` and ``scripts/train_MUSIC.sh``.
No code is copied; this is a re-implementation on the kit's modules (``docs/baselines.md#sound-of-pixels``).

**Mix-and-separate.** Two clips are mixed; each clip's image predicts a mask on the shared mixture:

    s_k(f, t) = AudioNet(mixture)                 k = 1..K maps at spectrogram resolution
    i_k       = sigmoid(max_p Conv3x3(image)_k(p)) one K-vector per image (max over locations)
    mask      = sigmoid(sum_k alpha_k i_k s_k(f, t) + beta)        (the linear "synthesizer")
    loss      = mean_n mean_{f,t} w(f,t) BCE(mask_n, [source n dominates the bin])

with ``w = clamp(log1p(|S_mix|), 1e-3, 10)``. No negatives, no labels: the target of each image is
computed from its own clip and the mixture (``source_audio``, ``mix_audio``).

**On the kit.** The audio network's encoder half is the audio ViT on the mixture's log-mel; its decoder
half (``SoPAudioNet``) is SoP's up path (ReLU, bilinear x2, Conv3x3, BN per level; the last level a
Conv3x3 to K maps with bias and no activation) from the token grid up to the mel grid. The visual
network is the visual ViT; SoP's 3x3 ``fc`` conv runs on its token grid (``SoPVisualHead``).

| hyper-parameter | published (code) | kit default | why |
|---|---|---|---|
| K maps (``num_maps``) | 32 (``--num_channels 32``) | 32 | |
| audio U-Net | 7 down / 7 up levels, ngf 64, skips at every scale, BN on the input | ``log2(patch)`` up levels from the ViT tokens, widths ``max(8, D / 2^j)``, no skips | the ViT is the encoder half; it has no feature map finer than a patch |
| spectrogram | STFT 1022 / hop 256 at 11,025 Hz, log-frequency warp to 256 rows, input ``log |S_mix|`` | the kit's log-mel (``data.*``), masks on mel bins | as DeepAVFusion's own separation (``models/avsrcsep.py``); the mel axis is already log-like, no warp |
| targets (``mask_rule``) | binary ``|S_n| > 0.5 |S_mix|`` (magnitudes) | ``"dominant"``: ``P_n > P_mix - P_n`` (mel power) | the same rule, "source n dominates", under power instead of magnitude additivity (``heads.separation_targets``) |
| loss (``weighted_loss``) | BCE weighted by ``clamp(log1p |S_mix|, 1e-3, 10)`` | BCE weighted by ``clamp(log1p P_mix, 1e-3, 10)`` | the kit's ``heads.separation_weight`` (DeepAVFusion's weighting on mel power) |
| mixing | each waveform x 1/N, then summed | plain sum (``MixtureDataset``) | the binary targets are gain-invariant; every method and the downstream protocol read the same mixtures |
| frames | 3 frames, max over time and space | 1 frame, max over the token grid | AV-Digits scenes are still images |
| test mask (``mask_threshold``) | sigmoid > 0.5 (``--mask_thres``) before synthesis | 0.5 | |
| optimizer (``config_overrides``) | SGD, momentum 0.9, wd 1e-4; lr 1e-3 for the sound net, synthesizer and visual ``fc``, 1e-4 for the ImageNet ResNet; x0.1 at epochs 40, 80 of 100 | SGD 0.9, wd 1e-4 (not on norms / biases), lr 1e-3 for the method's modules and 1e-4 for both ViTs (``layer_decay=0.1`` over the two levels of ``layer_id``), cosine, no warmup | the ViTs are the warm-started ("pretrained") weights; ``LRSchedule`` has no step decay |
| batch / epochs | 80 / 100 x 100 list repeats | the profile's (``pretrain.*``) | every method pre-trains for the same steps |
| init | conv N(0, 1e-3), BN weight N(1, 0.02) (``weights_init``) on the sound net and synthesizer | the same on ``audio_unet`` and ``synthesizer`` | |

``config_overrides()`` returns the optimizer row as ``make_config`` overrides; without them the method
trains with the profile's optimizer (AdamW). The synthesizer's ``alpha`` starts at 1, ``beta`` at 0.

**Zero-shot read-outs** (the method's own test-time inference): ``separation_mask`` = the synthesized
mask of the image on the mixture, thresholded at ``mask_threshold``; ``localization_map`` = the
synthesizer at every unpooled visual location (SoP's ``forward_pixelwise``, present in the code but
never called) and the energy of the masked mixture per location, ``sum_{f,t} mask_p(f,t) P_mix(f,t)``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Config
from ..heads import separation_loss, separation_targets, tokens_to_map
from ..model import build_encoder
from ..objectives import register_objective
from .mixsep import MixSepObjective, freeze_fusion_stream, two_stream, unwrap

__all__ = ["SoPAudioNet", "SoPVisualHead", "Synthesizer", "SoundOfPixelsModel", "SoundOfPixels", "sop_loss",
           "sop_init_"]


@torch.no_grad()
def sop_init_(module: nn.Module) -> None:
    """SoP's ``ModelBuilder.weights_init``: conv weights N(0, 0.001), BatchNorm weights N(1, 0.02) and
    biases 0, Linear weights N(0, 1e-4); conv biases keep PyTorch's init."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            m.weight.normal_(0.0, 0.001)
        elif isinstance(m, nn.BatchNorm2d):
            m.weight.normal_(1.0, 0.02)
            m.bias.zero_()
        elif isinstance(m, nn.Linear):
            m.weight.normal_(0.0, 1e-4)


class SoPAudioNet(nn.Module):
    """The up path of SoP's audio U-Net on the mixture's audio tokens -> K maps at spectrogram resolution.

    ``levels`` blocks, each ReLU -> bilinear x2 (align_corners=True) -> Conv3x3 -> BatchNorm (SoP's
    ``UnetBlock`` up path); widths ``max(min_width, D // 2**j)``; the last block's conv maps to ``num_maps``
    with a bias and no norm or activation (SoP's outermost block, ``--sound_activation no``).
    ``forward(tokens (B, Na, D), grid, size=(F, T)) -> (B, K, F, T)`` (bilinearly resized if the
    up path does not land on ``size``, e.g. a patch size that is not a power of 2).
    """

    def __init__(self, embed_dim: int, num_maps: int, levels: int, min_width: int = 8):
        super().__init__()
        if levels < 1:
            raise ValueError("SoPAudioNet needs at least one up level")
        widths = [max(int(min_width), int(embed_dim) // 2 ** j) for j in range(levels)] + [int(num_maps)]
        blocks = []
        for j in range(levels):
            last = j == levels - 1
            layers = [nn.ReLU(), nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
                      nn.Conv2d(widths[j], widths[j + 1], kernel_size=3, padding=1, bias=last)]
            if not last:
                layers.append(nn.BatchNorm2d(widths[j + 1]))
            blocks.append(nn.Sequential(*layers))
        self.up = nn.Sequential(*blocks)
        sop_init_(self)

    def forward(self, tokens: torch.Tensor, grid, size) -> torch.Tensor:
        x = self.up(tokens_to_map(tokens, grid))                  # (B, K, Fg 2^levels, Tg 2^levels)
        if tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
        return x


class SoPVisualHead(nn.Module):
    """SoP's visual ``fc``: a 3x3 conv D -> K on the visual token grid, ``(B, Nv, D) -> (B, K, gh, gw)``
    logits; ``pooled`` = sigmoid of their max over locations (``--img_pool maxpool``,
    ``--img_activation sigmoid``), ``pixelwise`` = sigmoid at every location."""

    def __init__(self, embed_dim: int, num_maps: int):
        super().__init__()
        self.fc = nn.Conv2d(embed_dim, num_maps, kernel_size=3, padding=1)

    def forward(self, tokens: torch.Tensor, grid) -> torch.Tensor:
        return self.fc(tokens_to_map(tokens, grid))

    def pooled(self, tokens: torch.Tensor, grid) -> torch.Tensor:
        """``(B, K)``: sigmoid(max over locations); max then sigmoid = sigmoid then max (monotonic)."""
        return torch.sigmoid(self(tokens, grid).amax(dim=(-2, -1)))

    def pixelwise(self, tokens: torch.Tensor, grid) -> torch.Tensor:
        """``(B, K, gh, gw)`` activations at every location."""
        return torch.sigmoid(self(tokens, grid))


class Synthesizer(nn.Module):
    """SoP's linear synthesizer (``InnerProd``): mask logits ``sum_k alpha_k i_k s_k(f, t) + beta``.
    ``alpha`` (``scale``, K values) starts at 1, ``beta`` (``bias``) at 0."""

    def __init__(self, num_maps: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(num_maps))
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, image_vec: torch.Tensor, sound: torch.Tensor) -> torch.Tensor:
        """``image_vec (B, K)``, ``sound (B, K, F, T)`` -> logits ``(B, 1, F, T)``."""
        return torch.einsum("bk,bkft->bft", image_vec * self.scale, sound).unsqueeze(1) + self.bias

    def pixelwise(self, image_maps: torch.Tensor, sound: torch.Tensor) -> torch.Tensor:
        """``image_maps (B, K, P)`` (one K-vector per location), ``sound (B, K, F, T)`` -> ``(B, P, F, T)``."""
        return torch.einsum("bkp,bkft->bpft", image_maps * self.scale[:, None], sound) + self.bias


class SoundOfPixelsModel(nn.Module):
    """The late-fusion encoder at ``.encoder`` plus SoP's ``audio_unet``, ``visual_head`` and ``synthesizer``.

    ``forward(images (B, N, 3, H, W), mix_audio (B, 1, F, T)) -> mask logits (B, N, 1, F, T)``: one mask
    per image on the shared mixture (N = the K sources of a ``MixtureDataset`` item).
    ``layer_id`` gives two lr levels (1: the encoder, 2: the method's modules) so that
    ``pretrain.layer_decay`` sets SoP's backbone / head lr ratio (``config_overrides``).
    """

    num_layers = 1            # the two "layers" of layer_id, for param_groups' layer-wise lr scaling

    def __init__(self, cfg: Config, num_maps: int = 32, min_width: int = 8):
        super().__init__()
        self.encoder = build_encoder(cfg.model)
        freeze_fusion_stream(self.encoder)
        D, p = cfg.model.embed_dim, cfg.model.patch_size
        self.audio_unet = SoPAudioNet(D, num_maps, levels=max(1, math.ceil(math.log2(p))), min_width=min_width)
        self.visual_head = SoPVisualHead(D, num_maps)
        self.synthesizer = Synthesizer(num_maps)

    def layer_id(self, name: str) -> int:
        return 1 if name.startswith("encoder.") else 2

    def forward(self, images: torch.Tensor, mix_audio: torch.Tensor) -> torch.Tensor:
        B, N = images.shape[:2]
        out = two_stream(self.encoder, images.flatten(0, 1), mix_audio)     # image (B*N, Nv, D), audio (B, Na, D)
        sound = self.audio_unet(out.audio, self.encoder.audio_grid, mix_audio.shape[-2:])   # (B, K, F, T)
        vec = self.visual_head.pooled(out.image, self.encoder.image_grid)                   # (B*N, K)
        logits = self.synthesizer(vec, sound.repeat_interleave(N, 0))                       # (B*N, 1, F, T)
        return logits.view(B, N, *logits.shape[1:])

    def pixel_energy(self, image: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """SoP's ``forward_pixelwise``: the synthesizer at every visual location of ``image (B, 3, H, W)``
        on ``audio (B, 1, F, T)`` (the mixture), and the energy of the masked mixture there,
        ``sum_{f,t} sigmoid(logit_p(f, t)) * 10 ** audio``. Returns ``(B, gh, gw)``."""
        out = two_stream(self.encoder, image, audio)
        sound = self.audio_unet(out.audio, self.encoder.audio_grid, audio.shape[-2:])       # (B, K, F, T)
        maps = self.visual_head.pixelwise(out.image, self.encoder.image_grid)              # (B, K, gh, gw)
        masks = torch.sigmoid(self.synthesizer.pixelwise(maps.flatten(2), sound))          # (B, P, F, T)
        energy = (masks * torch.pow(10.0, audio.float())).sum(dim=(-2, -1))                # (B, P)
        return energy.view(image.shape[0], *self.encoder.image_grid)


def sop_loss(logits: torch.Tensor, source_audio: torch.Tensor, mix_audio: torch.Tensor,
             rule: str = "dominant", weighted: bool = True) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """SoP's loss: the mean over the N sources of the (weighted) BCE of each source's mask logits to its
    binary target (``heads.separation_targets``, ``heads.separation_loss``).

    ``logits (B, N, 1, F, T)``, ``source_audio (B, N, 1, F, T)``, ``mix_audio (B, 1, F, T)``. Since every
    source's mask has the same number of bins, the mean over all of them equals SoP's mean over n of the
    per-source means (``criterion.BaseLoss``). Logs ``mask_acc``: the fraction of bins on the right side of 0.5.
    """
    N = logits.shape[1]
    mix = mix_audio.repeat_interleave(N, 0)                                    # (B*N, 1, F, T)
    target = separation_targets(source_audio.flatten(0, 1), mix, binary=True, rule=rule)
    flat = logits.flatten(0, 1)
    loss = separation_loss(flat, target, mix, weighted=weighted)
    acc = ((flat > 0).float() == target).float().mean()
    return loss, {"mask_acc": acc.detach()}


@register_objective
class SoundOfPixels(MixSepObjective):
    """Sound-of-Pixels' mix-and-separate pre-training (module docstring: published vs kit settings)."""

    name = "sound_of_pixels"
    fields = ("num_maps", "mask_rule", "weighted_loss", "mask_threshold", "min_width")
    num_maps = 32
    mask_rule = "dominant"
    weighted_loss = True
    mask_threshold: float | None = 0.5
    min_width = 8
    published = {"num_maps": 32, "mask_rule": "|S_n| > 0.5 |S_mix| (STFT magnitude)",
                 "weighted_loss": "log1p(|S_mix|) clamped to [1e-3, 10]", "mask_threshold": 0.5,
                 "min_width": "ngf 64 (7-level U-Net)"}
    notes = {"mask_rule": "the same dominance rule on mel power (heads.separation_targets 'dominant')",
             "weighted_loss": "the weight on mel power (heads.separation_weight)",
             "min_width": "the up path from ViT tokens: widths max(min_width, D / 2^j)"}
    pretrain_recipe = {"optimizer": "sgd", "lr": 1e-3, "momentum": 0.9, "weight_decay": 1e-4,
                       "layer_decay": 0.1, "warmup_epochs": 0.0, "schedule": "cosine"}

    def build(self, cfg: Config) -> SoundOfPixelsModel:
        self.check_config(cfg)
        return SoundOfPixelsModel(cfg, num_maps=self.num_maps, min_width=self.min_width)

    def loss(self, model, batch):
        logits = model(batch["images"], batch["mix_audio"])                    # (B, N, 1, F, T)
        return sop_loss(logits, batch["source_audio"], batch["mix_audio"], self.mask_rule, self.weighted_loss)

    @torch.no_grad()
    def separation_mask(self, model, mix_audio: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """``(B, 1, F, T)``: the image's synthesized mask on the mixture, thresholded at ``mask_threshold``
        (SoP's test: binary masks, ``pred > mask_thres``) unless it is None."""
        probs = torch.sigmoid(unwrap(model)(image[:, None], mix_audio)[:, 0])
        return probs if self.mask_threshold is None else (probs > self.mask_threshold).float()

    @torch.no_grad()
    def localization_map(self, model, image: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """``(B, gh, gw)``: the energy of the audio masked by each location's mask (``pixel_energy``)."""
        return unwrap(model).pixel_energy(image, audio)
