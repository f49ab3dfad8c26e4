"""Generator settings: the constructor arguments of SAM's automatic mask generator, validated."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")
POSTPROCESS_MODES = ("auto", "device", "host")


@dataclass(frozen=True)
class AmgSettings:
    """Everything that decides which masks come out, with the reference's defaults.

    Three settings bound memory and never change the masks: `points_per_batch` (prompts the
    decoder runs at once; on CUDA more, as free memory allows), `upscale_budget_mb`
    (full-resolution mask logits held at once) and `crops_per_batch` (the most crops, of one
    or several images, per image-encoder pass; fewer when free memory is short).

    `tile_size` (pixels; None: off) cuts images larger than it into tiles overlapping by at
    least `tile_overlap` pixels, merged into one mask per object (see core/tiling.py).

    `postprocess` says where masks are filtered and encoded, never which masks come out:
    "device" keeps them on the model's device until the records (core/device_post.py), "host"
    reads each slice's changes back and encodes there (the CPU's tiled, exact resize), "auto"
    picks the faster for the device: "device" on CUDA, "host" on the CPU.

    `mask_threshold`, `use_m2m` and `multimask_output` are SAM2AutomaticMaskGenerator's and
    apply to SAM 2 models only; SAM 2 models default to its `pred_iou_thresh` of 0.8
    (`family_defaults`).
    """

    points_per_side: int | None = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    point_grids: tuple[np.ndarray, ...] | None = None
    min_mask_region_area: int = 0
    output_mode: str = "binary_mask"
    upscale_budget_mb: int = 1024
    crops_per_batch: int = 4
    tile_size: int | None = None
    tile_overlap: int = 256
    postprocess: str = "auto"
    mask_threshold: float = 0.0
    use_m2m: bool = False
    multimask_output: bool = True

    def __post_init__(self) -> None:
        if self.point_grids is not None:
            object.__setattr__(self, "point_grids", tuple(np.asarray(g) for g in self.point_grids))
        for error in settings_errors(self):
            raise ValueError(error)

    def to_dict(self) -> dict[str, Any]:
        """Plain values, for configs and summaries (point grids as nested lists)."""
        out = asdict(self)
        if self.point_grids is not None:
            out["point_grids"] = [g.tolist() for g in self.point_grids]
        return out


SETTING_NAMES = tuple(f.name for f in fields(AmgSettings))
# The settings that bound memory and never change the masks (see AmgSettings).
MEMORY_SETTING_NAMES = ("points_per_batch", "upscale_budget_mb", "crops_per_batch")
# Where the post-processing runs: it never changes the masks either.
PLACEMENT_SETTING_NAMES = ("postprocess",)
# SAM2AutomaticMaskGenerator's settings that SamAutomaticMaskGenerator does not have.
SAM2_SETTING_NAMES = ("mask_threshold", "use_m2m", "multimask_output")
# Where SAM2AutomaticMaskGenerator's defaults differ from SamAutomaticMaskGenerator's.
_FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {"sam": {}, "sam2": {"pred_iou_thresh": 0.8}}


def family_defaults(family: str) -> dict[str, Any]:
    """The settings whose default differs for the model family ("sam" or "sam2")."""
    return dict(_FAMILY_DEFAULTS[family])


def family_errors(family: str, settings: AmgSettings) -> list[str]:
    """SAM 2's own settings away from their defaults, for a SAM 1 model (empty otherwise)."""
    if family == "sam2":
        return []
    default = AmgSettings()
    return [
        f"{name} is a SAM 2 setting: leave it at {getattr(default, name)!r} for SAM 1 models "
        f"(got {getattr(settings, name)!r})"
        for name in SAM2_SETTING_NAMES
        if getattr(settings, name) != getattr(default, name)
    ]


def _check_range(
    name: str, value: Any, low: float, high: float | None, integer: bool
) -> str | None:
    kind = "an integer" if integer else "a number"
    bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type:
        return f"{name} must be {kind} {bounds}, got {value!r}"
    if value < low or (high is not None and value > high):
        return f"{name} must be {bounds}, got {value!r}"
    return None


_RANGES: dict[str, tuple[float, float | None, bool]] = {
    "points_per_batch": (1, None, True),
    "pred_iou_thresh": (0.0, 1.0, False),
    "stability_score_thresh": (0.0, 1.0, False),
    "stability_score_offset": (0.0, None, False),
    "box_nms_thresh": (0.0, 1.0, False),
    "crop_n_layers": (0, None, True),
    "crop_nms_thresh": (0.0, 1.0, False),
    "crop_overlap_ratio": (0.0, 1.0, False),
    "crop_n_points_downscale_factor": (1, None, True),
    "min_mask_region_area": (0, None, True),
    "upscale_budget_mb": (1, None, True),
    "crops_per_batch": (1, None, True),
}


def settings_errors(settings: AmgSettings) -> list[str]:
    """Every problem with `settings`, one sentence each naming the argument and what is allowed."""
    errors = []
    for name, (low, high, integer) in _RANGES.items():
        error = _check_range(name, getattr(settings, name), low, high, integer)
        if error:
            errors.append(error)
    if (settings.points_per_side is None) == (settings.point_grids is None):
        errors.append("exactly one of points_per_side or point_grids must be given")
    elif settings.points_per_side is not None:
        error = _check_range("points_per_side", settings.points_per_side, 1, None, True)
        if error:
            errors.append(error)
    else:
        if len(settings.point_grids) != settings.crop_n_layers + 1:
            errors.append(
                f"point_grids must hold crop_n_layers + 1 = {settings.crop_n_layers + 1} grids, "
                f"got {len(settings.point_grids)}"
            )
        for i, grid in enumerate(settings.point_grids):
            if grid.ndim != 2 or grid.shape[1] != 2 or grid.min() < 0 or grid.max() > 1:
                errors.append(f"point_grids[{i}] must be an Nx2 array of points in [0, 1]")
    errors.extend(_tiling_errors(settings.tile_size, settings.tile_overlap))
    if isinstance(settings.mask_threshold, bool) or not isinstance(
        settings.mask_threshold, (int, float)
    ):
        errors.append(f"mask_threshold must be a number, got {settings.mask_threshold!r}")
    for name in ("use_m2m", "multimask_output"):
        if not isinstance(getattr(settings, name), bool):
            errors.append(f"{name} must be true or false, got {getattr(settings, name)!r}")
    if settings.output_mode not in OUTPUT_MODES:
        errors.append(
            f"output_mode must be one of {', '.join(OUTPUT_MODES)}, got {settings.output_mode!r}"
        )
    if settings.postprocess not in POSTPROCESS_MODES:
        errors.append(
            f"postprocess must be one of {', '.join(POSTPROCESS_MODES)}, "
            f"got {settings.postprocess!r}"
        )
    return errors


def _tiling_errors(tile_size: Any, tile_overlap: Any) -> list[str]:
    if tile_size is not None:
        error = _check_range("tile_size", tile_size, 1, None, True)
        if error:
            return [error]
    bound = "0 <= tile_overlap" + ("" if tile_size is None else f" < tile_size = {tile_size}")
    ok = isinstance(tile_overlap, int) and not isinstance(tile_overlap, bool)
    if not ok or tile_overlap < 0 or (tile_size is not None and tile_overlap >= tile_size):
        return [f"tile_overlap must be an integer with {bound}, got {tile_overlap!r}"]
    return []
