"""One config system for the whole kit: frozen dataclasses plus named profiles.

    cfg = make_config("cpu")                                   # a named profile
    cfg = make_config("cpu", **{"model.depth": 2})             # dotted overrides
    cfg = make_config("cpu", overrides={"pretrain": {"epochs": 1}})  # nested overrides
    cfg = make_config("paper", recipe="official")              # the official code's downstream recipes

Unknown keys raise a ``ConfigError`` that names the closest valid key (papermill itself only warns).
Every field's value is checked when a config is made, overridden or read back (``_validate``: the type
from its annotation, the range or choices from ``_RULES``); the error names the full key, the value, what
was expected and how to fix it. Command-line text (``--set pretrain.epochs=10``) is parsed to the field's
type by ``parse_assignments`` first. Profiles shrink sizes, never structure: every profile builds the
same modules, masking and losses.

Sources for the values: ``[code §x.y]`` = section x.y of ``docs/official_implementation.md`` (the official
implementation), ``[supp A.x]`` = section A.x of ``docs/protocols.md`` (the paper's supplementary material).
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import json
import math
import numbers
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any, Callable, ClassVar, Mapping, Sequence

__all__ = [
    "ConfigError", "ConfigValueError", "ModelConfig", "DataConfig", "TrainConfig", "TaskConfig",
    "ClassificationConfig", "LocalizationConfig", "SegmentationConfig", "SeparationConfig", "Config", "TASKS",
    "PROFILES", "RECIPES", "make_config", "apply_overrides", "parse_assignments", "parse_value",
    "config_to_dict", "config_from_dict", "config_hash", "flatten",
]


class ConfigError(ValueError):
    """A config key or value that does not exist / is not allowed."""


# ----------------------------------------------------------------------------------------------
# Validation: one place checks every field's type (from its annotation) and range, whatever the
# entry point (Python, dotted / nested overrides, ``--set`` strings, notebooks, stored configs):
# each dataclass's ``__post_init__`` calls ``_validate(self)`` first.
# ----------------------------------------------------------------------------------------------
class ConfigValueError(ConfigError):
    """A bad value of one field (``key``, ``value``, ``expected``, ``fix``). ``apply_overrides`` re-raises it
    under the full dotted key (``epochs`` -> ``pretrain.epochs``): a dataclass does not know where it sits
    in ``Config``."""

    def __init__(self, key: str, value: Any, expected: str, fix: str | None = None):
        self.key, self.value, self.expected, self.fix = key, value, expected, fix
        got = f"{value!r}" + ("" if value is None else f" ({type(value).__name__})")
        fix = fix or f"change {key} in your overrides (or --set {key}=...) to {expected}"
        super().__init__(f"config key {key!r} = {got}: expected {expected}. Fix: {fix}")

    def under(self, prefix: str) -> ConfigValueError:
        return ConfigValueError(f"{prefix}.{self.key}", self.value, self.expected, self.fix)


@dataclass(frozen=True)
class _Rule:
    """A range or choice check: ``ok(value)`` for a value that already has the field's type."""
    ok: Callable[[Any], bool]
    expected: str


def _choice(*names: str) -> _Rule:
    return _Rule(lambda v: v in names, "one of " + " | ".join(names))


_POSITIVE = _Rule(lambda v: v > 0, "a value > 0")
_AT_LEAST_1 = _Rule(lambda v: v >= 1, "a value >= 1")
_NON_NEGATIVE = _Rule(lambda v: v >= 0, "a value >= 0")
_FRACTION = _Rule(lambda v: 0 <= v <= 1, "a value in [0, 1]")
_BELOW_ONE = _Rule(lambda v: 0 <= v < 1, "a value in [0, 1)")          # mask ratios, drop rates, betas
_SHARE = _Rule(lambda v: 0 < v <= 1, "a value in (0, 1]")               # a scale or share that must keep something

# Range / choice rules per dataclass (looked up along the MRO, so subclasses inherit them). A field
# without a rule only gets the type check; for tuples the rule applies to every element, for
# ``X | None`` only when the value is not None.
_RULES: dict[str, dict[str, _Rule]] = {
    "ModelConfig": dict(
        embed_dim=_AT_LEAST_1, depth=_AT_LEAST_1, num_heads=_AT_LEAST_1, mlp_ratio=_POSITIVE,
        patch_size=_AT_LEAST_1, image_size=_AT_LEAST_1, audio_size=_AT_LEAST_1, drop_path=_BELOW_ONE,
        pair_attention=_choice("separable", "explicit"), num_fusion_tokens=_AT_LEAST_1,
        num_aggr_image_tokens=_NON_NEGATIVE, num_aggr_audio_tokens=_NON_NEGATIVE, fusion_num_heads=_AT_LEAST_1,
        fusion_attn_ratio=_POSITIVE, fusion_mlp_ratio=_POSITIVE, image_mask_ratio=_BELOW_ONE,
        audio_mask_ratio=_BELOW_ONE, decoder_embed_dim=_AT_LEAST_1, decoder_depth=_AT_LEAST_1,
        decoder_num_heads=_AT_LEAST_1, decoder_mlp_ratio=_POSITIVE,
        image_target_norm=_choice("patch", "channel"), masking=_choice("random", "inpainting"),
        inpaint_a2v=_FRACTION, inpaint_v2a=_FRACTION),
    "DataConfig": dict(
        dataset=_Rule(bool, "a non-empty dataset name"), sample_rate=_AT_LEAST_1, clip_seconds=_POSITIVE,
        n_fft=_AT_LEAST_1, hop_length=_AT_LEAST_1, n_mels=_AT_LEAST_1, gain_db=_NON_NEGATIVE, crop_min=_SHARE,
        eval_resize_ratio=_SHARE, grid=_AT_LEAST_1, p_two_sources=_FRACTION, p_offscreen=_FRACTION,
        holdout_speakers=_Rule(bool, "non-empty speaker names"),
        distractors=_Rule(lambda v: v >= 0, "a count >= 0 (or None: every cell)"),
        pretrain_distractors=_Rule(lambda v: v >= 0, "a count >= 0 (or None: as distractors)"),
        pretrain_distractors_p=_FRACTION, train_size=_AT_LEAST_1, test_size=_AT_LEAST_1,
        num_workers=_NON_NEGATIVE),
    "TrainConfig": dict(
        epochs=_AT_LEAST_1, batch_size=_AT_LEAST_1, accum_steps=_AT_LEAST_1,
        optimizer=_choice("adamw", "adam", "sgd", "lars"), lr=_POSITIVE, blr=_POSITIVE, min_lr=_NON_NEGATIVE,
        warmup_epochs=_NON_NEGATIVE, schedule=_choice("cosine", "constant"), weight_decay=_NON_NEGATIVE,
        betas=_BELOW_ONE, momentum=_BELOW_ONE, layer_decay=_SHARE, pretrained_ramp_epochs=_FRACTION,
        clip_grad=_POSITIVE, amp=_choice("none", "bf16", "fp16", "auto"),
        attention_kernel=_choice("default", "math", "auto"), threads=_AT_LEAST_1, max_steps=_AT_LEAST_1, log_every=_AT_LEAST_1,
        eval_every=_NON_NEGATIVE, ckpt_every=_NON_NEGATIVE),
    "ClassificationConfig": dict(features=_choice("audio", "visual", "fusion"), head=_choice("linear", "official")),
    "SegmentationConfig": dict(head=_choice("upsample", "official_unet")),
    "SeparationConfig": dict(mask_rule=_choice("dominant", "official"), eval_mixtures=_AT_LEAST_1,
                             eval_workers=_NON_NEGATIVE),
    "Config": dict(profile=_Rule(bool, "a non-empty profile name")),
}


def _type_name(tp) -> str:
    """``tuple[int, int]`` -> "a list of 2 int", ``str | None`` -> "str or None", for messages."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_type_name(args[0])}"
        return f"a list of {len(args)} {' / '.join(dict.fromkeys(_type_name(a) for a in args))}"
    if origin in (types.UnionType, typing.Union):
        return " or ".join("None" if a is type(None) else _type_name(a) for a in args)
    return getattr(tp, "__name__", str(tp))


def _check_type(key: str, value: Any, tp) -> Any:
    """``value`` as a ``tp`` (the field's annotation), or a ``ConfigValueError``. Strict: an int field takes
    no bool or float, a bool field only a bool; a float field takes an int (kept as given, so a
    config's hash does not change); a tuple field takes a list (JSON has no tuples)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value                                   # checked by the field's own __post_init__ code
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        others = [a for a in args if a is not type(None)]
        if len(others) == 1:                           # X | None: X's own message ("a finite number" ...)
            try:
                return _check_type(key, value, others[0])
            except ConfigValueError as e:
                raise ConfigValueError(key, value, f"{e.expected} or None", e.fix) from None
        for arg in others:
            try:
                return _check_type(key, value, arg)
            except ConfigValueError:
                pass
        raise ConfigValueError(key, value, _type_name(tp))
    if origin is tuple:
        if not isinstance(value, (tuple, list)):
            example = "['theo']" if args[0] is str else "[1, 2]"
            raise ConfigValueError(key, value, _type_name(tp), f"pass a list, e.g. {example}")
        elems = args[:1] * len(value) if len(args) == 2 and args[1] is Ellipsis else args
        if len(elems) != len(value):
            raise ConfigValueError(key, value, _type_name(tp))
        return tuple(_check_type(key, v, t) for v, t in zip(value, elems))
    if is_dataclass(tp):
        if not isinstance(value, tp):
            raise ConfigValueError(key, value, f"a {tp.__name__} section", f"set its fields, e.g. {key}.<field>")
        return value
    if tp is bool:
        if isinstance(value, bool) or type(value).__name__ == "bool_":   # numpy's bool from an array
            return bool(value)
        raise ConfigValueError(key, value, "true or false",
                          "write true / false (in Python True / False); a string such as 'false' is not a boolean")
    if tp is int:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):   # numpy ints too
            return int(value)
        fix = (f"use a whole number, e.g. {int(value)}" if isinstance(value, float) and value.is_integer()
               else "use a whole number" + (" (without quotes)" if isinstance(value, str) else ""))
        raise ConfigValueError(key, value, "an int", fix)
    if tp is float:
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigValueError(key, value, "a finite number")
            return value if type(value) in (int, float) else float(value)
        raise ConfigValueError(key, value, "a number", "use a number" + (" (without quotes)" if isinstance(value, str) else ""))
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigValueError(key, value, "a string")
    raise TypeError(f"config field {key}: unsupported annotation {tp!r}")   # a new field type: extend here


def _check_rule(key: str, value: Any, rule: _Rule | None) -> None:
    if rule is None or value is None:
        return
    for v in (value if isinstance(value, tuple) else (value,)):
        if not rule.ok(v):
            raise ConfigValueError(key, value, ("items, each " if isinstance(value, tuple) else "") + rule.expected)


@functools.cache
def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _rules(cls) -> dict[str, _Rule]:
    return {k: r for c in reversed(cls.__mro__) for k, r in _RULES.get(c.__name__, {}).items()}


def _validate(obj) -> None:
    """Type- and range-check every field of a config dataclass, normalizing in place (lists -> tuples,
    numpy scalars -> Python numbers). Called first by each ``__post_init__``."""
    hints, rules = _field_types(type(obj)), _rules(type(obj))
    for f in fields(obj):
        value = _check_type(f.name, getattr(obj, f.name), hints[f.name])
        _check_rule(f.name, value, rules.get(f.name))
        object.__setattr__(obj, f.name, value)


# ----------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------
FUSION_ARCHS = ("none", "token", "dense", "factorized")
# the official code's names for the same blocks
OFFICIAL_FUSION_ARCH = {"factorized_mmi": "factorized", "dense_mmi": "dense", "token": "token", "none": "none"}


def _fusion_layers(fl: Any, depth: int) -> str | tuple[int, ...]:
    """``model.fusion_layers`` normalized: ``"all"`` | ``"none"`` | a tuple of block indices (in the order
    given), from a tuple / list / single int or the official ``"a-b-c"`` string."""
    expected = "'all', 'none', a list of block indices or the official 'a-b-c' string"
    if fl in ("all", "none"):
        return fl
    if isinstance(fl, str):
        try:
            fl = [int(i) for i in fl.split("-")]
        except ValueError:
            raise ConfigValueError("fusion_layers", fl, expected) from None
    elif isinstance(fl, numbers.Integral) and not isinstance(fl, bool):
        fl = [fl]
    if not isinstance(fl, (list, tuple)) or not all(isinstance(i, numbers.Integral) and not isinstance(i, bool)
                                                     for i in fl):
        raise ConfigValueError("fusion_layers", fl, expected)
    fl = tuple(int(i) for i in fl)
    bad = [i for i in fl if not 0 <= i < depth]
    if bad:
        raise ConfigValueError("fusion_layers", fl, f"block indices in 0..{depth - 1} (model.depth={depth})",
                          f"drop {bad} or raise model.depth")
    return fl


@dataclass(frozen=True)
class ModelConfig:
    """DeepAVFusion encoder + masked-modeling (AVMAE) decoders. Defaults = the official yaml ViT-B."""

    # modality encoders: two ViT-B/16 [code §1.2]
    embed_dim: int = 768
    depth: int = 12                      # ViT blocks per modality = fusion-block slots
    num_heads: int = 12                  # ViT heads (head dim 64)
    mlp_ratio: float = 4.0
    patch_size: int = 16
    image_size: tuple[int, int] = (224, 224)   # (H, W) of the RGB frame
    audio_size: tuple[int, int] = (128, 192)   # (n_mels, frames): frequency on rows, time on columns
    drop_path: float = 0.0               # uniform rate in every ViT and fusion block (fine-tune: 0.2)

    # fusion [code §1.3-1.4]
    fusion_arch: str = "factorized"      # none | token | dense | factorized (paper's method)
    fusion_layers: Any = "all"           # "all" | "none" | tuple of layer indices
    num_fusion_tokens: int = 16          # yaml num_fusion_tkns
    num_aggr_image_tokens: int = 8       # visual aggregation tokens
    num_aggr_audio_tokens: int = 8       # audio aggregation tokens
    fusion_num_heads: int = 12           # the fusion blocks have their own head count
    fusion_attn_ratio: float = 0.25      # q/k width = ratio * embed_dim (yaml default 0.25)
    fusion_mlp_ratio: float = 4.0        # yaml default 4.0 (VGGSound release 1.0)
    # How pair attention (dense, and factorized's aggregation pairs) is evaluated:
    # "separable" = exact O(Nv+Na) evaluation (see avlib.model docs), "explicit" = materialize every pair.
    pair_attention: str = "separable"

    # masked modeling [code §1.5]
    image_mask_ratio: float = 0.75
    audio_mask_ratio: float = 0.8
    decoder_embed_dim: int = 512
    decoder_depth: int = 8
    decoder_num_heads: int = 16
    decoder_mlp_ratio: float = 4.0
    norm_pix_loss: bool = True           # both modalities
    # Small-scale masked-modeling deviations (kit; the official values are "patch" / "random"), measured at
    # the cpu profile with frozen-token probes on the validation split
    # (docs/pretraining.md#the-staged-recipe-at-small-scale):
    # - image_target_norm: norm_pix_loss standardizes each target patch over all its p*p*3 values
    #   ("patch", official) or each colour channel of a patch over its p*p pixels ("channel"). AV-Digits
    #   cells have random foreground / background colours, which a masked cell cannot predict and which
    #   dominate the jointly standardized target; per channel every channel is the same glyph.
    # - masking: "random" (official, uniform per sample) or "inpainting": in a fraction inpaint_a2v of the
    #   samples the sounding cell's image tokens are masked first (the decoder must draw that digit from
    #   what the fusion tokens carry about the audio); in inpaint_v2a the sounding cell's tokens are kept
    #   first and the kept audio tokens are the quietest ones (the speech is inpainted from the picture);
    #   the rest random. Same mask ratios; needs the scenes' ``sounding`` cells (AV-Digits).
    image_target_norm: str = "patch"
    masking: str = "random"
    inpaint_a2v: float = 0.4
    inpaint_v2a: float = 0.3

    # fast paths (each has the faithful path as reference)
    grad_checkpointing: bool = False     # activation checkpointing of ViT blocks (GPU memory)

    def __post_init__(self):
        object.__setattr__(self, "fusion_arch", OFFICIAL_FUSION_ARCH.get(self.fusion_arch, self.fusion_arch))
        _validate(self)
        if self.fusion_arch not in FUSION_ARCHS:
            raise ConfigValueError("fusion_arch", self.fusion_arch, "one of " + " | ".join(FUSION_ARCHS),
                              "choose a fusion block (the official names factorized_mmi / dense_mmi work too)")
        object.__setattr__(self, "fusion_layers", _fusion_layers(self.fusion_layers, self.depth))
        for name in ("image_size", "audio_size"):
            v = getattr(self, name)
            if any(x % self.patch_size for x in v):
                raise ConfigError(f"model.{name}={v} must be a multiple of patch_size={self.patch_size}")
        if self.embed_dim % self.num_heads or self.embed_dim % self.fusion_num_heads:
            raise ConfigError("model.embed_dim must be divisible by num_heads and fusion_num_heads")
        if self.decoder_embed_dim % self.decoder_num_heads:
            raise ConfigError(f"model.decoder_embed_dim={self.decoder_embed_dim} must be divisible by "
                              f"decoder_num_heads={self.decoder_num_heads}")
        if self.fusion_arch == "factorized" and not (self.num_aggr_image_tokens and self.num_aggr_audio_tokens):
            raise ConfigError("model.fusion_arch='factorized' needs num_aggr_image_tokens >= 1 and "
                              "num_aggr_audio_tokens >= 1 (its fusion tokens attend to aggregation-token pairs)")
        if self.inpaint_a2v + self.inpaint_v2a > 1:
            raise ConfigValueError("inpaint_a2v", self.inpaint_a2v, f"at most 1 - inpaint_v2a = {1 - self.inpaint_v2a:g}",
                                   "the two fractions share the samples of a batch; lower one of them")
        for m in ("image", "audio"):   # the masking keeps int(L * (1 - ratio)) tokens (avlib.model.random_masking)
            n, ratio = math.prod(getattr(self, f"{m}_grid")), getattr(self, f"{m}_mask_ratio")
            if int(n * (1 - ratio)) < 1:
                raise ConfigValueError(f"{m}_mask_ratio", ratio, f"a ratio that keeps at least one of the {n} {m} "
                                  f"tokens (< {1 - 1 / n:.4g})", "lower the mask ratio or use a finer patch grid")

    @property
    def image_grid(self) -> tuple[int, int]:
        return (self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size)

    @property
    def audio_grid(self) -> tuple[int, int]:
        return (self.audio_size[0] // self.patch_size, self.audio_size[1] // self.patch_size)

    @property
    def num_fusion_total(self) -> int:
        return self.num_fusion_tokens + self.num_aggr_image_tokens + self.num_aggr_audio_tokens

    @property
    def fusion_layer_ids(self) -> tuple[int, ...]:
        if self.fusion_arch == "none" or self.fusion_layers == "none":
            return ()
        if self.fusion_layers == "all":
            return tuple(range(self.depth))
        return tuple(sorted(set(self.fusion_layers)))


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DataConfig:
    """Front ends and datasets. The image size comes from ``model.image_size``; the mel grid must
    match ``model.audio_size`` (checked in ``Config``)."""

    dataset: str = "avdigits"            # avdigits | synthetic | vggsound | audioset | ... (avlib.data)
    root: str | None = None              # None: AVLIB_DATA_ROOT, then the local cache (avlib.paths)
    # audio front end [code §2.1]: 16 kHz, 3 s, torchaudio MelSpectrogram, log10(x + 1e-7)
    sample_rate: int = 16000
    clip_seconds: float = 3.0
    n_fft: int = 800
    hop_length: int = 250
    n_mels: int = 128
    gain_db: float = 6.0                 # train-time random gain in [-gain_db, +gain_db]
    # image front end [code §2.2]
    crop_min: float = 0.5                # RandomResizedCrop scale=(crop_min, 1)
    eval_resize_ratio: float = 0.875     # eval: Resize(size / 0.875) then CenterCrop(size)
    # AV-Digits / synthetic scenes (avlib.data.scenes)
    grid: int = 2                        # grid x grid cells, distinct digits / objects
    p_two_sources: float = 0.0           # probability that two cells speak at once
    p_offscreen: float = 0.0             # probability of an off-screen / silent clip
    holdout_speakers: tuple[str, ...] = ()  # FSDD speakers kept out of training (generalization)
    # non-sounding objects on screen in every scene (None: every cell holds an object; the others' cells
    # are plain background). Measured at cpu with 1 (two digits, README): the models learn to find the
    # digits, which the median-threshold cIoU cannot tell from finding the *sounding* one (both reach
    # cIoU 0.5 on a quarter-image cell); cell accuracy shows the match is not learned in 3 epochs either.
    distractors: int | None = None
    # non-sounding objects on screen in the *pre-training* scenes and mixtures (None: as in the task scenes,
    # ``distractors``). 0 = the sounding object alone on screen, the analog of a curated pre-training
    # corpus (VGGSound keeps clips whose sound source is visible). ``pretrain_distractors_p`` applies the
    # limit to that fraction of the pre-training scenes only (the others are task scenes: a mixed corpus).
    # Measured at cpu with three distractors in the task scenes (README, "What pre-training buys"):
    # curated scenes make the pre-trained encoder learn localization faster (30 epochs at lr 1e-3: AUC
    # 0.357 with p = 0.5 vs 0.307 without, 0.308 from scratch) but fine-tune classification worse
    # (3 seeds: 54.7% mean with p = 0.5 vs 60.7% without, 53.5% from scratch), so the default is None.
    # The comparison methods pre-train with 0 (zoo.BASELINE_DATA, docs/baselines.md).
    pretrain_distractors: int | None = None
    pretrain_distractors_p: float = 1.0
    train_size: int = 2048               # scenes per training epoch (composed on the fly)
    test_size: int = 512                 # fixed evaluation scenes
    num_workers: int = 0
    pin_memory: bool = False
    # fast path of the scene datasets: a DataLoader batch composes its scenes item by item, then runs the
    # audio front end once on the whole batch (``__getitems__``) instead of once per item. The log-mels are
    # bit-identical to the per-item reference (tests/test_scenes.py); False = the per-item reference.
    batch_front_end: bool = False

    def __post_init__(self):
        _validate(self)

    @property
    def clip_samples(self) -> int:
        return int(round(self.sample_rate * self.clip_seconds))

    @property
    def num_frames(self) -> int:
        """Mel frames after the official 'drop the last frame' step."""
        return self.clip_samples // self.hop_length


# ----------------------------------------------------------------------------------------------
# Training (one loop for everything: avlib.train.fit)
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 1
    batch_size: int = 64                 # per process
    accum_steps: int = 1                 # gradient accumulation
    optimizer: str = "adamw"             # adamw | adam | sgd | lars
    lr: float | None = None              # absolute lr; None -> blr * effective_batch / 256
    blr: float = 1.5e-4                  # base lr [code §3]
    min_lr: float = 0.0
    warmup_epochs: float = 0.0
    schedule: str = "cosine"             # cosine | constant  (linear warmup first, per step)
    weight_decay: float = 0.05           # never on norms / biases / 1-D params
    betas: tuple[float, float] = (0.9, 0.95)
    momentum: float = 0.9                # sgd / lars
    layer_decay: float | None = None     # layer-wise lr decay for fine-tuning (official 0.75)
    pretrained_lr_ramp: bool = False     # official half-cosine ramp of the pretrained ViTs' lr
    pretrained_ramp_epochs: float = 0.5  # fraction of epochs the ramp lasts (official: epochs / 2)
    clip_grad: float | None = None
    # none | bf16 | fp16 (GPU) | auto (bf16 where the device computes bf16 natively: a GPU that supports
    # it, a CPU with AVX512-BF16 or AMX; none elsewhere, where emulated bf16 is slower than fp32)
    amp: str = "none"
    # scaled-dot-product attention kernel while training: "default" (torch's choice: flash on CPU) |
    # "math" (the plain composite) | "auto" (math under bf16 autocast on CPU, else default). With bf16
    # autocast on CPU the flash kernel's backward is ~10x slower than the math one at the small profiles'
    # sequence lengths (<= 28 tokens); same math, float rounding.
    attention_kernel: str = "default"
    fused_optimizer: bool = False        # fused Adam(W) / SGD kernels on CPU too (always on CUDA); rounding only
    threads: int | None = None           # torch intra-op threads while fit runs (None: as the process has them)
    freeze_encoder: bool = False         # linear probe
    max_steps: int | None = None         # hard cap on optimizer steps (smoke tests)
    log_every: int = 20                  # plain log line every N steps
    eval_every: int = 1                  # epochs between evaluations (0: only at the end)
    ckpt_every: int = 1                  # epochs between checkpoints (0: only at the end)
    compile: bool = False                # torch.compile on GPU

    def __post_init__(self):
        _validate(self)


DATA_SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class TaskConfig:
    """What every downstream protocol has: its training recipe and the data it trains / is scored on.

    ``train_data`` / ``test_data``: ``"<dataset>[:<split>]"`` (``None``: ``data.dataset``, split ``train`` /
    ``test``). A benchmark name goes to ``avlib.data.benchmarks.build_benchmark``; ``avdigits`` /
    ``synthetic`` to the AV-Digits scenes. Data read from a ``test``-only benchmark for training gets the
    evaluation transforms (no augmentation). The paper profile names one benchmark per protocol.
    """
    train: TrainConfig = field(default_factory=TrainConfig)
    train_data: str | None = None
    test_data: str | None = None
    # what a scene dataset gives this protocol: single scenes, or mix-and-separate pairs (separation)
    mixtures: ClassVar[bool] = False

    def __post_init__(self):
        _validate(self)
        for name in ("train_data", "test_data"):
            spec = getattr(self, name)
            if spec is not None and (spec.startswith(":") or parse_data_spec(spec, "train")[1] not in DATA_SPLITS):
                raise ConfigValueError(name, spec, f"'<dataset>' or '<dataset>:<split>' with split one of {DATA_SPLITS}")

    def data_spec(self, default_dataset: str, split: str) -> tuple[str, str]:
        """``(dataset, split)`` this protocol reads for ``split`` (``"train"`` or ``"test"``)."""
        spec = self.train_data if split == "train" else self.test_data
        return (default_dataset, split) if spec is None else parse_data_spec(spec, split)


def parse_data_spec(spec: str, default_split: str) -> tuple[str, str]:
    """``"vggss:test"`` -> ``("vggss", "test")``; ``"vggsound"`` -> ``("vggsound", default_split)``."""
    name, _, split = str(spec).partition(":")
    if not name:
        raise ConfigError(f"data spec {spec!r}: empty dataset name")
    return name, (split or default_split)


@dataclass(frozen=True)
class ClassificationConfig(TaskConfig):
    # subset of pooled features fed to the linear layer [supp A.1]; main paper: audio + visual
    features: tuple[str, ...] = ("audio", "visual")
    head: str = "linear"                 # linear [supp] | official (BN + one head per stream, avg logits)
    # linear probe only: the frozen encoder pools every train / test item once and the head trains on
    # those cached features (one pass of the encoder instead of one per epoch, so a small profile can
    # train the probe to convergence; no per-epoch re-composition / augmentation of the train scenes)
    cache_features: bool = False

    def __post_init__(self):
        super().__post_init__()
        if not self.features or len(set(self.features)) != len(self.features):
            raise ConfigValueError("features", self.features, "a non-empty list of distinct streams: audio, visual, fusion")


@dataclass(frozen=True)
class LocalizationConfig(TaskConfig):
    pass


@dataclass(frozen=True)
class SegmentationConfig(TaskConfig):
    head: str = "upsample"               # upsample [supp A.2] | official_unet [code §3.5]


@dataclass(frozen=True)
class SeparationConfig(TaskConfig):
    mixtures: ClassVar[bool] = True      # trained and scored on mix-and-separate pairs (MixtureDataset)
    binary_mask: bool = True             # [supp A.3] binary masks; official README: ratio masks
    # which bins a binary mask marks: "dominant" = the target is the most dominant source [supp A.3]
    # (S_src > S_mix - S_src); "official" = the official code's S_src > S_mix (rarely true for a sum)
    mask_rule: str = "dominant"
    weighted_loss: bool = False          # official README: True (log1p(S_mix) weights)
    eval_mixtures: int | None = None     # cap on test mixtures scored with BSS-eval (None: all; ~0.1 s each)
    # how BSS-eval scores them (metrics.SeparationEvaluator, the same numbers): None = in process with numpy's
    # BLAS threads as they are (reference); 0 = in process with one BLAS thread (equal up to < 1e-9 dB, and
    # 5x faster on a busy 2-core machine, where two BLAS threads spin-wait); n = a pool of n processes
    eval_workers: int | None = None


# ----------------------------------------------------------------------------------------------
# Top level
# ----------------------------------------------------------------------------------------------
# The downstream protocols, each a section of ``Config`` (its ``TaskConfig``) and an entry of the protocol
# registry (``avlib.protocols``). Pre-training is not a protocol: its recipe is ``Config.pretrain``.
TASKS = ("linprobe", "finetune", "localization", "segmentation", "separation")


@dataclass(frozen=True)
class Config:
    profile: str = "paper"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    pretrain: TrainConfig = field(default_factory=TrainConfig)
    linprobe: ClassificationConfig = field(default_factory=ClassificationConfig)
    finetune: ClassificationConfig = field(default_factory=ClassificationConfig)
    localization: LocalizationConfig = field(default_factory=LocalizationConfig)
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)
    separation: SeparationConfig = field(default_factory=SeparationConfig)

    def __post_init__(self):
        _validate(self)
        if self.data.n_mels != self.model.audio_size[0] or self.data.num_frames != self.model.audio_size[1]:
            raise ConfigError(
                f"audio front end gives {self.data.n_mels}x{self.data.num_frames} (n_mels x frames) but "
                f"model.audio_size={self.model.audio_size}; change data.n_mels / clip_seconds / hop_length "
                f"or model.audio_size together")

    def task(self, name: str) -> TaskConfig:
        """The ``TaskConfig`` of downstream protocol ``name`` (one of ``TASKS``)."""
        if name not in TASKS:
            close = difflib.get_close_matches(str(name), TASKS, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown task {name!r}: one of {TASKS}.{hint}")
        return getattr(self, name)


# ----------------------------------------------------------------------------------------------
# Profiles
# ----------------------------------------------------------------------------------------------
def _supplement_tasks(epochs_lp, epochs_ft, epochs_loc, epochs_seg, epochs_sep, batch, **common):
    """Downstream protocols of the seed supplement (A.1-A.3): Adam, lr 1e-4, batch 128."""
    def tc(epochs, **kw):
        return TrainConfig(epochs=epochs, batch_size=batch, optimizer="adam", lr=1e-4, weight_decay=0.0,
                           betas=(0.9, 0.999), warmup_epochs=0.0, schedule="constant", **{**common, **kw})
    return dict(
        linprobe=ClassificationConfig(train=tc(epochs_lp, freeze_encoder=True)),
        finetune=ClassificationConfig(train=tc(epochs_ft)),
        localization=LocalizationConfig(train=tc(epochs_loc)),
        segmentation=SegmentationConfig(train=tc(epochs_seg)),
        separation=SeparationConfig(train=tc(epochs_sep)),
    )


def _paper() -> Config:
    return Config(
        profile="paper",
        model=ModelConfig(),
        data=DataConfig(dataset="vggsound", num_workers=8, pin_memory=True),
        # VGGSound pre-training, README command [code §3.1]: 200 ep, 40 warmup, 64 x 8 GPUs, blr 1.5e-4
        pretrain=TrainConfig(epochs=200, warmup_epochs=40, batch_size=64, blr=1.5e-4, weight_decay=0.05,
                             betas=(0.9, 0.95), pretrained_lr_ramp=True, amp="fp16", log_every=50,
                             eval_every=10, ckpt_every=10),
        **_paper_data(_supplement_tasks(50, 50, 30, 20, 20, batch=128, amp="bf16")),
    )


# The benchmark each protocol of the paper profile trains / is scored on (classification: data.dataset).
# Localization [supp A.2] is scored on Flickr-SoundNet (250 annotated test images); the supplement trains
# "to ground truth maps" without saying on which set, and the official code has no localization
# [code §3.4]: the kit trains on VGG-SS (5,158 annotated VGGSound clips, disjoint from Flickr) [inferred].
# AVSBench S4 train / test (the official code scores `val`: pass "avsbench_s4:val" to follow it).
PAPER_TASK_DATA = {
    "localization": ("vggss:test", "flickr:test"),
    "segmentation": ("avsbench_s4:train", "avsbench_s4:test"),
    "separation": ("vggsound_music:train", "vggsound_music:test"),
}


def _paper_data(tasks: dict) -> dict:
    return {k: replace(v, train_data=PAPER_TASK_DATA[k][0], test_data=PAPER_TASK_DATA[k][1])
            if k in PAPER_TASK_DATA else v for k, v in tasks.items()}


def _release(attn_ratio: float, mlp_ratio: float, name: str) -> Config:
    base = _paper()
    return replace(base, profile=name, model=replace(base.model, fusion_attn_ratio=attn_ratio,
                                                     fusion_mlp_ratio=mlp_ratio))


def _small(profile: str, *, embed_dim, depth, num_heads, fusion_heads, patch, image, mels, tokens,
           decoder_dim, decoder_depth, decoder_heads, train_size, test_size, pre_epochs, task_epochs,
           batch) -> Config:
    # FSDD is 8 kHz: a 1 s clip, 32 ms windows, 16 ms hop -> 64 frames (+1 dropped) like the 3 s / 16 kHz paper grid
    data = DataConfig(dataset="avdigits", sample_rate=8000, clip_seconds=1.0, n_fft=256, hop_length=125,
                      n_mels=mels, train_size=train_size, test_size=test_size, batch_front_end=True)
    model = ModelConfig(embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=4.0, patch_size=patch,
                        image_size=(image, image), audio_size=(mels, data.num_frames),
                        num_fusion_tokens=tokens[0], num_aggr_image_tokens=tokens[1],
                        num_aggr_audio_tokens=tokens[2], fusion_num_heads=fusion_heads,
                        decoder_embed_dim=decoder_dim, decoder_depth=decoder_depth,
                        decoder_num_heads=decoder_heads)
    # Small grids change the masked-modeling recipe (deliberate deviation, measured at the cpu profile):
    # at patch 16 a 64 px image / 64x64 mel is a 4x4 grid, so the official 0.75 / 0.8 ratios leave 4 / 3
    # visible tokens. With them (and lr 1e-3) the encoder's pooled features drift to low-level
    # reconstruction: 1-NN audio accuracy fell from 44.6% (random encoder) to 28.8% and fine-tuning from
    # it lost to scratch (41.0 vs 56.2% top-1). Mask ratio 0.5 and lr 3e-4 keep 8 tokens per modality
    # and the features useful (fine-tune 64.0 vs 56.2%; converged probe on audio+visual+fusion 55 vs 51%).
    model = replace(model, image_mask_ratio=0.5, audio_mask_ratio=0.5)
    # The small profiles' fast path (python -m avlib.bench --sections small; README, "Speed"): bf16 autocast
    # where the CPU has native bf16, with the math attention kernel; fused optimizers; one intra-op thread
    # (on a shared or busy 2-core machine two OpenMP threads spin-wait for each other at every op: 7-20x
    # slower, measured at load 13; on a quiet one two threads are 1.3-1.4x faster, README "Speed": set
    # ``threads=None`` on a dedicated machine); the audio front end once per batch (data.batch_front_end).
    # Each switch off = the reference. A loader worker (data.num_workers=1) was measured ~5% slower on the
    # busy machine.
    fast = dict(amp="auto", attention_kernel="auto", fused_optimizer=True, threads=1)
    pretrain = TrainConfig(epochs=pre_epochs, warmup_epochs=max(1, pre_epochs // 5), batch_size=batch,
                           lr=3e-4, weight_decay=0.05, betas=(0.9, 0.95), log_every=20,
                           eval_every=0, ckpt_every=1, **fast)
    tasks = _supplement_tasks(*task_epochs, batch=batch, log_every=20, eval_every=0, ckpt_every=0, **fast)
    # full-model protocols keep the supplement's Adam lr 1e-4. The linear probe trains on features the
    # frozen encoder caches once (cache_features), so it can afford the steps to converge (30 epochs at
    # lr 3e-3, ~1,400 steps of one linear layer, seconds); an under-trained probe measures the optimizer,
    # not the features (5 epochs at lr 1e-3 on the random encoder: 31.6%; converged: ~51%).
    # Its features are all three pooled streams, as in the official probe: at this scale the fusion tokens
    # are where pre-training shows (the supplement's subset analysis, notebook 03, has every subset).
    tasks["linprobe"] = replace(tasks["linprobe"], cache_features=True, features=("audio", "visual", "fusion"),
                                train=replace(tasks["linprobe"].train, lr=3e-3))
    # Full-model protocols (kit deviation, chosen on the validation split, see
    # docs/pretraining.md#downstream-budgets-chosen-on-validation): the supplement's Adam, but lr 1e-3 with
    # one warm-up epoch and a cosine decay instead of a constant 1e-4. At a laptop's few epochs a constant 1e-4 left localization at chance
    # from every initialization, and a constant 1e-3 made fine-tuning swing by 15 points between epochs.
    for name in ("finetune", "localization", "segmentation", "separation"):
        t = tasks[name].train
        tasks[name] = replace(tasks[name], train=replace(t, lr=1e-3, schedule="cosine",
                                                         warmup_epochs=min(1.0, t.epochs / 4)))
    # a mixture of K=2 sources gives two predictions: half the mixtures per batch, same compute;
    # BSS-eval costs ~0.4 s per mixture (8 kHz, 1 s) on one core, so the test split is scored on its first mixtures only
    sep = tasks["separation"]
    tasks["separation"] = replace(sep, train=replace(sep.train, batch_size=max(1, batch // 2)),
                                  eval_mixtures=min(test_size, 64), eval_workers=0)
    return Config(profile=profile, model=model, data=data, pretrain=pretrain, **tasks)


PROFILES = {
    # tests: seconds
    "smoke": lambda: _small("smoke", embed_dim=32, depth=2, num_heads=2, fusion_heads=2, patch=16, image=32,
                            mels=32, tokens=(2, 2, 2), decoder_dim=16, decoder_depth=1, decoder_heads=2,
                            train_size=32, test_size=16, pre_epochs=1, task_epochs=(2, 1, 1, 1, 1), batch=8),
    # the main job: the whole story on a 2-core laptop in minutes. Downstream budgets (4 epochs, separation 1)
    # are what fits 15 minutes with three initializations per protocol; the validation curves of
    # `python -m avlib.budgets` show what longer budgets reach (docs/pretraining.md). Pre-training's own
    # epochs are notebook 02's live demonstration: 03-07 start from the zoo's staged checkpoints.
    "cpu": lambda: _small("cpu", embed_dim=96, depth=4, num_heads=4, fusion_heads=4, patch=16, image=64,
                          mels=64, tokens=(4, 4, 4), decoder_dim=64, decoder_depth=2, decoder_heads=4,
                          train_size=3000, test_size=500, pre_epochs=4, task_epochs=(30, 4, 4, 4, 1),
                          batch=64),
    # official ViT-B (yaml default fusion 0.25 / 4.0), real benchmarks, GPUs
    "paper": _paper,
    # the two released checkpoints' configurations
    "vggsound_release": lambda: _release(0.25, 1.0, "vggsound_release"),
    "as2m_release": lambda: _release(1.0, 4.0, "as2m_release"),
}

# The official code's downstream recipes, as named alternatives to the supplement's [code §3.2-3.6].
# A recipe changes optimizers, heads and targets; epoch counts stay the profile's (a small profile
# shrinks sizes), except at the ViT-B profiles where the official schedules apply too.
RECIPES = {
    "supplement": {},
    "official": {
        "linprobe": {"train": {"optimizer": "lars", "lr": None, "blr": 0.3, "weight_decay": 0.0,
                               "schedule": "cosine"}, "head": "official"},
        "finetune": {"train": {"optimizer": "adamw", "lr": None, "blr": 3e-4, "weight_decay": 0.05,
                               "betas": (0.9, 0.999), "layer_decay": 0.75, "schedule": "cosine"},
                     "head": "official"},
        "segmentation": {"train": {"optimizer": "adamw", "lr": None, "blr": 2e-4, "weight_decay": 0.05,
                                   "betas": (0.9, 0.999), "layer_decay": 0.75, "schedule": "cosine"},
                         "head": "official_unet"},
        "separation": {"train": {"optimizer": "adamw", "lr": None, "blr": 3e-4, "weight_decay": 0.05,
                                 "betas": (0.9, 0.999), "layer_decay": 0.75, "schedule": "cosine"},
                       "binary_mask": False, "weighted_loss": True},
    },
}
# official README schedules (epochs / warmup), applied with recipe="official" at the ViT-B profiles
OFFICIAL_SCHEDULES = {
    "linprobe.train": {"epochs": 60, "warmup_epochs": 10},
    "finetune.train": {"epochs": 100, "warmup_epochs": 20},
    "segmentation.train": {"epochs": 100, "warmup_epochs": 20},
    "separation.train": {"epochs": 300, "warmup_epochs": 40},
}
PAPER_PROFILES = ("paper", "vggsound_release", "as2m_release")


# ----------------------------------------------------------------------------------------------
# Overrides, (de)serialization
# ----------------------------------------------------------------------------------------------
def flatten(d: Mapping[str, Any], sep: str = ".", prefix: str = "") -> dict[str, Any]:
    """Nested mappings -> one level with joined keys: ``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (``sep``)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, sep, key + sep))
        else:
            out[key] = v
    return out


def _valid_keys(obj, prefix: str = "") -> list[str]:
    keys = []
    for f in fields(obj):
        v = getattr(obj, f.name)
        keys.append(prefix + f.name)
        if is_dataclass(v):
            keys += _valid_keys(v, prefix + f.name + ".")
    return keys


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted keys -> a tree of dicts (``{"model.depth": 2}`` -> ``{"model": {"depth": 2}}``)."""
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        node, parts = tree, key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):           # "model.depth" set, then "model.depth.x"
                raise _unknown(key)
        node[parts[-1]] = value
    return tree


def _apply(obj, tree: Mapping[str, Any], prefix: str = ""):
    """``obj`` with the changes of ``tree``, each dataclass rebuilt once (so its checks see every change
    together, e.g. ``data.n_mels`` and ``model.audio_size``); a bad value is reported under its full key."""
    names = {f.name for f in fields(obj)}
    changes = {}
    for name, value in tree.items():
        key = prefix + name
        if name not in names:
            raise _unknown(key)
        current = getattr(obj, name)
        if isinstance(value, dict):
            if not is_dataclass(current):
                raise _unknown(f"{key}.{next(iter(value), '')}")
            changes[name] = _apply(current, value, key + ".")
        elif is_dataclass(current) and not is_dataclass(value):   # a whole section may be replaced
            raise ConfigError(f"{key} is a section; set its fields, e.g. {key}.{fields(current)[0].name}")
        else:
            changes[name] = value
    try:
        return replace(obj, **changes)
    except ConfigValueError as e:
        raise (e.under(prefix[:-1]) if prefix else e) from None


def _unknown(key: str) -> ConfigError:
    valid = _valid_keys(Config())
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return ConfigError(f"unknown config key {key!r}.{hint}")


def apply_overrides(cfg: Config, overrides: Mapping[str, Any] | None) -> Config:
    """Apply dotted (``"model.depth": 2``) or nested (``{"model": {"depth": 2}}``) overrides, all at once
    (a key given twice: the later wins). Unknown keys and bad values raise ``ConfigError`` naming the key."""
    if not overrides:
        return cfg
    return _apply(cfg, _nest(flatten(overrides)))   # nested dicts become dotted keys, then one tree


def make_config(profile: str = "cpu", recipe: str = "supplement", overrides: Mapping[str, Any] | None = None,
                **dotted: Any) -> Config:
    """Build a profile's config, then apply a downstream recipe and overrides (unknown keys raise)."""
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}; choose one of {sorted(PROFILES)}")
    if recipe not in RECIPES:
        raise ConfigError(f"unknown recipe {recipe!r}; choose one of {sorted(RECIPES)}")
    cfg = PROFILES[profile]()
    cfg = apply_overrides(cfg, RECIPES[recipe])
    if recipe == "official" and profile in PAPER_PROFILES:
        cfg = apply_overrides(cfg, OFFICIAL_SCHEDULES)
    return apply_overrides(cfg, {**flatten(overrides or {}), **flatten(dotted)})   # dotted wins


# ----------------------------------------------------------------------------------------------
# Command-line values: ``--set key=value`` text parsed to the field's type
# ----------------------------------------------------------------------------------------------
_TRUE, _FALSE, _NONE = ("true", "1"), ("false", "0"), ("none", "null")


def parse_assignments(items: Sequence[str]) -> dict[str, Any]:
    """``["pretrain.epochs=10", "model.norm_pix_loss=false"]`` (the ``--set`` arguments of the CLIs) ->
    ``{"pretrain.epochs": 10, "model.norm_pix_loss": False}``, each text parsed by ``parse_value``.
    Pass the result to ``make_config(profile, overrides=...)``, which checks the values."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = str(item).partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. pretrain.epochs=10")
        out[key.strip()] = parse_value(key.strip(), text)
    return out


def parse_value(key: str, text: str) -> Any:
    """The text of a command-line value as the type of field ``key`` (a dotted key of ``Config``).

    bool: ``true`` / ``false`` / ``1`` / ``0`` (any case; nothing else); int / float: Python number
    syntax; ``X | None``: ``none`` / ``null`` give None; tuples: ``a,b`` or a ``[a, b]`` literal; str:
    the text (a quoted Python string literal is unquoted); ``fusion_layers``: a Python literal or the
    text. Raises ``ConfigError`` naming the key for an unknown key or text that is not of that type.
    """
    return _from_text(key, text.strip(), _key_type(key))


def _key_type(key: str):
    """The annotation of dotted ``key`` in ``Config`` (unknown keys and sections raise)."""
    cls: Any = Config
    for part in key.split("."):
        hints = _field_types(cls) if is_dataclass(cls) else {}
        if part not in hints:
            raise _unknown(key)
        cls = hints[part]
    if is_dataclass(cls):
        raise ConfigError(f"{key} is a section; set its fields, e.g. {key}.{fields(cls)[0].name}")
    return cls


def _from_text(key: str, text: str, tp) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (types.UnionType, typing.Union):
        if type(None) in args and text.lower() in _NONE:
            return None
        tp = next(a for a in args if a is not type(None))   # every optional field has one other type
        origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is tuple:
        if text[:1] in "([":
            value = _literal(text)
            if isinstance(value, (list, tuple)):
                return list(value)                     # element types are checked by make_config
        parts = [p.strip() for p in text.split(",")] if text else []
        return [_from_text(key, p, args[0] if args[-1] is Ellipsis or i >= len(args) else args[i])
                for i, p in enumerate(parts)]
    if tp is bool:
        if text.lower() in _TRUE + _FALSE:
            return text.lower() in _TRUE
        raise ConfigValueError(key, text, "true or false", "write true or false (also accepted: 1 or 0)")
    if tp in (int, float):
        try:
            return tp(text)
        except ValueError:
            raise ConfigValueError(key, text, f"{'an int' if tp is int else 'a number'}",
                              f"write a {'whole number' if tp is int else 'number'}, e.g. {key}="
                              f"{'2' if tp is int else '0.5'}") from None
    if tp is str:
        value = _literal(text) if text[:1] in "'\"" else None
        return value if isinstance(value, str) else text
    value = _literal(text)                             # Any (fusion_layers): a literal or the text
    return text if value is None else value


def _literal(text: str) -> Any:
    """``ast.literal_eval(text)``, or None when the text is not a Python literal."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None


def config_to_dict(cfg) -> dict:
    """Plain JSON-able dict (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def config_from_dict(d: Mapping[str, Any]) -> Config:
    """Inverse of ``config_to_dict``; unknown keys raise."""
    d = dict(d)
    profile = d.pop("profile", "paper")
    base = make_config(profile) if profile in PROFILES else replace(Config(), profile=profile)
    return apply_overrides(base, d)


def config_hash(cfg) -> str:
    """Short stable hash of a config (or sub-config), used to refuse stale checkpoints."""
    from avlib.utils import stable_hash
    return stable_hash(config_to_dict(cfg), 12)
