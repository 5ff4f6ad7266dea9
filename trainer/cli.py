"""The trainer's commands: worker, train and imagine.

Arguments are checked with the shared rules (``storage.rules``) before TensorFlow loads, so a
typo costs nothing; TensorFlow and KerasCV are imported inside the handlers. The composition
root (``dreambot.cli``) builds the parser, loads settings once, and injects what ``train`` needs
from the bot side: the photo check, so local training is as honest about photos as the bot.
"""

from __future__ import annotations

import argparse
import secrets
import signal
import sys
from pathlib import Path

from storage.config import require_extra
from storage.errors import UserFacingError
from storage.rules import (
    DEFAULT_GUIDANCE,
    DEFAULT_IMAGES,
    DEFAULT_SAMPLER_STEPS,
    MAX_IMAGES,
    MAX_SAMPLER_STEPS,
    MAX_SEED,
    argument,
    check_guidance,
    seeds_from,
)
from trainer.cli_support import ProgressLine, TrainerSide, count_argument
from trainer.cli_train import register_train
from trainer.config import bases_dir, training_resolution

__all__ = ["ProgressLine", "TrainerSide", "register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add worker, train and imagine; each sets ``func(args, settings) -> exit code``."""
    worker = sub.add_parser(
        "worker",
        help="run one GPU/CPU worker against REDIS_URL",
        description="Load the base model once, then run training and generation jobs from "
        "REDIS_URL, reading inputs from and writing outputs to BLOB_URL. With --queue all (the "
        "default) one process serves both queues and runs waiting /imagine requests between "
        "training steps.",
    )
    worker.add_argument(
        "--queue",
        choices=("train", "generate", "all"),
        default="all",
        help="which queue to serve (default: all)",
    )
    worker.set_defaults(func=_cmd_worker)
    register_train(sub)
    _register_imagine(sub)


def _cmd_worker(args: argparse.Namespace, settings: TrainerSide) -> int:
    """Serve jobs until SIGINT/SIGTERM; bad model settings stop it before it takes any."""
    require_extra("arq", "worker", "worker")
    require_extra("tensorflow", "worker", "worker")
    # Loading TensorFlow and the base model takes a while; a SIGTERM meanwhile (`dreambot up`
    # stopping) ends the process as cleanly as one while serving, instead of killing it.
    signal.signal(signal.SIGTERM, _interrupted)
    from trainer.worker import run_worker

    name = settings.trainer.model_preset
    return run_worker(
        settings.storage,
        settings.trainer,
        args.queue,
        resolution=training_resolution(name, None, settings.train_resolution),
    )


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _register_imagine(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
        type=count_argument("n", 1, MAX_IMAGES),
        default=DEFAULT_IMAGES,
        help=f"images, 1-{MAX_IMAGES} (default: {DEFAULT_IMAGES})",
    )
    parser.add_argument(
        "--steps",
        type=count_argument("steps", 1, MAX_SAMPLER_STEPS),
        default=DEFAULT_SAMPLER_STEPS,
        help=f"denoising steps (default: {DEFAULT_SAMPLER_STEPS})",
    )
    parser.add_argument(
        "--guidance",
        type=argument(check_guidance),
        default=DEFAULT_GUIDANCE,
        help=f"guidance scale (default: {DEFAULT_GUIDANCE})",
    )
    parser.add_argument(
        "--seed", type=count_argument("seed", 0, MAX_SEED), default=None, help="random when omitted"
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
    parser.add_argument(
        "--xla",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="XLA-compile the denoising step (default: on, as KerasCV does)",
    )
    parser.set_defaults(func=run_imagine)


def run_imagine(args: argparse.Namespace, settings: TrainerSide) -> int:
    """Generate ``--n`` images from a model folder and write them as PNG files."""
    model_dir: Path = args.model
    out_dir: Path = args.out
    seed: int = secrets.randbelow(2**31) if args.seed is None else args.seed
    seeds = seeds_from(seed, args.n)
    require_extra("tensorflow", "worker", "imagine")
    if not model_dir.is_dir():
        raise UserFacingError(f"model folder {model_dir} does not exist", code="no_model")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserFacingError(f"cannot create {out_dir}: {exc.strerror or exc}") from None
    if args.seed is None:
        print(f"seed: {seed} (pass --seed {seed} to repeat)", file=sys.stderr)

    print(f"loading {model_dir} …", file=sys.stderr)
    from trainer.export import load_model
    from trainer.sampler import Sampler

    model = load_model(
        model_dir,
        weights_dir=args.weights_dir or settings.trainer.weights_dir,
        bpe_path=args.bpe_path or settings.trainer.bpe_path,
        bases_dir=bases_dir(settings.storage.data_dir),
    )
    sampler = Sampler.from_components(model, jit_compile=args.xla)
    images = sampler.generate_png(
        args.prompt,
        seeds=seeds,
        negative_prompt=args.negative,
        steps=args.steps,
        guidance=args.guidance,
        progress=ProgressLine("step"),
    )
    for image_seed, png in zip(seeds, images, strict=True):
        path = out_dir / f"imagine-{image_seed}.png"
        path.write_bytes(png)
        print(path)
    return 0
