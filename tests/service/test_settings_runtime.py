"""Settings, per-model config, the CPU budget, provider planning, and the torch-free import."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from imgzoo.errors import UserError
from service.core import Service
from service.dataplane import softmax, top_k_predictions
from service.registry import warmup_batch_sizes
from service.runtime import (
    MAX_AUTO_SESSIONS,
    ProviderSelector,
    ProviderUnavailableError,
    Session,
    SessionPool,
    SessionSpec,
    auto_sessions,
    available_cpus,
    cgroup_cpu_limit,
    create_pool,
    pinnable_cpus,
    plan_providers,
    threads_per_session,
)
from service.settings import BatchingConfig, ModelConfig, Settings, load_model_config
from tests.service.conftest import Repository, copy_version


def test_environment_is_read_with_the_prefix_and_keywords_win(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("IMGZOO_MAX_BATCH_SIZE", "64")
    monkeypatch.setenv("IMGZOO_PROVIDERS", "cpu")
    monkeypatch.setenv("IMGZOO_IMAGE_FORMATS", '["PNG","JPEG"]')
    monkeypatch.setenv("MAX_BATCH_SIZE", "3")  # no prefix: ignored
    settings = Settings(sessions=2)
    assert settings.max_batch_size == 64
    assert settings.providers == "cpu"
    assert settings.image_formats == ("PNG", "JPEG")
    assert settings.sessions == 2
    assert Settings(max_batch_size=5).max_batch_size == 5


@pytest.mark.parametrize(
    "bad", [{"max_batch_size": 0}, {"providers": "gpu"}, {"port": 70000}, {"nonsense": 1}]
)
def test_invalid_settings_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Settings(**bad)  # type: ignore[arg-type]


def test_every_setting_is_documented() -> None:
    for name, field in Settings.model_fields.items():
        assert field.description, name


def test_model_config_overrides_only_what_it_names(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"max_batch_size": 4, "timeout_ms": 50}))
    config = load_model_config(tmp_path, "config.json")
    effective = BatchingConfig.resolve(Settings(sessions=3, request_timeout_ms=999), config)
    assert effective.max_batch_size == 4 and effective.timeout_ms == 50
    assert effective.sessions == 3
    assert load_model_config(tmp_path / "absent", "config.json") == ModelConfig()


@pytest.mark.parametrize("text", ["{not json", '{"max_batch_size": -1}', '{"workers": 2}'])
def test_invalid_model_config_is_a_user_error(tmp_path: Path, text: str) -> None:
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(UserError):
        load_model_config(tmp_path, "config.json")


def test_cgroup_quota_is_read_from_the_process_cgroup_and_its_ancestors(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    leaf = root / "kubepods" / "pod1"
    leaf.mkdir(parents=True)
    (root / "cpu.max").write_text("max 100000\n")
    (root / "kubepods" / "cpu.max").write_text("300000 100000\n")
    (leaf / "cpu.max").write_text("150000 100000\n")
    self_cgroup = tmp_path / "self"
    self_cgroup.write_text("0::/kubepods/pod1\n")
    assert cgroup_cpu_limit(root, self_cgroup) == 1.5
    (leaf / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(root, self_cgroup) == 3.0
    (root / "kubepods" / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(root, self_cgroup) is None
    assert cgroup_cpu_limit(tmp_path / "absent", tmp_path / "absent-self") is None


def test_threads_follow_the_setting_or_share_the_cpus() -> None:
    assert threads_per_session(3, sessions=4) == 3
    assert threads_per_session(0, sessions=1) >= threads_per_session(0, sessions=2) >= 1


def test_provider_plans() -> None:
    assert plan_providers("cpu").providers == ("CPUExecutionProvider",)
    assert plan_providers("auto").providers[-1] == "CPUExecutionProvider"
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(ProviderUnavailableError, match="onnxruntime-gpu"):
            plan_providers("cuda")
    if "TensorrtExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(ProviderUnavailableError):
            plan_providers("tensorrt")


def test_warmup_sizes_cover_one_powers_of_two_and_the_maximum() -> None:
    assert warmup_batch_sizes(1) == [1]
    assert warmup_batch_sizes(12) == [1, 2, 4, 8, 12]
    assert warmup_batch_sizes(16) == [1, 2, 4, 8, 16]


def test_softmax_is_stable_and_top_k_is_ordered() -> None:
    logits = np.array([1000.0, 1001.0, -1000.0, 1001.0], dtype=np.float32)
    probabilities = softmax(logits)
    assert np.isfinite(probabilities).all() and probabilities.sum() == pytest.approx(1.0)
    ranked = top_k_predictions(logits, ["a", "b", "c", "d"], 3)
    assert [p["index"] for p in ranked] == [1, 3, 0]  # a tie keeps index order
    assert ranked[0]["probability"] == pytest.approx(np.e / (1 + 2 * np.e))


def test_serving_code_never_imports_torch() -> None:
    code = (
        "import sys, service.app, service.cli\n"
        "from service.settings import Settings\n"
        "service.app.create_app(Settings(repository='.'))\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'torchvision', 'models', 'training', 'export', 'onnx'))\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.strip() == ""


class _RecordingSession:
    """Records which session ran each batch; `gate` holds a run until released."""

    def __init__(self, name: str, log: list[str], gate: threading.Event | None = None) -> None:
        self.name, self.log, self.gate = name, log, gate

    def run(self, output_names: list[str] | None, input_feed: dict[str, Any]) -> list[Any]:
        self.log.append(self.name)
        if self.gate is not None:
            assert self.gate.wait(5)
        batch = input_feed["image"]
        return [np.zeros((len(batch), 3), dtype=np.float32)]

    def get_providers(self) -> list[str]:
        return ["CPUExecutionProvider"]

    def get_inputs(self) -> list[Any]:
        return []

    def get_outputs(self) -> list[Any]:
        return []


def test_a_lone_batch_runs_on_the_solo_session_and_parallel_ones_on_the_others() -> None:
    log: list[str] = []
    gate = threading.Event()
    narrow = [_RecordingSession(f"narrow{i}", log, gate) for i in range(2)]
    solo = _RecordingSession("solo", log, gate)
    pool = SessionPool(narrow, provider="CPUExecutionProvider", name="t", solo=solo)
    batch = np.zeros((2, 4, 4, 3), dtype=np.uint8)
    with ThreadPoolExecutor(3) as threads:
        first = threads.submit(pool.run_sync, batch, True)
        while len(log) < 1:
            time.sleep(0.001)
        # Even a batch the batcher calls alone keeps to one core while another batch runs.
        others = [threads.submit(pool.run_sync, batch, alone) for alone in (True, False)]
        while len(log) < 3:
            time.sleep(0.001)
        gate.set()
        results = [f.result()[0] for f in [first, *others]]
    assert log[0] == "solo"  # nothing else ran: all the cores
    assert sorted(log[1:]) == ["narrow0", "narrow1"]  # side by side: one session each
    assert all(r.shape == (2, 3) for r in results)
    assert pool.solo_batches == 1
    log.clear()
    pool.run_sync(batch, True)  # alone again: solo again
    assert log == ["solo"] and pool.solo_batches == 2
    log.clear()
    # Idle sessions but more work on its way (the batcher's word): one core, so that the
    # batches that follow do not share the cores with a solo run.
    pool.run_sync(batch, False)
    assert log == ["narrow0"] or log == ["narrow1"]
    assert pool.solo_batches == 2
    assert pool.sessions == (*narrow, solo)
    pool.close()


def test_the_solo_session_is_made_only_on_the_cpu_and_only_when_wider() -> None:
    made: list[int] = []

    def factory(model: bytes, spec: SessionSpec) -> Session:
        made.append(spec.intra_op_threads)
        return _RecordingSession("s", [])

    selector = ProviderSelector(plan_providers("cpu"))
    spec = SessionSpec(providers=("CPUExecutionProvider",), intra_op_threads=1, spinning=False)
    pool = create_pool(b"", count=2, spec=spec, selector=selector, name="a", factory=factory,
                       solo_threads=4)  # fmt: skip
    assert made == [1, 1, 4] and len(pool.sessions) == 3
    made.clear()
    wide = SessionSpec(providers=("CPUExecutionProvider",), intra_op_threads=4, spinning=False)
    pool = create_pool(b"", count=1, spec=wide, selector=selector, name="b", factory=factory,
                       solo_threads=4)  # fmt: skip
    assert made == [4] and len(pool.sessions) == 1


def test_the_solo_session_spins_only_while_it_runs_when_asked() -> None:
    specs: list[SessionSpec] = []

    def factory(model: bytes, spec: SessionSpec) -> Session:
        specs.append(spec)
        return _RecordingSession("s", [])

    selector = ProviderSelector(plan_providers("cpu"))
    quiet = SessionSpec(providers=("CPUExecutionProvider",), intra_op_threads=1, spinning=False)
    create_pool(b"", count=2, spec=quiet, selector=selector, name="a", factory=factory,
                solo_threads=2, solo_spinning=True)  # fmt: skip
    assert [(s.intra_op_threads, s.spinning, s.stop_spinning_after_run) for s in specs] == [
        (1, False, False),
        (1, False, False),
        (2, True, True),
    ]
    specs.clear()
    create_pool(b"", count=1, spec=quiet, selector=selector, name="b", factory=factory,
                solo_threads=2, solo_spinning=False)  # fmt: skip
    assert [s.spinning for s in specs] == [False, False]
    specs.clear()
    # Spinning everywhere (intra_op_spinning) stays as it is on the solo session too.
    spinning = SessionSpec(providers=("CPUExecutionProvider",), intra_op_threads=1, spinning=True)
    create_pool(b"", count=1, spec=spinning, selector=selector, name="c", factory=factory,
                solo_threads=2, solo_spinning=True)  # fmt: skip
    assert [(s.spinning, s.stop_spinning_after_run) for s in specs] == [(True, False)] * 2


def test_sessions_zero_resolves_to_the_automatic_count() -> None:
    def sessions(settings: Settings, config: ModelConfig) -> int:
        return BatchingConfig.resolve(settings, config, auto_sessions=3).sessions

    assert sessions(Settings(), ModelConfig()) == 3
    assert sessions(Settings(sessions=2), ModelConfig()) == 2
    assert sessions(Settings(), ModelConfig(sessions=5)) == 5
    assert auto_sessions(plan_providers("cpu")) == min(available_cpus(), MAX_AUTO_SESSIONS)


def test_automatic_sessions_are_capped_on_a_large_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("service.runtime.available_cpus", lambda: 64)
    assert auto_sessions(plan_providers("cpu")) == MAX_AUTO_SESSIONS
    # The threads are shared among the capped sessions: 64 CPUs, 8 sessions, 8 threads each.
    assert threads_per_session(0, MAX_AUTO_SESSIONS) == 8


def test_threads_are_pinned_only_when_one_thread_sessions_cover_the_cpus_exactly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mask = {2, 5, 7}
    monkeypatch.setattr("service.runtime.os.sched_getaffinity", lambda pid: set(mask))
    monkeypatch.setattr("service.runtime.available_cpus", lambda: 3)
    assert pinnable_cpus(3, 1) == (2, 5, 7)
    assert pinnable_cpus(3, 2) == ()  # several threads a session: ORT places them
    assert pinnable_cpus(2, 1) == ()  # fewer sessions than CPUs
    assert pinnable_cpus(4, 1) == ()  # more sessions than CPUs: they would share cores
    mask.clear()
    mask.add(0)
    monkeypatch.setattr("service.runtime.available_cpus", lambda: 1)
    assert pinnable_cpus(1, 1) == ()  # one CPU: nothing to choose
    # A cgroup quota narrower than the mask: the process's time may come from any CPU.
    mask.update({0, 1, 2, 3})
    monkeypatch.setattr("service.runtime.available_cpus", lambda: 2)
    assert pinnable_cpus(4, 1) == () and pinnable_cpus(2, 1) == ()


class _AffinitySession(_RecordingSession):
    """Records the CPUs the calling thread may run on during each run."""

    def __init__(self, name: str, seen: list[frozenset[int]], gate: threading.Event) -> None:
        super().__init__(name, [], gate)
        self.seen = seen

    def run(self, output_names: list[str] | None, input_feed: dict[str, Any]) -> list[Any]:
        self.seen.append(frozenset(os.sched_getaffinity(0)))
        return super().run(output_names, input_feed)


def _two_cpus() -> tuple[int, int]:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs two CPUs to pin to")
    return cpus[0], cpus[1]


def test_pinned_pool_threads_each_keep_one_cpu_and_a_solo_run_gets_them_all() -> None:
    cpus = _two_cpus()
    main_mask = os.sched_getaffinity(0)
    seen: list[frozenset[int]] = []
    gate = threading.Event()
    narrow = [_AffinitySession(f"narrow{i}", seen, gate) for i in range(2)]
    solo = _AffinitySession("solo", seen, gate)
    pool = SessionPool(narrow, provider="CPUExecutionProvider", name="t", solo=solo,
                       pin_cpus=cpus)  # fmt: skip
    batch = np.zeros((1, 4, 4, 3), dtype=np.uint8)

    async def side_by_side() -> None:
        runs = [asyncio.ensure_future(pool.run(batch, False)) for _ in range(2)]
        while len(seen) < 2:  # both threads hold a run: each started on its own thread
            await asyncio.sleep(0.001)
        gate.set()
        await asyncio.gather(*runs)

    asyncio.run(side_by_side())
    assert sorted(seen) == sorted([frozenset({cpus[0]}), frozenset({cpus[1]})])
    seen.clear()
    # A batch alone takes the solo session, whose threads must spread over every CPU: the
    # pinned thread that calls it is freed for the run, then pinned again.
    asyncio.run(pool.run(batch, True))
    assert seen == [frozenset(cpus)]
    seen.clear()
    asyncio.run(pool.run(batch, False))
    assert seen[0] in (frozenset({cpus[0]}), frozenset({cpus[1]}))
    # The caller's own thread (here the event loop's) is never pinned.
    pool.run_sync(batch, True)
    assert seen[-1] == main_mask and os.sched_getaffinity(0) == main_mask
    pool.close()


def test_an_unpinned_pool_leaves_its_threads_to_the_scheduler() -> None:
    _two_cpus()
    seen: list[frozenset[int]] = []
    gate = threading.Event()
    gate.set()
    pool = SessionPool([_AffinitySession("s", seen, gate)], provider="CPUExecutionProvider",
                       name="t")  # fmt: skip
    asyncio.run(pool.run(np.zeros((1, 4, 4, 3), dtype=np.uint8), False))
    assert seen == [frozenset(os.sched_getaffinity(0))] and pool.pin_cpus == ()
    pool.close()


class _GpuSession(_RecordingSession):
    """A session that reports running on CUDA."""

    def get_providers(self) -> list[str]:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]


def test_pinning_applies_to_cpu_pools_only() -> None:
    spec = SessionSpec(providers=("CPUExecutionProvider",), intra_op_threads=1, spinning=False)
    cpu = create_pool(b"", count=2, spec=spec, selector=ProviderSelector(plan_providers("cpu")),
                      name="a", factory=lambda m, s: _RecordingSession("s", []),
                      pin_cpus=(0, 1))  # fmt: skip
    assert cpu.pin_cpus == (0, 1)
    # The sessions report CUDA first: the pool runs on the GPU, whatever was planned.
    gpu = create_pool(b"", count=2, spec=spec, selector=ProviderSelector(plan_providers("cpu")),
                      name="b", factory=lambda m, s: _GpuSession("s", []),
                      pin_cpus=(0, 1))  # fmt: skip
    assert gpu.provider == "CUDAExecutionProvider" and gpu.pin_cpus == ()
    cpu.close()
    gpu.close()


@pytest.mark.parametrize("pin", [True, False])
def test_the_service_pins_a_models_threads_where_its_sessions_cover_the_cpus(
    model_repository: Repository, tmp_path: Path, pin: bool
) -> None:
    cpus = tuple(sorted(os.sched_getaffinity(0)))
    if len(cpus) < 2 or available_cpus() != len(cpus):
        pytest.skip("needs two or more CPUs of its own (no narrower cgroup quota)")
    copy_version(tmp_path, model_repository.gray)
    settings = Settings(repository=tmp_path, providers="cpu", sessions=len(cpus),
                        intra_op_threads=0, decode_threads=1, pin_session_threads=pin)  # fmt: skip

    async def pool_settings() -> tuple[tuple[int, ...], int]:
        service = Service(settings)
        await service.start()
        try:
            pool = service.registry.resolve("gray", "tiny").pool
            return pool.pin_cpus, pool.nice
        finally:
            await service.stop()

    assert asyncio.run(pool_settings()) == ((cpus if pin else ()), 10)


def test_the_load_log_says_where_the_threads_run() -> None:
    def pool(**placement: Any) -> SessionPool:
        return SessionPool([_RecordingSession("s", [])], provider="CPUExecutionProvider",
                           name="t", **placement)  # fmt: skip

    assert pool().thread_placement == ""
    assert pool(nice=10).thread_placement == "10 nicer than the loop"
    assert pool(pin_cpus=(2, 5), nice=3).thread_placement == (
        "threads on CPUs 2,5, 3 nicer than the loop"
    )


class _PrioritySession(_RecordingSession):
    """Records the calling thread's niceness during each run."""

    def __init__(self, seen: list[int]) -> None:
        super().__init__("s", [])
        self.seen = seen

    def run(self, output_names: list[str] | None, input_feed: dict[str, Any]) -> list[Any]:
        self.seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        return super().run(output_names, input_feed)


@pytest.mark.parametrize("nice", [0, 7])
def test_inference_threads_run_nicer_than_the_loop_by_the_setting(nice: int) -> None:
    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    if mine + nice > 19:
        pytest.skip("this test process already runs at the lowest priority")
    seen: list[int] = []
    pool = SessionPool([_PrioritySession(seen)], provider="CPUExecutionProvider", name="t",
                       nice=nice)  # fmt: skip
    batch = np.zeros((1, 4, 4, 3), dtype=np.uint8)
    asyncio.run(pool.run(batch, False))
    asyncio.run(pool.run(batch, False))  # the same thread: lowered once, not twice
    pool.run_sync(batch, False)  # the caller's own thread keeps its priority
    assert seen == [mine + nice, mine + nice, mine]
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == mine
    pool.close()


def test_niceness_applies_to_cpu_pools_only() -> None:
    spec = SessionSpec(providers=("CPUExecutionProvider",), intra_op_threads=1, spinning=False)
    selector = ProviderSelector(plan_providers("cpu"))
    seen: list[int] = []
    cpu = create_pool(b"", count=1, spec=spec, selector=selector, name="a",
                      factory=lambda m, s: _PrioritySession(seen), nice=3)  # fmt: skip
    gpu = create_pool(b"", count=1, spec=spec, selector=selector, name="b",
                      factory=lambda m, s: _GpuSession("s", []), nice=3)  # fmt: skip
    assert (cpu.nice, gpu.nice) == (3, 0)
    cpu.close()
    gpu.close()
