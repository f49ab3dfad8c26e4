"""Where Hydra's own files go: nowhere the user did not name.

With `output_dir` on the command line, a single run's Hydra run directory is the current one
(which exists, so nothing is made) and Hydra writes neither `.hydra/` nor a log file there:
predict.yaml asks the `amg_if_output_dir` resolver. Without it, the run directory
`outputs/DATE/TIME` is the output folder and holds Hydra's files too; a refused command
takes them away again (`forget_run_dir`). Multirun jobs keep theirs, where the sweep report
reads them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf

HYDRA_SUBDIR_FILES = ("config.yaml", "hydra.yaml", "overrides.yaml")


def output_dir_given(task_overrides: Iterable[str]) -> bool:
    """Whether the command line sets output_dir (`output_dir=`, `+output_dir=`, `++...`)."""
    return any(override.lstrip("+").startswith("output_dir=") for override in task_overrides)


def output_dir_is_named() -> bool:
    """Whether the command line names the run's folder (`output_dir`, or `hydra.run.dir` as a
    DDP launcher passes it), so every process resolves the same one, not one stamped with
    its start time; True outside Hydra."""
    if not HydraConfig.initialized():
        return True
    overrides = HydraConfig.get().overrides
    return output_dir_given(overrides.task) or any(
        override.startswith("hydra.run.dir=") for override in overrides.hydra
    )


def _if_output_dir_given(given: Any, otherwise: Any) -> Any:
    """`given` in a single run whose command line sets output_dir, else `otherwise`."""
    hydra_cfg = HydraConfig.get()
    single_run = hydra_cfg.mode != RunMode.MULTIRUN
    return given if single_run and output_dir_given(hydra_cfg.overrides.task) else otherwise


OmegaConf.register_new_resolver("amg_if_output_dir", _if_output_dir_given, replace=True)


def forget_run_dir() -> None:
    """Remove the files Hydra wrote for a refused single run into its own timestamped run
    directory, and the directories left empty (up to `outputs/`).

    Nothing else is touched: a run directory named on the command line (`output_dir`,
    `hydra.run.dir`) or by a DDP launcher is left as it is, and a directory holding anything
    more stays.
    """
    if output_dir_is_named() or HydraConfig.get().mode == RunMode.MULTIRUN:
        return
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    if hydra_cfg.output_subdir is not None:
        subdir = run_dir / hydra_cfg.output_subdir
        for name in HYDRA_SUBDIR_FILES:
            (subdir / name).unlink(missing_ok=True)
        _remove_if_empty(subdir)
    root = logging.getLogger()
    for handler in root.handlers[:]:
        if not isinstance(handler, logging.FileHandler):
            continue
        log_file = Path(handler.baseFilename)
        if log_file.parent == run_dir:
            root.removeHandler(handler)
            handler.close()
            log_file.unlink(missing_ok=True)
    # outputs/DATE/TIME: each level goes only while empty.
    for folder in (run_dir, run_dir.parent, run_dir.parent.parent):
        if not _remove_if_empty(folder):
            break


def _remove_if_empty(folder: Path) -> bool:
    try:
        os.rmdir(folder)
    except OSError:  # not empty, or gone already
        return False
    return True
