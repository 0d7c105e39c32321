"""The model registry: scans the repository, loads and warms each version, owns its runtime.

Repository layout (DESIGN.md): `<dataset>/<model>/<version>/{model.onnx, manifest.json, ...}`
and an optional `<dataset>/<model>/config.json`. Every version is validated (names, manifest
schema, sha256 and size of every file, graph signature, a warm-up run) before it serves; a
version that fails is kept as a `LoadFailure` (path and reason, for /models, /readyz and the
metrics) and never stops the others. Hidden entries (a leading dot: an export still being
written) are skipped.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from imgzoo.errors import UserError
from imgzoo.manifest import (
    CONFIG_FILENAME,
    ONNX_FILENAME,
    Manifest,
    load_manifest,
    verify_files,
)
from imgzoo.names import is_valid_name, is_valid_version
from service.batcher import Batcher
from service.errors import ModelNotFound, ModelNotReady, VersionNotFound
from service.metrics import ServiceMetrics, VersionState
from service.runtime import (
    ProviderSelector,
    ProviderUnavailableError,
    SessionFactory,
    SessionPool,
    SessionSpec,
    check_signature,
    create_ort_session,
    create_pool,
    plan_providers,
    threads_per_session,
)
from service.settings import BatchingConfig, ModelConfig, Settings, load_model_config

logger = logging.getLogger(__name__)

_MAX_REASON = 300


class RepositoryError(UserError):
    """The repository itself cannot be used (missing, not a directory)."""


@dataclass(frozen=True)
class LoadFailure:
    """A version (or model directory) that could not be loaded, and why."""

    path: str
    dataset: str
    model: str
    reason: str


@dataclass
class RequestCounters:
    """Live per-version request counters (shown by /models)."""

    requests: int = 0
    failed: int = 0


@dataclass
class ModelVersion:
    """One loaded version: its manifest, sessions, batcher and state."""

    dataset: str
    model: str
    version: int
    manifest: Manifest
    batching: BatchingConfig
    pool: SessionPool
    batcher: Batcher
    ready: bool = False
    counters: RequestCounters = field(default_factory=RequestCounters)

    @property
    def provider(self) -> str:
        return self.pool.provider


@dataclass(frozen=True)
class Readiness:
    ready: bool
    reasons: list[str]


@dataclass(frozen=True)
class _Candidate:
    dataset: str
    model: str
    version: int
    path: Path
    config: ModelConfig


def warmup_batch_sizes(max_batch_size: int) -> list[int]:
    """1, the powers of two below the maximum, and the maximum itself."""
    sizes = {1, max_batch_size}
    size = 2
    while size < max_batch_size:
        sizes.add(size)
        size *= 2
    return sorted(sizes)


class ModelRegistry:
    """Every model version the service knows, loaded or failed."""

    def __init__(
        self,
        settings: Settings,
        metrics: ServiceMetrics,
        *,
        session_factory: SessionFactory = create_ort_session,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.root = settings.repository.resolve()
        self._session_factory = session_factory
        self._versions: dict[tuple[str, str], dict[int, ModelVersion]] = {}
        self.failures: list[LoadFailure] = []
        self.loaded = False
        self.closing = False
        metrics.set_live_source(self.live_states)

    # ------------------------------------------------------------------ loading

    async def load(self) -> None:
        """Scan the repository and load, check and warm every version (sessions in threads)."""
        if not self.root.is_dir():
            raise RepositoryError(f"model repository {self.settings.repository} is not a directory")
        selector = ProviderSelector(plan_providers(self.settings.providers))
        candidates = await asyncio.to_thread(self._scan)
        for candidate in candidates:
            try:
                entry = await asyncio.to_thread(self._load_version, candidate, selector)
            except ProviderUnavailableError:
                raise
            except Exception as exc:  # any bad file must only take its own version down
                where = candidate.path.relative_to(self.root).as_posix()
                self._fail(where, candidate.dataset, candidate.model, exc)
                continue
            entry.batcher.start()
            self._versions.setdefault((entry.dataset, entry.model), {})[entry.version] = entry
            logger.info(
                "loaded %s/%s version %d on %s (batch <= %d, %d session(s))",
                entry.dataset,
                entry.model,
                entry.version,
                entry.provider,
                entry.batching.max_batch_size,
                entry.batching.sessions,
            )
        self.loaded = True
        count = sum(len(v) for v in self._versions.values())
        logger.info(
            "model repository %s: %d version(s) serving, %d failed",
            self.settings.repository,
            count,
            len(self.failures),
        )

    def _fail(self, path: str, dataset: str, model: str, exc: BaseException | str) -> None:
        reason = exc if isinstance(exc, str) else self._reason(exc)
        logger.error("cannot load %s: %s", path, reason)
        self.failures.append(LoadFailure(path, dataset, model, reason))
        self.metrics.load_failures.labels(dataset, model).inc()

    def _reason(self, exc: BaseException) -> str:
        """One client-safe line: no repository path, no traceback."""
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        text = text.replace(str(self.root) + "/", "").replace(str(self.root), ".")
        if not isinstance(exc, UserError):
            text = f"{type(exc).__name__}: {text}"
        return text[:_MAX_REASON]

    def _scan(self) -> list[_Candidate]:
        """Every well-named version directory, recording what is misnamed or misconfigured."""
        candidates: list[_Candidate] = []
        for dataset_dir in _visible_dirs(self.root):
            dataset = dataset_dir.name
            if not is_valid_name(dataset):
                self._fail(dataset, dataset, "", "not a valid data set name")
                continue
            for model_dir in _visible_dirs(dataset_dir):
                model = model_dir.name
                where = f"{dataset}/{model}"
                if not is_valid_name(model):
                    self._fail(where, dataset, model, "not a valid model name")
                    continue
                try:
                    config = load_model_config(model_dir, CONFIG_FILENAME)
                except UserError as exc:
                    self._fail(f"{where}/{CONFIG_FILENAME}", dataset, model, exc)
                    continue
                version_dirs = _visible_dirs(model_dir)
                if not version_dirs:
                    self._fail(where, dataset, model, "no version directories")
                for version_dir in version_dirs:
                    if not is_valid_version(version_dir.name):
                        self._fail(
                            f"{where}/{version_dir.name}", dataset, model, "not a version number"
                        )
                        continue
                    candidates.append(
                        _Candidate(dataset, model, int(version_dir.name), version_dir, config)
                    )
        return candidates

    def _load_version(self, candidate: _Candidate, selector: ProviderSelector) -> ModelVersion:
        """Validate, create the sessions and warm up one version (blocking)."""
        manifest = load_manifest(candidate.path)
        verify_files(candidate.path, manifest)
        model_bytes = (candidate.path / ONNX_FILENAME).read_bytes()
        # Hash what is really loaded, so a file swapped after verify_files cannot slip in.
        if hashlib.sha256(model_bytes).hexdigest() != manifest.sha256[ONNX_FILENAME]:
            raise UserError(f"{ONNX_FILENAME}: changed while it was being loaded")
        batching = BatchingConfig.resolve(self.settings, candidate.config)
        name = f"{candidate.dataset}/{candidate.model}/{candidate.version}"
        spec = SessionSpec(
            providers=selector.plan.providers,
            intra_op_threads=threads_per_session(self.settings.intra_op_threads, batching.sessions),
            spinning=self.settings.intra_op_spinning,
        )
        pool = create_pool(
            model_bytes,
            count=batching.sessions,
            spec=spec,
            selector=selector,
            name=name,
            factory=self._session_factory,
        )
        try:
            for session in pool.sessions:
                check_signature(session, manifest.input, manifest.num_classes)
            if self.settings.warmup:
                sizes = warmup_batch_sizes(batching.max_batch_size)
                pool.warm_up(manifest.input, sizes, manifest.num_classes)
        except BaseException:
            pool.close()
            raise
        batcher = Batcher(
            pool.run,
            workers=pool.size,
            max_batch_size=batching.max_batch_size,
            max_queue_delay_s=batching.max_queue_delay_ms / 1000,
            max_queue_size=batching.max_queue_size,
            timeout_s=batching.timeout_ms / 1000,
            name=name,
            on_batch=self.metrics.batch_observer(candidate.dataset, candidate.model),
        )
        return ModelVersion(
            dataset=candidate.dataset,
            model=candidate.model,
            version=candidate.version,
            manifest=manifest,
            batching=batching,
            pool=pool,
            batcher=batcher,
            ready=True,
        )

    # ------------------------------------------------------------------ lookups

    def has_model(self, dataset: str, model: str) -> bool:
        """Whether the model has a loaded version."""
        return bool(self._versions.get((dataset, model)))

    def names(self) -> list[str]:
        """`dataset/model` of every model with at least one loaded version."""
        return sorted(f"{d}/{m}" for d, m in self._versions)

    def models(self) -> dict[tuple[str, str], dict[int, ModelVersion]]:
        """Loaded versions by (dataset, model), sorted."""
        return {key: dict(sorted(self._versions[key].items())) for key in sorted(self._versions)}

    def versions(self, dataset: str, model: str) -> dict[int, ModelVersion]:
        """The loaded versions of one model, or ModelNotFound listing what exists."""
        versions = self._versions.get((dataset, model))
        if not versions:
            shown = f"{dataset}/{model}" if is_valid_name(dataset) and is_valid_name(model) else ""
            message = f"no model {shown}" if shown else "no such model (invalid name)"
            raise ModelNotFound(message, details={"available": self.names()})
        return dict(sorted(versions.items()))

    def resolve(self, dataset: str, model: str, version: int | None = None) -> ModelVersion:
        """The version a request names, or the highest loaded one."""
        versions = self.versions(dataset, model)
        if version is None:
            entry = versions[max(versions)]
        elif version in versions:
            entry = versions[version]
        else:
            raise VersionNotFound(
                f"{dataset}/{model} has no version {version}",
                details={"available": sorted(versions)},
            )
        if not entry.ready:
            raise ModelNotReady(f"{dataset}/{model} version {entry.version} is not ready yet")
        return entry

    def failures_of(self, dataset: str, model: str) -> list[LoadFailure]:
        return [f for f in self.failures if f.dataset == dataset and f.model == model]

    def live_states(self) -> Iterator[VersionState]:
        for versions in self._versions.values():
            for v in versions.values():
                yield VersionState(
                    v.dataset, v.model, v.version, v.provider, v.ready, v.batcher.queue_depth
                )

    def readiness(self) -> Readiness:
        """Ready when loading finished, every loaded version is warm and one serves at least.

        With `readiness_strict`, any failed version also holds readiness back.
        """
        reasons: list[str] = []
        if self.closing:
            reasons.append("shutting down")
        if not self.loaded:
            reasons.append("models are still loading")
        elif not self._versions:
            reasons.append("no model loaded")
        reasons += [
            f"{v.dataset}/{v.model} version {v.version} is not warmed up"
            for versions in self._versions.values()
            for v in versions.values()
            if not v.ready
        ]
        if self.settings.readiness_strict and self.failures:
            reasons.append(f"{len(self.failures)} repository entries failed to load")
        return Readiness(not reasons, reasons)

    # ------------------------------------------------------------------ shutdown

    async def close(self) -> None:
        """Stop taking work, drain every queue, release the sessions."""
        self.closing = True
        entries = [v for versions in self._versions.values() for v in versions.values()]
        await asyncio.gather(*(v.batcher.close() for v in entries))
        for entry in entries:
            entry.ready = False
            await asyncio.to_thread(entry.pool.close)


def _visible_dirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
