"""The machine a benchmark runs on, and the time and peak memory of one call."""

from __future__ import annotations

import contextlib
import gc
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

MB = 1024 * 1024


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def git_commit() -> str | None:
    try:
        run = lambda *cmd: subprocess.run(  # noqa: E731
            ["git", *cmd],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        commit = run("rev-parse", "--short", "HEAD")
        return commit + ("-dirty" if run("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        return None


def hardware(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "gpu": None,
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=torch.cuda.get_device_name(0),
            gpu_memory_gb=round(props.total_memory / 1024**3, 1),
            cuda=torch.version.cuda,
        )
    return info


def hardware_label(hw: dict[str, Any]) -> str:
    if hw.get("gpu"):
        return hw["gpu"]
    return f"{hw['cpu']} ({hw['cpus_usable'] or hw['cpu_count']} cores, {hw['torch_threads']} thr)"


def _rss_bytes() -> int | None:
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


_process_peak = 0  # ru_maxrss seen before each VmHWM reset (a reset lowers ru_maxrss too)


def process_max_rss() -> int:
    """The process's peak RSS so far (bytes): ru_maxrss, kept across VmHWM resets."""
    global _process_peak
    ru_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    _process_peak = max(_process_peak, ru_maxrss * (1 if sys.platform == "darwin" else 1024))
    return _process_peak


def _reset_kernel_peak() -> bool:
    """Resets VmHWM (the kernel's peak RSS of this process); Linux >= 4.0."""
    process_max_rss()
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _kernel_peak_bytes() -> int | None:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return None


class RssSampler:
    """Samples this process's RSS every `interval` seconds in a thread while in the block."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.start = self.peak = _rss_bytes() or 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes() or 0)
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self.start = self.peak = _rss_bytes() or 0
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes() or 0)


@dataclass
class Call:
    seconds: float
    rss_start: int
    rss_peak: int
    kernel_peak: int | None
    cuda_allocated: int | None
    cuda_reserved: int | None
    image: str = ""


def measure(fn: Callable[[], Any], cuda: bool) -> tuple[Any, Call]:
    """Runs fn once: wall time (perf_counter, CUDA synchronised) and peak memory."""
    gc.collect()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    kernel = _reset_kernel_peak()
    with RssSampler() as rss:
        start = time.perf_counter()
        out = fn()
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    return out, Call(
        seconds=seconds,
        rss_start=rss.start,
        rss_peak=rss.peak,
        kernel_peak=_kernel_peak_bytes() if kernel else None,
        cuda_allocated=torch.cuda.max_memory_allocated() if cuda else None,
        cuda_reserved=torch.cuda.max_memory_reserved() if cuda else None,
    )


def mb(value: float | None) -> float | None:
    return None if value is None else round(value / MB, 1)
