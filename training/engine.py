"""The training loop (torchvision-references style): `train_one_epoch`, `evaluate`, `train`.

Data live on the training device as uint8 tensors, moved there once; each step gathers a batch
by index, augments it with tensor ops and normalises it, so no loader process can starve a GPU.

Reproducibility: every random stream (shuffling, augmentation, torch / numpy / python global
generators) is re-seeded at the start of each epoch from (recipe seed, epoch, rank). A run
resumed from `last.pt` therefore continues exactly as an uninterrupted one would (bit-exact on
the CPU), and the RNG state to store is just that rule.

Files in the run directory (only rank 0 writes):
    recipe.json      the recipe as run
    metrics.jsonl    one JSON object per epoch (keys: METRIC_KEYS)
    best.pt          checkpoint of the best validation accuracy (EMA weights when EMA is on)
    last.pt          checkpoint after the latest epoch, with resume state
    curves.png       loss and accuracy per epoch
    confusion_val.png / confusion_test.png   of the best checkpoint
    summary.json     the outcome: accuracies, per-class report, timings, device
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from models.preprocess import InputPreprocess
from training import distributed
from training.augment import alternating_flip_mask, augment_batch, downscale
from training.checkpoint import Checkpoint, DataInfo, load_checkpoint
from training.distributed import DistContext
from training.ema import ModelEma
from training.errors import TrainingError
from training.gemm_conv import gemm_weight_grads
from training.host import host_report, malloc_hint
from training.lookahead import Lookahead
from training.optim import build_optimizer
from training.recipes import Recipe
from training.schedules import Schedule, apply_lr, build_schedule

log = logging.getLogger(__name__)

METRIC_KEYS = (
    "epoch",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "lr",
    "seconds",
    "images_per_s",
)
"""Keys of every metrics.jsonl line. `train_loss` is the training criterion (with label
smoothing), `val_loss` plain cross-entropy; accuracies are fractions in [0, 1]; `lr` is the first
parameter group's lr at the epoch's last step; `seconds` is the epoch's training time and
`images_per_s` the training images per second (all ranks together). Lines also carry
`eval_seconds` and `best` (whether best.pt now holds this epoch: a new best validation accuracy,
or every epoch when the recipe keeps the last weights)."""

Forward = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class TrainResult:
    """What `train` produced."""

    run_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    best_val_accuracy: float
    best_epoch: int
    test_accuracy: float | None
    seconds: float
    epochs_run: int
    completed: bool
    device: str
    rank: int = 0
    weights_digest: str = ""
    """sha256 of this process's final exported weights (`state_digest`); equal on every rank."""
    val_accuracy_tta: float | None = None
    """Validation accuracy of best.pt under the recipe's test-time augmentation (tta > 0)."""
    val_accuracy: float | None = None
    """Validation accuracy of best.pt from the final float32 evaluation (rank 0): what the
    exported graph answers at. `best_val_accuracy` is the epoch's own evaluation, under the
    recipe's autocast when it has one, and may differ from it by a few images."""

    @property
    def final_val_accuracy(self) -> float:
        """`val_accuracy` on rank 0, `best_val_accuracy` on the others."""
        return self.val_accuracy if self.val_accuracy is not None else self.best_val_accuracy

    @property
    def is_main(self) -> bool:
        """Whether this process is rank 0 (the one that wrote the files)."""
        return self.rank == 0


@dataclass(frozen=True)
class EpochStats:
    """Mean loss and accuracy over the images seen (all ranks), and the time it took."""

    loss: float
    accuracy: float
    images: int
    seconds: float


@dataclass
class StepState:
    """What moves from step to step: the global step counter and the learning rate."""

    step: int = 0
    lr: float = 0.0


def derived_seed(seed: int, epoch: int, rank: int = 0, stream: int = 0) -> int:
    """A distinct, stable 63-bit seed for each (seed, epoch, rank, stream)."""
    mixed = np.random.SeedSequence([seed, epoch, rank, stream]).generate_state(2, np.uint32)
    return int(mixed[0]) << 31 | int(mixed[1] >> 1)


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over a state dict's names and bytes, in sorted key order."""
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        tensor = state[key].detach().cpu().contiguous()
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA) global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a recipe's `amp` on this device (None = full float32)."""
    if amp == "off":
        return None
    if amp == "auto":
        # CPUs: bf16 only with native bf16 arithmetic (AVX-512-BF16 or AMX). Elsewhere oneDNN
        # has no fast bf16 convolution and autocast falls back to reference kernels: measured
        # 15-40x slower than float32 on an AVX2-only EPYC with torch 2.14 (docs/training.md).
        if device.type != "cuda":
            return torch.bfloat16 if cpu_has_native_bf16() else None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if amp == "fp16":
        if device.type != "cuda":
            raise TrainingError("amp=fp16 needs a CUDA device; use amp=bf16 on the CPU")
        return torch.float16
    return torch.bfloat16


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX-512-BF16 or AMX tiles)."""
    # Private torch helpers (present since torch 2.1); a build without them counts as no.
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def _autocast(
    device: torch.device, dtype: torch.dtype | None
) -> contextlib.AbstractContextManager[Any]:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def build_criterion(recipe: Recipe) -> nn.CrossEntropyLoss:
    """Training loss: cross-entropy with the recipe's label smoothing."""
    return nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)


def epoch_train_size(recipe: Recipe, epoch: int) -> int | None:
    """The side `epoch` (1-based) trains at under `recipe.epoch_sizes`; None = the input size."""
    return recipe.epoch_sizes[epoch - 1] if epoch <= len(recipe.epoch_sizes) else None


def steps_per_epoch(num_images: int, batch_size: int) -> int:
    """Full batches per epoch (the incomplete last one is dropped; at least one step)."""
    return max(1, num_images // batch_size)


def epoch_batches(
    num_images: int, batch_size: int, generator: torch.Generator, ctx: DistContext
) -> Iterator[torch.Tensor]:
    """Index tensors of this rank's share of each global batch, in a fresh random order."""
    order = torch.randperm(num_images, generator=generator)
    size = min(batch_size, num_images)
    for i in range(steps_per_epoch(num_images, batch_size)):
        yield distributed.shard_indices(order[i * size : (i + 1) * size], ctx)


def _progress(iterable: Any, *, enabled: bool, total: int, desc: str) -> Any:
    from tqdm import tqdm

    show = enabled and sys.stderr.isatty()
    return tqdm(iterable, total=total, desc=desc, disable=not show, leave=False, dynamic_ncols=True)


def train_one_epoch(
    forward: Forward,
    raw_model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    recipe: Recipe,
    preprocess: InputPreprocess,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: Schedule,
    state: StepState,
    lookahead: Lookahead | None = None,
    ema: ModelEma | None = None,
    scaler: torch.amp.GradScaler | None = None,
    generator: torch.Generator,
    aug_generator: torch.Generator,
    ctx: DistContext | None = None,
    amp_dtype: torch.dtype | None = None,
    progress: bool = False,
    desc: str = "train",
    flip_mask: torch.Tensor | None = None,
    train_size: int | None = None,
) -> EpochStats:
    """One pass over `images` (uint8 NCHW on the device); updates `state` in place.

    `flip_mask` (bool, one per image of `images`) decides which images are mirrored this epoch
    (alternating flip) instead of a random draw. `train_size`, when smaller than the images,
    is the side the augmented batches are downscaled to (progressive resizing). After the
    schedule's last step a Lookahead hands the network its slow weights.
    """
    ctx = ctx or DistContext(device=images.device)
    device = images.device
    raw_model.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    start = time.perf_counter()
    total = steps_per_epoch(len(images), recipe.batch_size)
    bar = _progress(
        epoch_batches(len(images), recipe.batch_size, generator, ctx),
        enabled=progress,
        total=total,
        desc=desc,
    )
    for shard in bar:
        idx = shard.to(device, non_blocking=True)
        batch = augment_batch(
            images[idx],
            crop_padding=recipe.crop_padding,
            flip=recipe.flip,
            cutout_size=recipe.cutout,
            rotate_degrees=recipe.rotate,
            zoom=recipe.zoom,
            generator=aug_generator,
            flip_mask=flip_mask[idx] if flip_mask is not None else None,
        )
        x = preprocess(batch)
        if train_size is not None and train_size < x.shape[-1]:
            x = downscale(x, train_size)
        if recipe.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = labels[idx]
        state.lr = apply_lr(optimizer, schedule.factor(state.step))
        with _autocast(device, amp_dtype):
            logits = forward(x)
            loss = criterion(logits.float(), y)
        if not torch.isfinite(loss):
            raise TrainingError(
                f"loss became {loss.item()} at step {state.step}; lower the learning rate "
                "(--lr) or turn off amp"
            )
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            if recipe.grad_clip > 0:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(raw_model.parameters(), recipe.grad_clip)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if recipe.grad_clip > 0:
                nn.utils.clip_grad_norm_(raw_model.parameters(), recipe.grad_clip)
            optimizer.step()
        if lookahead is not None:
            lookahead.after_step()
        if ema is not None:
            ema.update(raw_model)
        state.step += 1
        if lookahead is not None and state.step == schedule.total_steps:
            lookahead.finish()
        n = len(idx)
        loss_sum += loss.detach().double() * n
        correct += (logits.detach().argmax(dim=1) == y).sum()
        seen += n
        if progress and state.step % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{state.lr:.3g}")
    seconds = time.perf_counter() - start
    total_loss, total_correct, total_seen = distributed.all_reduce_sum(
        [float(loss_sum.item()), float(correct.item()), float(seen)], ctx
    )
    return EpochStats(
        loss=total_loss / max(1.0, total_seen),
        accuracy=total_correct / max(1.0, total_seen),
        images=int(total_seen),
        seconds=seconds,
    )


@torch.no_grad()
def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    preprocess: InputPreprocess,
    batch_size: int = 512,
    ctx: DistContext | None = None,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> EpochStats:
    """Cross-entropy and accuracy of `model` on `images` (sharded over ranks, summed)."""
    ctx = ctx or DistContext(device=images.device)
    device = images.device
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    mine = distributed.shard_indices(torch.arange(len(images)), ctx)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    for begin in range(0, len(mine), batch_size):
        idx = mine[begin : begin + batch_size].to(device)
        x = preprocess(images[idx])
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(device, amp_dtype):
            logits = model(x).float()
        y = labels[idx]
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").double()
        correct += (logits.argmax(dim=1) == y).sum()
    model.train(was_training)
    total_loss, total_correct, total = distributed.all_reduce_sum(
        [float(loss_sum.item()), float(correct.item()), float(len(mine))], ctx
    )
    return EpochStats(
        loss=total_loss / max(1.0, total),
        accuracy=total_correct / max(1.0, total),
        images=int(total),
        seconds=time.perf_counter() - start,
    )


# --- the whole run ----------------------------------------------------------------------------


def _load_resume(path: Path, recipe: Recipe) -> Checkpoint:
    ckpt = load_checkpoint(path)
    if ckpt.resume is None:
        raise TrainingError(f"{path}: no resume state in this checkpoint (resume from last.pt)")
    if ckpt.architecture != recipe.model or ckpt.data.dataset != recipe.dataset:
        raise TrainingError(
            f"{path}: trained {ckpt.architecture} on {ckpt.data.dataset}, "
            f"but the recipe trains {recipe.model} on {recipe.dataset}"
        )
    if ckpt.epoch >= recipe.epochs:
        raise TrainingError(
            f"{path}: already trained {ckpt.epoch} of {recipe.epochs} epochs; "
            "raise --epochs to train further"
        )
    return ckpt


def _read_metrics(path: Path, up_to_epoch: int | None = None) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if up_to_epoch is not None:
        rows = [r for r in rows if int(r["epoch"]) <= up_to_epoch]
    return rows


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)


@dataclass
class _Run:
    """Everything `train` sets up once and the epoch loop and finish step share."""

    recipe: Recipe
    ctx: DistContext
    run_dir: Path
    info: DataInfo
    model: nn.Module
    forward: Forward
    ema: ModelEma | None
    optimizer: torch.optim.Optimizer
    lookahead: Lookahead | None
    scaler: torch.amp.GradScaler | None
    schedule: Schedule
    preprocess: InputPreprocess
    amp_dtype: torch.dtype | None
    model_kwargs: dict[str, Any]
    state: StepState
    flip_base: torch.Tensor | None = None
    best_val: float = -1.0
    best_epoch: int = 0
    train_seconds: float = 0.0

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def checkpoint(self, epoch: int, val_acc: float | None, *, with_resume: bool) -> Checkpoint:
        resume: dict[str, Any] | None = None
        if with_resume:
            resume = {
                "model": self.model.state_dict(),
                "optimizer": (self.lookahead or self.optimizer).state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "step": self.state.step,
                "best_val": self.best_val,
                "best_epoch": self.best_epoch,
                # Every generator is re-seeded per epoch from (seed, epoch, rank).
                "rng": {"scheme": "per-epoch-derived", "seed": self.recipe.seed},
            }
        return Checkpoint(
            architecture=self.recipe.model,
            model_kwargs=dict(self.model_kwargs),
            state_dict={
                k: v.detach().clone().cpu() for k, v in self.eval_model.state_dict().items()
            },
            data=self.info,
            recipe=self.recipe.name,
            hyperparameters=self.recipe.to_dict(),
            seed=self.recipe.seed,
            device=str(self.ctx.device),
            epoch=epoch,
            epochs=self.recipe.epochs,
            train_seconds=self.train_seconds,
            metrics={"val_accuracy": val_acc, "test_accuracy": None},
            resume=resume,
        )


def train(
    recipe: Recipe,
    *,
    data_root: Path | None,
    out_dir: Path,
    device: str = "auto",
    resume: Path | None = None,
    cache_dir: Path | None = None,
    progress: bool = True,
    limit_per_class: int | None = None,
    download: bool = False,
    stop_after_epoch: int | None = None,
) -> TrainResult:
    """Train `recipe` into `out_dir`; under torchrun, as one rank of a DDP job.

    `stop_after_epoch` ends this invocation after that many epochs in total (the schedule still
    spans `recipe.epochs`), leaving `last.pt` to resume from: for time-sliced or preemptible jobs.
    """
    from training.datasets import load_data

    ctx = distributed.setup(device)
    try:
        resumed = _load_resume(resume, recipe) if resume is not None else None
        autocast_dtype(recipe.amp, ctx.device)  # fail before loading data, not after
        if recipe.batch_size % ctx.world_size:
            raise TrainingError(
                f"batch_size {recipe.batch_size} is not divisible by the {ctx.world_size} processes"
            )
        seed_everything(derived_seed(recipe.seed, 0, ctx.rank, stream=9))
        bundle = load_data(
            recipe.dataset,
            data_root,
            image_size=recipe.image_size,
            channels=recipe.channels,
            val_fraction=recipe.val_fraction,
            split_seed=recipe.split_seed,
            resize=recipe.resize,
            interpolation=recipe.interpolation,
            download=download,
            cache_dir=cache_dir,
            limit_per_class=limit_per_class,
            progress=progress and ctx.is_main,
        )
        if len(bundle.val) == 0:
            raise TrainingError("the validation split is empty; raise val_fraction")
        run = _setup_run(
            recipe,
            ctx=ctx,
            out_dir=out_dir,
            info=_with_input_preparation(bundle.info, recipe),
            train_images=bundle.train.images,
            resumed=resumed,
        )
        return _train_loop(
            run, bundle, progress=progress, resumed=resumed, stop_after_epoch=stop_after_epoch
        )
    finally:
        distributed.teardown(ctx)


def _with_input_preparation(info: DataInfo, recipe: Recipe) -> DataInfo:
    """The data's description plus what the recipe adds to the model's input (chroma), after
    checking the recipe's epoch_sizes against it."""
    too_large = [size for size in recipe.epoch_sizes if size > min(info.height, info.width)]
    if too_large:
        raise TrainingError(
            f"recipe {recipe.name!r}: epoch_sizes {too_large} exceed the "
            f"{info.height}x{info.width} input"
        )
    factor = recipe.chroma_subsampling
    if factor == 1:
        return info
    if info.channels != 3:
        raise TrainingError(
            f"recipe {recipe.name!r}: chroma_subsampling needs RGB input; "
            f"{info.dataset} is loaded with {info.channels} channel(s)"
        )
    if info.height % factor or info.width % factor:
        raise TrainingError(
            f"recipe {recipe.name!r}: the {info.height}x{info.width} input is not divisible "
            f"by chroma_subsampling {factor}"
        )
    return replace(info, chroma_subsampling=factor)


def _setup_run(
    recipe: Recipe,
    *,
    ctx: DistContext,
    out_dir: Path,
    info: DataInfo,
    train_images: torch.Tensor,
    resumed: Checkpoint | None,
) -> _Run:
    from models import get_model

    device = ctx.device
    model_kwargs = {
        "num_classes": len(info.labels),
        "in_channels": info.channels,
        "image_size": info.height,
    }
    # Same initial weights on every rank (DDP also broadcasts rank 0's at wrap time).
    torch.manual_seed(derived_seed(recipe.seed, 0, 0, stream=1))
    model = get_model(
        recipe.model, weights=recipe.weights if resumed is None else None, **model_kwargs
    )
    preprocess = info.input_preprocess().to(device)
    model.to(device)
    _check_epoch_sizes(model, recipe, info, device)
    if recipe.whiten:
        # Also when resuming: the whitened stem is frozen, and the optimiser's parameter groups
        # must match the saved ones (the weights themselves come from the checkpoint next).
        from models.fastnet import init_whitening

        init_whitening(model, preprocess(_whitening_sample(train_images, recipe).to(device)))
    if recipe.channels_last:
        model.to(memory_format=torch.channels_last)
    ema = ModelEma(model, recipe.ema_decay) if recipe.ema_decay > 0 else None
    amp_dtype = autocast_dtype(recipe.amp, device)
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
    n_train = len(train_images)
    schedule = build_schedule(
        recipe.schedule,
        epochs=recipe.epochs,
        steps_per_epoch=steps_per_epoch(n_train, recipe.batch_size),
        warmup_epochs=recipe.warmup_epochs,
        warmup_start_factor=recipe.warmup_start_factor,
        final_factor=recipe.final_lr_factor,
        milestone_epochs=recipe.step_milestones,
        gamma=recipe.step_gamma,
    )
    optimizer, lookahead = build_optimizer(model, recipe, total_steps=schedule.total_steps)
    # One flip state per training image for the whole run (alternating flip); global indices,
    # so every rank agrees, and derived from the seed, so a resumed run gets the same one.
    flip_base = None
    if recipe.flip and recipe.flip_mode == "alternate":
        draw = torch.Generator().manual_seed(derived_seed(recipe.seed, 0, 0, stream=3))
        flip_base = (torch.rand(n_train, generator=draw) < 0.5).to(device)
    run = _Run(
        recipe=recipe,
        ctx=ctx,
        run_dir=out_dir,
        info=info,
        model=model,
        forward=model,
        ema=ema,
        optimizer=optimizer,
        lookahead=lookahead,
        scaler=scaler,
        schedule=schedule,
        preprocess=preprocess,
        amp_dtype=amp_dtype,
        model_kwargs=model_kwargs,
        state=StepState(),
        flip_base=flip_base,
    )
    if resumed is not None:
        _restore(run, resumed)
    run.forward = _wrap(model, recipe, ctx)
    return run


@torch.no_grad()
def _check_epoch_sizes(
    model: nn.Module, recipe: Recipe, info: DataInfo, device: torch.device
) -> None:
    """Refuse, before any step, an epoch size the network cannot take (VGG's five max-pools
    need 32 px): one image through the network in eval mode, so no statistics change."""
    if not recipe.epoch_sizes:
        return
    side = min(recipe.epoch_sizes)
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, info.channels, side, side, device=device))
    except RuntimeError as exc:
        raise TrainingError(
            f"recipe {recipe.name!r}: {recipe.model} cannot train at {side} px (epoch_sizes); "
            f"{str(exc).splitlines()[0]}"
        ) from exc
    finally:
        model.train(was_training)


def _wrap(model: nn.Module, recipe: Recipe, ctx: DistContext) -> Forward:
    """The callable the steps run: DDP around the network under torchrun, then compile."""
    forward: nn.Module = model
    if ctx.enabled:
        device = ctx.device
        forward = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if recipe.compile:
        forward = torch.compile(forward)  # type: ignore[assignment]
    return forward


def _restore(run: _Run, ckpt: Checkpoint) -> None:
    state = ckpt.resume
    assert state is not None
    try:
        run.model.load_state_dict(state["model"])
        (run.lookahead or run.optimizer).load_state_dict(state["optimizer"])
        if run.ema is not None:
            if state.get("ema") is None:
                raise TrainingError("the checkpoint was trained without EMA; keep ema_decay=0")
            run.ema.load_state_dict(state["ema"])
        if run.scaler is not None and state.get("scaler") is not None:
            run.scaler.load_state_dict(state["scaler"])
    except (RuntimeError, KeyError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrainingError(
            f"cannot resume: the checkpoint does not fit this recipe ({first})"
        ) from None
    run.state.step = int(state["step"])
    run.best_val = float(state["best_val"])
    run.best_epoch = int(state["best_epoch"])
    run.train_seconds = ckpt.train_seconds


def _train_loop(
    run: _Run,
    bundle: Any,
    *,
    progress: bool,
    resumed: Checkpoint | None,
    stop_after_epoch: int | None,
) -> TrainResult:
    recipe, ctx, device = run.recipe, run.ctx, run.ctx.device
    main = ctx.is_main
    metrics_path = run.run_dir / "metrics.jsonl"
    best_path, last_path = run.run_dir / "best.pt", run.run_dir / "last.pt"
    start_epoch = resumed.epoch if resumed is not None else 0
    end_epoch = recipe.epochs if stop_after_epoch is None else min(recipe.epochs, stop_after_epoch)
    if main:
        run.run_dir.mkdir(parents=True, exist_ok=True)
        _write_json(run.run_dir / "recipe.json", recipe.to_dict())
        # Keep the history up to the resumed epoch; drop lines of epochs about to be redone.
        kept = _read_metrics(metrics_path, up_to_epoch=start_epoch) if resumed else []
        metrics_path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        log.info(
            "training %s (%s on %s) on %s: %d train / %d val images, epochs %d-%d of %d",
            recipe.name,
            recipe.model,
            recipe.dataset,
            device,
            len(bundle.train),
            len(bundle.val),
            start_epoch + 1,
            end_epoch,
            recipe.epochs,
        )
        batch_pixels = recipe.batch_size * bundle.train.images[0, 0].numel()
        hint = malloc_hint(batch_pixels) if device.type == "cpu" else None
        if hint is not None:
            log.info(hint)
    train_x = bundle.train.images.to(device)
    train_y = bundle.train.labels.to(device)
    val_x = bundle.val.images.to(device)
    val_y = bundle.val.labels.to(device)
    criterion = build_criterion(recipe)

    for epoch in range(start_epoch + 1, end_epoch + 1):
        seed_everything(derived_seed(recipe.seed, epoch, ctx.rank, stream=0))
        shuffle = torch.Generator().manual_seed(derived_seed(recipe.seed, epoch, 0, stream=1))
        aug = torch.Generator().manual_seed(derived_seed(recipe.seed, epoch, ctx.rank, stream=2))
        if _set_whiten_bias_trainable(run.model, recipe, epoch) and ctx.enabled:
            # DDP fixes the set of parameters it reduces when it wraps the model.
            run.forward = _wrap(run.model, recipe, ctx)
        # Switched for the epoch's steps only: evaluation and checkpoints see the plain modules.
        with gemm_weight_grads(run.model, recipe.gemm_weight_grad_side):
            stats = train_one_epoch(
                run.forward,
                run.model,
                train_x,
                train_y,
                recipe=recipe,
                preprocess=run.preprocess,
                criterion=criterion,
                optimizer=run.optimizer,
                schedule=run.schedule,
                state=run.state,
                lookahead=run.lookahead,
                ema=run.ema,
                scaler=run.scaler,
                generator=shuffle,
                aug_generator=aug,
                ctx=ctx,
                amp_dtype=run.amp_dtype,
                progress=progress and main,
                desc=f"epoch {epoch}/{recipe.epochs}",
                flip_mask=(
                    None if run.flip_base is None else alternating_flip_mask(run.flip_base, epoch)
                ),
                train_size=epoch_train_size(recipe, epoch),
            )
        run.train_seconds += stats.seconds
        # Rank 0's normalisation statistics become everyone's, so ranks stay identical.
        distributed.broadcast_module(run.model, ctx)
        if run.ema is not None:
            distributed.broadcast_module(run.ema.module, ctx)
        val = evaluate(
            run.eval_model,
            val_x,
            val_y,
            preprocess=run.preprocess,
            batch_size=recipe.eval_batch_size,
            ctx=ctx,
            amp_dtype=run.amp_dtype,
            channels_last=recipe.channels_last,
        )
        # Selection looks at validation only; keep=last takes the final weights whatever.
        improved = val.accuracy > run.best_val or recipe.keep == "last"
        if improved:
            run.best_val, run.best_epoch = val.accuracy, epoch
        row = {
            "epoch": epoch,
            "train_loss": stats.loss,
            "train_acc": stats.accuracy,
            "val_loss": val.loss,
            "val_acc": val.accuracy,
            "lr": run.state.lr,
            "seconds": stats.seconds,
            "images_per_s": stats.images / stats.seconds if stats.seconds > 0 else 0.0,
            "eval_seconds": val.seconds,
            "best": improved,
        }
        if main:
            with metrics_path.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            if improved:
                run.checkpoint(epoch, val.accuracy, with_resume=False).save(best_path)
            run.checkpoint(epoch, val.accuracy, with_resume=True).save(last_path)
            log.info(
                "epoch %d/%d  train loss %.4f acc %.2f%%  val loss %.4f acc %.2f%%%s  "
                "%.1fs  %.0f img/s",
                epoch,
                recipe.epochs,
                stats.loss,
                100 * stats.accuracy,
                val.loss,
                100 * val.accuracy,
                " *" if improved else "",
                stats.seconds,
                row["images_per_s"],
            )
        distributed.barrier(ctx)

    completed = end_epoch >= recipe.epochs
    final = _finish(run, bundle, completed=completed) if main else _FinalAccuracies()
    distributed.barrier(ctx)
    return TrainResult(
        run_dir=run.run_dir,
        best_checkpoint=best_path,
        last_checkpoint=last_path,
        best_val_accuracy=run.best_val,
        best_epoch=run.best_epoch,
        test_accuracy=final.test,
        seconds=run.train_seconds,
        epochs_run=end_epoch,
        completed=completed,
        device=str(device),
        rank=ctx.rank,
        weights_digest=state_digest(run.eval_model.state_dict()),
        val_accuracy_tta=final.val_tta,
        val_accuracy=final.val,
    )


def _whitening_sample(train_images: torch.Tensor, recipe: Recipe) -> torch.Tensor:
    """A seeded random sample of `recipe.whiten_images` training images for the whitening stem.

    Not the first ones: an image-folder data set is stored class by class, so a prefix would
    hold one or two classes and the patch statistics would describe only those.
    """
    draw = torch.Generator().manual_seed(derived_seed(recipe.seed, 0, 0, stream=4))
    picked = torch.randperm(len(train_images), generator=draw)[: recipe.whiten_images]
    return train_images[picked]


def _set_whiten_bias_trainable(model: nn.Module, recipe: Recipe, epoch: int) -> bool:
    """airbench trains the whitening stem's bias only for the first epochs, then freezes it.

    A frozen bias (gradient None) is skipped by the optimiser, and with the stem's weight
    already frozen autograd no longer needs the first block's input gradient. Returns whether
    anything changed.
    """
    if recipe.whiten_bias_epochs is None:
        return False
    from models.fastnet import FastNet

    trainable = epoch <= recipe.whiten_bias_epochs
    changed = False
    for module in model.modules():
        bias = module.whiten.bias if isinstance(module, FastNet) else None
        if bias is not None and bias.requires_grad != trainable:
            bias.requires_grad_(trainable)
            changed = True
    return changed


@dataclass(frozen=True)
class _FinalAccuracies:
    """The kept checkpoint's accuracies from `_finish` (None on ranks other than 0)."""

    val: float | None = None
    val_tta: float | None = None
    test: float | None = None


def _finish(run: _Run, bundle: Any, *, completed: bool) -> _FinalAccuracies:
    """Rank 0: evaluate the kept checkpoint once in float32 (and test it, when training
    completed), plots, summary.

    The float32 validation accuracy replaces the epoch's own figure in best.pt's metrics, which
    the export copies into the manifest: under autocast the epoch's evaluation ran in bf16 or
    fp16, but the exported graph runs in float32.
    """
    from training.evaluate import evaluate_model
    from training.plots import plot_confusion, plot_curves

    recipe, device = run.recipe, run.ctx.device
    best_path = run.run_dir / "best.pt"
    best = load_checkpoint(best_path)
    model = best.build_model().to(device)
    if recipe.channels_last:
        model.to(memory_format=torch.channels_last)
    labels = run.info.labels

    def report(images: torch.Tensor, targets: torch.Tensor, tta: int) -> Any:
        return evaluate_model(
            model,
            images,
            targets,
            labels,
            run.preprocess,
            batch_size=recipe.eval_batch_size,
            device=device,
            channels_last=recipe.channels_last,
            tta=tta,
        )

    val_report = report(bundle.val.images, bundle.val.labels, 0)
    plot_confusion(
        val_report.confusion,
        labels,
        run.run_dir / "confusion_val.png",
        title=f"{recipe.name}: validation (epoch {best.epoch})",
    )
    val_tta = report(bundle.val.images, bundle.val.labels, recipe.tta) if recipe.tta else None
    test_report = test_tta = None
    if completed and bundle.test is not None and len(bundle.test) > 0:
        test_report = report(bundle.test.images, bundle.test.labels, 0)
        plot_confusion(
            test_report.confusion,
            labels,
            run.run_dir / "confusion_test.png",
            title=f"{recipe.name}: test (epoch {best.epoch})",
        )
        best.metrics["test_accuracy"] = test_report.accuracy
        if recipe.tta:
            test_tta = report(bundle.test.images, bundle.test.labels, recipe.tta)
            best.metrics["test_accuracy_tta"] = test_tta.accuracy
    best.metrics["val_accuracy"] = val_report.accuracy
    if val_tta is not None:
        best.metrics["val_accuracy_tta"] = val_tta.accuracy
    best.save(best_path)
    metrics = _read_metrics(run.run_dir / "metrics.jsonl")
    if metrics:
        plot_curves(metrics, run.run_dir / "curves.png", title=f"{recipe.name} ({recipe.model})")
    test_acc = test_report.accuracy if test_report is not None else None
    summary = {
        "recipe": recipe.to_dict(),
        "completed": completed,
        "epochs_run": metrics[-1]["epoch"] if metrics else 0,
        "best_epoch": run.best_epoch,
        "best_val_accuracy": run.best_val,
        # The kept weights evaluated once in float32: what the exported model gets.
        "val_accuracy": val_report.accuracy,
        "val_accuracy_tta": val_tta.accuracy if val_tta is not None else None,
        "test_accuracy": test_acc,
        "test_accuracy_tta": test_tta.accuracy if test_tta is not None else None,
        "tta": recipe.tta,
        "train_seconds": run.train_seconds,
        "images_per_s": _mean([m["images_per_s"] for m in metrics]),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "world_size": run.ctx.world_size,
        "torch": torch.__version__,
        # malloc and CPU flags change a CPU run's speed as much as its recipe (training/host.py).
        **host_report(),
        "data": {
            "dataset": run.info.dataset,
            "train_images": len(bundle.train),
            "val_images": len(bundle.val),
            "test_images": len(bundle.test) if bundle.test is not None else 0,
            "skipped_files": bundle.skipped,
        },
        "val_report": val_report.to_dict(),
        "test_report": test_report.to_dict() if test_report is not None else None,
    }
    _write_json(run.run_dir / "summary.json", summary)
    if val_tta is not None:
        log.info(
            "validation accuracy with tta=%d (epoch %d): %.2f%% (%.2f%% without)",
            recipe.tta,
            best.epoch,
            100 * val_tta.accuracy,
            100 * val_report.accuracy,
        )
    if test_acc is not None:
        log.info(
            "test accuracy of the kept checkpoint (epoch %d): %.2f%%", best.epoch, 100 * test_acc
        )
    return _FinalAccuracies(
        val=val_report.accuracy,
        val_tta=val_tta.accuracy if val_tta is not None else None,
        test=test_acc,
    )


def _mean(values: list[float]) -> float:
    return float(sum(values) / len(values)) if values else 0.0
