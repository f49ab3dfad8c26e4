"""SAM architectures by model type, and strict, safe checkpoint loading."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import torch
from torch import nn

from amg_lightning.core.sam2_models import (
    SAM2_MODEL_TYPES,
    build_sam2_model,
    detect_sam2_type,
    is_sam2,
    sam2_size,
)

SAM1_MODEL_TYPES = ("vit_h", "vit_l", "vit_b", "vit_t", "tiny")
MODEL_TYPES = (*SAM1_MODEL_TYPES, *SAM2_MODEL_TYPES)
# Random weights, no checkpoint: smoke tests.
RANDOM_MODEL_TYPES = ("tiny", "tiny_sam2")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, unreadable, or of another model type."""


def _build_vit(model_type: str) -> nn.Module:
    from segment_anything import sam_model_registry

    return sam_model_registry[model_type]()


@contextmanager
def quiet_mobile_sam_import() -> Iterator[None]:
    """Silences what importing mobile_sam warns: it imports timm's old module paths and
    re-registers TinyViT names in timm, warnings about its own imports no user can act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module="timm")
        warnings.filterwarnings("ignore", message="Overwriting tiny_vit")
        yield


def _build_vit_t() -> nn.Module:
    with quiet_mobile_sam_import():
        from mobile_sam import sam_model_registry

    return sam_model_registry["vit_t"]()


def _build_tiny(seed: int = 0) -> nn.Module:
    """A randomly initialised SAM a thousand times smaller than vit_b, for tests and smoke runs."""
    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    img_size, patch, dim = 256, 16, 32
    sam = Sam(
        image_encoder=ImageEncoderViT(
            img_size=img_size, patch_size=patch, embed_dim=dim, depth=1, num_heads=2, out_chans=dim
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=dim,
            image_embedding_size=(img_size // patch, img_size // patch),
            input_image_size=(img_size, img_size),
            mask_in_chans=4,
        ),
        mask_decoder=MaskDecoder(
            transformer_dim=dim,
            transformer=TwoWayTransformer(depth=2, embedding_dim=dim, mlp_dim=64, num_heads=2),
            iou_head_hidden_dim=32,
        ),
    )
    torch.random.set_rng_state(generator_state)
    return sam


_BUILDERS: dict[str, Callable[[], nn.Module]] = {
    "vit_h": partial(_build_vit, "vit_h"),
    "vit_l": partial(_build_vit, "vit_l"),
    "vit_b": partial(_build_vit, "vit_b"),
    "vit_t": _build_vit_t,
    "tiny": _build_tiny,
    **{name: partial(build_sam2_model, name) for name in SAM2_MODEL_TYPES},
}


def model_family(model_type: str) -> str:
    """ "sam2" for SAM 2 and SAM 2.1 model types, "sam" for SAM 1's (MobileSAM included)."""
    return "sam2" if model_type in SAM2_MODEL_TYPES else "sam"


# Encoder width and depth tell the ViT sizes apart; TinyViT has its own key names.
_VIT_SIGNATURES = {(1280, 32): "vit_h", (1024, 24): "vit_l", (768, 12): "vit_b", (32, 1): "tiny"}


def detect_model_type(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """The model type a SAM state_dict belongs to, or None if it is not a SAM checkpoint."""
    if "image_encoder.layers.0.blocks.0.conv1.c.weight" in state_dict:
        return "vit_t"
    patch = state_dict.get("image_encoder.patch_embed.proj.weight")
    if patch is None:
        return None
    depth = len({k.split(".")[2] for k in state_dict if k.startswith("image_encoder.blocks.")})
    return _VIT_SIGNATURES.get((patch.shape[0], depth))


def _checkpoint_kind(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """A SAM 1 model type, "SAM 2 <size>", or None for neither."""
    sam2 = detect_sam2_type(state_dict)
    return f"SAM 2 {sam2}" if sam2 else detect_model_type(state_dict)


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint with `weights_only=True`; one CheckpointError naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # the weights-only unpickler fails on garbage in many ways
        raise CheckpointError(f"checkpoint {path} is not a readable PyTorch file ({err})") from None
    if isinstance(state, Mapping) and "model" in state and isinstance(state["model"], Mapping):
        state = state["model"]
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise CheckpointError(f"checkpoint {path} is not a SAM state_dict")
    return dict(state)


def build_sam(model_type: str, checkpoint: str | Path | None = None) -> nn.Module:
    """A SAM model of `model_type` in eval mode, with weights from `checkpoint` if given.

    Keys must match exactly; a checkpoint of another model type is named as such.
    """
    if model_type not in _BUILDERS:
        raise ValueError(f"model_type must be one of {', '.join(MODEL_TYPES)}, got {model_type!r}")
    sam = _BUILDERS[model_type]()
    if checkpoint is not None:
        state = load_state_dict(checkpoint)
        found, expected = _checkpoint_kind(state), model_type
        if model_family(model_type) == "sam2":
            expected = f"SAM 2 {sam2_size(model_type)}"
        if found != expected:
            what = f"a {found} checkpoint" if found else "not a SAM checkpoint"
            raise CheckpointError(
                f"checkpoint {checkpoint} is {what}, but model type is {model_type}"
            )
        try:
            sam.load_state_dict(state, strict=True)
        except RuntimeError as err:
            first = str(err).splitlines()[0]
            raise CheckpointError(
                f"checkpoint {checkpoint} does not fit {model_type}: {first}"
            ) from None
    return sam.eval()


def sharpen(model: nn.Module, mask_scale: float = 300.0, iou_scale: float = 100.0) -> nn.Module:
    """Random weights made to segment, in place: the mask logits scaled by `mask_scale`, so
    that stabilities spread and masks differ per point, and for SAM 2 the IoU head's logits
    by `iou_scale`, so that its sigmoid IoUs spread from 0 to 1 instead of lying near 0.5
    (SAM 1's IoUs are not squashed and stay). For tests and timings with random weights."""
    sam2 = is_sam2(model)
    decoder = model.sam_mask_decoder if sam2 else model.mask_decoder
    last_layers = [mlp.layers[-1] for mlp in decoder.output_hypernetworks_mlps]
    scales = [mask_scale] * len(last_layers)
    if sam2:
        last_layers.append(decoder.iou_prediction_head.layers[-1])
        scales.append(iou_scale)
    with torch.no_grad():
        for layer, scale in zip(last_layers, scales, strict=True):
            layer.weight.mul_(scale)
            layer.bias.mul_(scale)
    return model
