"""What the trainer's commands share: the composition root's protocol and the progress line."""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, TextIO

from storage.config import StorageSettings
from storage.rules import (
    argument,
    check_int,
)
from trainer.config import TrainerSettings

__all__ = ["ProgressLine", "TrainerSide", "clock", "count_argument"]


class TrainerSide(Protocol):
    """What the trainer's commands need from the composition root: settings, and the bot's photo
    check (injected, since the trainer never imports the bot)."""

    @property
    def storage(self) -> StorageSettings: ...

    @property
    def trainer(self) -> TrainerSettings: ...

    @property
    def train_resolution(self) -> int: ...

    def check_photos(self, folder: Path, class_name: str, resolution: int) -> list[bytes]:
        """Normalised photo bytes of a folder; raises UserFacingError when it cannot train."""
        ...


class ProgressLine:
    """``label done/total [loss] s/step ETA`` on stderr: one line rewritten on a terminal, a new
    line per report otherwise (logs). Used for training steps, class images and sampling."""

    def __init__(self, label: str, stream: TextIO | None = None) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.inline = self.stream.isatty()
        self._started = time.monotonic()
        self._first: int | None = None

    def __call__(
        self,
        done: int,
        total: int,
        *,
        loss: float | None = None,
        seconds_per_step: float | None = None,
    ) -> None:
        if self._first is None:  # a resumed run starts past 0: time only what this run did
            self._first, self._started = done - 1, time.monotonic()
        if seconds_per_step is None:
            seconds_per_step = (time.monotonic() - self._started) / max(1, done - self._first)
        parts = [f"{self.label} {done}/{total}"]
        if loss is not None:
            parts.append(f"loss {loss:.4f}")
        parts += [
            f"{seconds_per_step:.2f} s/step",
            f"ETA {clock(seconds_per_step * (total - done))}",
        ]
        line = "  ".join(parts)
        if self.inline:
            self.stream.write(f"\r{line}" + ("\n" if done >= total else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds + 0.5), 60)
    return f"{minutes}:{secs:02d}"


def count_argument(what: str, low: int, high: int) -> Callable[[str], int]:
    return argument(functools.partial(check_int, what=what, low=low, high=high))
