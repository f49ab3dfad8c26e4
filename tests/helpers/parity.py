"""Strict parity in the tests: amg_lightning.bench.parity's definition, as an assertion."""

from __future__ import annotations

from typing import Any

from amg_lightning.bench.parity import ROUNDING_PIXELS, SCORE_TOLERANCE, exact_differences


def assert_same_records(
    ours: list[dict[str, Any]],
    reference: list[dict[str, Any]],
    score_tol: float = SCORE_TOLERANCE,
    pixel_tol: int = ROUNDING_PIXELS,
) -> None:
    """Every reference record has its twin at the same index in `ours` (see exact_differences);
    the message lists every differing record."""
    problems = exact_differences(ours, reference, score_tol, pixel_tol)
    assert not problems, f"{len(problems)} differences:\n" + "\n".join(problems[:30])
