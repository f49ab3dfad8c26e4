"""SAM 2's single-mask output and mask-to-mask refinement (`use_m2m`), on PointDecoder.

With `multimask_output=False` SAM 2 returns its single-mask token's mask, unless that mask is
unstable: then the multimask output of highest predicted IoU. Which one is only known from
the low-res logits, so these are made for every prompt before any filter. With `use_m2m`
every mask of the first pass is decoded again with its own point and its (clamped) low-res
logits as the mask prompt, giving one mask each; the filters then read those.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from amg_lightning.core.decoder import DecodedTokens, ImageContext, PointDecoder

# SAM2ImagePredictor clamps the low-res logits it returns (the m2m mask prompts) to this.
_MASK_PROMPT_BOUND = 32.0


@dataclass
class DecidedMasks:
    """Masks whose low-res logits were made while decoding: B prompts x K masks."""

    iou_preds: Tensor  # B x K
    low_res: Tensor  # B x K x H x W


class Sam2Decoder:
    """PointDecoder's interface (`prepare`, `decode_tokens`, `upscale`) for every SAM 2 mode.

    Multimask output without m2m is PointDecoder's own path, where only prompts with a mask
    above the IoU threshold are upscaled; the other modes decide their masks in
    `decode_tokens`, and `upscale` only picks them.
    """

    def __init__(
        self,
        model: nn.Module,
        upscale_dtype: torch.dtype,
        multimask_output: bool,
        use_m2m: bool,
    ) -> None:
        self.multimask = PointDecoder(model, upscale_dtype)
        self.every_token = PointDecoder(model, upscale_dtype, mask_outputs=(0, 1, 2, 3))
        self.every_token.workspace = self.multimask.workspace
        self.multimask_output, self.use_m2m = multimask_output, use_m2m
        self.upscale_factor = PointDecoder.upscale_factor

    @property
    def low_res_size(self) -> int:
        return self.multimask.low_res_size

    @property
    def workspace(self):
        return self.multimask.workspace

    def prepare(self, image_embedding: Tensor, high_res: tuple[Tensor, Tensor]) -> ImageContext:
        return self.multimask.prepare(image_embedding, high_res)

    @torch.no_grad()
    def decode_tokens(self, ctx: ImageContext, points: Tensor) -> DecodedTokens | DecidedMasks:
        if self.multimask_output and not self.use_m2m:
            return self.multimask.decode_tokens(ctx, points)
        every = torch.arange(len(points), device=points.device)
        if self.multimask_output:
            tokens = self.multimask.decode_tokens(ctx, points)
            iou_preds = tokens.iou_preds
            low_res = self.multimask.upscale(ctx, tokens, every).float().clone()
        else:
            tokens = self.every_token.decode_tokens(ctx, points)
            low_res = self.every_token.upscale(ctx, tokens, every).float()
            iou_preds, low_res = self._single_mask(tokens.iou_preds, low_res)
        if self.use_m2m:
            iou_preds, low_res = self._refine(ctx, points, low_res)
        return DecidedMasks(iou_preds, low_res)

    def upscale(
        self,
        ctx: ImageContext,
        tokens: DecodedTokens | DecidedMasks,
        prompts: Tensor,
        extent: tuple[int, int] | None = None,
    ) -> Tensor:
        """The low-res logits of `prompts`; SAM 2 resizes whole maps, so `extent` is all."""
        if isinstance(tokens, DecidedMasks):
            return tokens.low_res[prompts]
        return self.multimask.upscale(ctx, tokens, prompts, extent)

    def _single_mask(self, iou_preds: Tensor, low_res: Tensor) -> tuple[Tensor, Tensor]:
        """B x 4 outputs -> B x 1: token 0's mask if stable, else the best multimask one
        (MaskDecoder's dynamic multimask choice, on the low-res logits)."""
        decoder = self.multimask.mask_decoder
        delta = decoder.dynamic_multimask_stability_delta
        single = low_res[:, 0].flatten(1)
        inner = (single > delta).sum(-1).float()
        outer = (single > -delta).sum(-1).float()
        stability = torch.where(outer > 0, inner / outer, 1.0)
        stable = stability >= decoder.dynamic_multimask_stability_thresh
        rows = torch.arange(len(low_res), device=low_res.device)
        best = iou_preds[:, 1:].argmax(dim=-1) + 1
        chosen = torch.where(stable, 0, best)
        return iou_preds[rows, chosen][:, None], low_res[rows, chosen][:, None]

    def _refine(self, ctx: ImageContext, points: Tensor, low_res: Tensor) -> tuple[Tensor, Tensor]:
        """Each of the B x K masks decoded again with its point and its low-res logits as the
        mask prompt, one mask each (single-mask output): B x K results."""
        b, k = low_res.shape[:2]
        decoder = self.every_token
        ious, masks = [], []
        # Slot by slot: each pass has the B prompts of the first pass, as the reference's
        # batches of points_per_batch masks do at the default sizes.
        for slot in range(k):
            prompt = low_res[:, slot : slot + 1].clamp(-_MASK_PROMPT_BOUND, _MASK_PROMPT_BOUND)
            dense = decoder.prompt_encoder.mask_downscaling(prompt)
            # Each prompt's image tokens are its own: the embedding plus its mask prompt's.
            keys = (ctx.embedding + dense).flatten(2).transpose(1, 2).contiguous()
            decoded = decoder.decode_tokens(ctx, points, keys)
            every = torch.arange(b, device=points.device)
            refined = decoder.upscale(ctx, decoded, every).float()
            iou, mask = self._single_mask(decoded.iou_preds, refined)
            ious.append(iou)
            masks.append(mask.clone())
        return torch.cat(ious, dim=1), torch.cat(masks, dim=1)
