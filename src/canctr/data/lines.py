"""Reading raw text inputs line by line, with one error type and one bad-row policy for every format.

Every reader in `data/formats/` walks its file through `iter_lines` (gzip is detected from the magic bytes,
CRLF is tolerated) and `Rows`, turns raw id strings into dense integer codes (`vocab.Interner`) and
accumulates compact `array`s (`int64_codes` hands them to numpy). A malformed line raises
`DataFormatError` naming the file, the 1-based line and the problem; with `skip_bad_rows=True` the line is
skipped instead and counted in `skipped[path]`.
"""

from __future__ import annotations

import gzip
import os
import zlib
from array import array
from collections.abc import Iterator
from pathlib import Path

import numpy as np

GZIP_MAGIC = b"\x1f\x8b"


class DataFormatError(ValueError):
    """A raw input file does not have the expected format."""

    def __init__(self, path: str | os.PathLike, problem: str, line: int | None = None) -> None:
        self.path, self.line, self.problem = str(path), line, problem
        where = f"{path}, line {line}" if line is not None else str(path)
        super().__init__(f"{where}: {problem}")


class RowError(Exception):
    """Raised by a line parser; `Rows.bad` turns it into a DataFormatError or a skip."""


def check_file(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not a regular file")


def is_gzip(path: Path) -> bool:
    """Whether `path` holds gzip data (by its magic bytes); a `.gz` name on plain data is an error."""
    check_file(path)
    with open(path, "rb") as f:
        gz = f.read(2) == GZIP_MAGIC
    if path.suffix == ".gz" and not gz:
        raise DataFormatError(path, "named .gz but is not gzip data")
    return gz


def iter_lines(path: str | os.PathLike) -> Iterator[tuple[int, bytes]]:
    """Yield (1-based line number, line without its \\n or \\r\\n) for every line, blank ones included."""
    path = Path(path)
    opener = gzip.open if is_gzip(path) else open
    lineno = 0
    try:
        with opener(path, "rb") as f:
            for lineno, line in enumerate(f, 1):
                yield lineno, line.rstrip(b"\r\n")
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise DataFormatError(path, f"corrupt or unreadable data after line {lineno} ({e})") from e


def read_bytes(path: str | os.PathLike) -> bytes:
    """The whole (decompressed) file."""
    path = Path(path)
    try:
        if is_gzip(path):
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise DataFormatError(path, f"corrupt gzip data ({e})") from e


class Rows:
    """Iterates a file's non-blank decoded lines and applies the bad-row policy to `RowError`s.

    A reader counts each accepted row in `good`, reports each bad one with `bad(lineno, problem)` and calls
    `finish()` after its loop.
    """

    def __init__(
        self, path: str | os.PathLike, skip_bad_rows: bool, skipped: dict[str, int], encoding: str = "utf-8"
    ) -> None:
        self.path, self.skip, self.skipped = Path(path), skip_bad_rows, skipped
        self.encoding = encoding
        self.good = 0

    def bad(self, lineno: int, problem: str) -> None:
        if not self.skip:
            raise DataFormatError(self.path, problem, lineno)
        self.skipped[str(self.path)] = self.skipped.get(str(self.path), 0) + 1

    def lines(self) -> Iterator[tuple[int, str]]:
        for lineno, raw in iter_lines(self.path):
            try:
                text = raw.decode(self.encoding)
            except UnicodeDecodeError as e:
                self.bad(lineno, f"not {self.encoding.upper()} text ({e.reason} at byte {e.start})")
                continue
            if text.strip():
                yield lineno, text

    def finish(self) -> None:
        """Call after the loop: a file that gave no valid row is an error even when skipping."""
        if self.good == 0:
            raise DataFormatError(self.path, no_rows_problem(self.skipped.get(str(self.path), 0)))


def no_rows_problem(n_skipped: int) -> str:
    """The message for a file without a valid row."""
    return f"no valid rows ({n_skipped} malformed rows skipped)" if n_skipped else "empty file (no rows)"


def int64_codes(values: array) -> np.ndarray:
    """An array('q') of codes -> [n] int64 (a copy, so the array may be released)."""
    return np.frombuffer(values, dtype=np.int64).copy() if len(values) else np.zeros(0, np.int64)


def int_token(tok: str, what: str) -> int:
    """A non-negative decimal integer token, or RowError naming `what`."""
    # str.isdigit alone would accept non-ASCII digits, and int() would accept "1_000" or "+1"
    if not (tok.isascii() and tok.isdigit()):
        raise RowError(f"{what} {tok!r} is not a non-negative integer")
    return int(tok)


__all__ = [
    "DataFormatError", "GZIP_MAGIC", "RowError", "Rows", "check_file", "int64_codes", "int_token", "is_gzip",
    "iter_lines", "no_rows_problem", "read_bytes",
]
