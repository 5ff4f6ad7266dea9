"""The rules every front end and the worker share: words, limits and defaults, defined once.

The CLI, the Discord bot and the worker all check a class word, an identifier, an image count, a
step count or a seed with these functions, so a value one of them accepts the others accept too.
A broken rule raises :class:`~storage.errors.InvalidArgument` with a message for a person.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable
from typing import Literal, TypeVar

from storage.errors import InvalidArgument

__all__ = [
    "DEFAULT_CLASS_IMAGES",
    "DEFAULT_GUIDANCE",
    "DEFAULT_IMAGES",
    "DEFAULT_LORA_RANK",
    "DEFAULT_METHOD",
    "DEFAULT_SAMPLER_STEPS",
    "DEFAULT_TRAIN_STEPS",
    "MAX_CLASS_IMAGES",
    "MAX_IMAGES",
    "MAX_LORA_RANK",
    "MAX_SAMPLER_STEPS",
    "MAX_SEED",
    "MAX_TRAIN_SEED",
    "MAX_TRAIN_STEPS",
    "METHODS",
    "WORD_MAX_LENGTH",
    "Method",
    "argument",
    "check_guidance",
    "check_int",
    "check_method",
    "check_resolution",
    "check_word",
    "class_prompt",
    "instance_prompt",
    "seeds_from",
]

T = TypeVar("T")

Method = Literal["lora", "full"]
METHODS: tuple[Method, ...] = ("lora", "full")
DEFAULT_METHOD: Method = "lora"

# Training. 800 steps is the reference DreamBooth's run for 3-25 photos; past 10,000 a run only
# overfits, and one member's typo must not hold a GPU for days.
DEFAULT_TRAIN_STEPS = 800
MAX_TRAIN_STEPS = 10_000
# Prior-preservation images of the class, drawn once per (base model, class) and cached.
DEFAULT_CLASS_IMAGES = 200
MAX_CLASS_IMAGES = 1000
DEFAULT_LORA_RANK = 4
MAX_LORA_RANK = 128
# A training seed keys every step's random draws together with the step number (int32 maths).
MAX_TRAIN_SEED = 2**31 - 1

# Generation: one sampler call draws at most MAX_IMAGES (a 2x2 grid in Discord).
DEFAULT_IMAGES = 4
MAX_IMAGES = 4
DEFAULT_SAMPLER_STEPS = 30
MAX_SAMPLER_STEPS = 1000
DEFAULT_GUIDANCE = 7.5
MAX_SEED = 2**63 - 1  # seeds are int64 in the sampler's random ops

WORD_MAX_LENGTH = 32
# One lowercase word: letters and digits, optionally joined by single hyphens (golden-retriever).
_WORD = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*")


def check_word(text: str, what: str = "class word") -> str:
    """A class word (``dog``) or identifier (``sks``), lower-cased; InvalidArgument otherwise."""
    word = text.strip().lower()
    if len(word) > WORD_MAX_LENGTH or not _WORD.fullmatch(word):
        raise InvalidArgument(
            f"{text!r} is not a valid {what}: use one word of letters and digits, at most "
            f"{WORD_MAX_LENGTH} characters, starting with a letter (hyphens may join parts, as "
            "in golden-retriever), e.g. sks, dog, mug"
        )
    return word


def check_int(value: int | str, what: str, low: int, high: int) -> int:
    """A whole number from ``low`` to ``high`` (inclusive); InvalidArgument otherwise."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise InvalidArgument(f"{what} must be a whole number, not {value!r}") from None
    if not low <= number <= high:
        raise InvalidArgument(f"{what} must be {low} to {high} (got {number})")
    return number


def check_guidance(value: float | str) -> float:
    """Classifier-free guidance scale: a finite number, 0 or more."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidArgument(f"guidance must be a number, not {value!r}") from None
    if not math.isfinite(number) or number < 0:
        raise InvalidArgument(f"guidance must be 0 or more (got {value})")
    return number


def check_resolution(value: int | str) -> int:
    """A training resolution: whole pixels, 64 to 4096, a multiple of 8 (the VAE's stride)."""
    number = check_int(value, "resolution", 64, 4096)
    if number % 8:
        raise InvalidArgument(f"resolution must be a multiple of 8 from 64 to 4096 (got {number})")
    return number


def check_method(value: str) -> Method:
    """``lora`` (small, fast, the default) or ``full`` fine-tuning."""
    for method in METHODS:
        if value == method:
            return method
    raise InvalidArgument(f"method must be one of {', '.join(METHODS)} (got {value!r})")


def seeds_from(seed: int, count: int) -> list[int]:
    """Seeds of ``count`` images starting at ``seed`` (image i uses seed + i), all in range."""
    check_int(count, "the number of images", 1, MAX_IMAGES)
    check_int(seed, "seed", 0, MAX_SEED - count + 1)
    return [seed + i for i in range(count)]


def instance_prompt(identifier: str, class_name: str) -> str:
    """The prompt the subject's photos are trained under."""
    return f"a photo of {identifier} {class_name}"


def class_prompt(class_name: str) -> str:
    """The prompt of the prior-preservation images."""
    return f"a photo of {class_name}"


def argument(check: Callable[[str], T]) -> Callable[[str], T]:
    """Turn a rule into an argparse ``type=``: its message becomes argparse's usage error."""

    def parse(text: str) -> T:
        try:
            return check(text)
        except InvalidArgument as exc:
            raise argparse.ArgumentTypeError(exc.message) from None

    parse.__name__ = getattr(check, "__name__", "value")
    return parse
