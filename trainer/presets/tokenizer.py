"""A small BPE vocabulary in SimpleTokenizer's file format, so the tiny preset runs offline."""

from __future__ import annotations

import gzip
import hashlib
import tempfile
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import numpy as np
from keras_cv.src.models.stable_diffusion.clip_tokenizer import bytes_to_unicode

__all__ = ["tiny_bpe_path", "write_bpe_vocab"]


def write_bpe_vocab(words: Sequence[str], path: Path) -> Path:
    """Write a BPE merges file in SimpleTokenizer's gzip format that spells each word as one token.

    Merges go left to right through each word (``p h``, ``ph o`` … ``phot o</w>``); every merge
    result is in the vocabulary, so any text still encodes (into byte tokens where no merge fits).
    """
    byte_encoder = bytes_to_unicode()
    merges: list[str] = []
    seen: set[str] = set()
    for word in dict.fromkeys(w.strip().lower() for w in words if w.strip()):
        symbols = [byte_encoder[b] for b in word.encode("utf-8")]
        symbols[-1] += "</w>"
        current = symbols[0]
        for sym in symbols[1:]:
            merge = f"{current} {sym}"
            if merge not in seen:
                seen.add(merge)
                merges.append(merge)
            current += sym
    # No trailing newline: SimpleTokenizer would read the empty last line as one more merge.
    text = "#version: dreambot-tiny\n" + "\n".join(merges)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as fh:
        fh.write(text.encode("utf-8"))
    return path


def tiny_bpe_path() -> Path:
    words = resources.files("trainer.assets").joinpath("tiny_words.txt").read_text("utf-8")
    digest = hashlib.sha256(b"v2\n" + words.encode()).hexdigest()[:12]
    path = Path(tempfile.gettempdir()) / f"dreambot-tiny-bpe-{digest}.txt.gz"
    if not path.exists():
        tmp = path.with_suffix(f".{np.random.randint(1 << 30)}.tmp")
        write_bpe_vocab(words.split(), tmp)
        tmp.replace(path)
    return path
