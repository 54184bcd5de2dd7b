"""CPU arithmetic for the torch segmentation backends: native-bf16 detection and the bf16/channels-last choice.

bf16 autocast is used only on CPUs that execute bf16 natively (x86 AVX512-BF16 or AMX-BF16, read from the
CPU's flags, never assumed): there it is measured faster than fp32 (docs/SPEED.md); elsewhere bf16 is emulated
and slower, so fp32 stays. nnU-Net itself predicts under fp16 autocast on CUDA; on a CPU it runs fp32.
``KNEEPIPELINE_CPU_BF16=0`` forces fp32 (``=1`` forces bf16 autocast, e.g. to measure it where emulated).
"""
from __future__ import annotations

import os
import platform
from functools import lru_cache
from typing import FrozenSet, Optional

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
ENV_BF16 = "KNEEPIPELINE_CPU_BF16"


@lru_cache(maxsize=1)
def cpu_flags() -> FrozenSet[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty elsewhere: nothing is assumed)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_capability() -> Optional[str]:
    """torch's own view of the CPU's vector unit (e.g. AVX2, AVX512), None when torch cannot say."""
    try:
        import torch

        return str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # noqa: BLE001 - informational only
        return None


def native_bf16(flags: Optional[FrozenSet[str]] = None) -> bool:
    """True when the CPU executes bf16 matrix arithmetic natively (AVX512-BF16 or AMX-BF16)."""
    if platform.machine().lower() not in ("x86_64", "amd64") and flags is None:
        return False
    return any(f in (cpu_flags() if flags is None else flags) for f in NATIVE_BF16_FLAGS)


def use_cpu_bf16(environ=None) -> bool:
    """Whether the torch backends run their networks under bf16 autocast on the CPU."""
    value = (os.environ if environ is None else environ).get(ENV_BF16, "").strip().lower()
    if value in ("0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    return native_bf16()
