"""`dreambot photos check`: the bot's photo intake, runnable on a folder before uploading.

It applies exactly the checks the bot applies, so a person (or a script, with ``--json``) can fix
a set before spending a training quota on it.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import sys
import textwrap
import unicodedata
import warnings
from collections.abc import Iterator
from pathlib import Path

from bot.config import load_settings
from bot.photos import (
    FaceDetectorUnavailable,
    PhotoInput,
    PhotoReport,
    PhotoRules,
    SetReport,
    check_photos,
)
from storage.errors import ConfigError

__all__ = ["register", "run_check"]

EXIT_CAN_TRAIN = 0
EXIT_CANNOT_TRAIN = 1
EXIT_USAGE = 2


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `photos` command group."""
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
        type=_class_word,
        default="person",
        metavar="WORD",
        help="what the photos show, e.g. person, dog, mug (default: person; person-like "
        "classes need exactly one face per photo)",
    )
    check.add_argument(
        "--resolution",
        type=_resolution,
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


def _class_word(value: str) -> str:
    word = value.strip().lower()
    if not re.fullmatch(r"[a-z][a-z0-9_-]{0,31}", word):
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a class word: use one short word such as person, dog or mug"
        )
    return word


def _resolution(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number of pixels") from None
    if not 64 <= number <= 4096 or number % 8:
        raise argparse.ArgumentTypeError("resolution must be a multiple of 8 from 64 to 4096")
    return number


def run_check(args: argparse.Namespace) -> int:
    """Check the photos named on the command line; return the process exit code."""
    # Decoder warnings about odd metadata are not the user's business: the verdict says it all.
    warnings.simplefilter("ignore")
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")
    try:
        settings = load_settings()
        rules = PhotoRules.from_settings(
            settings, class_name=args.class_name, resolution=args.resolution
        )
        files = _expand(args.paths)
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
        report = check_photos(_read_all(files, rules.max_bytes), rules)
        if args.out is not None:
            _write_normalised(args.out, files, report)
    except ConfigError as exc:
        return _fail(str(exc))
    except _UsageError as exc:
        return _fail(str(exc))
    except FaceDetectorUnavailable as exc:
        return _fail(f"the face detector is not available: {exc}")
    except OSError as exc:
        return _fail(f"{_printable(str(exc.filename or ''))}: {exc.strerror or exc}")
    if args.json:
        _print_json(files, report)
    else:
        _print_table(files, report)
    return EXIT_CAN_TRAIN if report.can_train else EXIT_CANNOT_TRAIN


class _UsageError(Exception):
    pass


def _fail(message: str) -> int:
    print(f"dreambot photos check: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _expand(paths: list[Path]) -> list[Path]:
    """Files as given, and the visible files directly inside each folder, sorted by name."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(
                sorted(p for p in path.iterdir() if not p.name.startswith(".") and p.is_file())
            )
        elif path.exists():
            files.append(path)
        else:
            raise _UsageError(f"{_printable(str(path))}: no such file or folder")
    return files


def _read_all(files: list[Path], max_bytes: int) -> Iterator[PhotoInput]:
    """Read one file at a time, and never more than one byte past the limit."""
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


def _safe_stem(path: Path) -> str:
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", path.stem).strip("_-")[:40]
    return stem or "photo"


def _write_normalised(out: Path, files: list[Path], report: SetReport) -> None:
    for photo in report.accepted:
        if photo.normalised is None:
            continue
        name = f"{photo.index + 1:03d}-{_safe_stem(files[photo.index])}"
        (out / f"{name}{photo.normalised.extension}").write_bytes(photo.normalised.data)


def _printable(text: str) -> str:
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
    print(_set_line(report), file=sys.stderr)


def _print_table(files: list[Path], report: SetReport) -> None:
    paths = [_printable(str(f)) for f in files]
    width = min(48, max([4, *(len(p) for p in paths)]))
    print(f"{'#':>3}  {'verdict':<7}  {'file':<{width}}  reasons")
    for photo in report.photos:
        _print_row(photo, paths[photo.index], width)
    print()
    print(_set_line(report))


def _print_row(photo: PhotoReport, path: str, width: int) -> None:
    reasons = ", ".join(r.value for r in photo.reasons) or "-"
    print(f"{photo.index + 1:>3}  {photo.verdict.value:<7}  {path:<{width}}  {reasons}")
    if photo.reasons:
        indent = " " * 14
        print(textwrap.fill(photo.message, 100, initial_indent=indent, subsequent_indent=indent))


def _set_line(report: SetReport) -> str:
    reasons = f" ({', '.join(r.value for r in report.reasons)})" if report.reasons else ""
    state = "can train" if report.can_train else "cannot train"
    return f"Set: {report.verdict.value}{reasons}, {state}. {report.message}"
