"""Batch sizes from the memory a device has free, so big models fit the machine they run on."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

# Share of the free memory one batch may take: the rest is for everything else in flight.
_BUDGET_SHARE = 0.5
# Full-resolution work per slice of masks on the CPU: small enough for glibc to reuse the
# memory from one slice to the next (it maps larger blocks afresh each time).
_CPU_FULL_RES_BYTES = 32 * 2**20
# TinyViT (vit_t) has no global attention: on the CPU its peak grows by about 220 MB per
# 1024² crop (266 MB for one, 906 MB for four).
_WINDOWED_ENCODER_BYTES = 256 * 2**20


def free_bytes(device: torch.device) -> int | None:
    """Free device memory (CUDA), or the kernel's MemAvailable (CPU); None if unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def encoder_bytes_per_crop(encoder: nn.Module) -> int:
    """Peak activation memory of one crop through the image encoder, estimated from its shape.

    A ViT's global-attention blocks hold a heads x n x n score matrix several times over
    (scores, relative-position terms, softmax) for n patch tokens; the rest is small beside it.
    """
    blocks = getattr(encoder, "blocks", None)
    if blocks is None:
        return _WINDOWED_ENCODER_BYTES
    tokens = (encoder.img_size // encoder.patch_embed.proj.kernel_size[0]) ** 2
    heads = blocks[0].attn.num_heads
    width = encoder.patch_embed.proj.out_channels
    return 4 * (3 * heads * tokens**2 + 20 * width * tokens)


def crops_per_pass(encoder: nn.Module, device: torch.device, most: int) -> int:
    """Crops per encoder pass: what half the free memory holds, at least 1, at most `most`."""
    free = free_bytes(device)
    if free is None:
        return most
    fits = int(free * _BUDGET_SHARE) // encoder_bytes_per_crop(encoder)
    return max(1, min(most, fits))


def prompts_per_batch(tokens: int, channels: int, device: torch.device, least: int) -> int:
    """Decoder prompts per batch on CUDA: what half the free memory holds (at most 1024).

    The CPU keeps `least` (points_per_batch): larger batches only leave the CPU's caches.
    Per prompt the decoder holds about four tokens x channels float activations.
    """
    free = free_bytes(device) if device.type == "cuda" else None
    if free is None:
        return least
    fits = int(free * _BUDGET_SHARE) // (4 * tokens * channels * 4)
    return max(least, min(1024, fits))


def full_res_bytes(device: torch.device, most: int, host_path: bool = True) -> int:
    """Bytes of full-resolution work per slice of masks, at most `most`.

    On the host path the CPU keeps slices within glibc's reuse (`_CPU_FULL_RES_BYTES`). CUDA's
    caching allocator reuses any size, and each slice costs a read back to the host, so there
    (and on the device path everywhere) a slice takes up to `most`, within half the free
    memory on CUDA.
    """
    if device.type != "cuda":
        return min(most, _CPU_FULL_RES_BYTES) if host_path else most
    return max(1, min(most, int(free_bytes(device) * _BUDGET_SHARE)))
