"""Training recipes: every hyper-parameter of a run, with its unit, in one frozen dataclass.

A recipe is plain data (airbench style): the engine reads it and nothing else decides a
hyper-parameter. `RECIPES` names one recipe per data set and model that makes sense; the
command line picks one with `--recipe` and changes single fields with `--set key=value`, which
goes through `Recipe.override` (type-checked, one-line `RecipeError` for anything wrong).

Units used below:
- "images": a count of training images (not batches); "epochs": passes over the train split
  (fractions allowed where the type is float); "steps": optimiser steps (one per batch).
- learning rates are the optimiser's own `lr`, applied to the gradient of the loss averaged
  over the batch (so they do not scale with the batch size by themselves), unless the recipe
  sets `airbench_units`: then `lr` and `weight_decay` are per 1024 images and follow the batch
  size (see those fields and `sgd_hyperparameters`).
"""

from __future__ import annotations

import dataclasses
import types
from dataclasses import dataclass, fields
from typing import Any, Union, get_args, get_origin, get_type_hints

from imgzoo.errors import UserError
from imgzoo.manifest import INTERPOLATIONS, RESIZE_POLICIES
from models.preprocess import CHROMA_SUBSAMPLING_FACTORS

OPTIMIZERS = ("sgd", "muon", "adam", "adamw")
FLIP_MODES = ("random", "alternate")
KEEP_MODES = ("best", "last")
TTA_LEVELS = (0, 1, 2)
SCHEDULES = ("cosine", "onecycle", "step", "constant")
AMP_MODES = ("off", "auto", "bf16", "fp16")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_NONE = {"none", "null", ""}


class RecipeError(UserError):
    """An unknown recipe, an unknown recipe field, or a value of the wrong type or range."""


@dataclass(frozen=True)
class Recipe:
    """All hyper-parameters of one training run."""

    # --- what to train --------------------------------------------------------------------
    name: str
    """Recipe name, recorded in checkpoints and manifests."""
    dataset: str
    """Data set name (`training.datasets.dataset_names()`)."""
    model: str
    """Registered architecture (`models.list_models()`)."""
    image_size: int | None = None
    """Network input side in pixels (square); None = the data set's native size."""
    channels: int | None = None
    """Input channels (1 grayscale, 3 RGB); None = the data set's native channels."""
    resize: str = "center_crop"
    """How an image of another size is brought to the input size: stretch, center_crop or
    letterbox. Used on training images that need it and recorded in the manifest as the
    model's serving policy (`DESIGN.md`)."""
    interpolation: str = "bilinear"
    """The filter of that resize: nearest, bilinear, bicubic, lanczos or box (PIL's,
    antialiased). Best the one the training images were made with, where they were resized
    before training (the 64 px Butterfly copy: lanczos)."""
    chroma_subsampling: int = 1
    """Colour resolution divisor of the model's input, part of the exported graph: 1 = off;
    2 = chroma (Cb, Cr) at half the resolution each way, as in a JPEG 4:2:0 file; 4 = a
    quarter. For RGB training images stored as 4:2:0 JPEGs at the input size (the 64 px
    Butterfly copy): served photos then reach the network with the colour resolution it was
    trained on. Needs 3 channels and an input size divisible by it."""
    weights: str | None = None
    """Initial weights: None (random), "imagenet", or a path to a local state dict file."""

    # --- length and batch ------------------------------------------------------------------
    epochs: int = 10
    """Training length in epochs (passes over the train split)."""
    batch_size: int = 256
    """Images per optimiser step, summed over all DDP processes (each gets batch_size/world)."""
    eval_batch_size: int = 512
    """Images per forward pass when evaluating (no effect on results, only on memory)."""

    # --- optimiser -------------------------------------------------------------------------
    optimizer: str = "sgd"
    """One of sgd (SGD with momentum), muon (Muon on convolution filters, SGD with momentum on
    everything else: see muon_lr), adam, adamw."""
    lr: float = 0.1
    """Peak learning rate (the schedule's factor 1.0), applied to the batch-mean loss gradient."""
    momentum: float = 0.9
    """SGD momentum, or Adam's beta1 (dimensionless, in [0, 1))."""
    muon_lr: float = 0.02
    """muon only: relative step of each convolution filter bank per optimiser step, before the
    schedule's factor (dimensionless): the bank is renormalised to Frobenius norm
    sqrt(out_channels), then moved by muon_lr times an update whose singular values are all
    near 1. lr stays the SGD groups'."""
    muon_momentum: float = 0.95
    """muon only: momentum of the filter updates (dimensionless, in [0, 1); Nesterov when
    nesterov is on); momentum stays the SGD groups'."""
    beta2: float = 0.999
    """Adam / AdamW beta2 (dimensionless, in [0, 1)); unused by SGD."""
    nesterov: bool = True
    """Nesterov momentum for SGD; unused by Adam."""
    weight_decay: float = 5e-4
    """Weight decay coefficient (L2 for sgd / adam, decoupled for adamw), per step, times lr.
    Applied to normalisation weights and biases only with decay_all. With airbench_units it is
    instead the fraction the weights shrink per 1024 training images at the peak lr."""
    airbench_units: bool = False
    """sgd and muon (its SGD groups): read lr and weight_decay in airbench's batch- and
    momentum-independent units.
    lr is then the step per 1024 images divided by Nesterov momentum's gain 1 + 1/(1-momentum)
    (the optimiser gets lr * batch_size / (1024 * gain) on the batch-mean loss), and
    weight_decay is the fraction of each weight removed per 1024 images at the peak lr (the
    optimiser's L2 coefficient becomes weight_decay / lr), so both follow the batch size."""
    norm_bias_lr_scale: float = 1.0
    """Learning-rate multiplier of normalisation-layer parameters (dimensionless; airbench
    trains BatchNorm biases at 64x the lr of the weights)."""
    bias_lr_scale: float = 1.0
    """Learning-rate multiplier of biases outside normalisation layers (dimensionless; fastnet's
    only one is the whitening stem's, which airbench94_muon trains at the BatchNorm biases' lr)."""
    decay_all: bool = False
    """Also decay normalisation parameters and biases, each by the same fraction per step as
    the weights (their coefficient is divided by their lr multiplier), as airbench does."""
    grad_clip: float = 0.0
    """Clip the global gradient L2 norm to this value before each step; 0 = off."""
    lookahead_k: int = 0
    """Lookahead: synchronise slow weights every k optimiser steps; 0 = Lookahead off."""
    lookahead_alpha: float = 0.5
    """Lookahead slow-weight step size (dimensionless, in (0, 1]); see lookahead_alpha_power."""
    lookahead_alpha_power: float = 0.0
    """Lookahead step size schedule: at optimiser step t of T the slow weights move by
    1 - (1 - lookahead_alpha) * (t / T) ** power towards the fast ones (dimensionless, >= 0).
    0 keeps lookahead_alpha throughout; airbench uses 3 (no averaging early, heavy at the end).
    After the last step the network takes the slow weights."""
    lookahead_buffers: bool = False
    """Let Lookahead average the float buffers too (BatchNorm running statistics), as airbench
    does; off = parameters only."""

    # --- schedule (stepped per optimiser step) ---------------------------------------------
    schedule: str = "cosine"
    """cosine (half-cosine decay), onecycle (linear decay), step (x gamma at milestones),
    constant; all after the linear warm-up."""
    warmup_epochs: float = 0.0
    """Linear warm-up from lr*warmup_start_factor to lr, in epochs."""
    warmup_start_factor: float = 0.1
    """Learning-rate factor at the first warm-up step (dimensionless, in [0, 1])."""
    final_lr_factor: float = 0.0
    """Learning-rate factor at the last step for cosine / onecycle (dimensionless)."""
    step_milestones: tuple[float, ...] = ()
    """Epochs at which the step schedule multiplies the learning rate by step_gamma."""
    step_gamma: float = 0.1
    """Multiplier applied at each step milestone (dimensionless)."""

    # --- loss and averaging ----------------------------------------------------------------
    label_smoothing: float = 0.0
    """Cross-entropy label smoothing (probability mass spread over all classes, in [0, 1))."""
    ema_decay: float = 0.0
    """EMA of the weights: decay per optimiser step (e.g. 0.999); 0 = off. With EMA on, the
    EMA weights are the ones evaluated, checkpointed and exported."""

    # --- augmentation (on whole batches, on the training device) ----------------------------
    crop_padding: int = 4
    """Random-crop translation: reflect-pad by this many pixels, crop back; 0 = off."""
    flip: bool = True
    """Horizontal flip (see flip_mode)."""
    flip_mode: str = "random"
    """random: each image flipped with probability 0.5 every epoch; alternate (airbench): each
    image gets one random flip state for the run and it alternates every epoch, so every image
    is seen both ways in any two consecutive epochs."""
    cutout: int = 0
    """Cutout square side in pixels, zeroed at a random place per image; 0 = off."""
    rotate: float = 0.0
    """Random rotation of each image, uniform in [-rotate, rotate] degrees; 0 = off."""
    zoom: float = 0.0
    """Random zoom about the centre, uniform in [1 - zoom, 1 + zoom] (a fraction, < 1); 0 = off."""
    epoch_sizes: tuple[int, ...] = ()
    """Progressive resizing: the training side in pixels of each epoch from the first (e.g.
    16,16,24,24 for epochs 1-4); later epochs, and every epoch when empty, train at the input
    size. Batches are augmented at the input size, then downscaled (bilinear, antialiased), so
    an early epoch costs about (side / input side)^2 of a full one. Needs a network that pools
    globally (fastnet, the ResNets); validation and export stay at the input size."""

    # --- speed -----------------------------------------------------------------------------
    amp: str = "off"
    """Autocast: off; auto (bf16 on CUDA, fp16 on CUDA without bf16; on the CPU bf16 only with
    native bf16, AVX-512-BF16 or AMX, else off); bf16 (CUDA and CPU: 15-40x slower than float32
    on CPUs without native bf16); fp16 (CUDA only, with a gradient scaler)."""
    channels_last: bool = False
    """Store activations NHWC (channels_last); pays off on CUDA with AMP and on CPU with bf16."""
    compile: bool = False
    """Wrap the network in torch.compile (first steps are slow while it compiles)."""
    gemm_weight_grad_side: int = 0
    """CPU: stride-1 convolutions whose output is at most this many pixels a side compute
    their weight gradient as im2col + one matrix product instead of oneDNN's kernel (pixels;
    0 = off). On AMX hosts oneDNN's bf16 kernel for small feature maps takes 4-9x the forward
    pass; 8 made a fastnet step 7% faster at 32 px and 30% at 16 px there (docs/training.md).
    Only the arithmetic order of those gradients changes."""
    whiten: bool = False
    """fastnet only: initialise the 2x2 stem from the patch covariance of training images."""
    whiten_images: int = 5000
    """How many training images (a seeded random sample) the whitening statistics use (images)."""
    whiten_bias_epochs: int | None = None
    """fastnet: train the whitening stem's bias for this many epochs, then freeze it (airbench:
    3; it also saves that layer's input gradient); None = trained throughout."""

    # --- evaluation and selection -------------------------------------------------------------
    tta: int = 0
    """Test-time augmentation of the final evaluation (val and test, not the per-epoch curve):
    0 none; 1 mirror (mean logits of the image and its mirror); 2 mirror + translate (half
    weight on the image and its mirror, half on both shifted by one pixel up-left and
    down-right, each with its mirror: airbench's 6 views). The exported graph does not
    include it: serving answers as tta=0."""
    keep: str = "best"
    """Which weights best.pt keeps (and test/export use): best = the epoch with the highest
    validation accuracy; last = the final weights (airbench; the validation figure is then
    free of selection bias)."""

    # --- data split and seeds --------------------------------------------------------------
    val_fraction: float = 0.1
    """Fraction of train carved (stratified) as validation when the data set has none."""
    split_seed: int = 0
    """Seed of the validation split (kept fixed so runs with other seeds see the same split)."""
    seed: int = 0
    """Seed of initialisation, shuffling and augmentation."""

    def __post_init__(self) -> None:
        self._validate()

    def _validate(self) -> None:
        checks: list[tuple[bool, str]] = [
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.eval_batch_size >= 1, "eval_batch_size must be >= 1"),
            (self.optimizer in OPTIMIZERS, f"optimizer must be one of {', '.join(OPTIMIZERS)}"),
            (self.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}"),
            (self.amp in AMP_MODES, f"amp must be one of {', '.join(AMP_MODES)}"),
            (self.lr > 0, "lr must be > 0"),
            (0 <= self.momentum < 1, "momentum must be in [0, 1)"),
            (0 <= self.beta2 < 1, "beta2 must be in [0, 1)"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (self.grad_clip >= 0, "grad_clip must be >= 0 (0 = off)"),
            (self.lookahead_k >= 0, "lookahead_k must be >= 0 (0 = off)"),
            (0 < self.lookahead_alpha <= 1, "lookahead_alpha must be in (0, 1]"),
            (self.warmup_epochs >= 0, "warmup_epochs must be >= 0"),
            (0 <= self.warmup_start_factor <= 1, "warmup_start_factor must be in [0, 1]"),
            (self.final_lr_factor >= 0, "final_lr_factor must be >= 0"),
            (all(m > 0 for m in self.step_milestones), "step_milestones must be > 0"),
            (self.step_gamma > 0, "step_gamma must be > 0"),
            (0 <= self.label_smoothing < 1, "label_smoothing must be in [0, 1)"),
            (0 <= self.ema_decay < 1, "ema_decay must be in [0, 1) (0 = off)"),
            (self.crop_padding >= 0, "crop_padding must be >= 0"),
            (self.cutout >= 0, "cutout must be >= 0"),
            (0 <= self.rotate <= 180, "rotate must be in [0, 180] degrees"),
            (0 <= self.zoom < 1, "zoom must be in [0, 1)"),
            (all(size >= 8 for size in self.epoch_sizes), "epoch_sizes must be >= 8 pixels"),
            (len(self.epoch_sizes) <= self.epochs, "epoch_sizes has more entries than epochs"),
            (
                self.image_size is None or all(s <= self.image_size for s in self.epoch_sizes),
                "epoch_sizes must not exceed image_size",
            ),
            (self.gemm_weight_grad_side >= 0, "gemm_weight_grad_side must be >= 0 (0 = off)"),
            (
                not (self.compile and self.gemm_weight_grad_side),
                "gemm_weight_grad_side does not combine with compile",
            ),
            (self.whiten_images >= 1, "whiten_images must be >= 1"),
            (
                self.whiten_bias_epochs is None or self.whiten_bias_epochs >= 0,
                "whiten_bias_epochs must be >= 0 (or none)",
            ),
            (self.norm_bias_lr_scale > 0, "norm_bias_lr_scale must be > 0"),
            (self.bias_lr_scale > 0, "bias_lr_scale must be > 0"),
            (self.muon_lr > 0, "muon_lr must be > 0"),
            (0 <= self.muon_momentum < 1, "muon_momentum must be in [0, 1)"),
            (
                not self.airbench_units or self.optimizer in ("sgd", "muon"),
                "airbench_units applies only to optimizers sgd and muon",
            ),
            (self.lookahead_alpha_power >= 0, "lookahead_alpha_power must be >= 0"),
            (self.flip_mode in FLIP_MODES, f"flip_mode must be one of {', '.join(FLIP_MODES)}"),
            (self.keep in KEEP_MODES, f"keep must be one of {', '.join(KEEP_MODES)}"),
            (self.tta in TTA_LEVELS, "tta must be 0 (none), 1 (mirror) or 2 (mirror+translate)"),
            (0 < self.val_fraction < 1, "val_fraction must be in (0, 1)"),
            (self.image_size is None or self.image_size >= 8, "image_size must be >= 8"),
            (self.channels in (None, 1, 3), "channels must be 1 or 3"),
            (self.resize in RESIZE_POLICIES, f"resize must be one of {', '.join(RESIZE_POLICIES)}"),
            (
                self.interpolation in INTERPOLATIONS,
                f"interpolation must be one of {', '.join(INTERPOLATIONS)}",
            ),
            (
                self.chroma_subsampling in CHROMA_SUBSAMPLING_FACTORS,
                "chroma_subsampling must be one of "
                + ", ".join(map(str, CHROMA_SUBSAMPLING_FACTORS)),
            ),
            (
                self.chroma_subsampling == 1 or self.channels in (None, 3),
                "chroma_subsampling needs RGB input (channels 3)",
            ),
            (
                self.chroma_subsampling == 1
                or self.image_size is None
                or self.image_size % self.chroma_subsampling == 0,
                "image_size must be divisible by chroma_subsampling",
            ),
            (not self.whiten or self.model == "fastnet", "whiten applies only to model fastnet"),
            (
                self.whiten_bias_epochs is None or self.model == "fastnet",
                "whiten_bias_epochs applies only to model fastnet",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise RecipeError(f"recipe {self.name!r}: {message}")

    # --- overrides -------------------------------------------------------------------------

    def override(self, **changes: Any) -> Recipe:
        """A copy with some fields changed; unknown fields and wrongly typed values are errors."""
        hints = _field_types()
        for key, value in changes.items():
            if key not in hints:
                raise RecipeError(f"unknown recipe field {key!r} (known: {', '.join(hints)})")
            if not _is_instance(value, hints[key]):
                raise RecipeError(
                    f"recipe field {key!r} needs {_type_name(hints[key])}, got {value!r}"
                )
        return dataclasses.replace(self, **changes)

    def override_from_strings(self, assignments: list[str]) -> Recipe:
        """Apply `key=value` strings (the `--set` option), parsing each by the field's type."""
        hints = _field_types()
        changes: dict[str, Any] = {}
        for item in assignments:
            key, sep, text = item.partition("=")
            key = key.strip().replace("-", "_")
            if not sep or not key:
                raise RecipeError(f"--set needs key=value, got {item!r}")
            if key not in hints:
                raise RecipeError(f"unknown recipe field {key!r} (known: {', '.join(hints)})")
            changes[key] = parse_value(key, text.strip(), hints[key])
        return self.override(**changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (tuples become lists)."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recipe:
        """Inverse of `to_dict`, ignoring keys this version does not know (older checkpoints)."""
        hints = _field_types()
        known = {k: v for k, v in data.items() if k in hints}
        for key, value in known.items():
            if isinstance(value, list) and get_origin(hints[key]) is tuple:  # JSON has no tuples
                item_type = get_args(hints[key])[0]
                known[key] = tuple(item_type(item) for item in value)
        for key in ("name", "dataset", "model"):
            if key not in known:
                raise RecipeError(f"stored recipe lacks {key!r}")
        base = cls(name=known.pop("name"), dataset=known.pop("dataset"), model=known.pop("model"))
        return base.override(**known)


def nesterov_gain(momentum: float) -> float:
    """How much larger than the gradient a (Nesterov) momentum step is for a constant gradient."""
    return 1.0 + 1.0 / (1.0 - momentum)


def sgd_hyperparameters(recipe: Recipe) -> tuple[float, float]:
    """(lr, L2 coefficient) the torch optimiser gets, on the batch-mean loss.

    In plain units they are the recipe's own. In airbench's units (`airbench_units`), lr is
    per 1024 images and divided by the momentum gain, and the decay is a fraction per 1024
    images: converting gives lr * batch / (1024 * gain) and weight_decay / lr, so the shrink
    per step, lr_torch * coefficient, is weight_decay * batch / (1024 * gain).
    """
    if not recipe.airbench_units:
        return recipe.lr, recipe.weight_decay
    lr = recipe.lr * recipe.batch_size / (1024.0 * nesterov_gain(recipe.momentum))
    return lr, recipe.weight_decay / recipe.lr


def _field_types() -> dict[str, Any]:
    hints = get_type_hints(Recipe)
    return {f.name: hints[f.name] for f in fields(Recipe)}


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _is_instance(value: Any, tp: Any) -> bool:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        return any(_is_instance(value, arg) for arg in get_args(tp))
    if tp is type(None):
        return value is None
    if origin is tuple:
        (item_type, _ellipsis) = get_args(tp)
        return isinstance(value, tuple) and all(_is_instance(v, item_type) for v in value)
    if tp is float:
        # An int is a fine float; a bool is not a number here.
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if tp is type(None):
        return "none"
    if origin is tuple:
        return f"a comma-separated list of {_type_name(get_args(tp)[0])}"
    return str(getattr(tp, "__name__", tp))


def parse_value(key: str, text: str, tp: Any) -> Any:
    """Parse one `--set` value by the field type; a one-line RecipeError when it does not fit."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if type(None) in args and text.lower() in _NONE:
            return None
        inner = [a for a in args if a is not type(None)]
        return parse_value(key, text, inner[0])
    try:
        if tp is bool:
            low = text.lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError(text)
        if tp is int:
            return int(text)
        if tp is float:
            return float(text)
        if origin is tuple:
            item_type = get_args(tp)[0]
            parts = [p for p in text.split(",") if p.strip()]
            return tuple(parse_value(key, p.strip(), item_type) for p in parts)
    except ValueError:
        raise RecipeError(f"recipe field {key!r} needs {_type_name(tp)}, got {text!r}") from None
    return text


# The Butterfly recipes train on the 64 px copy (Lanczos, JPEG 4:2:0) and serve what it was
# made from: chroma at half resolution, since the copy's colour has it, and Lanczos resizing.
# Without them, the 224 px photos served lost 10 points (docs/results.md).
BUTTERFLY_64PX: dict[str, Any] = {
    "dataset": "butterfly",
    "image_size": 64,
    "chroma_subsampling": 2,
    "interpolation": "lanczos",
}

# What both airbench variants do besides the optimiser: label smoothing 0.2, alternating
# flips, the whitened stem (its bias trained 3 epochs), 6-view TTA, the last weights kept,
# bf16 where native, channels_last.
AIRBENCH_SHARED: dict[str, Any] = {
    "label_smoothing": 0.2,
    "flip": True,
    "flip_mode": "alternate",
    "whiten": True,
    "whiten_images": 5000,
    "whiten_bias_epochs": 3,
    "tta": 2,
    "keep": "last",
    "amp": "auto",
    "channels_last": True,
}


# airbench94's training mechanics (docs/training.md), shared by the fastnet recipes, which add
# their length, batch, warm-up (23 % of the run) and translation: lr 11.5 and decay 0.0153 per
# 1024 images in its decoupled units, BatchNorm biases at 64x lr, Nesterov 0.85, warm-up from
# 0.2 then linear to 0.07, stem bias trained 3 epochs, smoothing 0.2, Lookahead-EMA every 5
# steps with a cubic ramp, alternating flips, 6-view TTA, last weights, bf16 where native.
AIRBENCH94: dict[str, Any] = {
    "optimizer": "sgd",
    "airbench_units": True,
    "lr": 11.5,
    "momentum": 0.85,
    "nesterov": True,
    "weight_decay": 0.0153,
    "norm_bias_lr_scale": 64.0,
    "decay_all": True,
    "lookahead_k": 5,
    "lookahead_alpha": 1 - 0.95**5,
    "lookahead_alpha_power": 3.0,
    "lookahead_buffers": True,
    "schedule": "onecycle",
    "warmup_start_factor": 0.2,
    "final_lr_factor": 0.07,
    **AIRBENCH_SHARED,
}


# airbench94_muon's mechanics on fastnet: Muon on the conv filters (relative step 0.24,
# momentum 0.6), SGD-Nesterov 0.85 on the head and biases, batch 2000, linear decay to 0
# without warm-up, no Lookahead, 2 px translation. Its per-image SGD rates (head 0.67 with
# fastnet's head at 1/256 and unit-std weights, biases 0.053, decay 2e-6 per image) in
# fastnet's parametrisation (head 1/9) and airbench's units: head lr 0.67 * 2000 * (9/256)^2
# * 1024 * gain / 2000 = 6.5, biases 64x, decay 0.0157.
AIRBENCH94_MUON: dict[str, Any] = {
    "batch_size": 2000,
    "eval_batch_size": 1000,
    "optimizer": "muon",
    "muon_lr": 0.24,
    "muon_momentum": 0.6,
    "airbench_units": True,
    "lr": 6.5,
    "momentum": 0.85,
    "nesterov": True,
    "weight_decay": 0.0157,
    "norm_bias_lr_scale": 64.0,
    "bias_lr_scale": 64.0,
    "decay_all": True,
    "schedule": "onecycle",
    "warmup_epochs": 0.0,
    "final_lr_factor": 0.0,
    "crop_padding": 2,
    **AIRBENCH_SHARED,
}


# What the CPU-sized recipes of the residual and VGG networks share, as `cifar10_resnet_small`
# measured it: SGD with Nesterov 0.9 and decay 5e-4 on a one-cycle triangle, alternating
# flips, TTA 2 (6 views), the last weights kept (nothing selected on the reported split), bf16
# where native, channels_last. Each recipe adds its length, batch, peak lr (per batch, not
# scaled), warm-up, label smoothing and translation.
CPU_ONECYCLE: dict[str, Any] = {
    "optimizer": "sgd",
    "weight_decay": 5e-4,
    "schedule": "onecycle",
    "flip_mode": "alternate",
    "tta": 2,
    "keep": "last",
    "amp": "auto",
    "channels_last": True,
}


def _cifar10(name: str, model: str, **kw: Any) -> Recipe:
    return Recipe(name=name, dataset="cifar10", model=model, **kw)


# One recipe per data set and model. Figures each was tuned for are in docs/training.md.
RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        # The embedded demo set: one epoch (62 steps) reaches >90 % validation accuracy, about
        # a minute on an idle 2-core CPU (97.9 % measured mid-schedule; see docs/training.md).
        Recipe(
            name="demo_fastnet",
            dataset="demo",
            model="fastnet",
            epochs=1,
            batch_size=64,
            optimizer="sgd",
            lr=0.1,
            momentum=0.85,
            nesterov=True,
            weight_decay=5e-4,
            schedule="onecycle",
            warmup_epochs=0.3,
            warmup_start_factor=0.2,
            label_smoothing=0.1,
            crop_padding=2,
            flip=True,
            whiten=True,
            whiten_images=2000,
            amp="off",
        ),
        # airbench94's mechanics (`AIRBENCH94`) for 10 epochs of batch 1024, 2 px translation.
        _cifar10(
            "cifar10_fastnet",
            "fastnet",
            epochs=10,
            batch_size=1024,
            eval_batch_size=1000,
            warmup_epochs=2.3,
            crop_padding=2,
            **AIRBENCH94,
        ),
        # airbench94_muon's mechanics (`AIRBENCH94_MUON`) for 8 epochs of batch 2000.
        _cifar10("cifar10_fastnet_muon", "fastnet", epochs=8, **AIRBENCH94_MUON),
        # airbench94's accuracy in less time than airbench94: 12 epochs, the first four at 16 px
        # and the next two at 24 px (about 8.5 full ones), GEMM weight gradients at 8 px or
        # less. On the AMX host, seeds 0-2: 93.96% with TTA in 222 s of training against the
        # airbench94 port's 93.81% in 271 s, run in turn (docs/results.md, "airbench94's
        # accuracy in 18% less time").
        _cifar10(
            "cifar10_fastnet_progressive",
            "fastnet",
            epochs=12,
            epoch_sizes=(16, 16, 16, 16, 24, 24),
            gemm_weight_grad_side=8,
            **AIRBENCH94_MUON,
        ),
        # 94% on the mean of three seeds: sixteen epochs of `cifar10_fastnet_muon`, the weight
        # gradients of the convolutions at 8 px or less as one GEMM (oneDNN's kernel for them is
        # slow on AMX hosts). Figures in docs/results.md ("94.0% in under 10 minutes").
        _cifar10(
            "cifar10_fastnet_94",
            "fastnet",
            epochs=16,
            gemm_weight_grad_side=8,
            **AIRBENCH94_MUON,
        ),
        # The same 94% in 18% less time: 18 epochs, the first four at 16 px and the next two
        # at 24 px, where the GEMM weight gradients save the most (a 16 px step 30%).
        # 94.13% in 375 s against 94.15% in 458 s on the AMX host (docs/results.md).
        _cifar10(
            "cifar10_fastnet_94_progressive",
            "fastnet",
            epochs=18,
            epoch_sizes=(16, 16, 16, 16, 24, 24),
            gemm_weight_grad_side=8,
            **AIRBENCH94_MUON,
        ),
        # Sized for a CPU: 24 epochs take 51 minutes at ~350 img/s in bf16 on an AMX host
        # (nearly 3 hours at the ~106 img/s of an AVX-512 one). A one-cycle triangle with 20 %
        # warm-up, label smoothing 0.2, alternating flips and TTA. 15 epochs reached 93.29%
        # on two seeds, their TTA gains apart; 24 clear 93.5% before TTA (docs/results.md).
        _cifar10(
            "cifar10_resnet_small",
            "resnet_small",
            epochs=24,
            batch_size=256,
            lr=0.2,
            warmup_epochs=5.0,
            label_smoothing=0.2,
            crop_padding=4,
            **CPU_ONECYCLE,
        ),
        # kuangliu's ResNet-18 on `cifar10_resnet_small`'s mechanics, sized for a CPU: 10
        # epochs, 27 minutes at ~274 img/s in bf16 on an AMX host, 88.9% with TTA on seed 0,
        # still climbing (docs/results.md); for comparison, not the CIFAR-10 recipe to use.
        _cifar10(
            "cifar10_resnet18",
            "resnet18",
            epochs=10,
            batch_size=256,
            lr=0.2,
            warmup_epochs=2.0,
            label_smoothing=0.2,
            crop_padding=4,
            **CPU_ONECYCLE,
        ),
        # The same mechanics on 48 px faces: 8 channels of whitened 2x2 grey patches, batch 512
        # (50 steps an epoch on 25,837 faces) for 16 epochs, 3 px translation (2 px at 32 px,
        # scaled), the warm-up still 23 % of the run.
        Recipe(
            name="fer2013_fastnet",
            dataset="fer2013",
            model="fastnet",
            epochs=16,
            batch_size=512,
            eval_batch_size=1000,
            warmup_epochs=3.7,
            crop_padding=3,
            **AIRBENCH94,
        ),
        # airbench94_muon's mechanics (`AIRBENCH94_MUON`) on the same faces: batch 1000 (26
        # steps an epoch) with Muon's step scaled by 1/sqrt(2) from batch 2000's, as for
        # CIFAR-10 at batch 1000, for 16 epochs, 3 px translation. Seeds 0-3 on the half-speed
        # host: 71.61% with TTA, one network (the SGD recipe: 70.83% over eight seeds).
        Recipe(
            name="fer2013_fastnet_muon",
            dataset="fer2013",
            model="fastnet",
            epochs=16,
            **{**AIRBENCH94_MUON, "batch_size": 1000, "muon_lr": 0.17, "crop_padding": 3},
        ),
        # Sized for a CPU: 12 epochs, 33 minutes at ~157 img/s in bf16 on an AMX host, 66.5%
        # with TTA on seed 0 and still climbing at the end (longer runs not measured yet).
        # FER2013 on a CPU is the fastnet recipes' (docs/results.md).
        Recipe(
            name="fer2013_resnet_small",
            dataset="fer2013",
            model="resnet_small",
            epochs=12,
            batch_size=256,
            lr=0.2,
            warmup_epochs=2.5,
            label_smoothing=0.2,
            crop_padding=4,
            **CPU_ONECYCLE,
        ),
        # The seed project fine-tuned an ImageNet VGG-19; from scratch here (weights=imagenet
        # via --weights when the torchvision cache has them). Sized for a CPU as above: 29 minutes,
        # 67.3% with TTA on seed 0.
        Recipe(
            name="fer2013_vgg19",
            dataset="fer2013",
            model="vgg19",
            epochs=12,
            batch_size=256,
            lr=0.1,
            warmup_epochs=2.5,
            label_smoothing=0.2,
            crop_padding=4,
            **CPU_ONECYCLE,
        ),
        # The same mechanics on the 64 px copy: 100 species of ~126 images each, batch 256
        # (49 steps an epoch) for 16 epochs, 4 px translation (2 px at 32 px, scaled).
        Recipe(
            name="butterfly_fastnet",
            model="fastnet",
            **BUTTERFLY_64PX,
            epochs=16,
            batch_size=256,
            eval_batch_size=500,
            warmup_epochs=3.7,
            crop_padding=4,
            **AIRBENCH94,
        ),
        # Sized for a CPU: 14 epochs of batch 128 (99 steps an epoch), 29 minutes at ~102 img/s
        # in bf16 on an AMX host; 92.2% with TTA on seed 0 (docs/results.md).
        Recipe(
            name="butterfly_resnet_small",
            model="resnet_small",
            **BUTTERFLY_64PX,
            epochs=14,
            batch_size=128,
            lr=0.1,
            warmup_epochs=3.0,
            label_smoothing=0.1,
            crop_padding=6,
            **CPU_ONECYCLE,
        ),
        # Sized for a CPU with progressive resizing: ResNet-50 keeps the 3x3 stride-1 stem up to
        # 64 px (10.4 GFLOPs an image), so 14 epochs of batch 128 at 64 px would take two
        # hours at an AMX host's 24 img/s. The first eight run at 32 px (80 img/s), the next
        # three at 48 px (42 img/s), the last three at full size: an hour, 81.0% with TTA on
        # seed 0 (docs/results.md). On a GPU, `--epochs 80 --set epoch_sizes=` trains at 64 px.
        Recipe(
            name="butterfly_resnet50",
            model="resnet50",
            **BUTTERFLY_64PX,
            epochs=14,
            epoch_sizes=(32,) * 8 + (48,) * 3,
            batch_size=128,
            lr=0.1,
            warmup_epochs=3.0,
            label_smoothing=0.1,
            crop_padding=6,
            **CPU_ONECYCLE,
        ),
    )
}


def get_recipe(name: str) -> Recipe:
    """The named recipe, or a one-line RecipeError listing the known names."""
    try:
        return RECIPES[name]
    except KeyError:
        raise RecipeError(
            f"unknown recipe {name!r} (known: {', '.join(sorted(RECIPES))})"
        ) from None


def default_recipe(dataset: str, model: str) -> Recipe:
    """The registered recipe for this data set and model, else generic defaults named for them.

    `folder` data sets and unusual pairs fall back to a sensible SGD + cosine recipe.
    """
    for recipe in RECIPES.values():
        if recipe.dataset == dataset and recipe.model == model:
            return recipe
    return Recipe(
        name=f"{dataset}_{model}",
        dataset=dataset,
        model=model,
        epochs=30,
        batch_size=128,
        lr=0.05,
        schedule="cosine",
        warmup_epochs=1.0,
        label_smoothing=0.1,
    )
