"""Batch augmentation: shapes and dtypes kept, each op does exactly what it says."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from training.augment import (
    augment_batch,
    cutout,
    downscale,
    random_affine,
    random_crop,
    random_flip,
)


def _batch(dtype: torch.dtype, n: int = 16, c: int = 3, h: int = 12, w: int = 10) -> torch.Tensor:
    # Strictly positive, all-distinct pixel values: a zeroed or moved pixel is detectable.
    values = torch.arange(1, n * c * h * w + 1, dtype=torch.float64).reshape(n, c, h, w)
    return values.remainder(250).add(1).to(dtype) if dtype == torch.uint8 else values.to(dtype)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize(
    "op",
    [
        lambda x, g: random_crop(x, 3, g),
        random_flip,
        lambda x, g: cutout(x, 4, g),
        lambda x, g: random_affine(x, 15.0, 0.2, g),
        lambda x, g: augment_batch(
            x, crop_padding=2, flip=True, cutout_size=3, generator=g, rotate_degrees=10, zoom=0.1
        ),
    ],
    ids=["crop", "flip", "cutout", "affine", "all"],
)
def test_shape_dtype_kept_and_input_untouched(op, dtype: torch.dtype) -> None:
    images = _batch(dtype)
    before = images.clone()
    out = op(images, _gen())
    assert out.shape == images.shape
    assert out.dtype == dtype
    assert torch.equal(images, before)
    assert out.data_ptr() != images.data_ptr()


def test_flip_mirrors_exactly_the_chosen_images() -> None:
    images = _batch(torch.float32, n=64)
    out = random_flip(images, _gen(1))
    mirrored = [torch.equal(o, i.flip(-1)) for o, i in zip(out, images, strict=True)]
    kept = [torch.equal(o, i) for o, i in zip(out, images, strict=True)]
    assert all(m != k for m, k in zip(mirrored, kept, strict=True))  # each is one or the other
    assert 16 <= sum(mirrored) <= 48  # p = 0.5 over 64 images


def test_crop_is_a_shifted_window_of_the_reflect_padded_image() -> None:
    padding = 3
    images = _batch(torch.float32, n=32)
    out = random_crop(images, padding, _gen(2))
    padded = F.pad(images, (padding,) * 4, mode="reflect")
    h, w = images.shape[-2:]
    offsets = set()
    for i in range(images.shape[0]):
        matches = [
            (dy, dx)
            for dy in range(2 * padding + 1)
            for dx in range(2 * padding + 1)
            if torch.equal(out[i], padded[i, :, dy : dy + h, dx : dx + w])
        ]
        assert len(matches) == 1, f"image {i} is not a window of the padded image"
        offsets.add(matches[0])
    assert len(offsets) > 5  # offsets really vary per image


def test_crop_on_uint8_matches_float_reference() -> None:
    images = _batch(torch.uint8)
    out_u8 = random_crop(images, 2, _gen(3))
    out_f = random_crop(images.float(), 2, _gen(3))
    assert torch.equal(out_u8.float(), out_f)


@pytest.mark.parametrize("size", [1, 4, 10])
def test_cutout_zeroes_one_square_per_image(size: int) -> None:
    images = _batch(torch.uint8, n=24)
    assert (images != 0).all()
    out = cutout(images, size, _gen(4))
    zeros = out == 0
    c = images.shape[1]
    assert zeros.flatten(1).sum(1).tolist() == [size * size * c] * images.shape[0]
    for i in range(images.shape[0]):
        ys, xs = torch.nonzero(zeros[i, 0], as_tuple=True)
        assert ys.max() - ys.min() + 1 == size and xs.max() - xs.min() + 1 == size
        assert torch.equal(zeros[i, 0], zeros[i, -1])  # same square in every channel
    assert torch.equal(out[~zeros], images[~zeros])


def _bar_images(n: int, size: int = 33) -> torch.Tensor:
    """`n` copies of a bright horizontal bar (3 px high, 21 px long) through the centre."""
    images = torch.zeros(n, 1, size, size)
    mid = size // 2
    images[:, :, mid - 1 : mid + 2, mid - 10 : mid + 11] = 200.0
    return images


def _moments(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image: the orientation of the bright mass (degrees, counter-clockwise as the image
    is displayed, y pointing up) and its spread along that axis (pixels, root second moment)."""
    h, w = images.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    mass = images[:, 0].clamp(min=0)
    total = mass.sum((1, 2))
    cy = (mass * ys).sum((1, 2)) / total
    cx = (mass * xs).sum((1, 2)) / total
    dx = xs - cx[:, None, None]
    dy = cy[:, None, None] - ys  # rows grow downwards: flip so the angle reads as displayed
    mxx = (mass * dx * dx).sum((1, 2)) / total
    myy = (mass * dy * dy).sum((1, 2)) / total
    mxy = (mass * dx * dy).sum((1, 2)) / total
    angle = 0.5 * torch.atan2(2 * mxy, mxx - myy)
    spread = torch.sqrt(0.5 * (mxx + myy) + torch.sqrt(0.25 * (mxx - myy) ** 2 + mxy**2))
    return torch.rad2deg(angle), spread


def test_affine_rotates_within_the_range_both_ways() -> None:
    images = _bar_images(64)
    out = random_affine(images, 20.0, 0.0, _gen(5))
    angles, spread = _moments(out)
    _, spread_before = _moments(images)
    assert angles.abs().max() <= 20.5
    assert (angles < -10).any() and (angles > 10).any()  # uniform over the range, both signs
    # A rotation alone keeps the bar's length (bilinear resampling blurs it a little).
    assert torch.allclose(spread, spread_before, rtol=0.05)


def test_affine_zooms_within_the_range_about_the_centre() -> None:
    images = _bar_images(64)
    out = random_affine(images, 0.0, 0.25, _gen(6))
    angles, spread = _moments(out)
    _, spread_before = _moments(images)
    ratio = spread / spread_before
    assert angles.abs().max() < 0.5  # no rotation asked for
    assert ratio.min() >= 0.75 - 0.03 and ratio.max() <= 1.25 + 0.03
    assert ratio.min() < 0.85 and ratio.max() > 1.15  # both ways
    rows = out[:, 0].sum(2)  # the bar stays centred on the middle row
    centre = (rows * torch.arange(33.0)).sum(1) / rows.sum(1)
    assert torch.allclose(centre, torch.full_like(centre, 16.0), atol=0.05)


def test_affine_on_uint8_is_the_rounded_float_result() -> None:
    images = _batch(torch.uint8)
    out_u8 = random_affine(images, 12.0, 0.1, _gen(3))
    out_f = random_affine(images.float(), 12.0, 0.1, _gen(3))
    assert torch.equal(out_u8, out_f.round().clamp(0, 255).to(torch.uint8))
    assert not torch.equal(out_u8, images)


def test_same_generator_seed_same_result_and_different_seed_differs() -> None:
    images = _batch(torch.uint8, n=32)

    def run(seed: int) -> torch.Tensor:
        return augment_batch(images, crop_padding=4, flip=True, cutout_size=5, generator=_gen(seed))

    assert torch.equal(run(7), run(7))
    assert not torch.equal(run(7), run(8))


def test_disabled_steps_are_identity() -> None:
    images = _batch(torch.float32)
    out = augment_batch(images, crop_padding=0, flip=False, cutout_size=0, generator=_gen())
    assert torch.equal(out, images)
    assert torch.equal(random_affine(images, 0.0, 0.0, _gen()), images)


@pytest.mark.parametrize(("side", "size"), [(32, 16), (32, 24), (48, 20)])
def test_downscale_is_pillows_antialiased_bilinear(side: int, size: int) -> None:
    """Progressive resizing shrinks batches as Pillow shrinks a photo (area-aware, no aliasing),
    so a low-resolution epoch sees what a smaller photo of the same scene would show."""
    from PIL import Image

    images = torch.rand(3, 2, side, side, generator=_gen(1)) * 255
    out = downscale(images, size)
    assert out.shape == (3, 2, size, size)
    for n in range(3):
        for c in range(2):
            pil = Image.fromarray(images[n, c].numpy(), mode="F")
            reference = torch.from_numpy(
                np.array(pil.resize((size, size), Image.Resampling.BILINEAR))
            )
            assert torch.allclose(out[n, c], reference, atol=1e-2)
    # Not a plain (aliasing) bilinear sample: that one keeps more of the pixel noise.
    plain = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    assert out.std() < plain.std()


def test_downscale_needs_a_float_nchw_batch() -> None:
    with pytest.raises(ValueError, match="float batch"):
        downscale(_batch(torch.uint8), 8)
    with pytest.raises(ValueError, match="NCHW"):
        downscale(_batch(torch.float32)[0], 8)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda x: random_crop(x, 12), "smaller than the image"),
        (lambda x: random_crop(x, -1), ">= 0"),
        (lambda x: cutout(x, 11), "larger than the image"),
        (lambda x: random_flip(x[0]), "NCHW"),
        (lambda x: random_affine(x, -1.0, 0.0), "degrees >= 0"),
        (lambda x: random_affine(x, 0.0, 1.0), "scale < 1"),
    ],
)
def test_bad_arguments(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call(_batch(torch.float32))
