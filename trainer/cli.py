"""The trainer's commands: worker, train and imagine.

Arguments are checked with the shared rules (``storage.rules``) before TensorFlow loads, so a
typo costs nothing; TensorFlow and KerasCV are imported inside the handlers. The composition
root (``dreambot.cli``) builds the parser, loads settings once, and injects what ``train`` needs
from the bot side: the photo check, so local training is as honest about photos as the bot.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import secrets
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol, TextIO

from storage.config import StorageSettings, require_extra
from storage.errors import InvalidArgument, UserFacingError
from storage.rules import (
    DEFAULT_CLASS_IMAGES,
    DEFAULT_GUIDANCE,
    DEFAULT_IMAGES,
    DEFAULT_LORA_RANK,
    DEFAULT_METHOD,
    DEFAULT_SAMPLER_STEPS,
    DEFAULT_TRAIN_STEPS,
    MAX_CLASS_IMAGES,
    MAX_IMAGES,
    MAX_LORA_RANK,
    MAX_SAMPLER_STEPS,
    MAX_SEED,
    MAX_TRAIN_SEED,
    MAX_TRAIN_STEPS,
    METHODS,
    argument,
    check_guidance,
    check_int,
    check_resolution,
    check_word,
    class_prompt,
    seeds_from,
)
from trainer.config import NATIVE_RESOLUTION, TrainerSettings, training_resolution

__all__ = ["ProgressLine", "TrainerSide", "register"]


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
            f"ETA {_clock(seconds_per_step * (total - done))}",
        ]
        line = "  ".join(parts)
        if self.inline:
            self.stream.write(f"\r{line}" + ("\n" if done >= total else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds + 0.5), 60)
    return f"{minutes}:{secs:02d}"


def _count(what: str, low: int, high: int) -> Callable[[str], int]:
    return argument(functools.partial(check_int, what=what, low=low, high=high))


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
    _register_train(sub)
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


def _register_train(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "train",
        help="fine-tune a personal model from a folder of photos (DreamBooth, runs here)",
        description="Check the photos the way the bot does, then train a DreamBooth model on "
        "this machine and write a model folder that `dreambot imagine --model DIR` can use. "
        "Checkpoints go to OUT/checkpoints; running the same command again after an "
        "interruption resumes from the last one. A checkpoint of a different run (other photos, "
        "learning rate, method...) is refused; --fresh discards it and starts over.",
    )
    word = argument(check_word)
    identifier = argument(functools.partial(check_word, what="identifier"))
    p.add_argument("--photos", type=Path, required=True, help="folder with the subject's photos")
    p.add_argument("--class-name", type=word, required=True, help="what the subject is: dog")
    p.add_argument("--identifier", type=identifier, required=True, help="rare word: sks")
    p.add_argument(
        "--preset", choices=tuple(NATIVE_RESOLUTION), help="base model (default: MODEL_PRESET)"
    )
    p.add_argument(
        "--method",
        choices=METHODS,
        default=DEFAULT_METHOD,
        help=f"LoRA factors or every UNet weight (default: {DEFAULT_METHOD})",
    )
    p.add_argument(
        "--steps",
        type=_count("steps", 1, MAX_TRAIN_STEPS),
        default=DEFAULT_TRAIN_STEPS,
        help=f"training steps, 1-{MAX_TRAIN_STEPS} (default: {DEFAULT_TRAIN_STEPS})",
    )
    p.add_argument(
        "--class-images",
        type=_count("class images", 0, MAX_CLASS_IMAGES),
        default=DEFAULT_CLASS_IMAGES,
        help=f"prior-preservation images, 0 for none (default: {DEFAULT_CLASS_IMAGES})",
    )
    p.add_argument(
        "--resolution",
        type=argument(check_resolution),
        help="pixels (default: TRAIN_RESOLUTION for sd-v1, the preset's own otherwise)",
    )
    p.add_argument("--seed", type=_count("seed", 0, MAX_TRAIN_SEED), default=0, help="default: 0")
    p.add_argument(
        "--batch-size", type=_count("batch size", 1, 64), default=1, help="photos per step (1)"
    )
    p.add_argument("--learning-rate", type=float, help="default 1e-4 (lora) / 2e-6 (full)")
    p.add_argument(
        "--rank",
        type=_count("rank", 1, MAX_LORA_RANK),
        default=DEFAULT_LORA_RANK,
        help=f"LoRA rank (default: {DEFAULT_LORA_RANK})",
    )
    p.add_argument("--train-text-encoder", action="store_true", help="LoRA on the text encoder too")
    # Left unset, precision, XLA, attention and remat are chosen for the device (TrainConfig).
    p.add_argument(
        "--precision",
        choices=("float32", "mixed_float16", "mixed_bfloat16"),
        help="default: mixed precision on a GPU (bfloat16 where supported), float32 on a CPU",
    )
    p.add_argument(
        "--xla",
        action=argparse.BooleanOptionalAction,
        help="XLA-compile the training step (default: off; it is slower at real size on CPU)",
    )
    p.add_argument(
        "--attention",
        choices=("tiled", "kerascv"),
        help="tiled (default: same result, far less memory) or KerasCV's own",
    )
    p.add_argument(
        "--remat",
        action=argparse.BooleanOptionalAction,
        help="recompute activations in the backward pass: less memory, ~30%% slower steps "
        "(default: on for full fine-tuning on a GPU)",
    )
    p.add_argument(
        "--checkpoint-every",
        type=_count("checkpoint interval", 1, 10**6),
        default=100,
        help="steps between checkpoints (default: 100)",
    )
    p.add_argument("--out", type=Path, required=True, help="model folder to write")
    p.add_argument(
        "--fresh",
        action="store_true",
        help="discard the checkpoint an earlier run left in OUT/checkpoints and start over",
    )
    p.set_defaults(func=_cmd_train)


@contextlib.contextmanager
def _fresh_hint(ckpt_dir: Path) -> Iterator[None]:
    """Say, in a refused resume's message, how to start over with this command's own flags."""
    from trainer.errors import CheckpointMismatch

    try:
        yield
    except CheckpointMismatch as exc:
        raise CheckpointMismatch(
            exc.differences,
            step=exc.step,
            where=f"The checkpoint in {ckpt_dir}",
            hint="To start over, add --fresh (this discards it), or give another --out to keep it.",
        ) from None


def _cmd_train(args: argparse.Namespace, settings: TrainerSide) -> int:
    """Check the photos, then run one local training job."""
    if not args.photos.is_dir():
        raise InvalidArgument(f"--photos {args.photos} is not a folder")
    if args.out.exists() and not args.out.is_dir():
        raise InvalidArgument(f"--out {args.out} exists and is not a folder")
    name: str = args.preset or settings.trainer.model_preset
    resolution = training_resolution(name, args.resolution, settings.train_resolution)
    require_extra("tensorflow", "worker", "train")
    photos = settings.check_photos(args.photos, args.class_name, resolution)

    from storage.blobs import BlobStore
    from trainer.checkpoints import DirCheckpointStore, check_resumable, run_record
    from trainer.data import load_images
    from trainer.dreambooth import TrainConfig
    from trainer.presets import build_preset
    from trainer.training import StepReport, TrainJob, run_training

    config = TrainConfig(
        method=args.method,
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        lora_rank=args.rank,
        train_text_encoder=args.train_text_encoder,
        precision=args.precision,
        jit_compile=args.xla,
        attention=args.attention,
        remat=args.remat,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
    )
    ckpt_dir = args.out / "checkpoints"
    checkpoints = DirCheckpointStore(ckpt_dir)
    if args.fresh:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    # What is known before the preset and class images (the slow part) is checked now; the
    # photos and base weights once they are loaded, in run_training.
    known = {"identifier": args.identifier, "class_name": args.class_name, "resolution": resolution}
    with _fresh_hint(ckpt_dir):
        found = check_resumable(checkpoints, run_record(config) | known, steps=args.steps)
    if found is not None:
        print(f"found a checkpoint at step {found.step} in {ckpt_dir}", file=sys.stderr)
    preset = build_preset(
        name,
        resolution=resolution,
        weights_dir=settings.trainer.weights_dir,
        bpe_path=settings.trainer.bpe_path,
        dtype_policy=config.dtype_policy,
    )
    instance = load_images(photos, preset.resolution)
    print(f"{len(instance)} photos, preset {name} at {preset.resolution}px", file=sys.stderr)

    classes = None
    if args.class_images:
        from trainer.class_images import ClassImageSpec, ensure_class_images
        from trainer.sampler import Sampler

        store = BlobStore(settings.storage.blob_store_url)
        spec = ClassImageSpec.for_preset(preset, class_prompt(args.class_name))
        made = ensure_class_images(
            Sampler.from_components(preset),
            store,
            spec,
            args.class_images,
            progress=ProgressLine("class images"),
        )
        classes = load_images(made.load(store), preset.resolution)

    line = ProgressLine("step")

    def on_step(p: StepReport) -> None:
        line(p.step, p.total, loss=p.loss, seconds_per_step=p.seconds_per_step)

    job = TrainJob(identifier=args.identifier, class_name=args.class_name, config=config)
    with _fresh_hint(ckpt_dir):
        meta = run_training(
            preset,
            job,
            instance,
            classes,
            args.out,
            checkpoints=checkpoints,
            progress=on_step,
            in_place=True,
        )
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    print(f"{args.out}: {meta.method} model of '{meta.instance_prompt}' after {meta.steps} steps")
    return 0


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
        type=_count("n", 1, MAX_IMAGES),
        default=DEFAULT_IMAGES,
        help=f"images, 1-{MAX_IMAGES} (default: {DEFAULT_IMAGES})",
    )
    parser.add_argument(
        "--steps",
        type=_count("steps", 1, MAX_SAMPLER_STEPS),
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
        "--seed", type=_count("seed", 0, MAX_SEED), default=None, help="random when omitted"
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
