"""The toy world the tiny base learns: procedurally drawn pictures of each class, pure numpy.

Each class word has its own look: a few soft-edged shapes in the class's colours on the class's
background (a dog is a brown body and head on grass under a sky, a mug a white cylinder on a
wooden table), jittered in place, size and colour per picture. The tiny base's UNet learns
"a photo of <class>" from these, so its class images look like the class and a subject of
another colour is something new it has to learn. Generic pictures (random colours, shapes and
stripes) widen what its VAE can reconstruct to any photo a person brings.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

__all__ = [
    "CLASS_LOOKS",
    "CLASS_WORDS",
    "COLOUR_WORDS",
    "Look",
    "Part",
    "draw_class",
    "draw_generic",
    "draw_look",
]

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class Part:
    """One soft shape, in units of the object's size around the object's centre."""

    kind: str  # "ellipse", "rect" or "triangle" (apex up)
    x: float
    y: float
    rx: float
    ry: float
    colour: int = 0  # index into Look.colours


@dataclass(frozen=True)
class Look:
    """How pictures of one class look: shapes and colours, and the background above and below
    the horizon (a fraction of the height)."""

    parts: tuple[Part, ...]
    colours: tuple[RGB, ...]
    sky: RGB
    ground: RGB
    horizon: float


_ANIMAL_BODY = (
    Part("rect", -0.35, 0.35, 0.07, 0.22, 1),
    Part("rect", 0.3, 0.35, 0.07, 0.22, 1),
    Part("ellipse", 0.0, 0.1, 0.55, 0.3),
)

_LOOKS: dict[str, Look] = {
    "dog": Look(
        (
            *_ANIMAL_BODY,
            Part("ellipse", 0.5, -0.25, 0.25, 0.25),
            Part("ellipse", 0.6, -0.45, 0.1, 0.16, 1),
        ),
        ((150, 95, 55), (90, 55, 30)),
        sky=(165, 200, 235),
        ground=(95, 150, 70),
        horizon=0.55,
    ),
    "cat": Look(
        (
            *_ANIMAL_BODY,
            Part("ellipse", 0.5, -0.2, 0.22, 0.22),
            Part("triangle", 0.38, -0.48, 0.09, 0.14),
            Part("triangle", 0.62, -0.48, 0.09, 0.14),
        ),
        ((215, 130, 60), (240, 220, 200)),
        sky=(215, 200, 170),
        ground=(170, 140, 110),
        horizon=0.7,
    ),
    "person": Look(
        (
            Part("rect", 0.0, 0.45, 0.32, 0.45, 1),
            Part("ellipse", 0.0, -0.35, 0.24, 0.28),
            Part("ellipse", 0.0, -0.55, 0.24, 0.12, 2),
        ),
        ((225, 180, 150), (60, 90, 170), (70, 45, 30)),
        sky=(90, 160, 160),  # indoors: a teal wall over a dark floor, like no other class
        ground=(70, 70, 90),
        horizon=0.8,
    ),
    "mug": Look(
        (
            Part("ellipse", 0.42, 0.0, 0.2, 0.25, 1),
            Part("rect", 0.0, 0.05, 0.35, 0.45),
            Part("ellipse", 0.0, -0.4, 0.33, 0.08, 2),
        ),
        ((235, 235, 228), (205, 205, 198), (80, 50, 30)),
        sky=(230, 225, 215),
        ground=(160, 110, 65),
        horizon=0.6,
    ),
    "car": Look(
        (
            Part("rect", 0.0, -0.3, 0.4, 0.18),
            Part("rect", 0.0, 0.0, 0.75, 0.22),
            Part("ellipse", -0.45, 0.25, 0.16, 0.16, 1),
            Part("ellipse", 0.45, 0.25, 0.16, 0.16, 1),
        ),
        ((200, 45, 45), (30, 30, 30)),
        sky=(170, 200, 230),
        ground=(110, 110, 115),
        horizon=0.6,
    ),
    "bird": Look(
        (
            Part("ellipse", 0.0, 0.0, 0.4, 0.26),
            Part("ellipse", 0.35, -0.25, 0.18, 0.18),
            Part("triangle", 0.58, -0.22, 0.1, 0.06, 1),
        ),
        ((235, 200, 50), (240, 130, 40)),
        sky=(120, 170, 230),
        ground=(150, 190, 235),
        horizon=0.5,
    ),
    "house": Look(
        (
            Part("rect", 0.0, 0.2, 0.5, 0.4),
            Part("triangle", 0.0, -0.4, 0.6, 0.25, 1),
            Part("rect", 0.0, 0.38, 0.12, 0.22, 2),
        ),
        ((210, 180, 140), (140, 50, 40), (90, 60, 40)),
        sky=(170, 200, 235),
        ground=(90, 150, 70),
        horizon=0.65,
    ),
}

# Every class word of the tiny vocabulary, and whose look it borrows.
CLASS_WORDS: dict[str, str] = {
    "dog": "dog",
    "cat": "cat",
    "person": "person",
    "man": "person",
    "woman": "person",
    "boy": "person",
    "girl": "person",
    "child": "person",
    "baby": "person",
    "face": "person",
    "mug": "mug",
    "cup": "mug",
    "car": "car",
    "bird": "bird",
    "house": "house",
    "toy": "bird",
}
CLASS_LOOKS: dict[str, Look] = {word: _LOOKS[look] for word, look in CLASS_WORDS.items()}

# Colour words of the tiny vocabulary: "a photo of red car" paints the object's main colour, so
# the base learns that a word before the class word can change how the subject looks.
COLOUR_WORDS: dict[str, RGB] = {
    "red": (205, 35, 35),
    "green": (45, 165, 45),
    "blue": (40, 70, 205),
    "yellow": (235, 215, 40),
    "black": (25, 25, 25),
    "white": (240, 240, 240),
}


def _mask(
    part: Part, yy: np.ndarray, xx: np.ndarray, cx: float, cy: float, size: float
) -> np.ndarray:
    """Soft coverage in [0, 1] of one part (about one pixel of anti-aliased edge)."""
    px, py = cx + part.x * size, cy + part.y * size
    rx, ry = max(part.rx * size, 1.0), max(part.ry * size, 1.0)
    if part.kind == "ellipse":
        dist = np.sqrt(((xx - px) / rx) ** 2 + ((yy - py) / ry) ** 2)
        edge = (1.0 - dist) * min(rx, ry)
    elif part.kind == "rect":
        edge = np.minimum(rx - np.abs(xx - px), ry - np.abs(yy - py))
    else:  # triangle, apex up: |x| grows linearly from the apex to the base
        top = py - ry
        depth = (yy - top) / (2 * ry)
        edge = np.minimum(np.minimum(yy - top, py + ry - yy), depth * rx - np.abs(xx - px))
    return np.clip(edge + 0.5, 0.0, 1.0)


def draw_look(look: Look, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """One picture of ``look``, jittered: uint8 [size, size, 3]."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5

    def jitter(colour: RGB, amount: float) -> np.ndarray:
        return np.asarray(colour, np.float32) * rng.uniform(0.85, 1.15) + rng.normal(0, amount, 3)

    horizon = size * (look.horizon + rng.uniform(-0.08, 0.08))
    sky, ground = jitter(look.sky, 8), jitter(look.ground, 8)
    below = np.clip((yy - horizon) / 2.0 + 0.5, 0.0, 1.0)[..., None]
    shade = (1.0 - 0.15 * yy / size)[..., None]
    img = (sky * (1 - below) + ground * below) * shade
    scale = rng.uniform(0.28, 0.4) * size
    cx = size / 2 + rng.uniform(-0.12, 0.12) * size
    cy = size / 2 + rng.uniform(-0.08, 0.12) * size
    flip = -1.0 if rng.random() < 0.5 else 1.0
    colours = [jitter(c, 10) for c in look.colours]
    for part in look.parts:
        mirrored = Part(part.kind, flip * part.x, part.y, part.rx, part.ry, part.colour)
        cover = _mask(mirrored, yy, xx, cx, cy, scale)[..., None]
        img = img * (1 - cover) + colours[part.colour] * cover
    img = img + rng.normal(0, 3, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def draw_class(
    word: str, n: int, seed: int, size: int = 64, colour: str | None = None
) -> np.ndarray:
    """``n`` pictures of class ``word`` (its main colour replaced by ``colour``, a colour word):
    uint8 [n, size, size, 3]."""
    look = CLASS_LOOKS[word]
    if colour is not None:
        look = replace(look, colours=(COLOUR_WORDS[colour], *look.colours[1:]))
    rng = np.random.default_rng([seed, *word.encode(), *(colour or "").encode()])
    return np.stack([draw_look(look, rng, size) for _ in range(n)])


def draw_generic(n: int, seed: int, size: int = 64) -> np.ndarray:
    """``n`` pictures of anything: random colours, gradients, shapes and stripes."""
    rng = np.random.default_rng([seed, 7])
    out = []
    for _ in range(n):
        palette = [tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(4)]
        parts = tuple(
            Part(
                str(rng.choice(["ellipse", "rect", "triangle"])),
                float(rng.uniform(-1, 1)),
                float(rng.uniform(-1, 1)),
                float(rng.uniform(0.15, 0.7)),
                float(rng.uniform(0.15, 0.7)),
                int(rng.integers(0, 4)),
            )
            for _ in range(int(rng.integers(1, 4)))
        )
        look = Look(parts, palette, palette[0], palette[1], float(rng.uniform(0.2, 0.8)))  # type: ignore[arg-type]
        img = draw_look(look, rng, size).astype(np.float32)
        if rng.random() < 0.25:
            period = int(rng.integers(3, 12))
            yy, xx = np.mgrid[0:size, 0:size]
            stripes = ((xx + yy * int(rng.integers(0, 2))) // period) % 2
            img = np.where(stripes[..., None] == 1, img, 255 - img)
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return np.stack(out)
