"""keep_freed_memory: freed large tensors' memory is reused without faulting in again."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import ctypes, resource, sys, torch
from amg_lightning.utils.allocator import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def step():  # the decoder's pattern: large activations made from each other, then freed
    x = torch.ones(16 * 2**20)  # 64 MiB
    y = x * 2
    del x
    z = y + 1
    del y, z
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    step()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]
mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
mallinfo2.restype = MallInfo2
print(faults, mallinfo2().fordblks)
"""


def probe_numbers(source: str, *args: str) -> list[int]:
    """The numbers a probe prints last, run in a fresh Python process."""
    done = subprocess.run([sys.executable, "-c", source, *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return [int(word) for word in done.stdout.splitlines()[-1].split()]


def steps_in_fresh_process(mode: str) -> tuple[int, int]:
    """Page faults of three steps after a first, and the bytes glibc's heap holds free then."""
    faults, free_heap = probe_numbers(PROBE, mode)
    return faults, free_heap


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_large_tensors_reuse_freed_memory_without_page_faults():
    default_faults, default_free = steps_in_fresh_process("default")
    assert default_faults > 3 * 3 * 16384 / 2  # most of 9 x 64 MiB faulted in again, 4 KiB a time
    assert default_free < 64 * 2**20  # each block was mapped afresh and handed back
    # Kept, the freed blocks stay in glibc's heap for the next step: that much is glibc's and
    # certain. The kernel may still page kept memory out between steps (proactive reclaim:
    # 16k to 98k faults measured here, one process in 15 over half the default's), so the
    # fault count is the best of three processes.
    kept = [steps_in_fresh_process("keep") for _ in range(3)]
    assert all(free_heap >= 2 * 64 * 2**20 for _, free_heap in kept)
    assert min(faults for faults, _ in kept) < default_faults / 2


TILES_PROBE = """
import resource, torch
from amg_lightning.core.full_res import CropResize
resize = CropResize(256, 1024, (683, 1024), (1500, 2250))
rows, cols = resize.low_res_shape
# Noise about every cutoff on 45% of each map: under half the tiles need resizing, so they
# are resized tile by tile (more would be resized whole, densely).
noise = torch.full((16, rows, cols), -20.0)
part = (16, rows, int(cols * 0.45))
noise[..., : part[2]] = torch.randn(part, generator=torch.Generator().manual_seed(0)) * 3
resize.tiled_masks(noise, 0.0, 1.0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
masks = resize.tiled_masks(noise, 0.0, 1.0)
print(len(masks.tiles), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's page faults")
def test_tiled_masks_reuse_their_memory_under_the_default_allocator():
    """Under glibc's defaults, resizing 24k tiles faults in little more than the kept masks
    (a quarter page per tile); steps whose temporaries glibc hands back would fault in
    most of them again, step after step."""
    tiles, faults = probe_numbers(TILES_PROBE)
    assert tiles > 20000  # every tile with noise is resized
    assert faults < tiles / 2
