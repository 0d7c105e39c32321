"""training/host.py: the malloc, CPU model and flags a run records, and the LD_PRELOAD hint."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from training.host import (
    LARGE_BATCH_PIXELS,
    SYSTEM_MALLOC,
    cpu_flags,
    cpu_model,
    find_tcmalloc,
    loaded_malloc,
    malloc_hint,
)

REPO = Path(__file__).resolve().parents[2]

_LIBC_MAPS = """\
55d0c0a00000-55d0c0a01000 r--p 00000000 fd:01 1 /usr/bin/python3.11
7f1c2a000000-7f1c2a022000 r--p 00000000 fd:01 2 /usr/lib/x86_64-linux-gnu/libc.so.6
7f1c2b000000-7f1c2b021000 rw-p 00000000 00:00 0
7ffd1c000000-7ffd1c021000 rw-p 00000000 00:00 0                          [stack]
"""


def _maps_with(library: str) -> str:
    return _LIBC_MAPS + f"7f1c2c000000-7f1c2c040000 r-xp 00000000 fd:01 3 {library}\n"


@pytest.mark.parametrize(
    ("library", "expected"),
    [
        ("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4.5.10", "tcmalloc"),
        ("/opt/lib/libtcmalloc.so.4", "tcmalloc"),
        ("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2", "jemalloc"),
        ("/home/u/.venv/lib/libmimalloc.so.2", "mimalloc"),
        ("/usr/lib/x86_64-linux-gnu/libgomp.so.1", SYSTEM_MALLOC),
    ],
)
def test_loaded_malloc_names_the_mapped_allocator(library: str, expected: str) -> None:
    assert loaded_malloc(_maps_with(library)) == expected


def test_loaded_malloc_is_system_with_glibc_alone() -> None:
    assert loaded_malloc(_LIBC_MAPS) == SYSTEM_MALLOC
    # A path component named like an allocator is not the allocator.
    assert loaded_malloc(_maps_with("/srv/libtcmalloc-notes/readme.txt")) == SYSTEM_MALLOC


def test_cpu_flags_keeps_the_ones_that_pick_kernels_in_a_fixed_order() -> None:
    cpuinfo = (
        "processor\t: 0\nmodel name\t: AMD EPYC\n"
        "flags\t\t: fpu sse2 avx512_bf16 avx2 fma avx512f avx512vl\n\n"
        "processor\t: 1\nflags\t\t: fpu sse2 avx2\n"
    )
    assert cpu_flags(cpuinfo) == ["avx2", "avx512f", "avx512_bf16"]
    assert cpu_flags("processor\t: 0\nflags\t\t: fpu sse2\n") == []
    assert cpu_flags("") == []


def test_cpu_model_is_the_first_cpus_model_name() -> None:
    cpuinfo = (
        "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Processor\n"
        "flags\t\t: fpu amx_tile\n\nprocessor\t: 1\nmodel name\t: Other\n"
    )
    assert cpu_model(cpuinfo) == "Intel(R) Xeon(R) Processor"
    assert cpu_model("processor\t: 0\nflags\t\t: fpu\n") == ""


def test_find_tcmalloc_prefers_the_minimal_library(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    assert find_tcmalloc((str(first), str(second))) is None
    (second / "libtcmalloc.so.4").write_bytes(b"")
    (second / "libtcmalloc_minimal.so.4").write_bytes(b"")
    assert find_tcmalloc((str(first), str(second))) == second / "libtcmalloc_minimal.so.4"
    (first / "libtcmalloc.so.4").write_bytes(b"")
    assert find_tcmalloc((str(first), str(second))) == first / "libtcmalloc.so.4"


def _run_probe(preload: Path | None) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    if preload is not None:
        env["LD_PRELOAD"] = str(preload)
    code = (
        "from training.host import LARGE_BATCH_PIXELS, loaded_malloc, malloc_hint\n"
        "print(loaded_malloc()); print(malloc_hint(LARGE_BATCH_PIXELS))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.splitlines()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="LD_PRELOAD and /proc are Linux's")
def test_a_real_process_reports_tcmalloc_only_when_it_is_preloaded() -> None:
    library = find_tcmalloc()
    if library is None:
        message = "tcmalloc is not installed (make system-deps installs libtcmalloc-minimal4)"
        if os.environ.get("IMGZOO_STRICT_SYSTEM_TOOLS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    plain_malloc, plain_hint = _run_probe(None)
    assert plain_malloc == SYSTEM_MALLOC
    assert f"LD_PRELOAD={library}" in plain_hint
    preloaded_malloc, preloaded_hint = _run_probe(library)
    assert preloaded_malloc == "tcmalloc"
    assert preloaded_hint == "None"  # nothing left to suggest


def test_the_hint_without_tcmalloc_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import training.host as host

    monkeypatch.setattr(host.sys, "platform", "linux")
    monkeypatch.setattr(host, "loaded_malloc", lambda: SYSTEM_MALLOC)
    monkeypatch.setattr(host, "find_tcmalloc", lambda: None)
    hint = malloc_hint(2000 * 32 * 32)
    assert hint is not None and "apt install libtcmalloc-minimal4" in hint
    # Batches too small for the allocator to matter (batch 256 at 32 px gained nothing).
    assert malloc_hint(256 * 32 * 32) is None
    assert malloc_hint(LARGE_BATCH_PIXELS) is not None
    monkeypatch.setattr(host, "loaded_malloc", lambda: "jemalloc")
    assert malloc_hint(2000 * 32 * 32) is None
