"""Photo intake benchmark: check and normalise 25 generated 12-megapixel JPEGs.

Run from the repository root: ``.venv/bin/python -m bench.photos [--photos 25] [--workers 2]
[--repeats 3]`` (``--photos 3 --repeats 1`` for a quick try). Prints throughput and peak RSS for
the intake as the bot runs it, then a baseline in the same run (a plain full-size decode of
every photo) so the figures can be compared on whatever machine this runs. The last line is
``photos_per_s: <float>``. Goal on the 2-core dev machine: >= 10 photos/s, peak RSS < 500 MB.
The face in each photo is drawn by the photo tests' own ``draw_face``.
"""

from __future__ import annotations

import argparse
import functools
import io
import os
import resource
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np
import psutil
from PIL import Image, ImageDraw, ImageOps

from bot.photos import PhotoInput, PhotoRules, check_photos
from tests.bot.photos.images import draw_face

__all__ = ["main"]

T = TypeVar("T")
WIDTH, HEIGHT = 4000, 3000  # 12 megapixels, a phone's 4:3 default


def make_photo(seed: int) -> bytes:
    """A 12 MP phone-like JPEG: textured scene, one face, sensor grain; different for every seed.

    Shapes are drawn at half size and enlarged (cheap); the grain is added at full size so the
    file is as large as a phone's (about 3-4 MB at quality 90), since decoding cost follows the
    amount of entropy-coded data.
    """
    rng = np.random.default_rng(seed)
    half = (WIDTH // 2, HEIGHT // 2)
    coarse = rng.integers(0, 256, (9, 12, 3), dtype=np.uint8)
    scene = Image.fromarray(coarse).resize(half, Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(scene)
    for _ in range(30):
        x, y = int(rng.integers(0, half[0])), int(rng.integers(0, half[1]))
        r = int(rng.integers(20, 200))
        draw.ellipse(
            [x - r, y - r, x + r, y + r], fill=tuple(int(c) for c in rng.integers(0, 256, 3))
        )
    draw_face(draw, half[0] * float(rng.uniform(0.35, 0.65)), half[1] * 0.5, half[1] * 0.4)
    full = np.asarray(scene.resize((WIDTH, HEIGHT), Image.Resampling.BILINEAR)) // 16 * 15
    full += rng.integers(0, 16, (HEIGHT, WIDTH, 1), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(full).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


class PeakRss:
    """Samples this process's RSS in a thread: the peak of one phase, not of the whole run."""

    def __init__(self, interval: float = 0.005) -> None:
        self._process = psutil.Process(os.getpid())
        self._interval = interval
        self._stop = threading.Event()
        self.peak = self._process.memory_info().rss
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            time.sleep(self._interval)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)


def _timed(run: Callable[[], T]) -> tuple[T, float, float, int]:
    """Result, wall seconds, CPU seconds (all threads) and peak RSS of one call.

    CPU time barely depends on what else the machine runs, so it is the figure to compare
    between runs; wall time is what a user waits.
    """
    with PeakRss() as rss:
        start, cpu = time.perf_counter(), time.process_time()
        result = run()
        elapsed, used = time.perf_counter() - start, time.process_time() - cpu
    return result, elapsed, used, rss.peak


def _baseline(photos: Sequence[bytes], resolution: int) -> None:
    """What a straightforward implementation does: full-size decode, orient, resize, encode."""
    for data in photos:
        image = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        square = image.crop((left, top, left + side, top + side)).resize((resolution, resolution))
        square.save(io.BytesIO(), "PNG")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--photos", type=int, default=25)
    parser.add_argument("--workers", type=int, default=2, help="threads for the headline run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per configuration")
    args = parser.parse_args(argv)

    mb = 1024 * 1024
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"machine: {os.cpu_count()} CPUs, load average {load} (other work slows every figure)")
    start = time.perf_counter()
    photos = [make_photo(seed) for seed in range(args.photos)]
    sizes = [len(p) for p in photos]
    print(
        f"generated {len(photos)} JPEGs of {WIDTH}x{HEIGHT} in {time.perf_counter() - start:.1f} s "
        f"({min(sizes) / mb:.1f}-{max(sizes) / mb:.1f} MB each, {sum(sizes) / mb:.0f} MB in all)"
    )
    rules = PhotoRules(class_name="person", max_photos=max(25, len(photos)))
    inputs = [PhotoInput(data, f"IMG_{i:04d}.jpg", "image/jpeg") for i, data in enumerate(photos)]
    check_photos(inputs[:1], rules)  # load the face cascade and warm up the decoders
    before = psutil.Process().memory_info().rss

    # Each configuration runs --repeats times and keeps its best run: on a shared machine the
    # slower runs measure the neighbours, not the code (the same reasoning as timeit's min).
    best: dict[int, float] = {}
    for workers in sorted({1, args.workers}):
        for attempt in range(1, args.repeats + 1):
            run = functools.partial(check_photos, inputs, rules, workers=workers)
            report, elapsed, cpu, peak = _timed(run)
            rate = len(photos) / elapsed
            best[workers] = max(best.get(workers, 0.0), rate)
            print(
                f"intake, {workers} thread(s), run {attempt}: {elapsed:.2f} s, "
                f"{rate:.1f} photos/s, CPU {cpu / len(photos) * 1000:.0f} ms/photo, "
                f"peak RSS {peak / mb:.0f} MB (before: {before / mb:.0f} MB); "
                f"{len(report.accepted)}/{len(photos)} accepted, set {report.verdict.value}"
            )
            for photo in report.photos:
                if not photo.accepted:
                    print(f"  rejected #{photo.index + 1}: {', '.join(photo.reasons)}")

    sample = photos[:5]
    _, elapsed, cpu, peak = _timed(lambda: _baseline(sample, rules.resolution))
    print(
        f"baseline (full-size decode, no checks), 1 thread: {len(sample) / elapsed:.1f} photos/s, "
        f"CPU {cpu / len(sample) * 1000:.0f} ms/photo, peak RSS {peak / mb:.0f} MB"
    )
    print(f"process peak RSS (ru_maxrss, whole run): {_maxrss_mb():.0f} MB")
    for workers, rate in best.items():
        print(f"best of {args.repeats}, {workers} thread(s): {rate:.1f} photos/s")
    print(f"photos_per_s: {best[args.workers]:.2f}")
    return 0


def _maxrss_mb() -> float:
    # Linux reports kilobytes, macOS bytes.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024 if sys.platform != "darwin" else rss / (1024 * 1024)


if __name__ == "__main__":
    raise SystemExit(main())
