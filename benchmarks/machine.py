"""What a benchmark ran on: CPU model and the instruction sets that matter, cores, load, library versions, GPU.

Every benchmark stores :func:`describe_machine` next to its numbers, and :func:`load_average`
before and after timing (other processes on a shared machine slow the numbers down)::

    report = {"machine": describe_machine(), "load_before": load_average(), ...}
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

# /proc/cpuinfo flags that change which CPU kernels PyTorch / oneDNN can use.
RELEVANT_CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_fp16", "amx_tile")
REPO_ROOT = Path(__file__).resolve().parents[1]
# Packages whose versions a reader needs to reproduce a number.
PACKAGES = ("torch", "numpy", "opencv-python", "av", "dlib-bin", "facexlib", "spandrel")


def _cpuinfo() -> tuple[str, list[str]]:
    """CPU model name and the relevant flags it reports (Linux; elsewhere the platform's processor name)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown", []
    model, flags = "unknown", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model == "unknown":
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    return model, [flag for flag in RELEVANT_CPU_FLAGS if flag in flags]


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages (None where the OS does not report them)."""
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def describe_machine() -> dict[str, Any]:
    """A JSON-ready description of this machine and its software."""
    import torch

    model, flags = _cpuinfo()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    description: dict[str, Any] = {
        "platform": platform.platform(),
        "cpu": model,
        "cpu_flags": flags,
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "packages": {name: _version(name) for name in PACKAGES},
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if torch.cuda.is_available():
        index = torch.cuda.current_device()
        description["gpu"] = torch.cuda.get_device_name(index)
        description["gpu_capability"] = ".".join(map(str, torch.cuda.get_device_capability(index)))
        description["cuda"] = torch.version.cuda
    return description


def peak_rss_mib() -> float:
    """This process's peak resident memory (VmHWM) in MiB; 0 where /proc is missing.

    VmHWM rather than ru_maxrss: Linux carries ru_maxrss over fork + exec, so a child process would
    report its parent's peak.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def save_report(report: dict[str, Any], output: Path) -> None:
    """Write a benchmark's report as indented JSON (parent folders made) and say where."""
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {output}")


def run_child(module: str, config: dict[str, Any], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``python -m <module> --child <config as JSON>`` in a fresh process; its last stdout line, parsed.

    A fresh process per measured configuration: each peak RSS is its own and process-wide settings
    (runtime tuning, thread pools, compile caches) do not leak between runs. A failed child gives
    ``{"error": <its last stderr line>}``.
    """
    completed = subprocess.run(
        [sys.executable, "-m", module, "--child", json.dumps(config)],
        cwd=REPO_ROOT, capture_output=True, text=True, env=env,
    )
    if completed.returncode != 0:
        return {"error": (completed.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(completed.stdout.strip().splitlines()[-1])
