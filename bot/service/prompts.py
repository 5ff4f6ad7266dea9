"""Prompt checks the bot makes before queueing a drawing: the server's blocklist, the text
encoder's token limit, and a hint when a prompt forgets the model's identifier.

The token count is CLIP's own BPE, re-implemented here in pure Python so the bot host needs no
TensorFlow or KerasCV: same cleaning (HTML unescape, whitespace collapse, lower case), same
pre-tokens, same merges file (a gzip text file: one header line, then one merge per line, as
KerasCV's ``SimpleTokenizer`` reads it). Refusing here, in the member's words, beats a worker
failing the job minutes later.
"""

from __future__ import annotations

import asyncio
import gzip
import html
import re
from functools import lru_cache
from pathlib import Path

from storage.errors import ConfigError, InvalidArgument
from storage.records import ModelRecord
from storage.rules import instance_prompt

__all__ = [
    "MAX_PROMPT_TOKENS",
    "USABLE_PROMPT_TOKENS",
    "TokenCounter",
    "check_blocklist",
    "identifier_hint",
    "pre_tokens",
]

# CLIP's text encoder reads 77 positions: start-of-text, 75 prompt tokens, end-of-text.
MAX_PROMPT_TOKENS = 77
USABLE_PROMPT_TOKENS = MAX_PROMPT_TOKENS - 2
# SimpleTokenizer reads at most this many merges (CLIP's vocabulary size less the byte tokens).
_MAX_MERGES = 49152 - 256 - 2

# CLIP's pre-tokenizer on the ``re`` module instead of ``regex``: a run of letters, one number
# character, or any other run of non-space characters. ``[^\W\d_]`` is letters plus numerals
# that are not decimal digits (², Ⅻ); :func:`pre_tokens` splits those out one by one, as CLIP's
# ``\p{N}`` does.
_PRE_TOKEN = re.compile(
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|(?:[^\s\w]|_)+",
    re.IGNORECASE,
)
_SPACES = re.compile(r"\s+")


def _clean(text: str) -> str:
    return _SPACES.sub(" ", html.unescape(html.unescape(text)).strip()).strip().lower()


def pre_tokens(text: str) -> list[str]:
    """CLIP's pieces of a prompt before BPE (words, single digits, punctuation runs)."""
    pieces: list[str] = []
    for piece in _PRE_TOKEN.findall(_clean(text)):
        if piece.isalpha() or not any(ch.isnumeric() for ch in piece):
            pieces.append(piece)
            continue
        letters = ""
        for ch in piece:
            if ch.isnumeric():
                pieces.extend([letters, ch] if letters else [ch])
                letters = ""
            else:
                letters += ch
        if letters:
            pieces.append(letters)
    return pieces


@lru_cache
def _byte_symbols() -> dict[int, str]:
    """CLIP's reversible map of bytes to printable characters (``bytes_to_unicode``)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes), strict=True))


def _read_merges(path: Path) -> dict[tuple[str, str], int]:
    try:
        text = gzip.decompress(path.read_bytes()).decode("utf-8")
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise ConfigError(f"the CLIP BPE vocabulary {path} cannot be read: {exc}") from exc
    ranks: dict[tuple[str, str], int] = {}
    for rank, line in enumerate(text.split("\n")[1 : _MAX_MERGES + 1]):
        parts = line.split()
        if len(parts) == 2:
            ranks[parts[0], parts[1]] = rank  # a repeated merge keeps its last rank, as in KerasCV
    return ranks


class TokenCounter:
    """How many text-encoder tokens a prompt takes, start and end markers included.

    With ``bpe_path`` (the merges file the workers' tokenizer reads) the count is exact. Without
    it the count is a lower bound: each pre-token (a word, a digit, a run of punctuation) is at
    least one BPE token, and common English words are exactly one in CLIP's vocabulary, so a
    prompt refused on the bound is certainly too long while a long one with rare words may
    still pass here and be refused by the worker.
    """

    def __init__(self, bpe_path: Path | str | None = None) -> None:
        self.bpe_path = Path(bpe_path) if bpe_path is not None else None
        self._ranks: dict[tuple[str, str], int] | None = None
        self._pieces: dict[str, int] = {}
        self._lock = asyncio.Lock()

    @property
    def exact(self) -> bool:
        return self.bpe_path is not None

    async def load(self) -> None:
        """Read the merges file once, off the event loop (CLIP's is 49k lines)."""
        if self.bpe_path is None or self._ranks is not None:
            return
        async with self._lock:
            if self._ranks is None:
                self._ranks = await asyncio.to_thread(_read_merges, self.bpe_path)

    def count(self, text: str) -> int:
        """Tokens of ``text``, start and end markers included (``load`` first: exact count)."""
        pieces = pre_tokens(text)
        if self._ranks is None:
            return len(pieces) + 2
        return sum(self._bpe_length(piece) for piece in pieces) + 2

    def _bpe_length(self, piece: str) -> int:
        if piece in ("<|startoftext|>", "<|endoftext|>"):
            return 1
        known = self._pieces.get(piece)
        if known is not None:
            return known
        assert self._ranks is not None
        symbols = _byte_symbols()
        word = [symbols[b] for b in piece.encode("utf-8")]
        word[-1] += "</w>"
        while len(word) > 1:
            pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
            best = min(pairs, key=lambda pair: self._ranks.get(pair, _MAX_MERGES + 1))  # type: ignore[union-attr]
            if best not in self._ranks:
                break
            merged: list[str] = []
            i = 0
            while i < len(word):
                if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        self._pieces[piece] = len(word)
        return len(word)

    async def check(self, text: str, which: str = "prompt") -> int:
        """The token count of ``text``, or InvalidArgument when it does not fit."""
        await self.load()
        tokens = self.count(text)
        if tokens > MAX_PROMPT_TOKENS:
            used = tokens - 2
            amount = f"{used} tokens" if self.exact else f"at least {used} tokens"
            raise InvalidArgument(
                f"The {which} is too long: it is {amount} and at most {USABLE_PROMPT_TOKENS} fit. "
                "Please shorten it (each word is a token or more, and so is each digit and each "
                "run of punctuation)."
            )
        return tokens


def check_blocklist(prompt: str, blocklist: tuple[str, ...]) -> None:
    """Refuse a prompt that holds a word (or phrase) the server blocked, as a whole word and
    in any case, naming it so the member knows what to change."""
    for entry in blocklist:
        word = entry.strip()
        if word and re.search(rf"(?<!\w){re.escape(word)}(?!\w)", prompt, re.IGNORECASE):
            raise InvalidArgument(
                f"This server does not allow “{word}” in prompts. Please rephrase your prompt "
                "without it."
            )


def identifier_hint(prompt: str, model: ModelRecord | None) -> str | None:
    """A nudge when a personal model is used but the prompt lacks the word it learned: without
    the identifier the model draws its class, not the member's subject."""
    if model is None:
        return None
    if re.search(rf"(?<!\w){re.escape(model.identifier)}(?!\w)", prompt, re.IGNORECASE):
        return None
    example = instance_prompt(model.identifier, model.class_name)
    return (
        f"Your model **{model.name}** learned `{model.identifier} {model.class_name}`: put "
        f"`{model.identifier}` in the prompt to draw your subject (e.g. “{example} on the "
        "beach”)."
    )
