"""Safetensors files streamed into device tensors at storage speed: several threads read large chunks of each
file into pinned host buffers while the copies of earlier chunks run on their own CUDA streams.

The safetensors library reads through mmap and copies each tensor from pageable memory, one at a time, with
no overlap: on an H200 that gave 9.2 GB/s from the page cache. Streaming needs each tensor's byte range,
which the format's header states (8 bytes of little-endian header length, then a JSON object of
{name: {dtype, shape, data_offsets}} relative to the end of the header), so the header is read here."""

import contextlib
import json
import os
import queue
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from service.errors import ModelLoadError

DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}
MAX_HEADER_BYTES = 100 << 20  # the safetensors library's own limit

# Measured on an H200 machine with 16 cores, a 16 GB file in the page cache: 8 readers of 32 MiB chunks 18 GB/s,
# 16 of 16 MiB 23 GB/s (bench/results/load-*.json). Reading from the page cache is a memory copy per core.
CHUNK_BYTES = 16 << 20
READERS = min(16, max(2, len(os.sched_getaffinity(0))))
BUFFERS_PER_READER = 2


@dataclass(frozen=True, slots=True)
class TensorEntry:
    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    nbytes: int


def read_header(path: Path) -> dict[str, TensorEntry]:
    """The tensors of one safetensors file, by name; ModelLoadError when the header is not one."""
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise ValueError("shorter than its 8-byte header length")
            (length,) = struct.unpack("<Q", raw)
            if length > MAX_HEADER_BYTES:
                raise ValueError(f"header length {length} exceeds {MAX_HEADER_BYTES}")
            header = json.loads(f.read(length))
        size = path.stat().st_size
        entries = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            if info["dtype"] not in DTYPES:
                raise ValueError(f"tensor {name!r} has dtype {info['dtype']!r}, which kvmemo does not read")
            dtype, shape = DTYPES[info["dtype"]], tuple(int(d) for d in info["shape"])
            begin, end = (int(x) for x in info["data_offsets"])
            nbytes = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
            if end - begin != nbytes or begin < 0 or 8 + length + end > size:
                raise ValueError(f"tensor {name!r}: data_offsets {[begin, end]} do not hold {shape} {info['dtype']}"
                                 f" inside the file's {size} bytes")
            entries[name] = TensorEntry(path, dtype, shape, 8 + length + begin, nbytes)
        return entries
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{path}: cannot read safetensors file: {e}") from None


@dataclass(frozen=True, slots=True)
class Piece:
    """`nbytes` bytes of a file from `start` land at byte `offset` of the flat uint8 device tensor `dest`."""
    file: Path
    start: int
    nbytes: int
    dest: torch.Tensor
    offset: int


def chunks(pieces: list[Piece], chunk_bytes: int) -> list[tuple[Path, int, int, list[Piece]]]:
    """(file, start, length, pieces) reads of at most chunk_bytes over the pieces in file order; a piece
    larger than a chunk is split across several."""
    out, current = [], None
    for p in sorted(pieces, key=lambda p: (str(p.file), p.start)):
        done = 0
        while done < p.nbytes:
            start = p.start + done
            if current is None or current[0] != p.file or start + 1 > current[1] + chunk_bytes:
                current = [p.file, start, 0, []]
                out.append(current)
            take = min(p.nbytes - done, current[1] + chunk_bytes - start)
            current[3].append(Piece(p.file, start, take, p.dest, p.offset + done))
            current[2] = start + take - current[1]
            done += take
    return [tuple(c) for c in out]


def read_fully(fd: int, view: memoryview, offset: int) -> None:
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n <= 0:
            raise OSError(f"unexpected end of file at byte {offset + done}")
        done += n


def stream(pieces: list[Piece], device: torch.device) -> int:
    """Copies every piece into its device tensor; returns the bytes read. Each reader thread owns its file
    descriptors, its CUDA stream and BUFFERS_PER_READER pinned buffers, so that one buffer fills while the
    copy out of the other runs; a buffer is reused only after its copy's event has completed. On the CPU the
    same loop copies synchronously (tests use it to check the chunking)."""
    work = chunks(pieces, CHUNK_BYTES)
    if not work:
        return 0
    size = max(c[2] for c in work)
    todo: queue.SimpleQueue = queue.SimpleQueue()
    for item in work:
        todo.put(item)
    errors: list[BaseException] = []
    cuda = device.type == "cuda"

    def reader():
        copies = torch.cuda.Stream(device) if cuda else None
        buffers = [(torch.empty(size, dtype=torch.uint8, pin_memory=cuda), torch.cuda.Event() if cuda else None)
                   for _ in range(BUFFERS_PER_READER)]
        fds: dict[Path, int] = {}
        turn = 0
        try:
            while not errors:
                try:
                    file, start, length, parts = todo.get_nowait()
                except queue.Empty:
                    break
                buffer, done = buffers[turn % BUFFERS_PER_READER]
                turn += 1
                if done is not None:
                    done.synchronize()
                if file not in fds:
                    fds[file] = os.open(file, os.O_RDONLY)
                read_fully(fds[file], memoryview(buffer.numpy())[:length], start)
                with torch.cuda.stream(copies) if cuda else contextlib.nullcontext():
                    for p in parts:
                        at = p.start - start
                        p.dest[p.offset : p.offset + p.nbytes].copy_(buffer[at : at + p.nbytes], non_blocking=cuda)
                    if done is not None:
                        done.record(copies)
            if copies is not None:
                copies.synchronize()
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            errors.append(e)
        finally:
            for fd in fds.values():
                os.close(fd)

    threads = [threading.Thread(target=reader, name=f"kvmemo-read-{i}", daemon=True)
               for i in range(min(READERS, len(work)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if cuda:
        release_pinned_buffers()
    if errors:
        raise ModelLoadError(f"cannot read the safetensors files: {errors[0]}") from None
    return sum(c[2] for c in work)


def release_pinned_buffers() -> None:
    """Torch keeps freed pinned buffers for reuse; loading is the only user of them here, so they go back."""
    empty = getattr(torch._C, "_host_emptyCache", None)
    if empty is not None:
        empty()
