"""SAM's prompt encoder and mask decoder for many single-point prompts on one image.

The result equals `MaskDecoder.forward(..., multimask_output=True)` up to float rounding,
but the work is arranged for the automatic generator, where every prompt shares the image:

* The first transformer block sees the same image tokens for every prompt, so its image-side
  projections are computed once per image instead of once per prompt.
* Attention against the 4096 image tokens is reassociated onto the 7 prompt tokens
  (`(q Wk) k^T` instead of `q (k Wk)^T`, `(a v) Wv` instead of `a (v Wv)`), so no per-prompt
  projection of the image tokens is ever made. The key bias only shifts each softmax row by a
  constant and is dropped; the value bias passes through because softmax rows sum to one.
* Mask upscaling is split from the transformer, so prompts whose masks all fail the
  predicted-IoU filter are never upscaled.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F


@dataclass
class ImageContext:
    """Per-image tensors shared by all prompts (N image tokens, C channels, C' = C/2)."""

    keys: Tensor  # 1 x N x C: image embedding plus the "no mask" dense embedding
    first_t2i_k: Tensor  # N x C': block 1 token-to-image keys, projected once
    first_t2i_v: Tensor  # N x C': block 1 token-to-image values, projected once
    first_i2t_q: Tensor  # N x C': block 1 image-to-token queries, projected once
    # The positional encoding's share of each later attention, projected once (no bias):
    t2i_pos_k: list[Tensor]  # per block, then the final attention: N x C'
    i2t_pos_q: list[Tensor]  # per block: N x C'
    grid: tuple[int, int]  # h, w of the embedding
    embedding: Tensor  # 1 x C x h x w: the image embedding itself
    # SAM 2's high-resolution features, added inside the upscaler (None for SAM 1), laid out
    # as the upscaler's rows: h x w x 2 x 2 x C/4 (after its first convolution) and
    # h x w x 2 x 2 x (2 x 2 x C/8) (after its second).
    high_res: tuple[Tensor, Tensor] | None = None


@dataclass
class DecodedTokens:
    """The transformer's output for a batch of B prompts."""

    keys: Tensor  # B x N x C: image tokens after the last block (input of the upscaler)
    mask_tokens: Tensor  # B x K x C: the output tokens of `PointDecoder.mask_outputs`
    iou_preds: Tensor  # B x K: their predicted IoU


def _heads(x: Tensor, num_heads: int) -> Tensor:
    """B x T x C' -> B x heads x T x C'/heads."""
    b, t, c = x.shape
    return x.reshape(b, t, num_heads, c // num_heads).transpose(1, 2)


def _merge(x: Tensor) -> Tensor:
    """B x heads x T x D -> B x heads*T x D."""
    return x.flatten(1, 2)


class Workspace:
    """Large per-batch buffers, allocated once and reused by every following batch.

    The decoder's B x N x C activations and B x heads*T x N scores are far above glibc's
    mmap threshold: allocated afresh each batch, the kernel would fault every page in again
    (half the run time on the CPU). Writing them into kept buffers makes the library fast
    under the process's default allocator. `clear()` hands the memory back.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """An uninitialised tensor of `shape`, with `like`'s dtype and device."""
        numel = math.prod(shape)
        buffer = self._buffers.get(name)
        if (
            buffer is None
            or buffer.numel() < numel
            or buffer.dtype != like.dtype
            or buffer.device != like.device
        ):
            buffer = torch.empty(numel, dtype=like.dtype, device=like.device)
            self._buffers[name] = buffer
        return buffer[:numel].view(shape)

    def clear(self) -> None:
        self._buffers.clear()


def _softmax_(x: Tensor, dim: int) -> Tensor:
    """torch.softmax written over its input (same kernel, same values)."""
    return torch.ops.aten._softmax.out(x, dim, False, out=x)


def _layer_norm_(x: Tensor, norm: nn.Module) -> Tensor:
    """F.layer_norm over the last dimension, written over `x` some MiB of rows at a time.

    Rows are normalised independently, so the values are the kernel's own; the out= variant
    of the kernel would allocate a full-size temporary.
    """
    rows = x.view(-1, x.shape[-1])
    step = max(1, _LAYER_NORM_SLICE_BYTES // (rows.shape[1] * rows.element_size()))
    for start in range(0, rows.shape[0], step):
        part = rows[start : start + step]
        part.copy_(F.layer_norm(part, part.shape[-1:], norm.weight, norm.bias, norm.eps))
    return x


_LAYER_NORM_SLICE_BYTES = 16 * 2**20


def _add_and_norm(out: Tensor, base: Tensor, probs_t: Tensor, u: Tensor, norm: nn.Module) -> Tensor:
    """`norm(base + probs_t @ u)` written into `out` (B x N x C), a few prompts at a time.

    `base` is 1 x N x C (shared by every prompt) or `out` itself. Each slice's sum is still in
    the CPU's caches when it is normalised: a third less time than a pass over the whole
    batch for the sum, another for the norm and a copy back. The values are the same.
    """
    slice_bytes = _slice_bytes(_ADD_AND_NORM_SLICE_BYTES, out.device)
    step = max(1, slice_bytes // (out[0].numel() * out.element_size()))
    for start in range(0, len(out), step):
        part = slice(start, start + step)
        if base is out:  # in place: a third faster than a product that copies `out` first
            summed = out[part].baddbmm_(probs_t[part], u[part])
        else:
            summed = torch.baddbmm(base, probs_t[part], u[part])
        out[part] = F.layer_norm(summed, summed.shape[-1:], norm.weight, norm.bias, norm.eps)
    return out


_ADD_AND_NORM_SLICE_BYTES = 8 * 2**20


def _slice_bytes(cpu_bytes: int, device: torch.device) -> int:
    """Work per slice: `cpu_bytes` on the CPU, sized to stay in its caches between steps;
    32 times that elsewhere (CUDA), where small slices would only add kernel launches."""
    return cpu_bytes if device.type == "cpu" else 32 * cpu_bytes


class PointDecoder(nn.Module):
    """Decodes batches of single foreground points against one image embedding.

    With `upscale_dtype=torch.bfloat16` the upscaler (half the decoder's work) runs on a
    bfloat16 copy of its weights; the transformer, whose IoU predictions decide which masks
    are kept, stays in float32.

    Large activations live in `workspace`: a batch's results (`DecodedTokens.keys`, the
    low-resolution logits of `upscale`) are valid until the next call of the same method.
    """

    def __init__(
        self,
        sam: nn.Module,
        upscale_dtype: torch.dtype = torch.float32,
        mask_outputs: tuple[int, ...] = (1, 2, 3),
    ) -> None:
        super().__init__()
        sam2 = hasattr(sam, "sam_mask_decoder")  # SAM 2's modules have their own names
        self.prompt_encoder = sam.sam_prompt_encoder if sam2 else sam.prompt_encoder
        self.mask_decoder = sam.sam_mask_decoder if sam2 else sam.mask_decoder
        self.transformer = self.mask_decoder.transformer
        self.num_heads = self.transformer.num_heads
        self.upscaler = (
            self.mask_decoder
            if upscale_dtype == torch.float32
            else copy.deepcopy(self.mask_decoder).to(upscale_dtype)
        )
        # Which mask tokens come out: 1-3 the multimask outputs, 0 the single-mask one.
        self.mask_outputs = mask_outputs
        # SAM 2.1's object-score token comes before the IoU token.
        self.first_output = 1 if getattr(self.mask_decoder, "pred_obj_scores", False) else 0
        self.workspace = Workspace()

    # The upscaler's two stride-2 transposed convolutions: an embedding pixel becomes 4 x 4 logits.
    upscale_factor = 4

    @property
    def low_res_size(self) -> int:
        """Side of the square low-resolution logit map."""
        return self.upscale_factor * self.prompt_encoder.image_embedding_size[0]

    @torch.no_grad()
    def prepare(
        self, image_embedding: Tensor, high_res: tuple[Tensor, Tensor] | None = None
    ) -> ImageContext:
        """Per-image work: one 1 x C x h x w embedding in, shared projections out.

        `high_res` are SAM 2's 1 x C/8 x 4h x 4w and 1 x C/4 x 2h x 2w features.
        """
        pe = self.prompt_encoder.get_dense_pe()
        no_mask = self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        keys = (image_embedding.float() + no_mask).flatten(2).transpose(1, 2)
        pos = pe.flatten(2).transpose(1, 2).to(keys.dtype)[0]
        transformer = self.transformer
        layers = transformer.layers
        t2i = [layer.cross_attn_token_to_image for layer in layers]
        t2i.append(transformer.final_attn_token_to_image)
        first = layers[0]
        return ImageContext(
            keys=keys,
            first_t2i_k=first.cross_attn_token_to_image.k_proj(keys + pos)[0],
            first_t2i_v=first.cross_attn_token_to_image.v_proj(keys)[0],
            first_i2t_q=first.cross_attn_image_to_token.q_proj(keys + pos)[0],
            t2i_pos_k=[pos @ attn.k_proj.weight.T for attn in t2i],
            i2t_pos_q=[pos @ layer.cross_attn_image_to_token.q_proj.weight.T for layer in layers],
            grid=tuple(image_embedding.shape[-2:]),
            embedding=image_embedding,
            high_res=None if high_res is None else _upscaler_layout(*high_res),
        )

    def _prompt_tokens(self, points: Tensor) -> Tensor:
        """B x 2 points in the model's input frame -> B x 7 x C decoder tokens."""
        sparse = self._point_embeddings(points)
        decoder = self.mask_decoder
        weights = [decoder.iou_token.weight, decoder.mask_tokens.weight]
        if self.first_output:
            weights.insert(0, decoder.obj_score_token.weight)
        output_tokens = torch.cat(weights, dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(sparse.shape[0], -1, -1)
        return torch.cat([output_tokens, sparse], dim=1)

    def _point_embeddings(self, points: Tensor) -> Tensor:
        """The prompt encoder's B x 2 x C sparse embeddings of B foreground points, each padded
        with a not-a-point, as its `_embed_points` computes them. It picks rows by label with
        boolean masks, a read back to the host each on CUDA; every label here is known, so
        the rows are taken by position instead (the same additions)."""
        encoder = self.prompt_encoder
        padding = torch.zeros(len(points), 1, 2, device=points.device)
        coords = torch.cat([points[:, None, :] + 0.5, padding], dim=1)
        embedded = encoder.pe_layer.forward_with_coords(coords, encoder.input_image_size)
        point = embedded[:, :1] + encoder.point_embeddings[1].weight
        not_a_point = torch.zeros_like(embedded[:, 1:]) + encoder.not_a_point_embed.weight
        return torch.cat([point, not_a_point], dim=1)

    def _head_scores(self, xh: Tensor, projected: Tensor) -> Tensor:
        """Each head's B x T x d rows against its slice of the N x (heads*d) `projected`.

        Heads lead the product so the shared `projected` is never broadcast over the batch.
        Returns H x BT x N (a workspace).
        """
        b, heads, t, d = xh.shape
        per_head = projected.reshape(-1, heads, d).permute(1, 2, 0)  # H x d x N
        out = self.workspace.get("head_scores", (heads, b * t, per_head.shape[-1]), xh)
        return torch.bmm(xh.transpose(0, 1).reshape(heads, b * t, d), per_head, out=out)

    def _scores(self, xh: Tensor, projected: Tensor) -> Tensor:
        """`_head_scores` laid out batch first: B x heads*T x N (a workspace)."""
        b, heads, t, _ = xh.shape
        by_head = self._head_scores(xh, projected)
        n = by_head.shape[-1]
        scores = self.workspace.get("scores", (b, heads * t, n), xh)
        scores.view(b, heads, t, n).copy_(by_head.view(heads, b, t, n).transpose(0, 1))
        return scores

    def _token_to_image(self, attn: nn.Module, q: Tensor, keys: Tensor, pos_k: Tensor) -> Tensor:
        """Tokens attend to per-prompt image tokens without projecting the image tokens."""
        heads, d = self.num_heads, attn.internal_dim // self.num_heads
        qh = _heads(attn.q_proj(q), heads) / math.sqrt(d)  # B x H x T x d
        wk = attn.k_proj.weight.reshape(heads, d, -1)  # H x d x C
        # (keys + pos) Wk^T q^T, with the shared pos Wk^T projected once per image.
        scores = self._scores(qh, pos_k).baddbmm_(_merge(qh @ wk), keys.transpose(1, 2))
        mixed = (_softmax_(scores, -1) @ keys).unflatten(1, (heads, -1))  # B x H x T x C
        wv = attn.v_proj.weight.reshape(heads, d, -1)
        out = mixed @ wv.transpose(1, 2) + attn.v_proj.bias.reshape(heads, 1, d)
        return attn.out_proj(out.transpose(1, 2).flatten(2))

    def _first_token_to_image(self, layer: nn.Module, ctx: ImageContext, q: Tensor) -> Tensor:
        """Block 1 token-to-image attention against the shared, projected image tokens."""
        attn = layer.cross_attn_token_to_image
        heads, d = self.num_heads, attn.internal_dim // self.num_heads
        qh = _heads(attn.q_proj(q), heads) / math.sqrt(d)  # B x H x T x d
        b, t = qh.shape[0], qh.shape[2]
        vh = ctx.first_t2i_v.reshape(-1, heads, d).transpose(0, 1)  # H x N x d
        scores = _softmax_(self._head_scores(qh, ctx.first_t2i_k), -1)  # H x BT x N
        out = torch.bmm(scores, vh).view(heads, b, t, d)
        return attn.out_proj(out.permute(1, 2, 0, 3).flatten(2))

    def _image_to_token(
        self, i: int, ctx: ImageContext, keys: Tensor, tokens: Tensor, queries: Tensor
    ) -> Tensor:
        """Block `i`'s image tokens attend to the prompt tokens; returns the keys after norm4.

        While `keys` are the context's shared 1 x N x C the projected image query is shared;
        else the query projection moves onto the tokens. The output projection always moves
        onto the tokens, and the residual add happens inside the last matrix product.
        """
        layer = self.transformer.layers[i]
        attn = layer.cross_attn_image_to_token
        heads, d = self.num_heads, attn.internal_dim // self.num_heads
        kh = _heads(attn.k_proj(queries + tokens), heads) / math.sqrt(d)  # B x H x T x d
        shared = keys is ctx.keys
        if shared:
            scores = self._scores(kh, ctx.first_i2t_q)  # B x HT x N
        else:
            wq = attn.q_proj.weight.reshape(heads, d, -1)  # H x d x C
            bias = _merge(kh @ attn.q_proj.bias.reshape(heads, d, 1))  # B x HT x 1
            scores = self._scores(kh, ctx.i2t_pos_q[i]).add_(bias)
            scores.baddbmm_(_merge(kh @ wq), keys.transpose(1, 2))
        # Softmax over the T prompt tokens, laid out along dim 2 so the kernel runs over N.
        b, t = kh.shape[0], kh.shape[2]
        probs = _softmax_(scores.view(b, heads, t, -1), 2).view(b, heads * t, -1)
        vh = _heads(attn.v_proj(queries), heads)  # B x H x T x d
        wo = attn.out_proj.weight.reshape(-1, heads, d).transpose(0, 1)  # H x C x d
        # Each head's probabilities sum to one, so the output bias is spread over the heads.
        u = _merge(vh @ wo.transpose(1, 2) + attn.out_proj.bias / heads)  # B x HT x C
        # The shared keys are added into a workspace; a batch's own keys are updated in place.
        out = self.workspace.get("keys", (b, *keys.shape[1:]), keys) if shared else keys
        return _add_and_norm(out, keys, probs.transpose(1, 2), u, layer.norm4)

    @torch.no_grad()
    def decode_tokens(
        self, ctx: ImageContext, points: Tensor, keys: Tensor | None = None
    ) -> DecodedTokens:
        """Runs the two-way transformer and the IoU head for B points (model input frame).

        `keys` (B x N x C, overwritten) are per-prompt image tokens in place of the context's
        shared ones: the embedding plus each prompt's own dense (mask prompt) embedding.
        """
        tokens = self._prompt_tokens(points)
        queries, keys = tokens, ctx.keys if keys is None else keys
        for i, layer in enumerate(self.transformer.layers):
            if i == 0:
                queries = layer.self_attn(q=queries, k=queries, v=queries)
            else:
                q = queries + tokens
                queries = queries + layer.self_attn(q=q, k=q, v=queries)
            queries = layer.norm1(queries)
            if keys is ctx.keys:
                update = self._first_token_to_image(layer, ctx, queries + tokens)
            else:
                attn = layer.cross_attn_token_to_image
                update = self._token_to_image(attn, queries + tokens, keys, ctx.t2i_pos_k[i])
            queries = layer.norm2(queries + update)
            queries = layer.norm3(queries + layer.mlp(queries))
            keys = self._image_to_token(i, ctx, keys, tokens, queries)

        # Only the IoU token and the mask tokens that come out are read after the final
        # attention, in which each token attends on its own: the others are not computed.
        first = self.first_output
        used = [first] + [first + 1 + m for m in self.mask_outputs]
        queries, tokens = queries[:, used], tokens[:, used]
        attn = self.transformer.final_attn_token_to_image
        queries = queries + self._token_to_image(attn, queries + tokens, keys, ctx.t2i_pos_k[-1])
        queries = self.transformer.norm_final_attn(queries)

        iou_preds = self.mask_decoder.iou_prediction_head(queries[:, 0, :])
        return DecodedTokens(
            keys=keys,
            mask_tokens=queries[:, 1:, :],
            iou_preds=iou_preds[:, list(self.mask_outputs)],
        )

    @torch.no_grad()
    def upscale(
        self,
        ctx: ImageContext,
        tokens: DecodedTokens,
        prompts: Tensor,
        extent: tuple[int, int] | None = None,
    ) -> Tensor:
        """Low-resolution mask logits (P x K x 4h x 4w) of the P prompts at indices `prompts`.

        Only the top-left `extent` (h x w) of the embedding grid is upscaled, the default
        being all of it: every step below works per pixel, so the rest (the encoder input's
        padding) can be left out without changing a value.

        Each of the upscaler's 2 x 2, stride-2 transposed convolutions maps a pixel to its own
        2 x 2 block, so each is one matrix product over channels-last pixels, with the blocks
        kept beside their pixel: channel norm and GELU work per pixel and need no other order.
        Only the hypernetwork product, K channels, is put in image order. SAM 2's
        high-resolution features are added in the same layout.
        """
        conv1, norm, _, conv2, _ = self.upscaler.output_upscaling
        keys = tokens.keys
        channels = keys.shape[-1]
        h, w = extent or ctx.grid
        grid_keys = keys.view(-1, *ctx.grid, channels)[:, :h, :w]
        c1, c2 = conv1.out_channels, conv2.out_channels
        w1 = conv1.weight.permute(0, 2, 3, 1).reshape(channels, 4 * c1)  # columns (i, j, c1)
        w2 = conv2.weight.permute(0, 2, 3, 1).reshape(c1, 4 * c2)  # columns (k, l, c2)
        b1, b2 = conv1.bias.repeat(4), conv2.bias.repeat(4)
        mlps = self.upscaler.output_hypernetworks_mlps
        mask_tokens = tokens.mask_tokens[prompts].to(w1.dtype)
        hyper = torch.stack(
            [mlps[m](mask_tokens[:, i]) for i, m in enumerate(self.mask_outputs)], dim=1
        )  # P x K x c2
        k = hyper.shape[1]
        high_res = None
        if ctx.high_res is not None:
            s1, s0 = (f[:h, :w].to(w1.dtype) for f in ctx.high_res)
            high_res = s1.reshape(1, -1, c1), s0.reshape(1, -1, 4 * c2)
        ws = self.workspace
        out = ws.get("low_res", (len(prompts), k, 4 * h, 4 * w), w1)
        slice_bytes = _slice_bytes(_UPSCALE_CHUNK_BYTES, keys.device)
        step = max(1, slice_bytes // (h * w * 16 * c2 * w1.element_size()))
        for start in range(0, len(prompts), step):
            index = prompts[start : start + step]
            n = len(index)
            x = ws.get("up_in", (n, h, w, channels), keys)
            torch.index_select(grid_keys, 0, index, out=x)
            if x.dtype != w1.dtype:
                x = ws.get("up_in_cast", x.shape, w1).copy_(x)
            y1 = ws.get("up1", (n * h * w, 4 * c1), w1)
            torch.addmm(b1, x.view(-1, channels), w1, out=y1)
            if high_res is not None:
                y1.view(n, -1, c1).add_(high_res[0])
            y1 = y1.view(-1, c1)  # rows (prompt, y, x, i, j)
            _layer_norm_(y1, norm)
            torch.ops.aten.gelu_(y1)
            y2 = torch.addmm(b2, y1, w2, out=ws.get("up2", (y1.shape[0], 4 * c2), w1))
            if high_res is not None:
                y2.view(n, -1, 4 * c2).add_(high_res[1])
            torch.ops.aten.gelu_(y2)  # rows (prompt, y, x, i, j), columns (k, l, c2)
            logits = ws.get("up3", (n, k, h * w * 16), w1)
            torch.bmm(hyper[start : start + n], y2.view(n, -1, c2).transpose(1, 2), out=logits)
            # Pixel (y, x), block (i, j), block (k, l) is row 4y + 2i + k, column 4x + 2j + l.
            blocks = logits.view(n, k, h, w, 2, 2, 2, 2).permute(0, 1, 2, 4, 6, 3, 5, 7)
            out[start : start + n].view(n, k, h, 2, 2, w, 2, 2).copy_(blocks)
        return out


def _upscaler_layout(s0: Tensor, s1: Tensor) -> tuple[Tensor, Tensor]:
    """SAM 2's high-resolution features in the upscaler's row order (see ImageContext):
    `s1` pixel (2y + i, 2x + j) at [y, x, i, j]; `s0` pixel (4y + 2i + k, 4x + 2j + l) at
    [y, x, i, j, (k, l, channel)]."""
    c1, c0 = s1.shape[1], s0.shape[1]
    h, w = s1.shape[-2] // 2, s1.shape[-1] // 2
    s1 = s1[0].view(c1, h, 2, w, 2).permute(1, 3, 2, 4, 0).contiguous()
    s0 = s0[0].view(c0, h, 2, 2, w, 2, 2).permute(1, 4, 2, 5, 3, 6, 0).contiguous()
    return s1, s0.view(h, w, 2, 2, 4 * c0)


# Upscaler work per slice of prompts (the last layer's output): a prompt or two, so that
# each step's output is still in the CPU's caches when the next step reads it (a quarter
# less time than 64 MiB slices on 2 cores).
_UPSCALE_CHUNK_BYTES = 16 * 2**20


def upscale_to_input(
    low_res: Tensor, encoder_size: int, input_size: tuple[int, int], low_size: int | None = None
) -> Tensor:
    """The first half of SAM's postprocess_masks: to the padded encoder input, then unpad.

    Only the part of the padded input that survives the unpadding is computed: the low-res
    logits are cut one pixel beyond what it needs, and upscaled by the same factor, which
    maps coordinates exactly as the full-size call does. `low_res` may hold only that top-left
    part of the `low_size`-sided map (default: it is the whole map).
    """
    factor = encoder_size // (low_size or low_res.shape[-1])
    rows = min(low_res.shape[-2], -(-input_size[0] // factor) + 1)
    cols = min(low_res.shape[-1], -(-input_size[1] // factor) + 1)
    masks = F.interpolate(
        low_res[..., :rows, :cols], scale_factor=factor, mode="bilinear", align_corners=False
    )
    return masks[..., : input_size[0], : input_size[1]]


def upscale_to_crop(
    low_res: Tensor,
    encoder_size: int,
    input_size: tuple[int, int],
    crop_size: tuple[int, int],
    low_size: int | None = None,
) -> Tensor:
    """SAM's postprocess_masks: `upscale_to_input`, then to the crop's size."""
    masks = upscale_to_input(low_res, encoder_size, input_size, low_size)
    return F.interpolate(masks, crop_size, mode="bilinear", align_corners=False)
