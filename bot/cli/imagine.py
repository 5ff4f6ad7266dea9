"""`dreambot imagine`: local generation (imports trainer lazily).

Arguments are checked before TensorFlow loads, so a typo costs nothing; TensorFlow and the
trainer are imported inside the command, because the bot host must run without them.
"""

from __future__ import annotations

import argparse
import math
import secrets
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

__all__ = ["MAX_IMAGES", "MAX_STEPS", "Progress", "register", "run_imagine"]

MAX_IMAGES = 4
"""Mirrors ``trainer.sampler.MAX_IMAGES`` (a test keeps them equal; this module stays TF-free)."""
MAX_STEPS = 1000
MAX_SEED = 2**63 - 1


def _int_in(name: str, low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{name} must be a whole number, not {text!r}"
            ) from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{name} must be {low} to {high} (got {value})")
        return value

    parse.__name__ = name
    return parse


def _guidance(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"guidance must be a number, not {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"guidance must be 0 or more (got {text})")
    return value


class Progress:
    """Step, speed and ETA on one stderr line (a new line per step when not a terminal)."""

    def __init__(self, stream: TextIO, label: str = "step") -> None:
        self.stream = stream
        self.label = label
        self.started = time.monotonic()
        self.inline = stream.isatty()

    def __call__(self, done: int, total: int) -> None:
        elapsed = time.monotonic() - self.started
        per_step = elapsed / max(done, 1)
        eta = per_step * (total - done)
        line = f"{self.label} {done}/{total}  {per_step:.2f} s/step  ETA {eta:.0f} s"
        if self.inline:
            end = "\n" if done == total else ""
            self.stream.write(f"\r{line}{end}")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def run_imagine(args: argparse.Namespace) -> int:
    """Generate ``--n`` images from a model folder and write them as PNG files."""
    model_dir: Path = args.model
    out_dir: Path = args.out
    seed: int = secrets.randbelow(2**31) if args.seed is None else args.seed
    seeds = [seed + i for i in range(args.n)]
    if seeds[-1] > MAX_SEED:
        print(
            f"dreambot imagine: error: --seed must be at most {MAX_SEED - args.n + 1}",
            file=sys.stderr,
        )
        return 2
    if not model_dir.is_dir():
        print(f"dreambot imagine: error: model folder {model_dir} does not exist", file=sys.stderr)
        return 1
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"dreambot imagine: error: cannot create {out_dir}: {exc}", file=sys.stderr)
        return 1
    if args.seed is None:
        print(f"seed: {seed} (pass --seed {seed} to repeat)", file=sys.stderr)

    from bot.config import load_settings
    from storage.errors import ConfigError, DreambotError

    print(f"loading {model_dir} …", file=sys.stderr)
    try:
        settings = load_settings()
        weights_dir = args.weights_dir or settings.weights_dir
        bpe_path = args.bpe_path or settings.bpe_path
        from trainer.export import load_model
        from trainer.sampler import Sampler

        model = load_model(model_dir, weights_dir=weights_dir, bpe_path=bpe_path)
        sampler = Sampler.from_components(model, jit_compile=args.xla)
        images = sampler.generate_png(
            args.prompt,
            seeds=seeds,
            negative_prompt=args.negative,
            steps=args.steps,
            guidance=args.guidance,
            progress=Progress(sys.stderr),
        )
    except ConfigError as exc:
        print(f"dreambot imagine: error: {exc}", file=sys.stderr)
        return 2
    except DreambotError as exc:
        print(f"dreambot imagine: error: {exc}", file=sys.stderr)
        return 1
    for image_seed, png in zip(seeds, images, strict=True):
        path = out_dir / f"imagine-{image_seed}.png"
        path.write_bytes(png)
        print(path)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `imagine` command."""
    parser = sub.add_parser(
        "imagine",
        help="draw images from a trained model folder (writes PNG files)",
        description="Draw images with a model folder written by `dreambot train`. The same seed "
        "and settings give byte-identical PNG files; image i uses seed SEED+i.",
    )
    parser.add_argument("prompt", metavar="PROMPT", help='e.g. "a photo of sks dog on the moon"')
    parser.add_argument("--model", required=True, type=Path, metavar="DIR", help="model folder")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="where PNGs go")
    parser.add_argument("--negative", default="", metavar="TEXT", help="what to steer away from")
    parser.add_argument(
        "--n",
        type=_int_in("n", 1, MAX_IMAGES),
        default=1,
        help=f"images, 1-{MAX_IMAGES} (default: 1)",
    )
    parser.add_argument(
        "--steps",
        type=_int_in("steps", 1, MAX_STEPS),
        default=30,
        help="denoising steps (default: 30)",
    )
    parser.add_argument(
        "--guidance", type=_guidance, default=7.5, help="guidance scale (default: 7.5)"
    )
    parser.add_argument(
        "--seed", type=_int_in("seed", 0, MAX_SEED), default=None, help="random when omitted"
    )
    parser.add_argument(
        "--weights-dir",
        type=Path,
        metavar="DIR",
        help="base weight files for sd-v1 models (default: the WEIGHTS_DIR setting)",
    )
    parser.add_argument(
        "--bpe-path",
        type=Path,
        metavar="FILE",
        help="CLIP BPE vocabulary for sd-v1 models (default: the BPE_PATH setting)",
    )
    parser.add_argument("--xla", action="store_true", help="XLA-compile the denoising step")
    parser.set_defaults(func=run_imagine)
