"""The bot's commands: up, bot, migrate and photos check.

The composition root (``dreambot.cli``) builds the parser from this module and the trainer's,
loads settings once and passes them in. Heavy modules (discord.py, OpenCV) load inside the
handlers, so listing commands or running the worker never imports them.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import re
import sys
import textwrap
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from bot.config import BotSettings
from storage.config import StorageSettings, require_extra
from storage.rules import argument, check_resolution, check_word

if TYPE_CHECKING:
    from bot.photos import PhotoReport, SetReport
    from bot.stack import Wiring

__all__ = ["BotSide", "register"]

EXIT_CAN_TRAIN = 0
EXIT_CANNOT_TRAIN = 1


class BotSide(Protocol):
    """What the bot's commands need from the composition root's settings."""

    @property
    def storage(self) -> StorageSettings: ...

    @property
    def bot(self) -> BotSettings: ...

    @property
    def model_preset(self) -> str:
        """The base model the workers run (a training spec must name it)."""
        ...

    @property
    def bpe_path(self) -> Path | None:
        """The CLIP merges file the workers read (None: they download it)."""
        ...

    @property
    def hf_token(self) -> str | None:
        """The Hub token models are hosted with (None: hosting off)."""
        ...


def _wiring(settings: BotSide) -> Wiring:
    from bot.stack import Wiring
    from storage.hub import HubModelHost

    token = settings.hf_token
    return Wiring(
        preset=settings.model_preset,
        bpe_path=settings.bpe_path,
        host=HubModelHost.connect(token) if token else None,
    )


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add up, bot, migrate and photos check; each sets ``func(args, settings) -> exit code``."""
    up = sub.add_parser(
        "up", help="run everything on this machine: embedded Redis, one worker and the bot"
    )
    up.set_defaults(func=_cmd_up)
    bot = sub.add_parser("bot", help="run only the Discord bot (workers run elsewhere)")
    bot.set_defaults(func=_cmd_bot)
    migrate = sub.add_parser("migrate", help="create or upgrade the SQLite database")
    migrate.set_defaults(func=_cmd_migrate)
    _register_photos(sub)


def _cmd_up(args: argparse.Namespace, settings: BotSide) -> int:
    require_extra("discord", "bot", "up")
    require_extra("tensorflow", "worker", "up")  # `up` runs a worker too
    from bot.frontends.discord.client import quiet_voice_warnings
    from bot.stack import run_up

    quiet_voice_warnings()
    return run_up(settings.bot, settings.storage, _wiring(settings))


def _cmd_bot(args: argparse.Namespace, settings: BotSide) -> int:
    require_extra("discord", "bot", "bot")
    from bot.frontends.discord.client import quiet_voice_warnings
    from bot.stack import run_bot

    quiet_voice_warnings()
    return run_bot(settings.bot, settings.storage, _wiring(settings))


def _cmd_migrate(args: argparse.Namespace, settings: BotSide) -> int:
    from storage.db import Database

    db_path = settings.storage.db_path

    async def migrate() -> list[int]:
        db = await Database.open(db_path, migrate=False)
        try:
            return await db.migrate()
        finally:
            await db.close()

    applied = asyncio.run(migrate())
    if applied:
        print(f"{db_path}: applied migrations {', '.join(map(str, applied))}")
    else:
        print(f"{db_path}: up to date")
    return 0


def _register_photos(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    photos = sub.add_parser(
        "photos", help="check training photos", description="Check training photos."
    )
    commands = photos.add_subparsers(dest="photos_command", metavar="COMMAND", required=True)
    check = commands.add_parser(
        "check",
        help="check a set of photos the way the bot will",
        description=(
            "Check photos the way the bot will: a verdict (ok, warn, reject) with reasons for "
            "each file, then whether the set can train. Exit 0 when it can, 1 when it cannot, "
            "2 on a usage error."
        ),
    )
    check.add_argument(
        "--class-name",
        type=argument(check_word),
        default="person",
        metavar="WORD",
        help="what the photos show, e.g. person, dog, mug (default: person; person-like "
        "classes need exactly one face per photo)",
    )
    check.add_argument(
        "--resolution",
        type=argument(check_resolution),
        default=None,
        metavar="N",
        help="training resolution in pixels (default: TRAIN_RESOLUTION, 512)",
    )
    check.add_argument(
        "--json",
        action="store_true",
        help="print one JSON array, one object per file; the set verdict goes to stderr",
    )
    check.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="write the normalised photos (square PNG at the training resolution) here",
    )
    check.add_argument(
        "paths", nargs="+", type=Path, metavar="PATH", help="photo files or folders of photos"
    )
    check.set_defaults(func=run_check)


def run_check(args: argparse.Namespace, settings: BotSide) -> int:
    """Check the photos named on the command line; 0 when the set can train, 1 when not."""
    require_extra("cv2", "bot", "photos check")
    from bot.photos import PhotoRules, check_photos, expand_paths, read_photo_files

    # Decoder warnings about odd metadata are not the user's business: the verdict says it all.
    warnings.simplefilter("ignore")
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")
    rules = PhotoRules.from_settings(
        settings.bot, class_name=args.class_name, resolution=args.resolution
    )
    files = expand_paths(args.paths)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
    report = check_photos(read_photo_files(files, rules.max_bytes), rules)
    if args.out is not None:
        _write_normalised(args.out, files, report)
    if args.json:
        _print_json(files, report)
    else:
        _print_table(files, report)
    return EXIT_CAN_TRAIN if report.can_train else EXIT_CANNOT_TRAIN


def _safe_stem(path: Path) -> str:
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", path.stem).strip("_-")[:40]
    return stem or "photo"


def _write_normalised(out: Path, files: list[Path], report: SetReport) -> None:
    for photo in report.accepted:
        if photo.normalised is None:
            continue
        name = f"{photo.index + 1:03d}-{_safe_stem(files[photo.index])}"
        (out / f"{name}{photo.normalised.extension}").write_bytes(photo.normalised.data)


def _print_json(files: list[Path], report: SetReport) -> None:
    rows = [
        {
            "path": str(files[p.index]),
            "verdict": p.verdict.value,
            "reasons": [r.value for r in p.reasons],
            "message": p.message,
        }
        for p in report.photos
    ]
    print(json.dumps(rows, indent=2))
    print(set_line(report), file=sys.stderr)


def _print_table(files: list[Path], report: SetReport) -> None:
    from bot.photos import printable

    paths = [printable(str(f)) for f in files]
    width = min(48, max([4, *(len(p) for p in paths)]))
    print(f"{'#':>3}  {'verdict':<7}  {'file':<{width}}  reasons")
    for photo in report.photos:
        _print_row(photo, paths[photo.index], width)
    print()
    print(set_line(report))


def _print_row(photo: PhotoReport, path: str, width: int) -> None:
    reasons = ", ".join(r.value for r in photo.reasons) or "-"
    print(f"{photo.index + 1:>3}  {photo.verdict.value:<7}  {path:<{width}}  {reasons}")
    if photo.reasons:
        indent = " " * 14
        print(textwrap.fill(photo.message, 100, initial_indent=indent, subsequent_indent=indent))


def set_line(report: SetReport) -> str:
    """The set's verdict in one line: verdict, reasons, whether it can train, and why."""
    reasons = f" ({', '.join(r.value for r in report.reasons)})" if report.reasons else ""
    state = "can train" if report.can_train else "cannot train"
    return f"Set: {report.verdict.value}{reasons}, {state}. {report.message}"
