"""Running `predict.py` or the `amg-predict` console script in a subprocess, as a user does."""

from __future__ import annotations

import os
import subprocess
import sys
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
) -> subprocess.CompletedProcess:
    """`python predict.py ARGS` (or `command` ARGS) from `cwd`, as a user runs it (without
    HYDRA_FULL_ERROR)."""
    environment = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    environment.update(env or {})
    return subprocess.run(
        [*command, *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def console_command(name: str) -> str:
    """The path of an installed console script (`amg-export`, ...), beside this interpreter."""
    return str(Path(sys.executable).parent / name)
