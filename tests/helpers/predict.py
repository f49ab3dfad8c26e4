"""Running `predict.py` or the `amg-predict` console script in a subprocess, as a user does."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

PREDICT = Path(__file__).resolve().parents[2] / "predict.py"
# The installed console script, beside this interpreter.
AMG_PREDICT = Path(sys.executable).parent / "amg-predict"


def run_predict(
    args: list[str],
    cwd: Path,
    timeout: float,
    env: dict[str, str] | None = None,
    command: tuple[str, ...] = (sys.executable, str(PREDICT)),
    preexec_fn: Callable[[], None] | None = None,
) -> subprocess.CompletedProcess:
    """`python predict.py ARGS` (or `command` ARGS) from `cwd`, as a user runs it (without
    HYDRA_FULL_ERROR); `preexec_fn` runs in the child before it starts (a resource limit)."""
    environment = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    environment.update(env or {})
    return subprocess.run(
        [*command, *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=preexec_fn,
    )


def console_command(name: str) -> str:
    """The path of an installed console script (`amg-export`, ...), beside this interpreter."""
    return str(Path(sys.executable).parent / name)
