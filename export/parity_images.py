"""The uint8 NHWC images a parity check runs on: real ones where possible, else the demo set."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from export.errors import ExportError
from imgzoo.errors import UserError
from training.checkpoint import DataInfo

if TYPE_CHECKING:
    from training.datasets import DataBundle

log = logging.getLogger(__name__)

DEMO_SEED = 4242  # not a demo split's seed: the fallback images are nobody's training data


@dataclass(frozen=True)
class ParityImages:
    """`images` uint8 `[N, H, W, C]` and a human-readable `source` for the manifest."""

    images: npt.NDArray[np.uint8]
    source: str


def _nhwc(images: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    return np.ascontiguousarray(images.transpose(0, 2, 3, 1))


def demo_images(info: DataInfo, count: int) -> npt.NDArray[np.uint8]:
    """`count` embedded demo images drawn at the input's size and channel count.

    Shapes are drawn at the target size (sharper than resizing 32 px ones); a non-square
    input takes the centre of a square drawing.
    """
    from training.demo_data import generate_demo

    side = max(info.height, info.width)
    images, _ = generate_demo(count, DEMO_SEED, image_size=side, channels=info.channels)
    top, left = (side - info.height) // 2, (side - info.width) // 2
    return np.ascontiguousarray(images[:, top : top + info.height, left : left + info.width])


def load_recorded_split(
    info: DataInfo,
    *,
    data_root: Path | None,
    cache_dir: Path | None,
    progress: bool,
    purpose: str,
) -> DataBundle | None:
    """The checkpoint's data set, split as in training; None where it cannot be had.

    Root: `data_root` if given (then failing to load it is an `ExportError`), else the root
    recorded in the checkpoint (failing that, a warning naming `purpose`, and None). The
    demo set needs no root.
    """
    from training.datasets import load_data_like

    root = data_root if data_root is not None else (Path(info.root) if info.root else None)
    if root is None and info.dataset != "demo":
        log.warning("no data directory recorded or given for %s", purpose)
        return None
    try:
        bundle = load_data_like(info, root, cache_dir=cache_dir, progress=progress)
    except UserError as exc:
        if data_root is not None:
            raise ExportError(f"cannot load {info.dataset} from {data_root}: {exc}") from None
        log.warning("cannot load %s from %s (%s) for %s", info.dataset, root, exc, purpose)
        return None
    expected = (info.channels, info.height, info.width)
    found = tuple((bundle.val if len(bundle.val) else bundle.train).images.shape[1:])
    if found != expected:
        raise ExportError(f"{info.dataset} images are {found}, the network takes {expected}")
    return bundle


def _from_bundle(info: DataInfo, bundle: DataBundle, count: int) -> ParityImages:
    val = bundle.val.images[:count].numpy()
    source = f"{info.dataset} validation split"
    if len(val) < count:
        # A small data set: top up with training images rather than check on too few.
        extra = bundle.train.images[: count - len(val)].numpy()
        if len(extra):
            source += f" ({len(val)}) + train split ({len(extra)})"
        val = np.concatenate([val, extra])
    return ParityImages(_nhwc(val), source)


def load_parity_images(
    info: DataInfo,
    count: int,
    *,
    data_root: Path | None = None,
    cache_dir: Path | None = None,
    progress: bool = False,
) -> ParityImages:
    """Up to `count` images of the checkpoint's data set (validation split first).

    Root: `data_root` if given (then failing to load it is an error), else the root recorded
    in the checkpoint (failing that, a warning and the fallback). Without either, or for a
    data set whose files are gone, the embedded demo images at the input's shape.
    """
    if count < 1:
        raise ExportError(f"parity needs at least 1 image, got {count}")
    if info.dataset == "demo" and data_root is None and info.height == info.width:
        from training.demo_data import demo_split

        images, _ = demo_split("val", image_size=info.height, channels=info.channels)
        return ParityImages(np.ascontiguousarray(images[:count]), "demo validation split")
    root = data_root if data_root is not None else info.root
    if root is not None:
        bundle = load_recorded_split(
            info,
            data_root=data_root,
            cache_dir=cache_dir,
            progress=progress,
            purpose="the parity check: checking it on demo images",
        )
        if bundle is not None:
            return _from_bundle(info, bundle, count)
    reason = "no data directory recorded" if root is None else f"{root} not loadable"
    return ParityImages(
        demo_images(info, count),
        f"embedded demo images at {info.height}x{info.width}x{info.channels} ({reason})",
    )
