"""Ids of records written by different ranks never collide."""

from __future__ import annotations

from amg_lightning.run.ids import annotation_id, image_id


def test_ranks_0_and_1_give_different_ids_for_the_same_shard_number_and_place() -> None:
    """Each rank numbers its shards from 0, so shard 3 exists on both: the rank tells them apart."""
    assert image_id(0, 3, 5) != image_id(1, 3, 5)
    assert annotation_id(0, 3, 5) != annotation_id(1, 3, 5)
    images = {image_id(rank, number, 0) for rank in range(4) for number in range(4)}
    assert len(images) == 16
