"""Batch augmentation with tensor ops: whole batches at once, on the batch's own device.

Every function takes an NCHW batch (uint8 or float), returns a new tensor of the same shape,
dtype and device, and never modifies its input. Randomness comes from `generator` when given
(draws happen on the generator's device and move to the batch's), so a seeded generator makes
a run repeatable; without one, torch's global generator is used.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _randint(
    high: int, count: int, generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """`count` integers in [0, high), drawn where the generator lives, returned on `device`."""
    where = generator.device if generator is not None else device
    values = torch.randint(0, high, (count,), generator=generator, device=where)
    return values.to(device)


def _rand(count: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    where = generator.device if generator is not None else device
    return torch.rand((count,), generator=generator, device=where).to(device)


def _check_batch(images: torch.Tensor) -> None:
    if images.dim() != 4:
        raise ValueError(f"expected an NCHW batch, got shape {tuple(images.shape)}")


def _reflect(index: torch.Tensor, length: int) -> torch.Tensor:
    """Map indices in [-(length-1), 2*(length-1)] into [0, length) by mirroring at the edges.

    Same convention as `torch.nn.functional.pad(mode="reflect")`: the edge pixel is not repeated.
    """
    index = index.abs()
    return torch.where(index >= length, 2 * (length - 1) - index, index)


def random_crop(
    images: torch.Tensor, padding: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Reflect-pad each image by `padding` and crop it back to H x W at a random offset.

    Implemented as one gather with mirrored indices instead of materialising the padded batch,
    so it costs one pass over the data whatever the padding.
    """
    _check_batch(images)
    if padding < 0:
        raise ValueError(f"crop padding must be >= 0, got {padding}")
    n, _, h, w = images.shape
    if padding == 0 or n == 0:
        return images.clone()
    if padding >= h or padding >= w:
        raise ValueError(f"crop padding {padding} must be smaller than the image ({h}x{w})")
    device = images.device
    offset_y = _randint(2 * padding + 1, n, generator, device) - padding
    offset_x = _randint(2 * padding + 1, n, generator, device) - padding
    rows = _reflect(offset_y[:, None] + torch.arange(h, device=device), h)  # [N, H]
    cols = _reflect(offset_x[:, None] + torch.arange(w, device=device), w)  # [N, W]
    batch = torch.arange(n, device=device)[:, None, None]
    # Advanced indices split by a slice put their dims first: the result is [N, H, W, C].
    gathered = images[batch, :, rows[:, :, None], cols[:, None, :]]
    return gathered.permute(0, 3, 1, 2).contiguous()


def random_flip(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirror each image left-right with probability 0.5."""
    _check_batch(images)
    flip = _rand(images.shape[0], generator, images.device) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(3), images)


def flip_where(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mirror left-right exactly the images whose `mask` entry (bool, one per image) is set."""
    _check_batch(images)
    if mask.shape != (images.shape[0],) or mask.dtype != torch.bool:
        raise ValueError(f"expected a bool mask of shape ({images.shape[0]},), got {mask.shape}")
    return torch.where(mask.to(images.device)[:, None, None, None], images.flip(3), images)


def alternating_flip_mask(base: torch.Tensor, epoch: int) -> torch.Tensor:
    """Which images to mirror in `epoch` (1-based) under airbench's alternating flip.

    `base` holds one random flip state per training image, drawn once for the run; odd epochs
    use it and even epochs its negation, so each image is seen both ways in any two
    consecutive epochs (instead of by chance, as random flipping does).
    """
    if base.dtype != torch.bool:
        raise ValueError("the base flip mask must be bool")
    if epoch < 1:
        raise ValueError(f"epochs count from 1, got {epoch}")
    return base if epoch % 2 == 1 else ~base


def random_affine(
    images: torch.Tensor,
    degrees: float,
    scale: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Rotate each image by a random angle in [-degrees, degrees] and zoom it by a random
    factor in [1 - scale, 1 + scale] about its centre (bilinear, reflected at the edges).

    One `grid_sample` for the whole batch; uint8 batches are resampled in float32 and rounded
    back, so the dtype is kept.
    """
    _check_batch(images)
    if degrees < 0 or not 0 <= scale < 1:
        raise ValueError(f"need degrees >= 0 and 0 <= scale < 1, got {degrees} and {scale}")
    n = images.shape[0]
    if (degrees == 0 and scale == 0) or n == 0:
        return images.clone()
    device = images.device
    angle = torch.deg2rad((2 * _rand(n, generator, device) - 1) * degrees)
    zoom = 1 + (2 * _rand(n, generator, device) - 1) * scale
    # affine_grid maps output coordinates to input ones: the inverse transform, so rotate by
    # -angle and divide by the zoom (a zoom above 1 shows a smaller part of the image).
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    zeros = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, sin, zeros], 1), torch.stack([-sin, cos, zeros], 1)], 1)
    source = images.float() if not images.is_floating_point() else images
    grid = F.affine_grid(theta.to(source.dtype), list(source.shape), align_corners=False)
    out = F.grid_sample(
        source, grid, mode="bilinear", padding_mode="reflection", align_corners=False
    )
    if images.is_floating_point():
        return out
    return out.round_().clamp_(0, 255).to(images.dtype)


def cutout(
    images: torch.Tensor, size: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Zero one `size` x `size` square per image, placed at random entirely inside it."""
    _check_batch(images)
    if size < 0:
        raise ValueError(f"cutout size must be >= 0, got {size}")
    n, _, h, w = images.shape
    if size == 0 or n == 0:
        return images.clone()
    if size > h or size > w:
        raise ValueError(f"cutout size {size} is larger than the image ({h}x{w})")
    device = images.device
    top = _randint(h - size + 1, n, generator, device)
    left = _randint(w - size + 1, n, generator, device)
    ys = torch.arange(h, device=device)[None, :]
    xs = torch.arange(w, device=device)[None, :]
    in_rows = (ys >= top[:, None]) & (ys < top[:, None] + size)  # [N, H]
    in_cols = (xs >= left[:, None]) & (xs < left[:, None] + size)  # [N, W]
    mask = in_rows[:, None, :, None] & in_cols[:, None, None, :]  # [N, 1, H, W]
    return images.masked_fill(mask, 0)


def augment_batch(
    images: torch.Tensor,
    *,
    crop_padding: int,
    flip: bool,
    cutout_size: int,
    generator: torch.Generator | None = None,
    flip_mask: torch.Tensor | None = None,
    rotate_degrees: float = 0.0,
    zoom: float = 0.0,
) -> torch.Tensor:
    """Random rotation and zoom, crop (translate), horizontal flip, then cutout; each step
    only when enabled.

    With `flip_mask` (bool per image, e.g. from `alternating_flip_mask`) the flip mirrors
    exactly those images instead of drawing at random.
    """
    out = images
    if rotate_degrees > 0 or zoom > 0:
        out = random_affine(out, rotate_degrees, zoom, generator)
    if crop_padding > 0:
        out = random_crop(out, crop_padding, generator)
    if flip:
        out = random_flip(out, generator) if flip_mask is None else flip_where(out, flip_mask)
    if cutout_size > 0:
        out = cutout(out, cutout_size, generator)
    return out if out is not images else images.clone()


def downscale(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a float NCHW batch to `size` x `size` (bilinear, antialiased, as Pillow's)."""
    _check_batch(images)
    if not images.is_floating_point():
        raise ValueError(f"downscale needs a float batch, got {images.dtype}")
    return F.interpolate(
        images, size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )
