"""`dreambot train`: check the photos, draw class images, train (resuming safely), export."""

from __future__ import annotations

import argparse
import contextlib
import functools
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

from storage.config import require_extra
from storage.errors import InvalidArgument
from storage.rules import (
    DEFAULT_CLASS_IMAGES,
    DEFAULT_LORA_RANK,
    DEFAULT_METHOD,
    DEFAULT_TRAIN_STEPS,
    MAX_CLASS_IMAGES,
    MAX_LORA_RANK,
    MAX_TRAIN_SEED,
    MAX_TRAIN_STEPS,
    METHODS,
    argument,
    check_resolution,
    check_word,
    class_prompt,
)
from trainer.cli_support import ProgressLine, TrainerSide, count_argument
from trainer.config import NATIVE_RESOLUTION, preset_bases_dir, training_resolution

__all__ = ["register_train"]


def register_train(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
        type=count_argument("steps", 1, MAX_TRAIN_STEPS),
        default=DEFAULT_TRAIN_STEPS,
        help=f"training steps, 1-{MAX_TRAIN_STEPS} (default: {DEFAULT_TRAIN_STEPS})",
    )
    p.add_argument(
        "--class-images",
        type=count_argument("class images", 0, MAX_CLASS_IMAGES),
        default=DEFAULT_CLASS_IMAGES,
        help=f"prior-preservation images, 0 for none (default: {DEFAULT_CLASS_IMAGES})",
    )
    p.add_argument(
        "--resolution",
        type=argument(check_resolution),
        help="pixels (default: TRAIN_RESOLUTION for sd-v1, the preset's own otherwise)",
    )
    p.add_argument(
        "--seed", type=count_argument("seed", 0, MAX_TRAIN_SEED), default=0, help="default: 0"
    )
    p.add_argument(
        "--batch-size",
        type=count_argument("batch size", 1, 64),
        default=1,
        help="photos per step (1)",
    )
    p.add_argument("--learning-rate", type=float, help="default 1e-4 (lora) / 2e-6 (full)")
    p.add_argument(
        "--rank",
        type=count_argument("rank", 1, MAX_LORA_RANK),
        default=DEFAULT_LORA_RANK,
        help=f"LoRA rank (default: {DEFAULT_LORA_RANK})",
    )
    p.add_argument("--train-text-encoder", action="store_true", help="LoRA on the text encoder too")
    # Left unset, precision, XLA, attention, remat and conv are chosen for the device (TrainConfig).
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
        "--conv",
        choices=("matmul", "kerascv"),
        help="matmul: convolutions on small feature maps as one matrix product, same result, "
        "faster on a CPU (default there); kerascv: KerasCV's own (default on a GPU)",
    )
    p.add_argument(
        "--checkpoint-every",
        type=count_argument("checkpoint interval", 1, 10**6),
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
        conv=args.conv,
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
        bases_dir=preset_bases_dir(settings.trainer, settings.storage.data_dir),
    )
    instance = load_images(photos, preset.resolution)
    print(f"{len(instance)} photos, preset {name} at {preset.resolution}px", file=sys.stderr)

    classes = empties = None
    if args.class_images:
        from trainer.class_images import ensure_prior_images
        from trainer.sampler import Sampler

        store = BlobStore(settings.storage.blob_store_url)
        made, made_empty = ensure_prior_images(
            Sampler.from_components(preset),
            store,
            preset,
            class_prompt(args.class_name),
            args.class_images,
            empty_prompt=bool(config.empty_prompt_rate),
            progress=ProgressLine("class images"),
        )
        classes = load_images(made.load(store), preset.resolution)
        if made_empty is not None:
            empties = load_images(made_empty.load(store), preset.resolution)

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
            empty_images=empties,
            checkpoints=checkpoints,
            progress=on_step,
            in_place=True,
        )
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    print(f"{args.out}: {meta.method} model of '{meta.instance_prompt}' after {meta.steps} steps")
    return 0
