"""Automatic mask generation over a crop pyramid: the masks of SAM's reference generator, faster.

Per crop: embed, decode the crop's point grid in batches, keep masks by predicted IoU before
any upscaling, then by stability score at full resolution, drop masks cut by the crop's edge,
encode to RLE and remove duplicates by box NMS. Per image: NMS across crops preferring smaller
crops, then optionally fill small holes and remove small islands, and NMS again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.profiler import record_function

from amg_lightning.core import device_post, rle, tiling
from amg_lightning.core.boxes import box_nms, near_crop_edge, xyxy_to_xywh
from amg_lightning.core.decoder import ImageContext, PointDecoder
from amg_lightning.core.embedding_cache import EmbeddingCache
from amg_lightning.core.family import model_family
from amg_lightning.core.full_res import CropResize, DenseMasks, TiledMasks
from amg_lightning.core.grids import crop_boxes, layer_point_grids
from amg_lightning.core.image import CropInputs, PreparedCrops, check_image
from amg_lightning.core.masks import CropFrame, MaskData
from amg_lightning.core.memory import crops_per_pass, full_res_bytes, prompts_per_batch
from amg_lightning.core.regions import remove_small_regions
from amg_lightning.core.sam2_decoder import Sam2Decoder
from amg_lightning.core.settings import AmgSettings, family_defaults, family_errors

log = logging.getLogger(__name__)


class AutomaticMaskGenerator:
    """Drop-in for segment_anything's SamAutomaticMaskGenerator; same arguments and records.

    Given a SAM 2 model it is the drop-in for sam2's SAM2AutomaticMaskGenerator instead:
    its defaults (`pred_iou_thresh` 0.8) and its settings `mask_threshold`, `use_m2m` and
    `multimask_output` (core/family.py says what differs).

    `fast=True` runs the mask upscaler in bfloat16 where the device has native bfloat16
    products (CUDA; CPUs with AVX512-BF16 or AMX; elsewhere it logs a warning and stays in
    float32). The image encoder and the transformer stay in float32: the embedding and the
    tokens decide every predicted IoU, and in bfloat16 they move masks across the thresholds.
    Thresholds, stability scores and NMS stay in float32 too. Fast mode is not exact: the
    bfloat16 logits move stability scores by up to about 0.02, so masks at the threshold can
    cross it (`amg-bench` reports by how much). With an `embedding_cache`, crop embeddings
    are looked up by `model_id`, image and crop box before the encoder runs, so a threshold
    sweep, fast or exact, encodes each crop once.
    """

    def __init__(
        self,
        model: nn.Module,
        fast: bool = False,
        embedding_cache: EmbeddingCache | None = None,
        model_id: str = "",
        **settings: Any,
    ) -> None:
        self.family = model_family(model)
        self.settings = AmgSettings(**{**family_defaults(self.family.name), **settings})
        for error in family_errors(self.family.name, self.settings):
            raise ValueError(error)
        if self.family.name == "sam2" and self.settings.min_mask_region_area > 0:
            # SAM 2 hands the area to its CUDA extension, which fills holes and removes
            # islands in the low-res logits; where the extension is missing (always on the
            # CPU) it skips that step, and its generator has no other: neither do we.
            log.warning(
                "min_mask_region_area changes no SAM 2 mask here: SAM2AutomaticMaskGenerator "
                "without its CUDA extension skips the low-res hole filling (docs/sam2.md)"
            )
        self.model = model
        self.fast = fast and _bfloat16_supported(self.device)
        if fast and not self.fast:
            log.warning("fast mode: no bfloat16 support on %s, running in float32", self.device)
        upscale_dtype = torch.bfloat16 if self.fast else torch.float32
        self.decoder = (
            Sam2Decoder(model, upscale_dtype, self.settings.multimask_output, self.settings.use_m2m)
            if self.family.name == "sam2"
            else PointDecoder(model, upscale_dtype)
        )
        self.embedding_cache = embedding_cache
        self.model_id = model_id
        s = self.settings
        self.point_grids = (
            list(s.point_grids)
            if s.point_grids is not None
            else layer_point_grids(
                s.points_per_side, s.crop_n_layers, s.crop_n_points_downscale_factor
            )
        )

    @property
    def device(self) -> torch.device:
        return self.family.device

    @property
    def crop_inputs(self) -> CropInputs:
        """What cuts and resizes this generator's crops for the encoder; DataLoader workers
        can run it (`generate_batch`'s `prepared`)."""
        s = self.settings
        return CropInputs(
            self.family.name,
            self.family.encoder_size,
            s.crop_n_layers,
            s.crop_overlap_ratio,
            s.tile_size,
        )

    def images_per_pass(self) -> int:
        """Images whose crops together fill one image-encoder pass: on CUDA what
        `crops_per_batch` and half the free memory allow (`core.memory.crops_per_pass`), at
        least 1; on the CPU 1, as a larger pass is no faster there."""
        if self.device.type != "cuda":
            return 1
        crops_per_image = sum(4**layer for layer in range(self.settings.crop_n_layers + 1))
        step = crops_per_pass(self.model.image_encoder, self.device, self.settings.crops_per_batch)
        return max(1, step // crops_per_image)

    @property
    def mask_threshold(self) -> float:
        """The logit cutoff of the binary masks: SAM 1's model's, SAM 2's setting."""
        if self.family.name == "sam2":
            return self.settings.mask_threshold
        return self.model.mask_threshold

    @torch.no_grad()
    def generate(self, image: np.ndarray) -> list[dict[str, Any]]:
        """Mask records for one HWC uint8 RGB image, as SamAutomaticMaskGenerator.generate."""
        return self.generate_batch([image])[0]

    @torch.no_grad()
    def generate_batch(
        self, images: list[np.ndarray], prepared: list[PreparedCrops | None] | None = None
    ) -> list[list[dict[str, Any]]]:
        """Mask records for each image; the crops of all images share encoder batches.

        `prepared` holds each image's encoder inputs as `self.crop_inputs` makes them (in
        DataLoader workers), or None; inputs missing, or made by other CropInputs, are made here.
        """
        for image in images:
            check_image(image)
        prepared = prepared or [None] * len(images)
        if tiling.needs_tiling(images, self.settings):
            return tiling.generate_tiled(self, images, prepared)
        ours = self.crop_inputs
        inputs = [p.inputs if p is not None and p.made_by == ours else None for p in prepared]
        plans = [
            crop_boxes(
                image.shape[:2], self.settings.crop_n_layers, self.settings.crop_overlap_ratio
            )
            for image in images
        ]
        jobs = [
            (i, k, box, layer)
            for i, (boxes, layers) in enumerate(plans)
            for k, (box, layer) in enumerate(zip(boxes, layers, strict=True))
        ]
        on_device = self.postprocess_on_device
        crop_masks = self._crop_masks_on_device if on_device else self._crop_masks
        crops_per_image: list[list] = [[] for _ in images]
        try:
            for (i, _, box, layer), embedding in zip(
                jobs, self._embeddings(images, inputs, jobs), strict=True
            ):
                frame = self._frame(box, images[i].shape[:2])
                crops_per_image[i].append(crop_masks(embedding, frame, layer))
        finally:
            self.decoder.workspace.clear()  # the decoder's buffers live for one call
        finish = self._finish_on_device if on_device else self._finish
        with record_function("amg.nms_and_records"):
            return [
                finish(crops, image.shape[:2])
                for crops, image in zip(crops_per_image, images, strict=True)
            ]

    @property
    def postprocess_on_device(self) -> bool:
        """Whether masks stay on the device until the records (`settings.postprocess`)."""
        where = self.settings.postprocess
        return where == "device" or (where == "auto" and self.device.type == "cuda")

    def _frame(self, box: list[int], image_size: tuple[int, int]) -> CropFrame:
        x0, y0, x1, y1 = box
        input_size = self.family.input_size((y1 - y0, x1 - x0))
        return CropFrame(tuple(box), tuple(image_size), input_size)

    def _embeddings(
        self, images: list[np.ndarray], inputs: list[list[Tensor] | None], jobs: list[tuple]
    ) -> Iterator[Tensor]:
        """Image-encoder embeddings of every crop, as many per pass as memory allows.

        A crop's encoder input is `inputs[image][crop]`, or made here where an image has none;
        a crop whose embedding is in the cache needs none.

        At most `crops_per_batch`, and no more than half the free memory holds
        (`core.memory.crops_per_pass`): four 1024² crops through ViT-H take over 12 GB.
        """
        step = crops_per_pass(self.model.image_encoder, self.device, self.settings.crops_per_batch)
        for start in range(0, len(jobs), step):
            chunk = jobs[start : start + step]
            keys = [self._cache_key(images[i], box) for i, _, box, _ in chunk]
            found = [self.embedding_cache.get(k) if k else None for k in keys]
            missing = [j for j, embedding in enumerate(found) if embedding is None]
            if missing:
                started = time.perf_counter()
                with record_function("amg.image_encoder"):
                    fresh = self.family.encode(
                        [self._encoder_input(images, inputs, chunk[j]) for j in missing]
                    )
                seconds = (time.perf_counter() - started) / len(missing)
                for j, embedding in zip(missing, fresh.split(1), strict=True):
                    found[j] = embedding
                    if keys[j]:
                        self.embedding_cache.put(keys[j], embedding, seconds)
            yield from (embedding.to(self.device) for embedding in found)

    def _encoder_input(
        self, images: list[np.ndarray], inputs: list[list[Tensor] | None], job: tuple
    ) -> Tensor:
        """A job's crop as the encoder takes it: the workers' input, else made here the same way."""
        i, k, box, _ = job
        made = inputs[i]
        return made[k] if made is not None else self.crop_inputs.crop(images[i], box)

    def _cache_key(self, image: np.ndarray, crop_box: list[int]) -> str | None:
        if self.embedding_cache is None:
            return None
        return self.embedding_cache.key(self.model_id, image, crop_box)

    def _crop_masks(self, embedding: Tensor, frame: CropFrame, layer: int) -> MaskData:
        """Masks prompted by one crop's point grid, filtered and de-duplicated within the crop."""
        crop_h, crop_w = frame.crop_size
        points = self.point_grids[layer] * np.array([crop_w, crop_h])[None]  # XY in the crop
        ctx = self.family.prepare(self.decoder, embedding)
        step = prompts_per_batch(
            ctx.keys.shape[1], ctx.keys.shape[2], self.device, self.settings.points_per_batch
        )
        masks = MaskData.cat(
            [
                self._decode_batch(ctx, points[start : start + step], frame)
                for start in range(0, len(points), step)
            ]
        )
        return masks.select(box_nms(masks.boxes, masks.iou_preds, self.settings.box_nms_thresh))

    def _crop_masks_on_device(
        self, embedding: Tensor, frame: CropFrame, layer: int
    ) -> device_post.Survivors:
        """As `_crop_masks`, with the masks kept on the device (core/device_post.py)."""
        crop_h, crop_w = frame.crop_size
        points = self.point_grids[layer] * np.array([crop_w, crop_h])[None]  # XY in the crop
        # Copied to the device once per crop: on CUDA each copy from the host waits for it.
        crop_points, model_points = self.family.prompts(points, frame)
        boxes = torch.tensor([frame.box, frame.image_box], device=self.device)
        resize = self.family.resize(self.decoder, frame)
        ctx = self.family.prepare(self.decoder, embedding)
        step = prompts_per_batch(
            ctx.keys.shape[1], ctx.keys.shape[2], self.device, self.settings.points_per_batch
        )
        parts = []
        for start in range(0, len(points), step):
            batch = slice(start, start + step)
            with record_function("amg.transformer"):
                tokens = self.decoder.decode_tokens(ctx, model_points[batch])

            def upscale(prompts: Tensor, extent: tuple[int, int], tokens=tokens) -> Tensor:
                with record_function("amg.upscaler"):
                    return self.decoder.upscale(ctx, tokens, prompts, extent)

            masks = self.masks_on_device(
                tokens.iou_preds.float(), upscale, crop_points[batch], resize, boxes
            )
            parts += [masks] if masks is not None else []
        survivors = device_post.DeviceMasks.empty(resize, self.device)
        if parts:
            masks = device_post.DeviceMasks.cat(parts)
            survivors = masks.select(
                box_nms(masks.boxes, masks.iou_preds, self.settings.box_nms_thresh)
            )
        return device_post.Survivors(survivors, frame, resize, self.mask_threshold)

    def masks_on_device(
        self,
        iou_preds: Tensor,
        upscale: Callable[[Tensor, tuple[int, int]], Tensor],
        points: Tensor,
        resize: CropResize,
        boxes: Tensor,
    ) -> device_post.DeviceMasks | None:
        """The masks of one decode batch that pass every per-mask filter, on the device: one
        read of how many pass the IoU filter, one per slice of full-resolution work (which
        tiles to resize), one of how many pass the rest.

        `iou_preds` (B x K masks) and `points` (B x 2, crop frame) are the batch's; `upscale`
        gives the low-res logits (P x K x h x w) of prompts at the given indices, at least
        their top-left extent; `boxes` holds the crop's and the image's XYXY boxes on the device.
        """
        s = self.settings
        passed = (
            iou_preds > s.pred_iou_thresh
            if s.pred_iou_thresh > 0
            else torch.ones_like(iou_preds, dtype=torch.bool)
        )
        per_prompt = passed.any(dim=1)
        mask_count, prompt_count = torch.stack([passed.sum(), per_prompt.sum()]).tolist()
        if mask_count == 0:
            return None
        prompts = device_post.true_indices(per_prompt, prompt_count)
        flat = device_post.true_indices(passed.flatten(), mask_count)  # (prompt, mask) order
        masks_per_prompt = iou_preds.shape[1]
        prompt_of_mask, mask_of_prompt = flat // masks_per_prompt, flat % masks_per_prompt
        low_res = upscale(prompts, resize.embedding_extent(self.decoder.upscale_factor))
        row_of_mask = (per_prompt.cumsum(0) - 1)[prompt_of_mask]  # the prompt's row in low_res
        mask_points = points[prompt_of_mask]
        mask_ious = iou_preds[prompt_of_mask, mask_of_prompt]
        budget = full_res_bytes(self.device, s.upscale_budget_mb * 2**20, host_path=False)
        candidates = []
        with record_function("amg.full_resolution"):
            for chunk in self._chunks(mask_count, resize.bytes_per_mask(self.device), budget):
                # A copy, not a view of the decoder's workspace: it is kept until NMS.
                chunk_low_res = low_res[row_of_mask[chunk], mask_of_prompt[chunk]].float()
                masks = resize.masks(chunk_low_res, self.mask_threshold, s.stability_score_offset)
                candidates.append(
                    device_post.filter_masks(
                        masks,
                        chunk_low_res,
                        s.stability_score_thresh,
                        mask_ious[chunk],
                        mask_points[chunk],
                        boxes,
                    )
                )
            return device_post.compact(candidates)

    def _decode_batch(self, ctx: ImageContext, points: np.ndarray, frame: CropFrame) -> MaskData:
        """The masks of one batch of points (crop frame) that pass every per-mask filter."""
        s = self.settings
        crop_points, model_points = self.family.prompts(points, frame)
        with record_function("amg.transformer"):
            tokens = self.decoder.decode_tokens(ctx, model_points)
        iou_preds = tokens.iou_preds.float()
        passed = (
            iou_preds > s.pred_iou_thresh
            if s.pred_iou_thresh > 0
            else torch.ones_like(iou_preds, dtype=torch.bool)
        )
        prompts = passed.any(dim=1).nonzero()[:, 0]
        if len(prompts) == 0:
            return MaskData()
        # Only prompts with a mask that passed are upscaled, and only the crop's part of them.
        resize = self.family.resize(self.decoder, frame)
        extent = resize.embedding_extent(self.decoder.upscale_factor)
        with record_function("amg.upscaler"):
            low_res = self.decoder.upscale(ctx, tokens, prompts, extent)
        prompt_of_mask, mask_of_prompt = passed[prompts].nonzero(as_tuple=True)
        mask_points = crop_points[prompts[prompt_of_mask]]
        mask_ious = iou_preds[prompts[prompt_of_mask], mask_of_prompt]
        with record_function("amg.full_resolution"):
            return self._full_res(
                resize, low_res, (prompt_of_mask, mask_of_prompt), mask_ious, mask_points, frame
            )

    def _full_res(
        self,
        resize: CropResize,
        low_res: Tensor,
        index: tuple[Tensor, Tensor],
        iou_preds: Tensor,
        points: Tensor,
        frame: CropFrame,
    ) -> MaskData:
        """The masks at (prompt, output) `index` of `low_res` that pass the full-resolution
        filters, some at a time."""
        threshold, offset = self.mask_threshold, self.settings.stability_score_offset
        parts = []
        budget = full_res_bytes(self.device, self.settings.upscale_budget_mb * 2**20)
        for chunk in self._chunks(len(iou_preds), resize.bytes_per_mask(self.device), budget):
            chunk_low_res = low_res[index[0][chunk], index[1][chunk]].float()
            masks = resize.masks(chunk_low_res, threshold, offset)
            parts.append(self._filter_full_res(masks, iou_preds[chunk], points[chunk], frame))
        return MaskData.cat(parts)

    def _chunks(self, count: int, bytes_per_mask: int, budget: int) -> Iterator[slice]:
        """Slices of masks whose full-resolution work fits `budget` bytes
        (`core.memory.full_res_bytes`, never more than `upscale_budget_mb`)."""
        step = max(1, budget // bytes_per_mask)
        for start in range(0, count, step):
            yield slice(start, start + step)

    def _filter_full_res(
        self,
        masks: DenseMasks | TiledMasks,
        iou_preds: Tensor,
        points: Tensor,
        frame: CropFrame,
    ) -> MaskData:
        """Stability filter, binarisation, crop-edge filter and RLE of crop-sized logits."""
        s = self.settings
        stability = masks.stability()
        keep = (
            stability >= s.stability_score_thresh
            if s.stability_score_thresh > 0
            else torch.ones_like(stability, dtype=torch.bool)
        ).nonzero()[:, 0]
        crop_box = list(frame.box)
        encoded = masks.encode(keep, crop_box, frame.image_size)
        boxes = torch.from_numpy(encoded.boxes)
        keep = keep.to(iou_preds.device)
        masks = MaskData(
            rles=encoded.counts,
            boxes=boxes,
            iou_preds=iou_preds[keep].cpu(),
            stability=stability.to(keep.device)[keep].cpu(),
            points=points[keep].cpu() + torch.tensor(crop_box[:2]),
            crop_boxes=torch.tensor([crop_box]).expand(len(boxes), 4),
        )
        return masks.select(~near_crop_edge(boxes, crop_box, frame.image_box))

    def _finish(self, crops: list[MaskData], image_size: tuple[int, int]) -> list[dict[str, Any]]:
        """Cross-crop NMS, small-region removal, and the output records."""
        masks = MaskData.cat(crops)
        if self.settings.crop_n_layers > 0:
            keep = box_nms(
                masks.boxes, _crop_preference(masks.crop_boxes), self.settings.crop_nms_thresh
            )
            masks = masks.select(keep)
        return self._records(masks, image_size)

    def _finish_on_device(
        self, crops: list[device_post.Survivors], image_size: tuple[int, int]
    ) -> list[dict[str, Any]]:
        """As `_finish`, with cross-crop NMS on the device; RLEs only for its survivors."""
        s = self.settings
        if s.crop_n_layers == 0:
            return self._records(device_post.to_host(crops)[0], image_size)
        crop_boxes = torch.cat(
            [torch.tensor([c.frame.box]).expand(len(c.masks), 4) for c in crops]
        ).to(self.device)
        boxes = torch.cat([c.masks.boxes for c in crops])
        keep = box_nms(boxes, _crop_preference(crop_boxes), s.crop_nms_thresh).tolist()
        # Each crop's survivors in record order; then each record's place among them all.
        first = np.cumsum([0] + [len(c.masks) for c in crops])
        crop_of = np.searchsorted(first, keep, side="right") - 1
        kept = [
            [k - first[c] for k, c in zip(keep, crop_of, strict=True) if c == j]
            for j in range(len(crops))
        ]
        survivors = [
            device_post.Survivors(
                c.masks.select(torch.tensor(k, dtype=torch.long, device=self.device)),
                c.frame,
                c.resize,
                c.threshold,
            )
            for c, k in zip(crops, kept, strict=True)
        ]
        start = np.cumsum([0] + [len(k) for k in kept])
        seen = np.zeros(len(crops), dtype=np.int64)
        order = []
        for c in crop_of:
            order.append(start[c] + seen[c])
            seen[c] += 1
        masks = MaskData.cat(device_post.to_host(survivors))
        return self._records(masks.select(torch.tensor(order, dtype=torch.long)), image_size)

    def _records(self, masks: MaskData, image_size: tuple[int, int]) -> list[dict[str, Any]]:
        """Small-region removal, and the output records."""
        s = self.settings
        # SAM2AutomaticMaskGenerator never runs this step (see __init__).
        if s.min_mask_region_area > 0 and len(masks) and self.family.name == "sam":
            masks = self._remove_small_regions(
                masks, image_size, max(s.box_nms_thresh, s.crop_nms_thresh)
            )
        return self._record_list(masks, image_size)

    def _remove_small_regions(
        self, masks: MaskData, image_size: tuple[int, int], nms_thresh: float
    ) -> MaskData:
        """Fills small holes and drops small islands; NMS prefers masks that needed neither."""
        boxes = masks.boxes.clone()
        rles = list(masks.rles)
        unchanged = torch.ones(len(masks))
        for i, (counts, box) in enumerate(zip(masks.rles, masks.boxes.tolist(), strict=True)):
            mask, changed = remove_small_regions(
                rle.decode(counts, image_size), box, self.settings.min_mask_region_area
            )
            if changed:
                encoded = rle.encode_mask(mask)
                rles[i] = encoded.counts[0]
                boxes[i] = torch.from_numpy(encoded.boxes[0])
                unchanged[i] = 0.0
        masks = masks.with_columns(rles=rles, boxes=boxes)
        return masks.select(box_nms(boxes, unchanged, nms_thresh))

    def _record_list(self, masks: MaskData, image_size: tuple[int, int]) -> list[dict[str, Any]]:
        """The output records; each column is read into Python once, not once per record."""
        columns = zip(
            masks.rles,
            xyxy_to_xywh(masks.boxes).tolist(),
            masks.iou_preds.tolist(),
            masks.points.tolist(),
            masks.stability.tolist(),
            xyxy_to_xywh(masks.crop_boxes).tolist(),
            strict=True,
        )
        return [
            {
                "segmentation": rle.to_output(counts, image_size, self.settings.output_mode),
                "area": rle.area(counts),
                "bbox": box,
                "predicted_iou": iou,
                "point_coords": [point],
                "stability_score": stability,
                "crop_box": crop_box,
            }
            for counts, box, iou, point, stability, crop_box in columns
        ]


def _crop_preference(crop_boxes: Tensor) -> Tensor:
    """Cross-crop NMS scores: masks of smaller crops first, as the reference's 1 / area."""
    areas = (crop_boxes[:, 2] - crop_boxes[:, 0]) * (crop_boxes[:, 3] - crop_boxes[:, 1])
    return 1 / areas.float()


def _bfloat16_supported(device: torch.device) -> bool:
    """Whether bfloat16 products run natively: CUDA's check, or oneDNN's (AVX512-BF16, AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported()
