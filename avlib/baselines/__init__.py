"""The supplement's comparison methods as pre-training objectives of the same backbone (issue #15).

Seed supplement A.2: every prior objective pre-trains the same backbone, DeepAVFusion's late-fusion
variant (``model.fusion_arch="none"``: two independent ViTs), and every method then gets the same
downstream protocols. Each module here is one method, read from its public code
(``../shared/reference/BASELINES.md``), and registers its objective in ``avlib.objectives.OBJECTIVES``
when ``avlib.objectives`` is imported:

| name (module) | method | objective |
|---|---|---|
| ``ezvsl`` | EZ-VSL (Mo & Morgado, ECCV 2022) | symmetric InfoNCE on the max-over-locations AV cosine |
| ``slavc`` | SLAVC (Mo & Morgado, NeurIPS 2022) | image-anchored InfoNCE on clip x location softmaxes, EMA targets |
| ``mix_and_localize`` | Mix-and-Localize (Hu, Chen & Owens, CVPR 2022) | cycle walk: two mixtures' audio nodes <-> images |

    cfg = make_config("cpu", **{"model.fusion_arch": "none"})
    result = tasks.pretrain(cfg, run_dir, objective="slavc")           # checkpoint run_dir/slavc.pt
    objective, model, cfg = baselines.load_objective_model(run_dir / "slavc.pt")  # heads and EMA copies too
    baselines.zero_shot_localization(objective, model, test_loader, cfg)          # cIoU / AUC / cell_acc

**The kit's zero-shot read-out rule** (one rule for every method, printed next to each number): the map
is the method's own test-time audio-visual map, with no OGL object prior and no other non-AV term, as a
cosine similarity in [-1, 1] per visual token, ``(B, gh, gw)`` on the token grid, higher = more likely
sounding (``Objective.localization_map(model, image, audio)``, always in eval mode): EZ-VSL the
audio-patch cosine; SLAVC the mean of its two heads' maps with the EMA encoders; Mix-and-Localize the
maximum over its audio nodes' maps. It is scored as a trained localization head is
(``zero_shot_localization``: the localization protocol's evaluation, median threshold, bilinear), and on
scenes with silent and off-screen sounds with SLAVC's evaluator (``zero_shot_slavc`` on
``extended_test_scenes``: AP, max-F1, LocAcc; fixed range [-1, 1], bicubic, as SLAVC's ``test.py``).
"""
from . import ezvsl  # noqa: F401
from . import slavc  # noqa: F401
from . import mix_and_localize  # noqa: F401
from .common import extended_test_scenes, load_objective_model, zero_shot_localization, zero_shot_slavc  # noqa: F401
