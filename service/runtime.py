"""ONNX Runtime: the CPU budget, execution-provider selection, and a pool of sessions per model.

Sessions are created and run in threads; ONNX Runtime releases the GIL while it computes, so
several sessions (and image decoding) overlap on the event loop's behalf.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import os
import queue
import threading
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from time import perf_counter
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from imgzoo.errors import UserError
from imgzoo.manifest import INPUT_NAME, OUTPUT_NAME, InputSpec

logger = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"

UInt8Batch = npt.NDArray[np.uint8]
Logits = npt.NDArray[np.float32]


# --------------------------------------------------------------------------- CPU budget


def cgroup_cpu_limit(
    cgroup_root: Path = Path("/sys/fs/cgroup"), self_cgroup: Path = Path("/proc/self/cgroup")
) -> float | None:
    """CPUs granted by the cgroup v2 `cpu.max` quota of this process (tightest ancestor).

    None when there is no quota (`max`) or no cgroup v2 hierarchy.
    """
    try:
        lines = self_cgroup.read_text().splitlines()
    except OSError:
        lines = []
    relative = next((line[3:] for line in lines if line.startswith("0::")), "/")
    directory = cgroup_root / relative.lstrip("/")
    limits: list[float] = []
    while True:
        try:
            quota, period = (directory / "cpu.max").read_text().split()[:2]
            if quota != "max" and int(period) > 0:
                limits.append(int(quota) / int(period))
        except (OSError, ValueError):
            pass
        if directory == cgroup_root or cgroup_root not in directory.parents:
            break
        directory = directory.parent
    return min(limits) if limits else None


def available_cpus() -> int:
    """CPUs this process may really use: its affinity mask, capped by the cgroup quota."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_limit()
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)


def pinnable_cpus(sessions: int, threads: int) -> tuple[int, ...]:
    """The CPUs to pin a pool's inference threads to, one thread each; () for no pinning.

    Only for the CPU layout where `sessions` single-threaded sessions cover exactly the CPUs
    this process may use: its affinity mask, with no narrower cgroup quota (under a quota the
    process's time may come from any CPU of the mask, so none is its own). Unpinned, the
    scheduler moves an inference thread aside whenever the event loop wakes and lets two of them
    share a core by turns, each refilling the caches the other evicted; pinned, each keeps its
    core and only the loop's short turns interrupt it (docs/benchmarks.md, change 24).
    """
    if threads != 1 or sessions < 2:
        return ()
    try:
        mask = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return ()
    if len(mask) != sessions or available_cpus() != len(mask):
        return ()
    return tuple(mask)


def pin_calling_thread(cpus: Collection[int]) -> bool:
    """Bind the calling thread (not the process) to `cpus`; a refusal leaves it as it was."""
    try:
        os.sched_setaffinity(0, cpus)  # pid 0: the calling thread on Linux
    except OSError as exc:
        logger.warning("could not pin an inference thread to CPUs %s: %s", sorted(cpus), exc)
        return False
    return True


def lower_calling_thread_priority(by: int) -> None:
    """Make the calling thread (Linux: niceness is per thread) `by` nicer; never fails."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + by))
    except (AttributeError, OSError) as exc:  # not on Unix, or refused
        logger.warning("could not lower an inference thread's priority: %s", exc)


def threads_per_session(configured: int, sessions: int) -> int:
    """`configured` when set, else the available CPUs shared among the sessions of a model."""
    if configured > 0:
        return configured
    return max(1, available_cpus() // max(1, sessions))


# --------------------------------------------------------------------------- providers


class ProviderUnavailableError(UserError):
    """An explicitly requested execution provider that this installation cannot run."""


ProviderList = tuple[str, ...]


@dataclass(frozen=True)
class ProviderPlan:
    """Which providers sessions are created with, and why."""

    requested: str
    providers: ProviderList
    reason: str


def plan_providers(requested: str) -> ProviderPlan:
    """Turn `auto|cpu|cuda|tensorrt` into the provider list sessions are created with.

    GPU providers are only listed when the installed onnxruntime offers them; whether a session
    really runs on one is confirmed per session (`ProviderSelector.confirm`).
    """
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    if requested == "cpu":
        return ProviderPlan(requested, (CPU,), "CPU requested")
    wants_gpu = requested in ("cuda", "tensorrt") or CUDA in available
    if wants_gpu and hasattr(ort, "preload_dlls"):
        # onnxruntime-gpu can load CUDA / cuDNN from the nvidia-* pip packages.
        try:
            ort.preload_dlls()
        except Exception as exc:  # a missing library is reported by session creation
            logger.debug("onnxruntime.preload_dlls failed: %s", exc)
    if requested == "tensorrt":
        if TENSORRT not in available:
            raise ProviderUnavailableError(
                "TensorRT requested but this onnxruntime has no TensorrtExecutionProvider"
            )
        return ProviderPlan(requested, (TENSORRT, CUDA, CPU), "TensorRT requested")
    if requested == "cuda":
        if CUDA not in available:
            raise ProviderUnavailableError(
                "CUDA requested but this onnxruntime has no CUDAExecutionProvider "
                "(install onnxruntime-gpu)"
            )
        return ProviderPlan(requested, (CUDA, CPU), "CUDA requested")
    if CUDA in available:
        return ProviderPlan(requested, (CUDA, CPU), "onnxruntime-gpu is installed")
    return ProviderPlan(requested, (CPU,), "no GPU provider in this onnxruntime")


class ProviderSelector:
    """Checks what sessions really got, and says once, in one line, what the service runs on."""

    def __init__(self, plan: ProviderPlan) -> None:
        self.plan = plan
        self._announced: str | None = None

    def confirm(self, session_providers: Sequence[str]) -> str:
        """The provider a new session actually runs on; refuse a GPU that was asked for."""
        actual = session_providers[0] if session_providers else CPU
        wanted = self.plan.providers[0]
        if self.plan.requested in ("cuda", "tensorrt") and actual != wanted:
            raise ProviderUnavailableError(
                f"{self.plan.requested} requested but the session runs on {actual} "
                "(CUDA libraries missing or no usable GPU)"
            )
        if self._announced is None:
            note = self.plan.reason
            if actual != wanted:
                note = f"{wanted} did not initialise, fell back"
            logger.info(
                "execution provider: %s (requested %s; %s)", actual, self.plan.requested, note
            )
            self._announced = actual
        elif actual != self._announced:
            logger.warning("a session runs on %s while others run on %s", actual, self._announced)
        return actual


# --------------------------------------------------------------------------- sessions


class Session(Protocol):
    """The part of `onnxruntime.InferenceSession` the service uses (tests substitute it)."""

    def run(self, output_names: list[str] | None, input_feed: dict[str, Any]) -> Sequence[Any]: ...

    def get_providers(self) -> list[str]: ...

    def get_inputs(self) -> list[Any]: ...

    def get_outputs(self) -> list[Any]: ...


@dataclass(frozen=True)
class SessionSpec:
    """How to create one session."""

    providers: ProviderList
    intra_op_threads: int
    spinning: bool
    """Idle intra-op threads spin before they sleep (ONNX Runtime's default)."""
    stop_spinning_after_run: bool = False
    """With `spinning`: the threads spin only while a run is in progress and stop when it returns,
    so a session that runs now and then does not keep a core busy between runs."""


SessionFactory = Callable[[bytes, SessionSpec], Session]


def create_ort_session(model: bytes, spec: SessionSpec) -> Session:
    """An `onnxruntime.InferenceSession` with full graph optimisation and the given threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = spec.intra_op_threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    spin = "1" if spec.spinning else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spin)
    options.add_session_config_entry("session.inter_op.allow_spinning", spin)
    if spec.spinning and spec.stop_spinning_after_run:
        options.add_session_config_entry("session.force_spinning_stop", "1")
    session: Session = ort.InferenceSession(model, sess_options=options, providers=spec.providers)
    return session


class GraphMismatchError(UserError):
    """An ONNX graph whose input or output does not match its manifest."""


def check_signature(session: Session, spec: InputSpec, num_classes: int) -> None:
    """The graph must take uint8 `image [N, H, W, C]` and give float32 `logits [N, K]`."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    input_names, output_names = [i.name for i in inputs], [o.name for o in outputs]
    if input_names != [INPUT_NAME]:
        raise GraphMismatchError(f"graph inputs are {input_names}, expected ['image']")
    if OUTPUT_NAME not in output_names:
        raise GraphMismatchError(f"graph outputs are {output_names}, expected 'logits'")
    image = inputs[0]
    if image.type != "tensor(uint8)":
        raise GraphMismatchError(f"graph input 'image' is {image.type}, expected tensor(uint8)")
    expected = [spec.height, spec.width, spec.channels]
    shape = list(image.shape)
    if len(shape) != 4 or any(
        isinstance(d, int) and d != e for d, e in zip(shape[1:], expected, strict=True)
    ):
        raise GraphMismatchError(f"graph input shape {shape} does not fit NHWC [N, {expected}]")
    logits = next(o for o in outputs if o.name == OUTPUT_NAME)
    out_shape = list(logits.shape)
    if len(out_shape) != 2 or (isinstance(out_shape[1], int) and out_shape[1] != num_classes):
        raise GraphMismatchError(f"graph output shape {out_shape} does not fit [N, {num_classes}]")


class SessionPool:
    """N sessions of one model; each batch runs on a free one in the pool's own threads.

    With a `solo` session (one that uses every CPU), a batch that runs *alone* takes it, so a
    lone request is not limited to one core; batches running side by side use the `sessions`,
    one core each, which is where a CPU gets the most images per second. Alone is the caller's
    word (the batcher: nothing else of the model queued, on its way or running) and the pool's
    (no other batch running): a batch that merely finds the sessions idle while more work is
    coming keeps to one core, so a solo run rarely overlaps another batch's. That matters most
    when the solo session spins.

    With `pin_cpus` (see `pinnable_cpus`), the pool's i-th thread runs only on `pin_cpus[i]`.
    With `nice` > 0 its threads lower their priority by that much when they start: the event
    loop, which every request passes through, then gets a shared core first, so requests keep
    reaching the queue while batches run (docs/benchmarks.md, change 25).
    """

    def __init__(
        self,
        sessions: Sequence[Session],
        provider: str,
        name: str,
        *,
        solo: Session | None = None,
        pin_cpus: Sequence[int] = (),
        nice: int = 0,
    ) -> None:
        if not sessions:
            raise ValueError("a session pool needs at least one session")
        self.provider = provider
        self.size = len(sessions)
        self._sessions = list(sessions)
        self._solo = solo
        self._free: queue.SimpleQueue[Session] = queue.SimpleQueue()
        for session in sessions:
            self._free.put(session)
        self._lock = threading.Lock()
        self._running = 0
        self.solo_batches = 0
        self.pin_cpus = tuple(pin_cpus)
        # The CPU each pinned executor thread has; unset in any other thread (the event loop's).
        self._pinned = threading.local()
        self.nice = nice
        # Each new executor thread takes the next CPU (`next` on a cycle is atomic under the GIL).
        cpus = itertools.cycle(self.pin_cpus)
        self._executor = ThreadPoolExecutor(
            max_workers=self.size,
            thread_name_prefix=f"ort-{name}",
            initializer=lambda: self._start_worker(next(cpus, None)),
        )

    @property
    def thread_placement(self) -> str:
        """Where the pool's threads run, for the load log: "" when the scheduler decides."""
        parts = []
        if self.pin_cpus:
            parts.append("threads on CPUs " + ",".join(map(str, self.pin_cpus)))
        if self.nice > 0:
            parts.append(f"{self.nice} nicer than the loop")
        return ", ".join(parts)

    def _start_worker(self, cpu: int | None) -> None:
        if cpu is not None and pin_calling_thread({cpu}):
            self._pinned.cpu = cpu
        if self.nice > 0:
            lower_calling_thread_priority(self.nice)

    @property
    def sessions(self) -> tuple[Session, ...]:
        """Every session, the solo one last."""
        return (*self._sessions, *([self._solo] if self._solo is not None else []))

    def run_sync(self, batch: UInt8Batch, alone: bool = False) -> tuple[Logits, float]:
        """Run one batch on a free session (blocking); returns logits and seconds spent.

        `alone`: nothing else of the model is waiting or on its way, so the batch may take the
        solo session when no other batch runs either.
        """
        with self._lock:
            solo = self._solo if alone and self._running == 0 else None
            self._running += 1
            if solo is not None:
                self.solo_batches += 1
        session = solo if solo is not None else self._free.get()
        # The solo session spreads over every CPU from whichever thread calls it: a pinned
        # caller is freed for the run, or its share of the work would wait for its one CPU.
        pinned_cpu: int | None = getattr(self._pinned, "cpu", None) if solo is not None else None
        if pinned_cpu is not None:
            pin_calling_thread(self.pin_cpus)
        try:
            start = perf_counter()
            logits = session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]
            elapsed = perf_counter() - start
        finally:
            if pinned_cpu is not None:
                pin_calling_thread({pinned_cpu})
            if solo is None:
                self._free.put(session)
            with self._lock:
                self._running -= 1
        return np.asarray(logits, dtype=np.float32), elapsed

    async def run(self, batch: UInt8Batch, alone: bool = False) -> tuple[Logits, float]:
        """Run one batch off the event loop (`alone`: see `run_sync`)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.run_sync, batch, alone)

    def warm_up(self, spec: InputSpec, batch_sizes: Sequence[int], num_classes: int) -> None:
        """Run every batch size on every session once, checking the output shape (blocking)."""
        for session in self.sessions:
            for size in sorted(set(batch_sizes)):
                batch = np.zeros((size, spec.height, spec.width, spec.channels), dtype=np.uint8)
                logits = session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]
                if tuple(np.shape(logits)) != (size, num_classes):
                    raise GraphMismatchError(
                        f"batch of {size} gave logits of shape {tuple(np.shape(logits))}, "
                        f"expected {(size, num_classes)}"
                    )

    def close(self) -> None:
        """Wait for running batches, then release the threads."""
        self._executor.shutdown(wait=True)


def create_pool(
    model: bytes,
    *,
    count: int,
    spec: SessionSpec,
    selector: ProviderSelector,
    name: str,
    factory: SessionFactory = create_ort_session,
    solo_threads: int = 0,
    solo_spinning: bool = False,
    pin_cpus: Sequence[int] = (),
    nice: int = 0,
) -> SessionPool:
    """Create `count` sessions of one model (blocking) and check what they run on.

    `solo_threads` > `spec.intra_op_threads` adds a solo session with that many threads (see
    `SessionPool`), only where the sessions run on the CPU. `solo_spinning`: its threads spin
    while it runs (not after), so a lone batch's layers hand work between cores without a
    wake-up each time. `pin_cpus` and `nice`: see `SessionPool`; ignored unless the sessions run on
    the CPU.
    """
    sessions = [factory(model, spec) for _ in range(count)]
    providers = {selector.confirm(s.get_providers()) for s in sessions}
    provider = sorted(providers)[0]
    on_cpu = provider == CPU  # the solo session, pinning and niceness are for CPU cores only
    solo = None
    if on_cpu and solo_threads > spec.intra_op_threads:
        solo_spec = replace(spec, intra_op_threads=solo_threads)
        if solo_spinning and not spec.spinning:
            solo_spec = replace(solo_spec, spinning=True, stop_spinning_after_run=True)
        solo = factory(model, solo_spec)
    return SessionPool(
        sessions,
        provider=provider,
        name=name,
        solo=solo,
        pin_cpus=pin_cpus if on_cpu else (),
        nice=nice if on_cpu else 0,
    )


# Each session holds its own copy of the weights and is warmed up at every batch size: past a
# few, more sessions cost memory and start-up time and gain nothing over wider ones.
MAX_AUTO_SESSIONS = 8


def auto_sessions(plan: ProviderPlan) -> int:
    """Sessions per model when the setting is 0: on the CPU one per available CPU, at most
    `MAX_AUTO_SESSIONS` (the threads are then shared among them); one on a GPU."""
    return min(available_cpus(), MAX_AUTO_SESSIONS) if plan.providers[0] == CPU else 1
