"""Checkpoint benchmark: host memory and time to save (and load) a real-size full checkpoint.

Builds the real-size sd-v1 UNet with random weights (128 px; the resolution does not change the
weights) and the full method's AdamW on every trainable weight: ~3.4 GB of weights and ~6.9 GB
of moments, as a full fine-tuning run holds. Then saves one checkpoint with weights and
optimizer state to a temp folder through ``save_checkpoint`` (streamed, one variable at a time),
and loads it back. Resident memory (RSS) is sampled every 2 ms by a thread, and the kernel's
own peak (VmHWM, reset through /proc/self/clear_refs where allowed) is read too; a figure is the
peak over the RSS just before the operation.

Baseline, the old way (``git show 8707b25:trainer/checkpoints.py``): a dict of every array, an
npz in a BytesIO, ``getvalue()``, hashed and written. At full size it needs more memory than this
machine has, so it runs on a slice of the weights (``--old-gb``) and its peak per byte of state
is scaled to the whole state.

    .venv/bin/python -m bench.checkpoint [--old-gb 1.0] [--dir /tmp] [--no-load]
    .venv/bin/python -m bench.checkpoint --preset tiny --old-gb 0.001   # a dry run in seconds

Needs ~12 GB free memory and ~11 GB free disk. Last line ``save_peak_gb: <float>``: the RSS
increase while saving the full checkpoint the new way.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from trainer.checkpoints import DirCheckpointStore, load_checkpoint, save_checkpoint
from trainer.data import EncodedData
from trainer.dreambooth import TrainConfig, make_trainer
from trainer.presets import PRESETS, alphas_cumprod_schedule, build_diffusion_model

GB = 1e9


def _status(field: str) -> int:
    """A ``/proc/self/status`` memory field in bytes."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def rss() -> int:
    return _status("VmRSS")


@contextmanager
def peak_rss(result: dict[str, float], interval: float = 0.002) -> Iterator[None]:
    """Peak RSS increase over the RSS at entry (bytes) and seconds, written into ``result``."""
    try:  # "5" resets the kernel's peak-RSS mark (Linux 4.0+), so VmHWM covers only the block
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        hwm_reset = True
    except OSError:
        hwm_reset = False
    base = rss()
    peak = base
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss())
            time.sleep(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    try:
        yield
    finally:
        result["seconds"] = time.perf_counter() - started
        done.set()
        sampler.join()
        if hwm_reset:
            peak = max(peak, _status("VmHWM"))
        result["peak"] = float(max(peak, rss()) - base)


def old_save(variables: Sequence[Any], path: Path) -> None:
    """The previous save_checkpoint's memory pattern: dict, BytesIO npz, getvalue, hash, write."""
    arrays = {f"v{i:05d}": np.asarray(v.numpy()) for i, v in enumerate(variables)}
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    data = buf.getvalue()
    hashlib.sha256(data).hexdigest()
    path.write_bytes(data)


def nbytes(variables: Sequence[Any]) -> int:
    return sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in variables)


def build_unet(preset: str) -> tuple[Any, Any]:
    spec = PRESETS[preset]
    spec = replace(spec, resolution=128) if preset == "sd-v1" else spec
    start = time.perf_counter()
    unet = build_diffusion_model(spec)
    print(
        f"{preset} UNet built in {time.perf_counter() - start:.0f} s: "
        f"{unet.count_params() / 1e6:.0f} M params, RSS {rss() / GB:.2f} GB"
    )
    return spec, unet


def full_trainer(spec: Any, unet: Any) -> Any:
    """The full method's trainer on ``unet``: AdamW moments for every trainable weight."""
    rng = np.random.default_rng(0)
    s = spec.latent_size
    data = EncodedData(
        instance_posteriors=rng.normal(size=(1, 2, s, s, 8)).astype(np.float32),
        class_posteriors=None,
        instance_context=rng.normal(size=(77, spec.context_width)).astype(np.float32),
        class_context=None,
    )

    class _Shim:  # what make_trainer reads from a preset when it is handed the UNet
        alphas_cumprod = alphas_cumprod_schedule()
        latent_scale = spec.latent_scale

    config = TrainConfig(method="full", steps=1000, jit_compile=False, precision="float32")
    return make_trainer(_Shim(), data, config, diffusion_model=unet)  # type: ignore[arg-type]


def measure(label: str, fn: Callable[[], Any]) -> dict[str, float]:
    result: dict[str, float] = {}
    with peak_rss(result):
        fn()
    print(f"{label}: peak +{result['peak'] / GB:.3f} GB RSS, {result['seconds']:.1f} s")
    return result


def measure_old(unet: Any, folder: Path, gigabytes: float) -> float:
    """The old way on the first ``gigabytes`` of weights: RSS peak per byte of state."""
    part: list[Any] = []
    for var in unet.trainable_variables:
        if nbytes(part) >= gigabytes * GB:
            break
        part.append(var)
    old = measure(
        f"old way on a {nbytes(part) / GB:.2f} GB slice of the weights",
        lambda: old_save(part, folder / "old.npz"),
    )
    (folder / "old.npz").unlink()
    return old["peak"] / nbytes(part)


def measure_new(trainer: Any, folder: Path, *, load: bool) -> tuple[dict[str, float], int]:
    """Save (and load) the whole state the new way; returns the save figures and state bytes."""
    weights = list(trainer.trained_variables)
    slots = list(trainer.optimizer.variables)
    state = nbytes(weights) + nbytes(slots)
    print(
        f"full method: {len(weights)} weights {nbytes(weights) / GB:.2f} GB, "
        f"{len(slots)} optimizer variables {nbytes(slots) / GB:.2f} GB; "
        f"state {state / GB:.2f} GB, RSS {rss() / GB:.2f} GB"
    )
    largest = max(nbytes([v]) for v in [*weights, *slots])
    print(f"largest single variable: {largest / 1e6:.0f} MB")
    store = DirCheckpointStore(folder / "ckpt")
    new = measure(
        f"new save_checkpoint, full {state / GB:.2f} GB state",
        lambda: save_checkpoint(store, trainer, 100, with_optimizer=True),
    )
    on_disk = sum(p.stat().st_size for p in store.path.iterdir())
    print(
        f"on disk {on_disk / GB:.2f} GB ({on_disk / state:.4f}x the state), "
        f"{state / new['seconds'] / GB:.2f} GB/s including fsync"
    )
    if load:
        measure("load_checkpoint (hash check + restore)", lambda: load_checkpoint(store, trainer))
    return new, state


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old-gb", type=float, default=1.0, help="slice for the old way (GB)")
    parser.add_argument("--dir", default=None, help="where the temp checkpoint folder goes")
    parser.add_argument("--no-load", dest="load", action="store_false", help="skip the load")
    parser.add_argument("--preset", choices=tuple(PRESETS), default="sd-v1", help="tiny: dry run")
    args = parser.parse_args()

    spec, unet = build_unet(args.preset)
    with tempfile.TemporaryDirectory(prefix="bench-ckpt-", dir=args.dir) as tmp:
        # The old way first, before the optimizer exists, so its transient copies fit.
        per_byte = measure_old(unet, Path(tmp), args.old_gb)
        trainer = full_trainer(spec, unet)
        new, state = measure_new(trainer, Path(tmp), load=args.load)
    old_gb = per_byte * state / GB
    print(f"old way: {per_byte:.2f} bytes of RSS per byte of state; scaled to the full state")
    print(f"save peak over pre-save RSS: new {new['peak'] / GB:.3f} GB, old {old_gb:.1f} GB")
    print(f"save_peak_gb: {new['peak'] / GB:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
