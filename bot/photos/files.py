"""Photos from files and folders: the one reader behind `photos check` and `dreambot train`.

A folder gives its visible files, sorted by name; each file is read once and never more than one
byte past the size limit, so a 2 GB file named .jpg costs nothing. Something unreadable (a FIFO,
a device, a permission error) becomes a photo with a ``read_error``, so the report still lists it.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator, Sequence
from pathlib import Path

from bot.photos.model import PhotoInput
from storage.errors import InvalidArgument

__all__ = ["expand_paths", "printable", "read_photo_files"]


def expand_paths(paths: Sequence[Path]) -> list[Path]:
    """Files as given, and the visible files directly inside each folder, sorted by name."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            try:
                entries = sorted(path.iterdir())
            except OSError as exc:
                raise InvalidArgument(
                    f"{printable(str(path))}: cannot read the folder ({exc.strerror or exc})"
                ) from None
            files.extend(p for p in entries if not p.name.startswith(".") and p.is_file())
        elif path.exists():
            files.append(path)
        else:
            raise InvalidArgument(f"{printable(str(path))}: no such file or folder")
    return files


def read_photo_files(files: Sequence[Path], max_bytes: int) -> Iterator[PhotoInput]:
    """One ``PhotoInput`` per file, in order, read one at a time."""
    for path in files:
        if not path.is_file():  # a FIFO or a device would block or never end
            yield PhotoInput(b"", path.name, read_error="not a regular file")
            continue
        try:
            with path.open("rb") as handle:
                data = handle.read(max_bytes + 1)
        except OSError as exc:
            yield PhotoInput(b"", path.name, read_error=exc.strerror or type(exc).__name__)
            continue
        yield PhotoInput(data, path.name)


def printable(text: str) -> str:
    """Escape what a terminal would interpret or cannot encode (control, bidi, undecodable)."""
    out = []
    for char in text:
        code = ord(char)
        if 0xDC80 <= code <= 0xDCFF:  # a byte that was not valid UTF-8 in a file name
            out.append(f"\\x{code - 0xDC00:02x}")
        elif unicodedata.category(char).startswith("C"):
            out.append(f"\\u{code:04x}")
        else:
            out.append(char)
    return "".join(out)
