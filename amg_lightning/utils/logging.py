"""A logger that speaks from global rank 0 only, so N processes do not print N times."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from lightning.pytorch.utilities.rank_zero import rank_zero_only


class RankZeroLogger(logging.LoggerAdapter):
    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if rank_zero_only.rank == 0 and self.isEnabledFor(level):
            msg, kwargs = self.process(msg, kwargs)
            self.logger.log(level, msg, *args, **kwargs)


def get_logger(name: str, extra: Mapping[str, object] | None = None) -> RankZeroLogger:
    return RankZeroLogger(logging.getLogger(name), extra)
