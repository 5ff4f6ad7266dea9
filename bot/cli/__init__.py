"""The `dreambot` command. Heavy modules (discord.py, TensorFlow) load inside the subcommands."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from bot.cli import imagine, photos, train
from storage.errors import ConfigError, DreambotError

__all__ = ["build_parser", "main"]

log = logging.getLogger("dreambot")


def _cmd_up(args: argparse.Namespace) -> int:
    from bot.config import load_settings
    from bot.stack import run_up

    return run_up(load_settings())


def _cmd_bot(args: argparse.Namespace) -> int:
    from bot.config import load_settings
    from bot.stack import run_bot

    return run_bot(load_settings())


def _cmd_worker(args: argparse.Namespace) -> int:
    from bot.config import load_settings

    settings = load_settings()
    from trainer.worker import run_worker

    return run_worker(settings.redis_url, args.queue)


def _cmd_migrate(args: argparse.Namespace) -> int:
    from bot.config import load_settings
    from storage.db import Database

    settings = load_settings()

    async def migrate() -> list[int]:
        db = await Database.open(settings.db_path, migrate=False)
        try:
            return await db.migrate()
        finally:
            await db.close()

    applied = asyncio.run(migrate())
    if applied:
        print(f"{settings.db_path}: applied migrations {', '.join(map(str, applied))}")
    else:
        print(f"{settings.db_path}: up to date")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dreambot",
        description="A Discord bot that trains a personal Stable Diffusion model for each member.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser(
        "up", help="run everything on this machine: embedded Redis, one worker and the bot"
    )
    up.set_defaults(func=_cmd_up)
    bot = sub.add_parser("bot", help="run only the Discord bot (workers run elsewhere)")
    bot.set_defaults(func=_cmd_bot)
    worker = sub.add_parser("worker", help="run one GPU/CPU worker against REDIS_URL")
    worker.add_argument(
        "--queue", choices=("train", "generate"), default="train", help="which queue to serve"
    )
    worker.set_defaults(func=_cmd_worker)
    migrate = sub.add_parser("migrate", help="create or upgrade the SQLite database")
    migrate.set_defaults(func=_cmd_migrate)

    photos.register(sub)
    train.register(sub)
    imagine.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"dreambot: {exc}", file=sys.stderr)
        return 2
    except DreambotError as exc:
        print(f"dreambot: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code
