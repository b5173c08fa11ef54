"""The machine a benchmark ran on, and the peak memory of a block of work."""

from __future__ import annotations

import os
import platform
import re
import time
from contextlib import contextmanager
from pathlib import Path

import torch


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    info["date"] = time.strftime("%Y-%m-%d")
    return info


def _vm(key: str) -> int | None:
    try:
        m = re.search(rf"{key}:\s+(\d+) kB", Path("/proc/self/status").read_text())
    except OSError:
        return None
    return int(m.group(1)) if m else None


@contextmanager
def peak_memory(out: dict, device: torch.device):
    """Peak resident memory (MB) while the block runs: the kernel's high-water mark, reset first
    (/proc/self/clear_refs); where that is not allowed, the process peak so far. CUDA: peak allocated."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    yield
    hwm = _vm("VmHWM")
    if hwm is None:
        import resource

        hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out["peak_rss_mb"] = round(hwm / 1024, 1)
    if device.type == "cuda":
        out["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
