"""The supplement's comparison methods as pre-training objectives of the same backbone (issue #15).

[supp A.2]: every prior objective pre-trains the same backbone, DeepAVFusion's late-fusion variant
(``model.fusion_arch="none"``: two independent ViTs), and every method then gets the same downstream
protocols. Each module here is one method, re-implemented from its public code (or, for OneAVM, from
what is published about it), and registers its objective in ``avlib.objectives.OBJECTIVES`` when
``avlib.objectives`` is imported. ``docs/baselines.md`` describes all six: objective, added modules,
published vs kit hyper-parameters, zero-shot read-outs.

| name (module) | method | objective |
|---|---|---|
| ``ezvsl`` | EZ-VSL (Mo & Morgado, ECCV 2022) | symmetric InfoNCE on the max-over-locations AV cosine |
| ``slavc`` | SLAVC (Mo & Morgado, NeurIPS 2022) | image-anchored InfoNCE on clip x location softmaxes, EMA targets |
| ``mix_and_localize`` | Mix-and-Localize (Hu, Chen & Owens, CVPR 2022) | cycle walk: two mixtures' audio nodes <-> images |
| ``sound_of_pixels`` | Sound-of-Pixels (Zhao et al., ECCV 2018) | visually conditioned mask prediction on mixtures |
| ``ccol`` | CCoL (Tian et al., CVPR 2021) | grounding-gated separation, separation-relabeled grounding |
| ``oneavm`` | OneAVM-style (reconstructed; Mo & Morgado, ICML 2023, no public code) | max-sim + pooled InfoNCE, mixed-image alignment, dominant-mask separation |

``common`` holds what every method shares (the backbone helpers, ``LateFusionObjective``, the zero-shot
localization scoring, SLAVC's silent / off-screen test scenes); ``mixsep`` what the three mix-and-separate
methods share (``MixSepObjective``, the zero-shot separation scoring). Every objective offers its published
optimizer as ``make_config`` overrides (``config_overrides()``, not applied by default) and a table of its
hyper-parameters, published vs kit (``hyperparameters()``).

    cfg = make_config("cpu", **{"model.fusion_arch": "none"})
    result = tasks.pretrain(cfg, run_dir, objective="slavc")           # checkpoint run_dir/slavc.pt
    objective, model, cfg = baselines.load_objective_model(run_dir / "slavc.pt")  # heads and EMA copies too
    baselines.zero_shot_localization(objective, model, test_loader, cfg)          # cIoU / AUC / cell_acc

**The zero-shot read-out rule** (one rule for every method, printed next to each number): a zero-shot
result is the method's own test-time inference with the trained weights, on the kit's inputs, with no
prior, blending or calibration added (no OGL object prior, no thresholds or normalizations the method's
test does not apply).

- ``objective.localization_map(model, image, audio) -> (B, gh, gw)`` (always in eval mode): the method's
  own audio-visual score at every visual token, higher = more likely sounding. EZ-VSL: the audio-patch
  cosine; SLAVC: the mean of its two heads' cosine maps with the EMA encoders; Mix-and-Localize: the
  maximum over its audio nodes' cosine maps; Sound-of-Pixels: the energy of the mixture under each
  location's mask; OneAVM-style: the max-sim map (cos / tau). CCoL has none. ``objective.map_range`` is
  the scores' fixed range where they have one ((-1, 1) for the cosines, (-1/tau, 1/tau) for OneAVM-style,
  None for Sound-of-Pixels' energies). The map is scored as a trained localization head is
  (``zero_shot_localization``: the localization protocol's evaluation, min-max per image, median
  threshold, bilinear), and on scenes with silent and off-screen sounds with SLAVC's evaluator
  (``zero_shot_slavc`` on ``extended_test_scenes``: AP, max-F1, LocAcc; scores normalized by
  ``map_range``, bicubic, as SLAVC's ``test.py``).
- ``objective.separation_mask(model, mix_audio (B,1,F,T), image (B,3,H,W)) -> (B,1,F,T)`` in [0, 1]: the
  mask the method's test applies to the mixture for that image (thresholded where its test thresholds).
  ``mixsep.zero_shot_separation`` scores it through the downstream protocol's own path (mel mask ->
  linear-frequency mask on the mixture's STFT -> iSTFT; BSS-eval SDR / SIR / SAR / SDRi). A silent
  estimate makes the evaluator skip the pair (the DeepAVFusion rule), so ``n_skipped`` goes with every number.
"""
from . import ezvsl  # noqa: F401
from . import slavc  # noqa: F401
from . import mix_and_localize  # noqa: F401
from . import sound_of_pixels  # noqa: F401
from . import ccol  # noqa: F401
from . import oneavm  # noqa: F401
from .common import (extended_test_scenes, load_objective_model, with_readout, zero_shot_localization,  # noqa: F401
                     zero_shot_slavc)
from .mixsep import zero_shot_separation  # noqa: F401
