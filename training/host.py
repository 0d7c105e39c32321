"""What a CPU training run runs on, beyond torch: the malloc in the process and the CPU.

Both change a CPU run's speed more than most recipe fields do, and neither shows in torch's
own version string, so runs record them (`summary.json`, `imgzoo bench train`):

- **malloc.** A batch's activations (100-500 MB at batch 1000-2000 on CIFAR-10) are far above
  glibc's largest mmap threshold (32 MiB), so with the system allocator every step maps them
  fresh, the kernel zeroes and faults them in page by page, and `free` hands them back. On the
  2-vCPU VM of `docs/training.md` that cost a batch-2000 fastnet step 36% of its speed.
  tcmalloc (and jemalloc with retention) keeps freed pages mapped and reuses them. It is
  chosen at process start (`LD_PRELOAD`), so imgzoo can only report it and say how to use it.
- **CPU model and flags.** Native bf16 (AVX-512-BF16, AMX) makes bf16 autocast 2x faster
  than float32; without it bf16 is 15-40x slower. The VM's host CPU has varied between
  sessions (AVX2-only and AVX-512 AMD EPYCs, an Intel Xeon with AMX).
"""

from __future__ import annotations

import sys
from pathlib import Path

MALLOC_LIBRARIES: dict[str, str] = {
    "tcmalloc": "libtcmalloc",
    "jemalloc": "libjemalloc",
    "mimalloc": "libmimalloc",
}
"""Allocator name -> the shared-object name prefix that shows it is mapped into the process."""

SYSTEM_MALLOC = "system"
"""What `loaded_malloc` reports when no replacement allocator is mapped (glibc's on Linux)."""

TCMALLOC_NAMES = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4")
"""tcmalloc's shared objects as Debian / Ubuntu ship them (`libtcmalloc-minimal4`)."""

LIBRARY_DIRS = (
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/usr/local/lib",
)

LARGE_BATCH_PIXELS = 512 * 32 * 32
"""Input pixels per batch from which the allocator matters on the CPU: fastnet at 32 px gained
nothing from tcmalloc at batch 256, 8% at batch 1024 and 36% at batch 2000 (docs/training.md)."""

CPU_FLAGS_OF_INTEREST = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")
"""The /proc/cpuinfo flags that decide which kernels oneDNN runs (float32 vs native bf16)."""


def loaded_malloc(maps_text: str | None = None) -> str:
    """The allocator mapped into this process: tcmalloc, jemalloc, mimalloc or `system`.

    maps_text: the text of /proc/self/maps (read when None). Outside Linux, `system`.
    """
    if maps_text is None:
        try:
            maps_text = Path("/proc/self/maps").read_text()
        except OSError:
            return SYSTEM_MALLOC
    mapped = {Path(line.split()[-1]).name for line in maps_text.splitlines() if "/" in line}
    for name, prefix in MALLOC_LIBRARIES.items():
        if any(lib.startswith(prefix) for lib in mapped):
            return name
    return SYSTEM_MALLOC


def find_tcmalloc(dirs: tuple[str, ...] = LIBRARY_DIRS) -> Path | None:
    """tcmalloc's shared object on this machine (for an `LD_PRELOAD=` hint), or None."""
    for directory in dirs:
        for name in TCMALLOC_NAMES:
            path = Path(directory) / name
            if path.is_file():
                return path
    return None


def _cpuinfo(cpuinfo_text: str | None) -> str:
    if cpuinfo_text is not None:
        return cpuinfo_text
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def _first_field(cpuinfo_text: str, name: str) -> str | None:
    """The value of the first `name : value` line of /proc/cpuinfo text (the first CPU's)."""
    for line in cpuinfo_text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == name:
            return value.strip()
    return None


def cpu_flags(cpuinfo_text: str | None = None) -> list[str]:
    """Which of `CPU_FLAGS_OF_INTEREST` this CPU has, in that order ([] where unknown)."""
    flags = set((_first_field(_cpuinfo(cpuinfo_text), "flags") or "").split())
    return [flag for flag in CPU_FLAGS_OF_INTEREST if flag in flags]


def cpu_model(cpuinfo_text: str | None = None) -> str:
    """The CPU's model name ("" where unknown).

    `platform.processor()` says only "x86_64" on Linux; the model tells apart the hosts a VM
    has landed on, whose speed for the same recipe has differed 2x between sessions.
    """
    return _first_field(_cpuinfo(cpuinfo_text), "model name") or ""


def host_report() -> dict[str, object]:
    """`malloc`, `cpu_model` and `cpu_flags`, as runs and benchmarks record them."""
    cpuinfo_text = _cpuinfo(None)  # read once for both fields
    return {
        "malloc": loaded_malloc(),
        "cpu_model": cpu_model(cpuinfo_text),
        "cpu_flags": cpu_flags(cpuinfo_text),
    }


def malloc_hint(batch_pixels: int) -> str | None:
    """One line saying how to train faster on the CPU, or None when nothing is to be gained.

    batch_pixels: input pixels per training batch (batch size x height x width); small
    batches' activations stay under glibc's mmap threshold and gain nothing.
    """
    if batch_pixels < LARGE_BATCH_PIXELS:
        return None
    if not sys.platform.startswith("linux") or loaded_malloc() != SYSTEM_MALLOC:
        return None
    library = find_tcmalloc()
    how = (
        f"LD_PRELOAD={library}"
        if library is not None
        else "install tcmalloc (Debian: apt install libtcmalloc-minimal4) and LD_PRELOAD it"
    )
    return (
        "malloc: the system allocator faults large batches' activations in afresh on every "
        f"step; tcmalloc avoids that (a batch-2000 fastnet step was 36% faster): {how} "
        "(docs/training.md, 'Memory allocator')"
    )
