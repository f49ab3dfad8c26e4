"""Image and annotation ids unique within a run folder, made from where a record is written.

A complete shard's (rank, number) is never used twice in a folder: each rank numbers its new
shards after its complete ones, and an unfinished shard is deleted together with its ids. So
ids built from the shard and the place inside it are unique over all ranks and resumed runs,
whatever their world sizes, without reading anything back:

    shard         = number * 2**10 + rank
    image_id      = shard * 2**20 + position + 1    (position: the image's place in its shard)
    annotation id = shard * 2**32 + index + 1       (index: the mask's place in its shard)

Both start at 1. Image ids stay below 2**50 (exact as JSON numbers anywhere), annotation ids
below 2**62 (64-bit integers). Bounds: rank < 1024, shard number < 2**20 per rank, shard_size
< 2**20 images, fewer than 2**32 masks per shard.
"""

from __future__ import annotations

RANK_BITS = 10
NUMBER_BITS = 20
POSITION_BITS = 20
ANNOTATION_BITS = 32
MAX_SHARD_SIZE = 2**POSITION_BITS - 1


def _shard_code(rank: int, number: int) -> int:
    if not 0 <= rank < 2**RANK_BITS:
        raise ValueError(f"ids allow ranks 0..{2**RANK_BITS - 1}, got rank {rank}")
    if not 0 <= number < 2**NUMBER_BITS:
        raise ValueError(f"ids allow shard numbers 0..{2**NUMBER_BITS - 1}, got {number}")
    return number << RANK_BITS | rank


def image_id(rank: int, number: int, position: int) -> int:
    """The id of the image at `position` (from 0) in shard `number` of `rank`."""
    if not 0 <= position < MAX_SHARD_SIZE:
        raise ValueError(f"ids allow {MAX_SHARD_SIZE} images per shard, got position {position}")
    return _shard_code(rank, number) << POSITION_BITS | (position + 1)


def annotation_id(rank: int, number: int, index: int) -> int:
    """The id of the shard's mask number `index` (from 0, over all its images)."""
    if not 0 <= index < 2**ANNOTATION_BITS - 1:
        raise ValueError(f"ids allow {2**ANNOTATION_BITS - 1} masks per shard, got index {index}")
    return _shard_code(rank, number) << ANNOTATION_BITS | (index + 1)
