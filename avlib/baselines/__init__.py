"""Prior methods as pre-training objectives of the same two-stream ViT backbone (DeepAVFusion with
``model.fusion_arch="none"``), one module each, registered in ``avlib.objectives`` when it is imported.

| name | module | method |
|---|---|---|
| ``sound_of_pixels`` | ``sound_of_pixels`` | Sound-of-Pixels (Zhao et al., ECCV 2018): visually conditioned mask prediction on mixtures |
| ``ccol`` | ``ccol`` | CCoL (Tian et al., CVPR 2021): grounding-gated separation, separation-relabeled grounding |
| ``oneavm`` | ``oneavm`` | OneAVM-style (reconstructed; Mo & Morgado, ICML 2023, no public code) |

``mixsep`` holds what the mix-and-separate methods share. Each module's docstring cites the code it was
read from and lists its published vs kit hyper-parameters and every invented choice.

**The zero-shot read-out rule** (one rule for every method): a zero-shot result is the method's own
test-time inference with the trained weights, on the kit's inputs, with no prior, blending or
calibration added (no OGL, no thresholds or normalizations the method's test does not apply).

- ``objective.separation_mask(model, mix_audio (B,1,F,T), image (B,3,H,W)) -> (B,1,F,T)`` in [0, 1]: the
  mask the method's test applies to the mixture for that image (thresholded where its test thresholds).
  ``mixsep.zero_shot_separation`` scores it through the downstream protocol's own path (mel mask ->
  linear-frequency mask on the mixture's STFT -> iSTFT; BSS-eval SDR / SIR / SAR / SDRi). A silent
  estimate makes the evaluator skip the pair (the DeepAVFusion rule), so ``n_skipped`` goes with every number.
- ``objective.localization_map(model, image, audio) -> (B, gh, gw)``: the method's own audio-visual
  score at every visual token, raw (the localization metrics resize and normalize it like any map).
"""
from . import sound_of_pixels  # noqa: F401
from . import ccol  # noqa: F401
from . import oneavm  # noqa: F401
