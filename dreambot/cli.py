"""The `dreambot` command: one parser over both sides, settings built once, one error path.

Each side keeps its own commands (``bot.cli``: up, bot, migrate, photos check; ``trainer.cli``:
worker, train, imagine). This module adds them to one parser, loads the settings, wires what a
flow needs from both sides (``train`` checks photos with the bot's checker before the trainer
runs), and turns errors from the one tree in ``storage.errors`` into exit codes and plain words:
2 for a bad setting or argument, 1 for anything else a person can act on.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bot import cli as bot_cli
from bot.config import BotSettings
from dreambot.config import Settings, load_settings
from storage.config import StorageSettings
from storage.errors import ConfigError, DreambotError, InvalidArgument, UserFacingError
from trainer import cli as trainer_cli
from trainer.config import TrainerSettings

__all__ = ["Context", "build_parser", "main"]

EXIT_USAGE = 2
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class Context:
    """What every command gets: the settings, and flows that need both sides."""

    settings: Settings

    @property
    def storage(self) -> StorageSettings:
        return self.settings.storage

    @property
    def bot(self) -> BotSettings:
        return self.settings.bot

    @property
    def trainer(self) -> TrainerSettings:
        return self.settings.trainer

    @property
    def model_preset(self) -> str:
        """MODEL_PRESET, the trainer's setting, which the bot must name in training specs."""
        return self.trainer.model_preset

    @property
    def bpe_path(self) -> Path | None:
        """BPE_PATH, the CLIP merges file the workers read; the bot counts prompt tokens with it."""
        return self.trainer.bpe_path

    @property
    def hf_token(self) -> str | None:
        """HF_TOKEN: the workers host models on the Hub with it; the bot links and deletes them."""
        token = self.trainer.hf_token
        return token.get_secret_value() if token is not None else None

    @property
    def train_resolution(self) -> int:
        return self.settings.train_resolution

    def check_photos(self, folder: Path, class_name: str, resolution: int) -> list[bytes]:
        """The bot's photo check on a folder, for local training: every photo with a note is
        listed; a set that cannot train stops here, before any model loads."""
        from bot.photos import PhotoRules, check_photos, expand_paths, printable, read_photo_files

        rules = PhotoRules.from_settings(self.bot, class_name=class_name, resolution=resolution)
        report = check_photos(read_photo_files(expand_paths([folder]), rules.max_bytes), rules)
        for photo in report.photos:
            if photo.reasons:
                name = printable(photo.name)
                print(f"  {name}: {photo.verdict.value}: {photo.message}", file=sys.stderr)
        print(bot_cli.set_line(report), file=sys.stderr)
        if not report.can_train:
            raise UserFacingError(report.message, code="bad_photos")
        return [p.normalised.data for p in report.accepted if p.normalised is not None]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dreambot",
        description="A Discord bot that trains a personal Stable Diffusion model for each member.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    bot_cli.register(sub)
    trainer_cli.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    command = " ".join(filter(None, (args.command, getattr(args, "photos_command", None))))
    try:
        code: int = args.func(args, Context(load_settings()))
    except (ConfigError, InvalidArgument) as exc:
        return _say(command, exc, EXIT_USAGE)
    except DreambotError as exc:
        return _say(command, exc, EXIT_FAILED)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return code


def _say(command: str, exc: DreambotError, code: int) -> int:
    message = exc.message if isinstance(exc, UserFacingError) else str(exc)
    print(f"dreambot {command}: error: {message}", file=sys.stderr)
    return code
