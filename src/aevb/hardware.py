"""What the CPU can do: its model name, its vector instruction sets, and whether it has bf16
dot-product instructions (which decide whether ``--precision bf16`` may run on it).

Detected from the operating system's report (``/proc/cpuinfo`` on Linux, ``sysctl`` on macOS),
never assumed: the machines this runs on vary between Intel, AMD and ARM hosts.
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from pathlib import Path

from .errors import ConfigError

#: Setting this environment variable to 1 lets ``--precision bf16`` run on a CPU without bf16
#: instructions (torch computes bf16 products everywhere, several times slower without them):
#: for tests of the path's exactness and accuracy, never for speed. Set to ``emulate``, the
#: training step's bf16 products run through float32 kernels and are rounded to bf16 (the same
#: numbers up to the order of float32 sums, at nearly float32's speed): for measuring bf16
#: training's accuracy on such a CPU.
FORCE_ENV = "AEVB_FORCE_CPU_BF16"
EMULATE = "emulate"

#: bf16 dot-product instructions, best first: x86 AMX tiles, AVX-512 BF16, ARMv8.6 BF16
BF16_INSTRUCTIONS = ("amx_bf16", "avx512_bf16", "bf16")
#: the vector instruction sets worth naming beside a speed figure
VECTOR_SETS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "avx512f",
    "avx512_bf16",
    "amx_bf16",
    "neon",
    "asimd",
)


@functools.cache
def _cpuinfo() -> tuple[str, frozenset[str]]:
    """(model name, instruction-set flags) as the operating system reports them."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    name, flags = parse_cpuinfo(text)
    if not text and platform.system() == "Darwin":
        name, flags = _sysctl_cpu()
    return name or platform.processor() or platform.machine() or "unknown CPU", flags


def parse_cpuinfo(text: str) -> tuple[str, frozenset[str]]:
    """(model name, flags) of Linux's /proc/cpuinfo text: x86 "model name"/"flags", ARM
    "Hardware" or "CPU model"/"Features"; the first processor's."""
    name, flags = "", frozenset[str]()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and not name:
            name = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = frozenset(value.split())
    return name, flags


def _sysctl_cpu() -> tuple[str, frozenset[str]]:
    """macOS: the brand string and the ARM features sysctl reports as present (hw.optional)."""
    try:
        out = subprocess.run(["sysctl", "-a"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "", frozenset()
    name, flags = "", set()
    for line in out.splitlines():
        key, _, value = line.partition(":")
        if key == "machdep.cpu.brand_string":
            name = value.strip()
        elif key.startswith("hw.optional.arm.FEAT_") and value.strip() == "1":
            flags.add(key.rsplit("FEAT_", 1)[1].lower())
        elif key == "hw.optional.neon" and value.strip() == "1":
            flags.add("neon")
    return name, frozenset(flags)


def cpu_model() -> str:
    """The CPU's model name (e.g. ``AMD EPYC 7B13``)."""
    return _cpuinfo()[0]


def cpu_flags() -> frozenset[str]:
    """The instruction-set flags the operating system reports for the CPU (lower case)."""
    return _cpuinfo()[1]


def bf16_instructions() -> list[str]:
    """The CPU's bf16 dot-product instruction sets, best first (empty when it has none)."""
    flags = cpu_flags()
    return [f for f in BF16_INSTRUCTIONS if f in flags]


def describe_cpu() -> str:
    """One line for beside a speed figure: model, cores and the vector sets present."""
    present = [f for f in VECTOR_SETS if f in cpu_flags()]
    sets = ", ".join(present) if present else "no vector extensions reported"
    return f"{cpu_model()} ({os.cpu_count()} cores; {sets})"


def forced_bf16() -> bool:
    """Whether :data:`FORCE_ENV` asks for the bf16 path on a CPU without bf16 instructions."""
    return os.environ.get(FORCE_ENV, "") in ("1", EMULATE)


def emulated_bf16(device_type: str) -> bool:
    """Whether the training step's bf16 products are emulated in float32 kernels: asked for by
    ``FORCE_ENV=emulate`` on a CPU without bf16 instructions (one that has them runs them)."""
    return (
        device_type == "cpu"
        and os.environ.get(FORCE_ENV, "") == EMULATE
        and not bf16_instructions()
    )


def check_bf16(device_type: str, option: str = "--precision bf16") -> str:
    """What runs ``option`` (bf16 products) on a device of ``device_type``: "cuda", or the CPU's
    bf16 instruction set (see :func:`check_cpu_bf16`); a :class:`ConfigError` elsewhere."""
    if device_type == "cuda":
        return "cuda"
    if device_type != "cpu":
        raise ConfigError(f"{option} runs on CUDA GPUs and CPUs, not {device_type}; drop it")
    return check_cpu_bf16(option)


def bf16_is_fast(device_type: str) -> bool:
    """Whether bf16 products beat float32 there: a CUDA GPU, or a CPU with bf16 instructions."""
    return device_type == "cuda" or (device_type == "cpu" and bool(bf16_instructions()))


def check_cpu_bf16(option: str = "--precision bf16") -> str:
    """The bf16 instruction set that ``option`` will use on this CPU, or "forced" (see
    :data:`FORCE_ENV`); a :class:`ConfigError` naming the CPU and what it lacks otherwise."""
    found = bf16_instructions()
    if found:
        return found[0]
    if forced_bf16():
        return "forced"
    raise ConfigError(
        f"{option} on CPU needs bf16 dot-product instructions (AMX, AVX-512 BF16 or ARM BF16) "
        f"and this CPU ({describe_cpu()}) has none, so bf16 would be slower than float32; "
        "drop the option (float32) or run on a CPU or GPU that has them"
    )
