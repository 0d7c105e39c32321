"""The model registry: scans the repository, loads and warms each version, owns its runtime.

Repository layout (DESIGN.md): `<dataset>/<model>/<version>/{model.onnx, manifest.json, ...}`
and an optional `<dataset>/<model>/config.json`. Every version is validated (names, manifest
schema, sha256 and size of every file, graph signature, a warm-up run) before it serves; a
version that fails is kept as a `LoadFailure` (path and reason, for /models, /readyz and the
metrics) and never stops the others. Hidden entries (a leading dot: an export still being
written) are skipped.

Hot reload (`reload`, `load_model`, `unload_model`): the repository is scanned again; versions
whose files are unchanged (same fingerprint) are kept as they are, new or changed ones are
loaded and warmed beside the serving ones, and the new set is swapped in with one assignment.
Versions that left the set are retired: marked first (so no new request picks them), then,
once the requests holding them are done and their queue has drained, their sessions closed.
A version that fails to load never replaces the one serving; a repository that cannot be
scanned (vanished, unreadable) changes nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from stat import S_ISDIR
from time import perf_counter
from typing import Any

from imgzoo.errors import UserError
from imgzoo.manifest import (
    CONFIG_FILENAME,
    MANIFEST_FILENAME,
    ONNX_FILENAME,
    Manifest,
    load_manifest,
    verify_files,
)
from imgzoo.names import is_valid_name, is_valid_version
from service.batcher import Batcher
from service.errors import (
    ModelNotFound,
    ModelNotReady,
    ServiceError,
    ShuttingDown,
    VersionNotFound,
)
from service.metrics import ServiceMetrics, VersionState
from service.runtime import (
    ProviderSelector,
    ProviderUnavailableError,
    SessionFactory,
    SessionPool,
    SessionSpec,
    auto_sessions,
    available_cpus,
    check_signature,
    create_ort_session,
    create_pool,
    pinnable_cpus,
    plan_providers,
    threads_per_session,
)
from service.settings import BatchingConfig, ModelConfig, Settings, load_model_config

logger = logging.getLogger(__name__)

_MAX_REASON = 300

ModelKey = tuple[str, str]


class RepositoryError(UserError):
    """The repository itself cannot be used (missing, not a directory)."""


class ModelLoadError(ServiceError):
    """`load_model` found the model's directory but no version of it could be loaded."""

    status_code = 400
    code = "model_load_failed"


class RepositoryUnavailable(ServiceError):  # noqa: N818 - HTTP-semantic, like service.errors
    """A reload that could not read the repository; nothing served changed."""

    status_code = 503
    code = "repository_unavailable"


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
    fingerprint: str = ""
    retired: bool = False
    # Requests admitted to this version and not answered yet (`DataPlane.admit`).
    in_flight: int = field(default=0, init=False)
    _leases: int = field(default=0, init=False, repr=False)
    _idle: asyncio.Event = field(default_factory=asyncio.Event, init=False, repr=False)

    def __post_init__(self) -> None:
        self._idle.set()

    @property
    def provider(self) -> str:
        return self.pool.provider

    @property
    def name(self) -> str:
        return f"{self.dataset}/{self.model}/{self.version}"

    @contextmanager
    def lease(self) -> Iterator[ModelVersion]:
        """Hold the version while a request uses it: retirement waits for every lease."""
        self._leases += 1
        self._idle.clear()
        try:
            yield self
        finally:
            self._leases -= 1
            if self._leases == 0:
                self._idle.set()

    async def wait_idle(self) -> None:
        await self._idle.wait()


@dataclass(frozen=True)
class Readiness:
    ready: bool
    reasons: list[str]


@dataclass(frozen=True)
class ReloadReport:
    """What one reload changed (names are `dataset/model/version`)."""

    added: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    failed: list[LoadFailure] = field(default_factory=list)
    unchanged: int = 0
    error: str | None = None
    seconds: float = 0.0

    @property
    def changed(self) -> bool:
        return bool(self.added or self.replaced or self.removed)

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": "error" if self.error else "ok",
            "error": self.error,
            "added": self.added,
            "replaced": self.replaced,
            "removed": self.removed,
            "failed": [{"path": f.path, "reason": f.reason} for f in self.failed],
            "unchanged": self.unchanged,
            "seconds": round(self.seconds, 6),
        }


@dataclass(frozen=True)
class _Candidate:
    dataset: str
    model: str
    version: int
    path: Path
    config: ModelConfig
    fingerprint: str


@dataclass(frozen=True)
class _Failure:
    """A failure and what identifies it: the files' fingerprint, or the reason for scan faults."""

    failure: LoadFailure
    identity: str


@dataclass
class _Scan:
    candidates: list[_Candidate] = field(default_factory=list)
    failures: list[_Failure] = field(default_factory=list)
    # (device, inode) of the repository directory when the scan began.
    root_identity: tuple[int, int] = (0, 0)
    # Models whose config.json is broken: what they serve stays as it is.
    blocked: set[ModelKey] = field(default_factory=set)


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
        self._versions: dict[ModelKey, dict[int, ModelVersion]] = {}
        self._failures: list[_Failure] = []
        self._unloaded: set[ModelKey] = set()
        self._selector: ProviderSelector | None = None
        self._lock = asyncio.Lock()
        self.last_reload: ReloadReport | None = None
        self.loaded = False
        self.closing = False
        metrics.set_live_source(self.live_states)

    @property
    def failures(self) -> list[LoadFailure]:
        """Every repository entry that failed to load, as of the last scan."""
        return [f.failure for f in self._failures]

    # ------------------------------------------------------------------ loading

    async def load(self) -> None:
        """Scan the repository and load, check and warm every version (sessions in threads)."""
        if not self.root.is_dir():
            raise RepositoryError(f"model repository {self.settings.repository} is not a directory")
        async with self._lock:
            report = await self._sync(None, retry_failed=True, initial=True)
        if report.error:
            raise RepositoryError(f"model repository {self.settings.repository}: {report.error}")
        self.loaded = True
        logger.info(
            "model repository %s: %d version(s) serving, %d failed",
            self.settings.repository,
            sum(len(v) for v in self._versions.values()),
            len(self._failures),
        )

    async def reload(self) -> ReloadReport:
        """Re-scan the repository: load new and changed versions, retire removed ones.

        A version that failed before is tried again only once its files change. Models
        unloaded with `unload_model` stay unloaded until `load_model`.
        """
        async with self._lock:
            if self.closing:
                return ReloadReport(error="the service is shutting down")
            report = await self._sync(None, retry_failed=False)
        if report.changed or report.failed or report.error:
            logger.info(
                "reload: %d added, %d replaced, %d removed, %d failed, %d unchanged%s",
                len(report.added),
                len(report.replaced),
                len(report.removed),
                len(report.failed),
                report.unchanged,
                f" (nothing changed: {report.error})" if report.error else "",
            )
        return report

    async def load_model(self, dataset: str, model: str) -> None:
        """(Re)load every version of one model from the repository, even one unloaded before.

        ModelNotFound when the repository has no such model directory; ModelLoadError when
        none of its versions could be loaded (the reasons are in `details.failures`).
        """
        key = self._checked_key(dataset, model)
        async with self._lock:
            if self.closing:
                raise ModelLoadError("the service is shutting down")
            model_dir = self.root / dataset / model
            if not await asyncio.to_thread(model_dir.is_dir):
                raise ModelNotFound(f"the repository has no model {dataset}/{model}")
            self._unloaded.discard(key)
            report = await self._sync(key, retry_failed=True)
        if report.error:
            raise ModelLoadError(f"cannot load {dataset}/{model}: {report.error}")
        if not self.has_model(dataset, model):
            failures = self.failures_of(dataset, model)
            reason = failures[0].reason if failures else "no loadable version"
            raise ModelLoadError(
                f"{dataset}/{model} failed to load: {reason}",
                details={"failures": [{"path": f.path, "reason": f.reason} for f in failures]},
            )
        logger.info("loaded model %s/%s on request", dataset, model)

    async def unload_model(self, dataset: str, model: str) -> None:
        """Stop serving every version of one model; queued requests still finish.

        The model stays unloaded across reloads until `load_model`. ModelNotFound when it
        is not loaded.
        """
        key = self._checked_key(dataset, model)
        async with self._lock:
            versions = self.versions(dataset, model)  # ModelNotFound when not loaded
            remaining = {k: v for k, v in self._versions.items() if k != key}
            self._unloaded.add(key)
            retired = list(versions.values())
            self._swap(remaining, self._failures, retired)
            await self._retire_all(retired)
        logger.info("unloaded model %s/%s on request", dataset, model)

    def _checked_key(self, dataset: str, model: str) -> ModelKey:
        if not (is_valid_name(dataset) and is_valid_name(model)):
            raise ModelNotFound("no such model (invalid name)", details={"available": self.names()})
        return dataset, model

    async def _sync(
        self, scope: ModelKey | None, *, retry_failed: bool, initial: bool = False
    ) -> ReloadReport:
        """Bring what is served in line with the repository (all of it, or one model)."""
        started = perf_counter()
        if self._selector is None:
            self._selector = ProviderSelector(plan_providers(self.settings.providers))
        selector = self._selector
        try:
            scan = await asyncio.to_thread(self._scan, scope)
        except (OSError, RepositoryError) as exc:
            return self._scan_failed(exc, started)

        old = self._versions
        previous = {f.failure.path: f for f in self._failures}
        # Outside the scope (one model's load), everything stays as it is.
        new: dict[ModelKey, dict[int, ModelVersion]] = {
            key: dict(versions)
            for key, versions in old.items()
            if key in scan.blocked or (scope is not None and key != scope)
        }
        failures = [
            f
            for f in self._failures
            if scope is not None and (f.failure.dataset, f.failure.model) != scope
        ]
        failures += scan.failures
        staged: list[ModelVersion] = []
        added: list[str] = []
        replaced: list[str] = []
        unchanged = 0
        try:
            for candidate in scan.candidates:
                key = (candidate.dataset, candidate.model)
                serving = old.get(key, {}).get(candidate.version)
                slot = new.setdefault(key, {})
                if serving is not None and serving.fingerprint == candidate.fingerprint:
                    slot[candidate.version] = serving
                    unchanged += 1
                    continue
                where = candidate.path.relative_to(self.root).as_posix()
                before = previous.get(where)
                if not retry_failed and before and before.identity == candidate.fingerprint:
                    failures.append(before)  # the same files failed already: no retry
                    if serving is not None:
                        slot[candidate.version] = serving
                    continue
                try:
                    entry = await asyncio.to_thread(self._load_version, candidate, selector)
                except Exception as exc:  # any bad file must only take its own version down
                    if initial and isinstance(exc, ProviderUnavailableError):
                        raise  # an explicit provider choice that cannot work stops the start
                    reason = self._reason(exc)
                    failure = LoadFailure(where, candidate.dataset, candidate.model, reason)
                    failures.append(_Failure(failure, candidate.fingerprint))
                    if serving is not None:  # the old files keep serving
                        slot[candidate.version] = serving
                    continue
                staged.append(entry)
                slot[candidate.version] = entry
                (replaced if serving is not None else added).append(entry.name)
        except BaseException:
            for entry in staged:  # cancelled or a fatal provider error: release what we made
                entry.pool.close()
            raise

        try:
            vanished = await asyncio.to_thread(self._root_identity) != scan.root_identity
        except RepositoryError:
            vanished = True
        if vanished:  # files were read from a directory that is gone: keep what serves
            for entry in staged:
                entry.pool.close()
            return self._scan_failed(
                RepositoryError("the repository directory vanished during the reload"), started
            )

        new = {key: versions for key, versions in new.items() if versions}
        kept = {id(v) for versions in new.values() for v in versions.values()}
        retired = [v for versions in old.values() for v in versions.values() if id(v) not in kept]
        replaced_names = set(replaced)
        removed = [v.name for v in retired if v.name not in replaced_names]
        fresh = self._new_failures(failures, previous)
        for entry in staged:
            entry.batcher.start()
        self._swap(new, sorted(failures, key=lambda f: f.failure.path), retired)
        for item in fresh:
            failure = item.failure
            logger.error("cannot load %s: %s", failure.path, failure.reason)
            self.metrics.load_failures.labels(failure.dataset, failure.model).inc()
        for entry in staged:
            placement = entry.pool.thread_placement
            logger.info(
                "loaded %s on %s (batch <= %d, %d session(s)%s)",
                entry.name,
                entry.provider,
                entry.batching.max_batch_size,
                entry.batching.sessions,
                f"; {placement}" if placement else "",
            )
        await self._retire_all(retired)
        self.metrics.reloads.labels("ok").inc()
        report = ReloadReport(
            added=sorted(added),
            replaced=sorted(replaced),
            removed=sorted(removed),
            failed=[f.failure for f in fresh],
            unchanged=unchanged,
            seconds=perf_counter() - started,
        )
        self.last_reload = report
        return report

    def _scan_failed(self, exc: BaseException, started: float) -> ReloadReport:
        """The report of a reload that could not read the repository: nothing changed."""
        reason = self._reason(exc)
        logger.error("reload: cannot scan the repository, nothing changed: %s", reason)
        self.metrics.reloads.labels("error").inc()
        report = ReloadReport(error=reason, seconds=perf_counter() - started)
        self.last_reload = report
        return report

    @staticmethod
    def _new_failures(failures: list[_Failure], previous: dict[str, _Failure]) -> list[_Failure]:
        """Failures not already reported with the same identity (counted and logged once)."""
        return [
            f
            for f in failures
            if (old := previous.get(f.failure.path)) is None
            or old.identity != f.identity
            or old.failure.reason != f.failure.reason
        ]

    def _swap(
        self,
        versions: dict[ModelKey, dict[int, ModelVersion]],
        failures: list[_Failure],
        retired: list[ModelVersion],
    ) -> None:
        """Make the new set current in one step (nothing awaits in between)."""
        for entry in retired:
            entry.retired = True
        self._versions = versions
        self._failures = failures
        self.metrics.failed_entries.set(len(failures))

    async def _retire_all(self, entries: list[ModelVersion]) -> None:
        await asyncio.gather(*(self._retire(entry) for entry in entries))

    async def _retire(self, entry: ModelVersion) -> None:
        """Close a version nobody can pick any more, once its requests and queue are done."""
        await entry.wait_idle()
        await entry.batcher.close()
        entry.ready = False
        await asyncio.to_thread(entry.pool.close)
        logger.info("retired %s", entry.name)

    def _reason(self, exc: BaseException) -> str:
        """One client-safe line: no repository path, no traceback."""
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        text = text.replace(str(self.root) + "/", "").replace(str(self.root), ".")
        if not isinstance(exc, UserError):
            text = f"{type(exc).__name__}: {text}"
        return text[:_MAX_REASON]

    def _scan(self, scope: ModelKey | None) -> _Scan:
        """Every well-named version directory (blocking), recording what is misnamed or broken.

        Raises OSError when the repository cannot be read (the caller then changes nothing).
        """
        scan = _Scan(root_identity=self._root_identity())

        def fail(path: str, dataset: str, model: str, reason: str | BaseException) -> None:
            text = reason if isinstance(reason, str) else self._reason(reason)
            scan.failures.append(_Failure(LoadFailure(path, dataset, model, text), text))

        for dataset_dir in _visible_dirs(self.root):
            dataset = dataset_dir.name
            if scope is not None and dataset != scope[0]:
                continue
            if not is_valid_name(dataset):
                fail(dataset, dataset, "", "not a valid data set name")
                continue
            for model_dir in _visible_dirs(dataset_dir):
                model = model_dir.name
                key = (dataset, model)
                if (scope is not None and key != scope) or key in self._unloaded:
                    continue
                where = f"{dataset}/{model}"
                if not is_valid_name(model):
                    fail(where, dataset, model, "not a valid model name")
                    continue
                try:
                    config = load_model_config(model_dir, CONFIG_FILENAME)
                except UserError as exc:
                    fail(f"{where}/{CONFIG_FILENAME}", dataset, model, exc)
                    scan.blocked.add(key)
                    continue
                config_bytes = _read_optional(model_dir / CONFIG_FILENAME)
                version_dirs = _visible_dirs(model_dir)
                if not version_dirs:
                    fail(where, dataset, model, "no version directories")
                for version_dir in version_dirs:
                    if not is_valid_version(version_dir.name):
                        fail(f"{where}/{version_dir.name}", dataset, model, "not a version number")
                        continue
                    scan.candidates.append(
                        _Candidate(
                            dataset,
                            model,
                            int(version_dir.name),
                            version_dir,
                            config,
                            _fingerprint(version_dir, config_bytes),
                        )
                    )
        if self._root_identity() != scan.root_identity:
            # Half a listing of a vanishing directory looks like an emptied repository.
            raise RepositoryError("the repository directory changed during the scan")
        return scan

    def _root_identity(self) -> tuple[int, int]:
        """(device, inode) of the repository directory; RepositoryError when it is gone."""
        try:
            stat = self.root.stat()
        except OSError:
            raise RepositoryError("the repository directory is missing") from None
        if not S_ISDIR(stat.st_mode):
            raise RepositoryError("the repository is not a directory")
        return stat.st_dev, stat.st_ino

    def _load_version(self, candidate: _Candidate, selector: ProviderSelector) -> ModelVersion:
        """Validate, create the sessions and warm up one version (blocking)."""
        manifest = load_manifest(candidate.path)
        # Verify the bytes that are really loaded: one read, and a file swapped after the
        # check cannot slip in. A missing file is reported by verify_files.
        onnx_path = candidate.path / ONNX_FILENAME
        loaded = {ONNX_FILENAME: onnx_path.read_bytes()} if onnx_path.is_file() else {}
        verify_files(candidate.path, manifest, loaded=loaded)
        model_bytes = loaded[ONNX_FILENAME]  # the schema requires model.onnx in sha256
        batching = BatchingConfig.resolve(
            self.settings, candidate.config, auto_sessions(selector.plan)
        )
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
            solo_threads=available_cpus() if self.settings.solo_session else 0,
            solo_spinning=self.settings.solo_spinning,
            pin_cpus=(
                pinnable_cpus(batching.sessions, spec.intra_op_threads)
                if self.settings.pin_session_threads
                else ()
            ),
            nice=self.settings.inference_thread_nice,
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
            run_inline=pool.run_sync,
            inline_max_s=self.settings.inline_run_max_ms / 1000,
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
            fingerprint=candidate.fingerprint,
        )

    # ------------------------------------------------------------------ lookups

    def has_model(self, dataset: str, model: str) -> bool:
        """Whether the model has a loaded version."""
        return bool(self._versions.get((dataset, model)))

    def names(self) -> list[str]:
        """`dataset/model` of every model with at least one loaded version."""
        return sorted(f"{d}/{m}" for d, m in self._versions)

    def models(self) -> dict[ModelKey, dict[int, ModelVersion]]:
        """Loaded versions by (dataset, model), sorted."""
        current = self._versions
        return {key: dict(sorted(current[key].items())) for key in sorted(current)}

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

    def current(self, entry: ModelVersion, *, pinned: bool) -> ModelVersion:
        """`entry` while it serves; once a reload retired it, what the request asked for now.

        A request that resolved its version just before a swap runs on the replacement
        instead of failing: for a `pinned` version number, the version now serving that
        number (the same number, newer files; 404 when the number is gone); for a request
        that asked for the latest version, the latest one now.
        """
        if not entry.retired:
            return entry
        return self.resolve(entry.dataset, entry.model, entry.version if pinned else None)

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
        if self.settings.readiness_strict and self._failures:
            reasons.append(f"{len(self._failures)} repository entries failed to load")
        return Readiness(not reasons, reasons)

    # ------------------------------------------------------------------ shutdown

    def begin_shutdown(self) -> None:
        """Readiness false and no more reloads; what is queued or running goes on.

        Only sets a flag, so a signal handler may call it.
        """
        self.closing = True

    def abort_queued(self) -> int:
        """Fail every image still waiting in a queue with 503 `shutting_down`; returns how many."""
        self.closing = True
        return sum(
            entry.batcher.abort_queued(_stopped_before_run)
            for versions in self._versions.values()
            for entry in versions.values()
        )

    async def close(self) -> None:
        """Stop taking work, drain every queue, release the sessions."""
        self.closing = True
        async with self._lock:  # a reload in progress finishes (and retires) first
            entries = [v for versions in self._versions.values() for v in versions.values()]
            await asyncio.gather(*(v.batcher.close() for v in entries))
            for entry in entries:
                entry.ready = False
                await asyncio.to_thread(entry.pool.close)


def _stopped_before_run() -> ShuttingDown:
    return ShuttingDown(
        "the service stopped before this image ran; retry", headers={"Retry-After": "1"}
    )


def _visible_dirs(path: Path) -> list[Path]:
    """The subdirectories of `path` not hidden by a leading dot, sorted; OSError when `path`
    cannot be listed."""
    with os.scandir(path) as entries:
        # DirEntry.is_dir answers from the listing itself where the file system reports types,
        # so an entry that vanishes after the listing still counts as listed.
        found = [
            Path(entry.path)
            for entry in entries
            if entry.is_dir() and not entry.name.startswith(".")
        ]
    return sorted(found)


def _read_optional(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


def _fingerprint(version_dir: Path, config: bytes) -> str:
    """What identifies a version's files without hashing them all: the manifest (which holds
    every other file's sha256), each file's size, mtime and inode, and the model's config.json.

    A re-export (new directory), an in-place edit and a config change all change it.
    """
    digest = hashlib.sha256(config)
    digest.update(b"\0")
    digest.update(_read_optional(version_dir / MANIFEST_FILENAME))
    for path in sorted(version_dir.iterdir()):
        if path.is_file():
            stat = path.stat()
            digest.update(f"\0{path.name}:{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ino}".encode())
    return digest.hexdigest()
