"""State-dict manifests of the official models at ViT-B scale (../shared/reference/manifests): at the
``paper`` (yaml default), ``vggsound_release`` and ``as2m_release`` profiles, our AVMAE and encoder have
exactly the official keys, in the official order, with the official shapes and parameter counts.
Built on the meta device: no memory, no init work."""
from __future__ import annotations

import json

import pytest
import torch

from avlib.config import make_config
from avlib.model import build_avmae, build_encoder

# profile -> the manifest index's name for that configuration
PROFILE_TAGS = {"paper": "yaml_default", "vggsound_release": "vggsound_release", "as2m_release": "as2m_release"}
BUILDERS = {"avmae": build_avmae, "encoder": build_encoder}

pytestmark = pytest.mark.fixtures


@pytest.mark.parametrize("kind", ["avmae", "encoder"])
@pytest.mark.parametrize("profile", list(PROFILE_TAGS))
def test_matches_official_manifest(manifests_dir, profile, kind):
    entry = json.loads((manifests_dir / "manifest_index.json").read_text())[f"{kind}_{PROFILE_TAGS[profile]}"]
    manifest = json.loads((manifests_dir / entry["file"]).read_text())   # [[key, shape], ...] in order
    with torch.device("meta"):
        model = BUILDERS[kind](make_config(profile).model)
    sd = model.state_dict()

    ours = [(k, list(v.shape)) for k, v in sd.items()]
    official = [(k, list(shape)) for k, shape in manifest]
    assert {k for k, _ in ours} ^ {k for k, _ in official} == set(), "key sets differ"
    wrong = [(k, s, dict(official)[k]) for k, s in ours if s != dict(official)[k]]
    assert not wrong, f"wrong shapes (key, ours, official): {wrong[:5]}"
    assert ours == official, "same keys and shapes but a different order"

    assert len(sd) == entry["n_keys"]
    assert sum(v.numel() for v in sd.values()) == entry["state_dict_numel"]
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == entry["trainable_params"]
    assert sum(p.numel() for p in model.parameters() if not p.requires_grad) == entry["frozen_params"]
    assert sum(b.numel() for b in model.buffers()) == entry["buffers_numel"]
    prefix = "encoder." if kind == "avmae" else ""
    if "fusion_params" in entry:
        assert sum(v.numel() for k, v in sd.items() if k.startswith(prefix + "fusion")) == entry["fusion_params"]
    if "decoder_params" in entry:
        assert sum(v.numel() for k, v in sd.items() if "_decoder_" in k) == entry["decoder_params"]
