"""Counting what would make a GPU wait: host reads of tensor values and data-dependent ops.

On CUDA each of these is a synchronisation: the host needs a value (or an output's size)
that only the device knows. Counted on any device, so the CPU shows what CUDA would wait on:

- reads: calls of Tensor.item, tolist, numpy, cpu, __bool__, __int__ and __float__ (one
  each, whatever they dispatch);
- data-dependent ops, seen by a TorchDispatchMode: ops whose output size depends on the
  values (nonzero, masked_select, unique, boolean-mask indexing, NMS, ...), and scalar reads
  made inside other ops (`_local_scalar_dense` outside the wrapped methods).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

READ_METHODS = ("item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__")
_DATA_DEPENDENT = {
    "aten::nonzero",
    "aten::masked_select",
    "aten::_unique",
    "aten::_unique2",
    "aten::unique_dim",
    "aten::unique_consecutive",
    "aten::bincount",
    "aten::repeat_interleave",
    "aten::_local_scalar_dense",
    "torchvision::nms",
}
_BOOLEAN_INDEXED = {"aten::index", "aten::index_put", "aten::index_put_"}


class HostReads:
    """Counts by name (`counts`) and in all (`total`)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._inside_read = threading.local()

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def wrap(self, name: str, method: Callable) -> Callable:
        def counted(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if getattr(self._inside_read, "depth", 0) == 0:
                self.counts[f"Tensor.{name}"] += 1
            self._inside_read.depth = getattr(self._inside_read, "depth", 0) + 1
            try:
                return method(tensor, *args, **kwargs)
            finally:
                self._inside_read.depth -= 1

        return counted

    def op(self, name: str, args: tuple) -> None:
        if getattr(self._inside_read, "depth", 0):
            return
        boolean_index = name in _BOOLEAN_INDEXED and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool
            for index in args[1:2]
            for i in (index if isinstance(index, (list, tuple)) else [index])
        )
        if name in _DATA_DEPENDENT or boolean_index:
            self.counts[name] += 1


class _Mode(TorchDispatchMode):
    def __init__(self, reads: HostReads) -> None:
        super().__init__()
        self.reads = reads

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.reads.op(func._schema.name, args)
        return func(*args, **(kwargs or {}))


@contextmanager
def count_host_reads() -> Iterator[HostReads]:
    """Counts host reads and data-dependent ops of the torch code run inside."""
    reads = HostReads()
    originals = {name: getattr(torch.Tensor, name) for name in READ_METHODS}
    for name, method in originals.items():
        setattr(torch.Tensor, name, reads.wrap(name, method))
    try:
        with _Mode(reads):
            yield reads
    finally:
        for name, method in originals.items():
            setattr(torch.Tensor, name, method)
