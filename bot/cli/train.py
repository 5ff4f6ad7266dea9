"""`dreambot train`: local DreamBooth training (imports trainer lazily)."""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bot.config import Settings

__all__ = ["register"]

_WORD = re.compile(r"^[a-z][a-z0-9]{0,31}$")
_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".heic", ".heif")


def _word(text: str) -> str:
    if not _WORD.match(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} must be one lowercase word of letters and digits (e.g. sks, dog)"
        )
    return text


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (got {value})")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative (got {value})")
    return value


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `train` command."""
    p = sub.add_parser(
        "train",
        help="fine-tune a personal model from a folder of photos (DreamBooth, runs here)",
        description="Train a DreamBooth model on this machine and write a model folder that "
        "`dreambot imagine --model DIR` can use. Checkpoints go to OUT/checkpoints; running the "
        "same command again after an interruption resumes from the last one.",
    )
    p.add_argument("--photos", type=Path, required=True, help="folder with 3-25 photos")
    p.add_argument("--class-name", type=_word, required=True, help="what the subject is: dog")
    p.add_argument("--token", type=_word, required=True, help="rare identifier word: sks")
    p.add_argument("--preset", choices=("tiny", "sd-v1"), help="base model (default MODEL_PRESET)")
    p.add_argument("--mode", choices=("lora", "full"), default="lora")
    p.add_argument("--steps", type=_positive, default=800)
    p.add_argument("--class-images", type=_count, default=100, help="prior images (0: none)")
    p.add_argument("--resolution", type=_positive, help="pixels (default from the preset)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=_positive, default=1)
    p.add_argument("--learning-rate", type=float, help="default 1e-4 (lora) / 2e-6 (full)")
    p.add_argument("--rank", type=_positive, default=4, help="LoRA rank")
    p.add_argument("--train-text-encoder", action="store_true", help="LoRA on the text encoder too")
    p.add_argument(
        "--precision", choices=("float32", "mixed_float16", "mixed_bfloat16"), default="float32"
    )
    p.add_argument(
        "--no-xla",
        dest="xla",
        action="store_false",
        help="do not XLA-compile the training step (faster start, slower steps)",
    )
    p.add_argument("--checkpoint-every", type=_positive, default=100)
    p.add_argument("--out", type=Path, required=True, help="model folder to write")
    p.set_defaults(func=_cmd_train)


def _fail(message: str, code: int = 2) -> int:
    print(f"dreambot train: {message}", file=sys.stderr)
    return code


def _read_photos(folder: Path, settings: Settings, class_name: str, size: int) -> list[bytes]:
    """Checked, normalised photo bytes; raises UserFacingError with every reason otherwise."""
    from storage.errors import UserFacingError

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in _SUFFIXES)
    if not files:
        raise UserFacingError(f"no photos in {folder} (looked for {', '.join(_SUFFIXES)})")
    try:
        from bot.photos import PhotoInput, PhotoRules, check_photos
    except ImportError:  # a worker-only install has no photo checker: train on the files as is
        return [p.read_bytes() for p in files]
    rules = PhotoRules.from_settings(settings, class_name=class_name, resolution=size)
    report = check_photos([PhotoInput(p.read_bytes(), p.name) for p in files], rules)
    if not report.can_train:
        lines = [f"  {p.name}: {p.verdict}: {p.message}" for p in report.photos if p.message]
        raise UserFacingError("\n".join([report.message, *lines]), code="bad_photos")
    return [p.normalised.data for p in report.accepted if p.normalised is not None]


def _print_progress(label: str, done: int, total: int, extra: str = "") -> None:
    end = "\n" if done >= total else ""
    print(f"\r{label} {done}/{total}{extra}", end=end, file=sys.stderr, flush=True)


def _eta(seconds: float) -> str:
    minutes, secs = divmod(int(seconds + 0.5), 60)
    return f"{minutes}:{secs:02d}"


def _cmd_train(args: argparse.Namespace) -> int:
    """Run one local training job; returns the process exit code."""
    from bot.config import load_settings

    if not args.photos.is_dir():
        return _fail(f"--photos {args.photos} is not a folder")
    if args.out.exists() and not args.out.is_dir():
        return _fail(f"--out {args.out} exists and is not a folder")
    settings = load_settings()
    name: str = args.preset or settings.model_preset
    resolution = args.resolution or (settings.train_resolution if name == "sd-v1" else None)

    from storage.blobs import BlobStore
    from storage.errors import UserFacingError
    from trainer.checkpoints import DirCheckpointStore
    from trainer.data import load_images
    from trainer.dreambooth import TrainConfig
    from trainer.presets import PRESETS, build_preset
    from trainer.training import Progress, TrainJob, class_prompt, run_training

    if name not in PRESETS:
        return _fail(f"unknown preset {name!r}")
    size = resolution or PRESETS[name].resolution
    try:
        photos = _read_photos(args.photos, settings, args.class_name, size)
        config = TrainConfig(
            mode=args.mode,
            steps=args.steps,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            lora_rank=args.rank,
            train_text_encoder=args.train_text_encoder,
            precision=args.precision,
            jit_compile=args.xla,
            seed=args.seed,
            checkpoint_every=args.checkpoint_every,
        )
        preset = build_preset(
            name,
            resolution=resolution,
            weights_dir=settings.weights_dir,
            bpe_path=settings.bpe_path,
            dtype_policy=config.dtype_policy,
        )
    except UserFacingError as exc:
        return _fail(exc.message, 1)
    except ValueError as exc:
        return _fail(str(exc))
    instance = load_images(photos, preset.resolution)
    print(f"{len(instance)} photos, preset {name} at {preset.resolution}px", file=sys.stderr)

    classes = None
    if args.class_images:
        from trainer.class_images import ClassImageSpec, ensure_class_images
        from trainer.sampler import Sampler

        store = BlobStore(settings.blob_url)
        spec = ClassImageSpec.for_preset(preset, class_prompt(args.class_name))
        made = ensure_class_images(
            Sampler.from_components(preset),
            store,
            spec,
            args.class_images,
            progress=lambda done, total: _print_progress("class images", done, total),
        )
        classes = load_images(made.load(store), preset.resolution)

    def on_step(p: Progress) -> None:
        extra = f"  loss {p.loss:.4f}  {p.seconds_per_step:.2f} s/step  ETA {_eta(p.eta_seconds)}"
        _print_progress("step", p.step, p.total, extra)

    ckpt_dir = args.out / "checkpoints"
    job = TrainJob(identifier=args.token, class_name=args.class_name, config=config)
    meta: Any = run_training(
        preset,
        job,
        instance,
        classes,
        args.out,
        checkpoints=DirCheckpointStore(ckpt_dir),
        progress=on_step,
    )
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    print(f"{args.out}: {meta.method} model of '{meta.instance_prompt}' after {meta.steps} steps")
    return 0
