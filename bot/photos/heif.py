"""HEIC/HEIF (the iPhone's default photo format): its size from the container, and its decoder.

The size of the primary image is read by hand from the ISO base media boxes (``meta`` →
``pitm``, ``iprp`` → ``ipco``/``ipma`` → ``ispe``, turned by ``irot``) so a HEIC that claims
a huge picture is refused before libheif allocates anything, as :mod:`bot.photos.sniff` does
for the other formats. Decoding goes through ``pillow-heif`` (libheif with libde265), whose
Pillow plugin is registered on first use rather than at import.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

__all__ = ["BRANDS", "heif_size", "register_heif"]

# ftyp brands of HEVC-coded HEIF images and image sequences (mif1/msf1: generic HEIF, told
# apart from AVIF by their compatible brands, see bot.photos.sniff).
BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"})

# A real photo's meta box holds a few dozen boxes; a file with more is hostile.
_MAX_BOXES = 4096


def _boxes(data: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload start, payload end) of each box in ``data[start:end]``.

    Raises ValueError on a box that does not fit its parent.
    """
    pos, count = start, 0
    while pos + 8 <= end:
        count += 1
        if count > _MAX_BOXES:
            raise ValueError("too many boxes")
        size = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        header = 8
        if size == 1:  # 64-bit size follows the type
            if pos + 16 > end:
                raise ValueError("truncated box header")
            size = int.from_bytes(data[pos + 8 : pos + 16], "big")
            header = 16
        elif size == 0:  # the box runs to the end of its parent
            size = end - pos
        if size < header or pos + size > end:
            raise ValueError(f"box {kind!r} does not fit")
        yield kind, pos + header, pos + size
        pos += size


def _child(data: bytes, start: int, end: int, kind: bytes) -> tuple[int, int] | None:
    return next(((s, e) for k, s, e in _boxes(data, start, end) if k == kind), None)


def _associations(data: bytes, start: int, end: int) -> dict[int, list[int]]:
    """ipma: item id → the 1-based indexes of its properties in ipco."""
    version, flags = data[start], int.from_bytes(data[start + 1 : start + 4], "big")
    pos = start + 4
    count = int.from_bytes(data[pos : pos + 4], "big")
    pos += 4
    id_size, index_size = (2 if version < 1 else 4), (2 if flags & 1 else 1)
    index_mask = 0x7FFF if index_size == 2 else 0x7F  # the top bit is the "essential" flag
    found: dict[int, list[int]] = {}
    for _ in range(count):
        if pos + id_size + 1 > end:
            raise ValueError("truncated ipma")
        item = int.from_bytes(data[pos : pos + id_size], "big")
        links = data[pos + id_size]
        pos += id_size + 1
        if pos + links * index_size > end:
            raise ValueError("truncated ipma")
        found[item] = [
            int.from_bytes(data[pos + i * index_size : pos + (i + 1) * index_size], "big")
            & index_mask
            for i in range(links)
        ]
        pos += links * index_size
    return found


def heif_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of the primary image as it is shown (after a quarter-turn ``irot``),
    or None when the container does not say."""
    try:
        meta = _child(data, 0, len(data), b"meta")
        if meta is None:
            return None
        start, end = meta[0] + 4, meta[1]  # meta is a full box: skip version and flags
        pitm = _child(data, start, end, b"pitm")
        iprp = _child(data, start, end, b"iprp")
        if pitm is None or iprp is None:
            return None
        id_size = 2 if data[pitm[0]] == 0 else 4
        primary = int.from_bytes(data[pitm[0] + 4 : pitm[0] + 4 + id_size], "big")
        ipco = _child(data, *iprp, b"ipco")
        ipma = _child(data, *iprp, b"ipma")
        if ipco is None or ipma is None:
            return None
        properties = list(_boxes(data, *ipco))
        size: tuple[int, int] | None = None
        quarter_turn = False
        for index in _associations(data, *ipma).get(primary, []):
            if not 1 <= index <= len(properties):
                continue
            kind, s, e = properties[index - 1]
            if kind == b"ispe" and e - s >= 12:
                size = (
                    int.from_bytes(data[s + 4 : s + 8], "big"),
                    int.from_bytes(data[s + 8 : s + 12], "big"),
                )
            elif kind == b"irot" and e > s:
                quarter_turn = bool(data[s] & 1)  # angle in units of 90 degrees (low 2 bits)
    except (IndexError, ValueError):
        return None
    if size is None or size[0] <= 0 or size[1] <= 0:
        return None
    return (size[1], size[0]) if quarter_turn else size


@functools.cache
def register_heif() -> None:
    """Teach Pillow to open HEIF (once per process; pillow-heif is imported only here)."""
    from pillow_heif import register_heif_opener

    register_heif_opener()
