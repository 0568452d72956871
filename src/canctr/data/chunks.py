"""Reading big line-oriented files in blocks, on several cores when there are several.

A file is cut into blocks that end at line boundaries. A plain file is cut by byte offset and every
worker reads its own range (nothing is shipped between processes); a gzip stream cannot be split, so the
main process decompresses it and ships blocks to the workers. Blocks are parsed independently (each
interns its own id strings) and merged in file order, so the result is identical to a single pass:
global codes follow first appearance in the file, and an error names the file's own line number.
"""

from __future__ import annotations

import contextlib
import gzip
import mmap
import multiprocessing
import os
import sys
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

BLOCK_BYTES = 32 << 20  # ~32 MB of text per block: big enough to amortise, small enough to bound memory

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Block:
    """Lines of one file: either a byte range [start, end) of a plain file, or `data` already read."""

    path: str
    start: int = 0
    end: int = 0
    data: bytes | None = None

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        with open(self.path, "rb") as f:
            f.seek(self.start)
            return f.read(self.end - self.start)

    @contextlib.contextmanager
    def view(self) -> Iterator[bytes | memoryview]:
        """The block's bytes without a copy where possible: a plain file's range is read through mmap (the
        page cache itself; a read() would first copy 32 MB), shipped data as it is."""
        if self.data is not None or self.end <= self.start:
            yield self.read()
            return
        with open(self.path, "rb") as f:
            try:
                mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            except (OSError, ValueError):  # a file system without mmap: the plain read
                yield self.read()
                return
            with mm:
                view = memoryview(mm)[self.start : self.end]
                try:
                    yield view
                finally:
                    view.release()  # mmap.close() refuses while a view is exported


def split_lines(data: bytes) -> list[bytes]:
    """Lines of a block (without \\n; a final unterminated line counts, as in a file)."""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return lines


def count_lines(data: bytes | memoryview) -> int:
    """len(split_lines(data)) without splitting."""
    if isinstance(data, memoryview):
        n = int(np.count_nonzero(np.frombuffer(data, np.uint8) == ord("\n")))
        return n + (1 if len(data) and data[-1] != ord("\n") else 0)
    return data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)


def byte_ranges(path: Path, block_bytes: int) -> list[tuple[int, int]]:
    """[start, end) ranges covering a plain file, each ending just after a newline (or at EOF)."""
    size = path.stat().st_size
    bounds = [0]
    with open(path, "rb") as f:
        while bounds[-1] + block_bytes < size:
            f.seek(bounds[-1] + block_bytes)
            f.readline()  # to the end of the line the cut fell in
            if f.tell() >= size:
                break
            bounds.append(f.tell())
    bounds.append(size)
    return [(a, b) for a, b in pairwise(bounds) if b > a]


def iter_blocks(
    path: Path, gz: bool, block_bytes: int, on_error: Callable[[int, Exception], Exception]
) -> Iterator[Block]:
    """Blocks of `path` in order. A gzip read error raises on_error(lines read so far, error)."""
    if not gz:
        for start, end in byte_ranges(path, block_bytes):
            yield Block(str(path), start, end)
        return
    lines_read = 0
    try:
        with gzip.open(path, "rb") as f:
            while data := f.read(block_bytes):
                data += f.readline()  # complete the last line
                lines_read += data.count(b"\n")
                yield Block(str(path), data=data)
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise on_error(lines_read, e) from e


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@contextlib.contextmanager
def worker_pool(workers: int) -> Iterator[Executor | None]:
    """A process pool of `workers` (None for <= 1: everything then runs in this process)."""
    if workers <= 1:
        yield None
        return
    # fork: workers start in milliseconds and inherit the imported modules
    ctx = multiprocessing.get_context("fork") if sys.platform == "linux" else None
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx)
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def ordered_map(fn: Callable[[T], R], items: Iterable[T], pool: Executor | None, in_flight: int = 4) -> Iterator[R]:
    """fn over items, results in input order; at most `in_flight` items submitted ahead (bounded memory:
    a few blocks per worker of the 2-core machines this targets)."""
    if pool is None:
        yield from map(fn, items)
        return
    limit = max(in_flight, 1)
    pending: deque[Future[R]] = deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= limit:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for f in pending:  # an error or an early stop: drop the queued blocks
            f.cancel()


def submit_or_run(pool: Executor | None, fn: Callable[..., R], *args: Any) -> Callable[[], R]:
    """Start fn(*args) on the pool now (or lazily here); call the returned thunk for the result."""
    if pool is None:
        return lambda: fn(*args)
    future = pool.submit(fn, *args)
    return future.result
