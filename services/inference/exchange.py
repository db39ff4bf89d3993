"""Images and outputs between the inference server and its worker process through shared
memory. Pickled through the worker's pipe, a DIV2K-sized input and its float32 output (8 + 33
MB) cost about 0.15 s per call, measured; copied into a mapping both processes hold, a few ms.

The mapping is an anonymous memfd, handed to the worker over its pipe (SCM_RIGHTS): it has no
name in /dev/shm (Kubernetes gives pods only 64 MB there) and disappears with the last process
holding it, so a killed worker or server leaks nothing. The server writes the input and reads
the output at offsets it computes itself from the input's shape: whatever a hostile model does
in its worker, what comes back is a float32 array of that shape, which is all the server reads.
"""

from __future__ import annotations

import mmap
import os
from multiprocessing.connection import Connection
from multiprocessing.reduction import recv_handle, send_handle
from typing import Any

import numpy as np

_ALIGN = 64  # the output starts on a cache line
_GROWTH = 1.25  # a larger image maps a region this much larger than it needs


def _output_offset(shape: tuple[int, ...], dtype: np.dtype[Any]) -> int:
    size = int(np.prod(shape)) * dtype.itemsize
    return -(-size // _ALIGN) * _ALIGN


def region_bytes(shape: tuple[int, ...], dtype: np.dtype[Any]) -> int:
    """The input, then the output: float32 of the input's shape (a model keeps its size)."""
    return _output_offset(shape, dtype) + int(np.prod(shape)) * 4


class ServerTensors:
    """The server's side, for one worker process: a mapping grown as images require."""

    def __init__(self) -> None:
        self._region: mmap.mmap | None = None

    @property
    def size(self) -> int:
        return 0 if self._region is None else len(self._region)

    def needs_region(self, image: np.ndarray) -> int:
        """The size of the region to map before `image` fits; 0 when it fits already."""
        need = region_bytes(image.shape, image.dtype)
        if need <= self.size:
            return 0
        return max(need, int(self.size * _GROWTH))

    def map_new(self, size: int, conn: Connection, worker_pid: int) -> None:
        """Creates a region of `size` bytes and sends it to the worker, which replies once it
        has mapped it (the caller reads that reply)."""
        fd = os.memfd_create("pirm-tensors", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, size)
            region = mmap.mmap(fd, size)
            conn.send(("map_tensors", (size,)))
            send_handle(conn, fd, worker_pid)
        finally:
            os.close(fd)  # the mappings keep the memory alive
        self.close()
        self._region = region

    def write_input(self, image: np.ndarray) -> tuple[tuple[int, ...], str]:
        """Copies the input into the region; returns what the worker needs to read it."""
        assert self._region is not None
        view: np.ndarray = np.ndarray(image.shape, image.dtype, buffer=self._region)
        view[...] = image
        return image.shape, image.dtype.str

    def read_output(self, image: np.ndarray) -> np.ndarray:
        """A copy of the output the worker wrote for `image` (the region is reused)."""
        assert self._region is not None
        return np.ndarray(image.shape, np.float32, buffer=self._region,
                          offset=_output_offset(image.shape, image.dtype)).copy()

    def close(self) -> None:
        """Drops the mapping (after the worker died or before a larger one replaces it)."""
        if self._region is not None:
            self._region.close()
            self._region = None


class WorkerTensors:
    """The worker's side: the region the server sent last, and runs that read and write it."""

    def __init__(self, conn: Connection, runtime: Any) -> None:
        self._conn = conn
        self._runtime = runtime
        self._region: mmap.mmap | None = None

    def map_tensors(self, size: int) -> None:
        fd = recv_handle(self._conn)
        try:
            region = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        if self._region is not None:
            self._region.close()
        self._region = region

    def run_shared(self, name: str, shape: tuple[int, ...], dtype: str) -> float:
        """Runs the model on the input in the region, writes its output after it; returns the
        run's milliseconds."""
        if self._region is None:
            raise RuntimeError("run_shared before map_tensors")
        image: np.ndarray = np.ndarray(shape, np.dtype(dtype), buffer=self._region)
        output, run_ms = self._runtime.run(name, image)
        target: np.ndarray = np.ndarray(shape, np.float32, buffer=self._region,
                                        offset=_output_offset(shape, image.dtype))
        target[...] = output
        return float(run_ms)
