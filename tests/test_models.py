"""build_sam: architectures by name, strict loading, and one clear error per bad checkpoint."""

from __future__ import annotations

import pytest
import torch

from amg_lightning.core.models import CheckpointError, build_sam, detect_model_type


def test_tiny_model_round_trips_through_a_checkpoint(tmp_path, tiny_sam):
    path = tmp_path / "tiny.pt"
    torch.save(tiny_sam.state_dict(), path)
    loaded = build_sam("tiny", path)
    for name, tensor in tiny_sam.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    assert not loaded.training


def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(CheckpointError, match=f"checkpoint not found: {tmp_path / 'nope.pt'}"):
        build_sam("tiny", tmp_path / "nope.pt")


def test_corrupt_checkpoint_is_named(tmp_path):
    path = tmp_path / "corrupt.pt"
    path.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match=f"checkpoint {path} is not a readable PyTorch file"):
        build_sam("tiny", path)


def test_checkpoint_of_another_model_type_is_named(tmp_path, tiny_sam):
    path = tmp_path / "tiny.pt"
    torch.save(tiny_sam.state_dict(), path)
    with pytest.raises(CheckpointError, match="is a tiny checkpoint, but model type is vit_b"):
        build_sam("vit_b", path)


def test_a_state_dict_that_is_not_sam(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"layer.weight": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="not a SAM checkpoint"):
        build_sam("tiny", path)


def test_unknown_model_type():
    with pytest.raises(
        ValueError, match="model_type must be one of vit_h, vit_l, vit_b, vit_t, tiny"
    ):
        build_sam("vit_x")


@pytest.mark.parametrize("model_type", ["vit_b", "vit_t"])
def test_model_types_are_recognised_from_their_weights(model_type):
    assert detect_model_type(build_sam(model_type).state_dict()) == model_type


@pytest.mark.slow
def test_real_mobile_sam_loads_strictly_and_is_recognised(checkpoint_path):
    sam = build_sam("vit_t", checkpoint_path)
    assert detect_model_type(sam.state_dict()) == "vit_t"
    with pytest.raises(CheckpointError, match="is a vit_t checkpoint, but model type is vit_h"):
        build_sam("vit_h", checkpoint_path)
