"""SAM 2 and SAM 2.1 image models from the optional `sam2` package (`pip install -e ".[sam2]"`).

Each model is built from the package's own config file, with the settings its image
predictor is built with (`build_sam2`: the single-mask output falls back to the best of the
three masks when it is unstable). The configs are read with OmegaConf rather than Hydra's
compose, which would look in this application's Hydra search path.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

# model type -> the sam2 package's config file, under its configs/ folder.
SAM2_CONFIGS = {
    "sam2.1_hiera_t": "sam2.1/sam2.1_hiera_t.yaml",
    "sam2.1_hiera_s": "sam2.1/sam2.1_hiera_s.yaml",
    "sam2.1_hiera_b+": "sam2.1/sam2.1_hiera_b+.yaml",
    "sam2.1_hiera_l": "sam2.1/sam2.1_hiera_l.yaml",
    "sam2_hiera_t": "sam2/sam2_hiera_t.yaml",
    "sam2_hiera_s": "sam2/sam2_hiera_s.yaml",
    "sam2_hiera_b+": "sam2/sam2_hiera_b+.yaml",
    "sam2_hiera_l": "sam2/sam2_hiera_l.yaml",
}
TINY_SAM2 = "tiny_sam2"
SAM2_MODEL_TYPES = (*SAM2_CONFIGS, TINY_SAM2)

# What build_sam2 sets for image prediction (its apply_postprocessing=True).
_DECODER_ARGS = {
    "dynamic_multimask_via_stability": True,
    "dynamic_multimask_stability_delta": 0.05,
    "dynamic_multimask_stability_thresh": 0.98,
}
INSTALL_HINT = (
    'SAM 2 models need the sam2 package: pip install -e ".[sam2]" '
    "(see docs/sam2.md for installing it without a second torch)"
)


def is_sam2(model: nn.Module) -> bool:
    """Whether `model` is a SAM 2 model (SAM2Base) rather than a SAM 1 `Sam`."""
    return hasattr(model, "sam_mask_decoder")


def _model_config(model_type: str):
    try:
        import sam2
    except ImportError:
        raise ImportError(INSTALL_HINT) from None
    from omegaconf import OmegaConf

    name = SAM2_CONFIGS["sam2.1_hiera_t" if model_type == TINY_SAM2 else model_type]
    config = OmegaConf.load(Path(sam2.__file__).parent / "configs" / name).model
    config.sam_mask_decoder_extra_args = dict(_DECODER_ARGS)
    if model_type == TINY_SAM2:
        _shrink(config)
    return config


def _shrink(config) -> None:
    """SAM 2.1 hiera_t's architecture at a 256-pixel input, 5 Hiera blocks of width 8 and a
    32-channel decoder: every part the image predictor runs (high-resolution features, object
    score token, sigmoid IoU head) in a few milliseconds per crop."""
    config.image_size = 256
    trunk = config.image_encoder.trunk
    # Stage ends 0, 1, 3, 4: block 3 is the only one both global and not a pooling block.
    trunk.embed_dim, trunk.stages, trunk.global_att_blocks = 8, [1, 1, 2, 1], [3]
    trunk.window_pos_embed_bkg_spatial_size = [4, 4]
    neck = config.image_encoder.neck
    neck.d_model, neck.backbone_channel_list = 32, [64, 32, 16, 8]
    neck.position_encoding.num_pos_feats = 32
    # The video parts are built with the model but never run on images: as small as they go.
    memory = config.memory_attention
    memory.d_model = memory.layer.d_model = 32
    memory.num_layers, memory.layer.dim_feedforward = 1, 32
    for attention in (memory.layer.self_attention, memory.layer.cross_attention):
        attention.embedding_dim, attention.feat_sizes = 32, [16, 16]
    memory.layer.cross_attention.kv_in_dim = 16
    encoder = config.memory_encoder
    encoder.out_dim, encoder.position_encoding.num_pos_feats = 16, 16
    encoder.mask_downsampler.embed_dim = encoder.fuser.layer.dim = 32


def build_sam2_model(model_type: str, seed: int = 0) -> nn.Module:
    """A SAM 2 model of `model_type` with random weights (seeded, so `tiny_sam2` is always
    the same model), in eval mode."""
    from hydra.utils import instantiate

    config = _model_config(model_type)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = instantiate(config, _recursive_=True)
    finally:
        torch.random.set_rng_state(generator_state)
    return model.eval()


def detect_sam2_type(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """The Hiera size of a SAM 2 state_dict ("hiera_t", ...), or None if it is not SAM 2.

    Trunk width and block count tell the sizes apart: t 96/12, s 96/16, b+ 112/24, l 144/48.
    """
    patch = state_dict.get("image_encoder.trunk.patch_embed.proj.weight")
    if patch is None:
        return None
    blocks = {k.split(".")[3] for k in state_dict if k.startswith("image_encoder.trunk.blocks.")}
    sizes = {(96, 12): "hiera_t", (96, 16): "hiera_s", (112, 24): "hiera_b+", (144, 48): "hiera_l"}
    return sizes.get((patch.shape[0], len(blocks)), "tiny" if patch.shape[0] == 8 else None)


def sam2_size(model_type: str) -> str:
    """ "hiera_t" of "sam2.1_hiera_t"; "tiny" of the tiny model."""
    return "tiny" if model_type == TINY_SAM2 else model_type.split("_", 1)[1]
