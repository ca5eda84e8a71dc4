"""Safetensors files read and written tensor by tensor, in the layout `safetensors.torch.save_file` gives.

`ShardReader` reads each tensor's bytes with pread into a buffer of its own (pread releases the GIL; no mapping of
the file keeps its pages resident). `layout` is the header save_file would write for tensors of given dtypes and
shapes, and `ShardWriter` writes that header and then each tensor's bytes front to back, a thread of its own hashing
each tensor while it is written: a file is written while its tensors are still being computed, never held whole in
memory, and is byte-identical to save_file's. `Busy` sums the seconds each stage took, for a profile of an export.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

METADATA = {"format": "pt"}  # what save_file is given for every file rewind writes (transformers reads it)


def all_finite(t: torch.Tensor) -> bool:
    """Whether `t` has no NaN or Inf. Its min and max say it (both propagate NaN), in one vectorised pass, where on CPU
    `isfinite(t).all()` takes longer than the merge it checks (~60 M elements/s on a 2-core VM)."""
    if not t.is_floating_point() or not t.numel():
        return True
    low, high = torch.aminmax(t)
    return bool(torch.isfinite(low) & torch.isfinite(high))  # one sync on a device


def _dtypes() -> dict[str, torch.dtype]:
    from safetensors.torch import _TYPES  # safetensors' own table: the names its headers use

    return dict(_TYPES)


class Busy:
    """Seconds spent in each stage (read, write, hash, ...), summed over the threads that ran it. Thread-safe."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._lock = threading.Lock()

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    @contextlib.contextmanager
    def timing(self, stage: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - start)


@dataclass(frozen=True)
class Entry:
    """One tensor of a safetensors file: its dtype (the header's name), shape and byte range in the file."""

    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    @property
    def torch_dtype(self) -> torch.dtype:
        return _dtypes()[self.dtype]


def read_header(path: Path) -> dict[str, Entry]:
    """The tensors of a safetensors file, in the order of their bytes."""
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
    header.pop("__metadata__", None)
    data = 8 + size
    entries = {
        name: Entry(v["dtype"], tuple(v["shape"]), data + v["data_offsets"][0], data + v["data_offsets"][1])
        for name, v in header.items()
    }
    return dict(sorted(entries.items(), key=lambda item: item[1].start))


class ShardReader:
    """An open safetensors file whose tensors are read one by one, each into memory of its own. Thread-safe."""

    def __init__(self, path: Path, busy: Busy | None = None):
        self.path = Path(path)
        self.entries = read_header(self.path)
        self.busy = busy or Busy()
        self._fd = os.open(self.path, os.O_RDONLY)

    def read(self, name: str, into: torch.Tensor | None = None) -> torch.Tensor:
        """The tensor `name`, in a buffer of its own or in `into` (uint8, its size in bytes: a buffer reused)."""
        entry = self.entries[name]
        with self.busy.timing("read"):
            buf = torch.empty(entry.nbytes, dtype=torch.uint8) if into is None else into
            view, done = memoryview(buf.numpy()), 0
            while done < entry.nbytes:
                got = os.preadv(self._fd, [view[done:]], entry.start + done)
                if not got:
                    raise OSError(f"{self.path}: ends inside {name}; the base checkpoint is damaged")
                done += got
        return buf.view(entry.torch_dtype).reshape(entry.shape)

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self) -> ShardReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def layout(specs: dict[str, tuple[torch.dtype, tuple[int, ...]]]) -> tuple[bytes, list[str]]:
    """The header save_file(tensors, metadata=METADATA) writes for tensors of these (dtype, shape), and their names
    in the order their bytes follow it."""
    from safetensors.torch import save

    # safetensors decides the order (by dtype, then name) and where the metadata goes: asked on empty stand-ins
    probe = save({name: torch.empty(0, dtype=dtype) for name, (dtype, _) in specs.items()}, metadata=METADATA)
    header = json.loads(probe[8 : 8 + int.from_bytes(probe[:8], "little")])
    names, offset = [name for name in header if name != "__metadata__"], 0
    for name in names:
        dtype, shape = specs[name]
        size = math.prod(shape) * dtype.itemsize
        header[name] = {**header[name], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)  # safetensors pads the header to 8 bytes with spaces
    return len(text).to_bytes(8, "little") + text, names


class ShardWriter:
    """A safetensors file written front to back: `header` (from `layout`), then `write` each tensor in its order.
    `close` returns the file's sha256, computed from the bytes as they are written (no second read): a thread of
    the writer's own hashes each tensor while this one writes it (hashlib and file writes release the GIL), so a
    file takes the longer of the two, not their sum."""

    def __init__(self, path: Path, header: bytes, busy: Busy | None = None):
        self.path = Path(path)
        self.busy = busy or Busy()
        self._file = open(self.path, "wb", buffering=0)  # large writes go straight to the OS, without the GIL
        self._sha = hashlib.sha256()
        self._hasher = ThreadPoolExecutor(1, "rewind-hash")
        self._put(memoryview(header))

    def write(self, name: str, tensor: torch.Tensor) -> None:
        data = tensor.detach().contiguous().reshape(-1).view(torch.uint8)
        self._put(memoryview(data.numpy()))

    def _put(self, data: memoryview) -> None:
        hashed = self._hasher.submit(self._hash, data)
        try:
            with self.busy.timing("write"):
                done = 0
                while done < len(data):
                    done += self._file.write(data[done:])
        finally:
            hashed.result()  # before the next tensor (the hash takes them in file order) and before `data` is freed

    def _hash(self, data: memoryview) -> None:
        with self.busy.timing("hash"):
            self._sha.update(data)

    def close(self) -> str:
        self._shut()
        return self._sha.hexdigest()

    def _shut(self) -> None:
        self._hasher.shutdown()
        self._file.close()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc) -> None:
        self._shut()
