"""The one settings object of the service: every knob, its unit, its `IMGZOO_` variable.

`Settings()` reads the environment (prefix `IMGZOO_`, e.g. `IMGZOO_MAX_BATCH_SIZE=64`); keyword
arguments override it (the command line uses that). Nothing else in the service reads the
environment. Per-model overrides of the batching knobs live in
`<repository>/<dataset>/<model>/config.json` (`ModelConfig`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from imgzoo.errors import UserError

Providers = Literal["auto", "cpu", "cuda", "tensorrt"]
LogLevel = Literal["critical", "error", "warning", "info", "debug"]
ImageFormat = Literal["JPEG", "PNG", "WEBP", "BMP", "GIF"]

_T = TypeVar("_T")

SUPPORTED_FORMATS: tuple[ImageFormat, ...] = ("JPEG", "PNG", "WEBP", "BMP", "GIF")

# Tokens travel in HTTP headers: printable ASCII without spaces or commas (the list separator).
_TOKEN = re.compile(r"^[!-+\--~]{1,512}$")


def split_list(value: Any) -> Any:
    """A list setting from the environment: a JSON list, or comma-separated values."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith("["):
        return json.loads(text)
    return [item.strip() for item in text.split(",") if item.strip()]


def _check_token(token: SecretStr, what: str) -> SecretStr:
    # Never echo the value: a validation error must not put a secret into a log.
    if not _TOKEN.match(token.get_secret_value()):
        raise ValueError(f"{what} must be 1-512 printable ASCII characters, no spaces or commas")
    return token


class Settings(BaseSettings):
    """Service settings; each field is also the environment variable `IMGZOO_<FIELD>`."""

    model_config = SettingsConfigDict(
        env_prefix="IMGZOO_",
        extra="forbid",
        frozen=True,
        validate_default=True,
        hide_input_in_errors=True,  # a rejected token must not end up in a log
    )

    repository: Path = Field(
        default=Path("model_repository"),
        description="Model repository directory (`<dataset>/<model>/<version>/`).",
    )
    host: str = Field(default="127.0.0.1", description="Address `imgzoo serve` binds.")
    port: int = Field(default=8000, ge=0, le=65535, description="TCP port `imgzoo serve` binds.")
    providers: Providers = Field(
        default="auto",
        description=(
            "ONNX Runtime execution providers: `auto` (CUDA when onnxruntime-gpu is installed "
            "and a session really runs on it, else CPU), `cpu`, `cuda` or `tensorrt` "
            "(an explicit choice that cannot be honoured stops the start-up)."
        ),
    )
    sessions: int = Field(
        default=0,
        ge=0,
        le=64,
        description=(
            "ONNX Runtime sessions (parallel batches) per model; 0 = one per available CPU on "
            "the CPU provider, at most 8 (single-threaded sessions scale better than one wide "
            "session), one on a GPU."
        ),
    )
    solo_session: bool = Field(
        default=True,
        description=(
            "On the CPU provider, one more session that uses every available CPU, for a batch "
            "that runs alone (nothing else of its model queued, on its way or running): a lone "
            "request gets all cores, parallel batches one core each. Ignored when a session "
            "already has all the CPUs."
        ),
    )
    solo_spinning: bool = Field(
        default=True,
        description=(
            "The solo session's threads spin while it runs a batch and stop when it returns, "
            "so a lone request's layers hand work between cores without waking sleeping "
            "threads (docs/benchmarks.md, change 21). The solo session only runs a batch that "
            "is alone, so the spinning takes no core from another batch."
        ),
    )
    intra_op_threads: int = Field(
        default=0,
        ge=0,
        le=256,
        description=(
            "Threads per ONNX Runtime session; 0 = the CPUs this process may use "
            "(affinity and cgroup quota) divided by `sessions`."
        ),
    )
    pin_session_threads: bool = Field(
        default=True,
        description=(
            "When a model's single-threaded sessions cover exactly the CPUs this process may use "
            "(the default layout, with no narrower cgroup quota), bind each of its inference "
            "threads to one of those CPUs, so that two never share a core by turns "
            "(docs/benchmarks.md, change 24). Off: the scheduler places them."
        ),
    )
    inference_thread_nice: int = Field(
        default=10,
        ge=0,
        le=19,
        description=(
            "On the CPU provider, how much nicer (lower priority, Linux `nice`) the inference "
            "threads run than the event loop: every request passes through the loop, so when "
            "both want a core the loop goes first and new requests reach the queue while a "
            "batch runs (docs/benchmarks.md, change 25). 0 = the same priority."
        ),
    )
    intra_op_spinning: bool = Field(
        default=False,
        description="Let idle ONNX Runtime threads spin (lower latency on a dedicated machine, "
        "burns CPU on a shared one).",
    )
    decode_threads: int = Field(
        default=0,
        ge=0,
        le=256,
        description="Threads decoding uploaded images; 0 = the CPUs this process may use.",
    )
    inline_decode_pixels: int = Field(
        default=4096,
        ge=0,
        le=1_000_000,
        description=(
            "A request of one PNG image of at most this many pixels (by its header) is decoded "
            "on the event loop, which costs less than the hop to a decode thread and back "
            "(pixels; 4096 = 64 x 64; 0 = always in the decode threads)."
        ),
    )
    inline_run_max_ms: float = Field(
        default=5.0,
        ge=0,
        le=1000,
        description=(
            "A lone image (nothing else queued, arriving or running for its model) runs on the "
            "event loop, without the hand-off to an inference thread and back, when the model's "
            "recent single-image runs took at most this long; the loop is blocked that long, so "
            "keep it small (milliseconds; 0 = always in the inference threads)."
        ),
    )
    max_batch_size: int = Field(
        default=32, ge=1, le=1024, description="Most images one inference batch holds (images)."
    )
    max_queue_delay_ms: float = Field(
        default=2.0,
        ge=0,
        le=10_000,
        description="Longest a partial batch waits for images of requests already admitted "
        "and still being read or decoded (milliseconds); with none on their way it runs at once.",
    )
    max_queue_size: int = Field(
        default=256,
        ge=1,
        le=1_000_000,
        description="Images waiting per model version before new ones get 503 (images).",
    )
    request_timeout_ms: float = Field(
        default=10_000,
        gt=0,
        le=3_600_000,
        description="Deadline of an image from arrival in the queue to its result; "
        "past it the answer is 504 (milliseconds).",
    )
    max_upload_bytes: int = Field(
        default=10 * 1024 * 1024,
        ge=1,
        description="Largest request body, all images together (bytes); larger gets 413.",
    )
    max_image_pixels: int = Field(
        default=40_000_000,
        ge=1,
        description="Largest decoded image (width x height, pixels); larger gets 413.",
    )
    max_images_per_request: int = Field(
        default=32, ge=1, le=4096, description="Most images one /predict request may carry."
    )
    image_formats: tuple[ImageFormat, ...] = Field(
        default=SUPPORTED_FORMATS,
        min_length=1,
        description="Image formats accepted for decoding; others get 415 "
        '(JSON list in the environment, e.g. `["JPEG","PNG"]`).',
    )
    default_top_k: int = Field(
        default=5, ge=1, le=1000, description="Predictions returned when a request omits top_k."
    )
    warmup: bool = Field(
        default=True,
        description="Run every batch size a model will use before it is ready.",
    )
    readiness_strict: bool = Field(
        default=False,
        description="When true, /readyz is 503 while any version in the repository failed to "
        "load; when false, failed versions are reported but do not hold readiness back.",
    )
    graceful_shutdown_s: float = Field(
        default=30.0,
        ge=0,
        le=3600,
        description="On SIGTERM (or Ctrl-C), the most time from the signal to the exit of "
        "`imgzoo serve`: open requests and queued images finish within it; what is still "
        "queued near its end is answered 503 `shutting_down` (seconds).",
    )
    shutdown_delay_s: float = Field(
        default=0.0,
        ge=0,
        le=3600,
        description="On SIGTERM, how long `imgzoo serve` keeps accepting connections, answering "
        "/readyz 503 and new predictions 503 `shutting_down`, before it stops listening, so a "
        "load balancer takes it out of rotation first (seconds; part of graceful_shutdown_s).",
    )
    access_log: bool = Field(default=False, description="Log one line per HTTP request.")
    log_level: LogLevel = Field(default="info", description="Log level of the service.")
    api_keys: Annotated[tuple[SecretStr, ...], NoDecode] = Field(
        default=(),
        description="API keys accepted by the prediction routes (`Authorization: Bearer <key>` "
        "or `X-API-Key: <key>`); empty = prediction is open. Comma-separated or a JSON list.",
    )
    admin_token: SecretStr | None = Field(
        default=None,
        description="Token of the management routes (`/admin/...`, v2 repository load/unload); "
        "unset = those routes answer 403.",
    )
    cors_origins: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description="Origins allowed to call the API from a browser (CORS), e.g. "
        "`https://zoo.example.org`; `*` = any; empty = no CORS headers. Comma-separated or JSON.",
    )
    reload_interval_s: float = Field(
        default=0.0,
        ge=0,
        le=86_400,
        description="Re-scan the repository every this many seconds and hot-load what changed "
        "(seconds; 0 = only on `POST /admin/reload`).",
    )
    web_ui: bool = Field(default=True, description="Serve the web page at `/`.")

    @field_validator("api_keys", "cors_origins", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        return split_list(value)

    @field_validator("api_keys")
    @classmethod
    def _valid_keys(cls, keys: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
        return tuple(_check_token(key, "every API key") for key in keys)

    @field_validator("admin_token")
    @classmethod
    def _valid_admin_token(cls, token: SecretStr | None) -> SecretStr | None:
        return None if token is None else _check_token(token, "the admin token")

    @field_validator("cors_origins")
    @classmethod
    def _valid_origins(cls, origins: tuple[str, ...]) -> tuple[str, ...]:
        for origin in origins:
            if origin != "*" and not re.match(r"^https?://[^/\s]+$", origin):
                raise ValueError(
                    f"CORS origin {origin!r} must be '*' or scheme://host[:port] with no path"
                )
        return origins


class ModelConfig(BaseModel):
    """`<repository>/<dataset>/<model>/config.json`: per-model overrides of the settings.

    Every field is optional; absent fields take the service-wide setting.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_batch_size: int | None = Field(default=None, ge=1, le=1024)
    max_queue_delay_ms: float | None = Field(default=None, ge=0, le=10_000)
    max_queue_size: int | None = Field(default=None, ge=1, le=1_000_000)
    sessions: int | None = Field(default=None, ge=1, le=64)
    timeout_ms: float | None = Field(default=None, gt=0, le=3_600_000)


class BatchingConfig(BaseModel):
    """The effective batching knobs of one model: settings overlaid with its config.json."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_batch_size: int
    max_queue_delay_ms: float
    max_queue_size: int
    sessions: int
    timeout_ms: float

    @classmethod
    def resolve(
        cls, settings: Settings, override: ModelConfig, auto_sessions: int = 1
    ) -> BatchingConfig:
        """Overlay `override` on `settings`; `sessions` 0 (auto) becomes `auto_sessions`."""
        return cls(
            max_batch_size=_pick(override.max_batch_size, settings.max_batch_size),
            max_queue_delay_ms=_pick(override.max_queue_delay_ms, settings.max_queue_delay_ms),
            max_queue_size=_pick(override.max_queue_size, settings.max_queue_size),
            sessions=_pick(override.sessions, settings.sessions) or max(1, auto_sessions),
            timeout_ms=_pick(override.timeout_ms, settings.request_timeout_ms),
        )


def _pick(value: _T | None, default: _T) -> _T:
    return default if value is None else value


class ModelConfigError(UserError):
    """A config.json that is unreadable or does not satisfy `ModelConfig`."""


def load_model_config(model_dir: Path, filename: str) -> ModelConfig:
    """Read `<model_dir>/<filename>` when present; an absent file means no overrides."""
    path = model_dir / filename
    if not path.is_file():
        return ModelConfig()
    try:
        raw = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ModelConfigError(f"{filename}: not readable JSON ({type(exc).__name__})") from None
    try:
        return ModelConfig.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(root)"
        raise ModelConfigError(f"{filename}: invalid at {where}: {first['msg']}") from None
