"""The embedded demo data set: coloured shapes drawn procedurally, so it needs no files.

Eight classes of shapes (circle, square, triangle, cross, ring, star, diamond, crescent), each
image with its own random size, position, rotation, colours, background gradient and noise.
Generation is vectorised numpy seeded by `numpy.random.default_rng`, so the same seed gives the
same bytes, and the whole set (4,000 train / 800 val / 800 test) takes about a second.

Torch-free on purpose: `write_demo_images` also serves the serving install (README examples,
service tests, `make run`), where only numpy and Pillow exist.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

DEMO_LABELS: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "cross",
    "ring",
    "star",
    "diamond",
    "crescent",
)
DEMO_IMAGE_SIZE = 32
DemoSplit = Literal["train", "val", "test"]
# Images per split and the seed each is drawn from: three independent draws, so validation and
# test never share an image with train.
DEMO_SPLITS: dict[str, tuple[int, int]] = {
    "train": (4000, 20_231),
    "val": (800, 20_232),
    "test": (800, 20_233),
}

_SUPERSAMPLE = 2  # shapes are drawn at 2x and averaged down: anti-aliased edges
_CHUNK = 500  # images drawn at once; bounds memory at any count
_Floats = npt.NDArray[np.float32]
_Bools = npt.NDArray[np.bool_]


def demo_labels() -> list[str]:
    """The class names, in label-index order."""
    return list(DEMO_LABELS)


def _shape_mask(label: int, u: _Floats, v: _Floats) -> _Bools:
    """Inside-test of shape `label` in its own frame: unit circumradius, centred at the origin."""
    rho2 = u * u + v * v
    if label == 0:  # circle
        return rho2 <= 1.0
    if label == 1:  # square (axis-aligned up to the small rotation jitter)
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8
    if label == 2:  # equilateral triangle: three half-planes at distance 0.5 from the centre
        inside = np.ones(u.shape, dtype=bool)
        for k in range(3):
            phi = -math.pi / 2 + 2 * math.pi * k / 3
            inside &= u * math.cos(phi) + v * math.sin(phi) <= 0.5
        return inside
    if label == 3:  # cross
        au, av = np.abs(u), np.abs(v)
        return ((au <= 0.28) & (av <= 1.0)) | ((av <= 0.28) & (au <= 1.0))
    if label == 4:  # ring
        return (rho2 <= 1.0) & (rho2 >= 0.55**2)
    if label == 5:  # five-pointed star: radius falls linearly from tip (1.0) to notch (0.42)
        sector = 2 * math.pi / 5
        angle = np.mod(np.arctan2(v, u), sector) - sector / 2
        limit = 0.42 + 0.58 * (np.abs(angle) / (sector / 2))
        return np.sqrt(rho2) <= limit
    if label == 6:  # diamond (a square turned 45 degrees; the jitter keeps them apart)
        return np.abs(u) + np.abs(v) <= 1.05
    if label == 7:  # crescent: a disc minus an offset disc
        return (rho2 <= 1.0) & ((u - 0.5) ** 2 + v * v >= 0.85**2)
    raise ValueError(f"no demo shape {label}")


def _draw(
    labels: npt.NDArray[np.int64], rng: np.random.Generator, size: int
) -> npt.NDArray[np.uint8]:
    """Render one chunk of images, NHWC uint8 RGB."""
    n = int(labels.shape[0])
    radius = rng.uniform(0.22, 0.42, n) * size
    margin = radius * 0.8
    cx = margin + rng.uniform(0.0, 1.0, n) * (size - 2 * margin)
    cy = margin + rng.uniform(0.0, 1.0, n) * (size - 2 * margin)
    # Shapes whose identity depends on orientation (square vs diamond, cross) only get a small
    # jitter; the others turn freely.
    free = ~np.isin(labels, (1, 3, 6))
    angle = np.where(free, rng.uniform(0, 2 * math.pi, n), rng.uniform(-0.26, 0.26, n))
    background = rng.integers(0, 256, (n, 3)).astype(np.float32)
    # At least 80 levels between shape and background in every channel: always visible.
    foreground = np.mod(background + rng.integers(80, 177, (n, 3)), 256).astype(np.float32)
    gradient = rng.uniform(-40, 40, (n, 2)).astype(np.float32)
    noise_std = rng.uniform(3, 14, n).astype(np.float32)
    noise = rng.standard_normal((n, size, size, 3), dtype=np.float32)

    fine = size * _SUPERSAMPLE
    coords = ((np.arange(fine, dtype=np.float32) + 0.5) / _SUPERSAMPLE)[None, :]
    dx = (coords - cx[:, None].astype(np.float32))[:, None, :]  # [n, 1, fine]
    dy = (coords - cy[:, None].astype(np.float32))[:, :, None]  # [n, fine, 1]
    cos = np.cos(angle).astype(np.float32)[:, None, None]
    sin = np.sin(angle).astype(np.float32)[:, None, None]
    scale = (1.0 / radius).astype(np.float32)[:, None, None]
    u = (dx * cos + dy * sin) * scale
    v = (dy * cos - dx * sin) * scale
    mask = np.zeros((n, fine, fine), dtype=np.float32)
    for label in np.unique(labels).tolist():
        chosen = labels == label
        mask[chosen] = _shape_mask(int(label), u[chosen], v[chosen])
    coverage = mask.reshape(n, size, _SUPERSAMPLE, size, _SUPERSAMPLE).mean(axis=(2, 4))

    ramp = np.linspace(-0.5, 0.5, size, dtype=np.float32)
    shade = (
        gradient[:, 0, None, None] * ramp[None, None, :]
        + gradient[:, 1, None, None] * ramp[None, :, None]
    )
    alpha = coverage[..., None]
    image = (background[:, None, None, :] + shade[..., None]) * (1 - alpha)
    image += foreground[:, None, None, :] * alpha
    image += noise * noise_std[:, None, None, None]
    pixels: npt.NDArray[np.uint8] = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return pixels


def _to_gray(images: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """RGB -> L with Pillow's ITU-R 601-2 weights, so it matches `Image.convert("L")`."""
    weights = np.array([299, 587, 114], dtype=np.uint32)
    luma = (images.astype(np.uint32) @ weights + 500) // 1000
    gray: npt.NDArray[np.uint8] = luma.astype(np.uint8)[..., None]
    return gray


def generate_demo(
    count: int,
    seed: int,
    *,
    image_size: int = DEMO_IMAGE_SIZE,
    channels: int = 3,
    enough_per_class: int | None = None,
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """`count` demo images as NHWC uint8 (channels 1 or 3) and their int64 labels.

    Classes are balanced (counts differ by at most one) and shuffled. Shapes are drawn at
    `image_size` directly, so other sizes are as sharp as the native 32 px.

    enough_per_class: stop early once the images drawn hold at least this many of every
    class, and return only those: a prefix of the full set (the draws do not depend on where
    generation stops), so quick runs need not draw images they would drop.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if image_size < 8:
        raise ValueError(f"demo images need image_size >= 8, got {image_size}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(count, dtype=np.int64) % len(DEMO_LABELS))
    images = np.empty((count, image_size, image_size, channels), dtype=np.uint8)
    for start in range(0, count, _CHUNK):
        stop = min(start + _CHUNK, count)
        rgb = _draw(labels[start:stop], rng, image_size)
        images[start:stop] = rgb if channels == 3 else _to_gray(rgb)
        if enough_per_class is not None and stop < count:
            drawn = np.bincount(labels[:stop], minlength=len(DEMO_LABELS))
            if drawn.min() >= enough_per_class:
                return images[:stop], labels[:stop]
    return images, labels


def demo_split(
    split: DemoSplit,
    *,
    image_size: int = DEMO_IMAGE_SIZE,
    channels: int = 3,
    enough_per_class: int | None = None,
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """One split of the embedded data set (train 4,000 / val 800 / test 800 images)."""
    count, seed = DEMO_SPLITS[split]
    return generate_demo(
        count, seed, image_size=image_size, channels=channels, enough_per_class=enough_per_class
    )


def write_demo_images(dest: Path, count: int, seed: int = 1234) -> list[Path]:
    """Write `count` demo images as 32x32 RGB PNGs named `<label>_<i>.png` into `dest`.

    For examples and tests that need real image files; returns the paths in index order.
    """
    from PIL import Image

    dest.mkdir(parents=True, exist_ok=True)
    images, labels = generate_demo(count, seed)
    paths: list[Path] = []
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        path = dest / f"{DEMO_LABELS[int(label)]}_{i}.png"
        Image.fromarray(image, mode="RGB").save(path, format="PNG")
        paths.append(path)
    return paths
