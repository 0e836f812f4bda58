"""Benchmark result files: one JSON object per run (workload, engine, device, commit,
command, and the figures that apply)."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name()
    import platform

    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def git_commit() -> str:
    """The commit benchmarked: ``LLMSERVE_COMMIT`` when set (a copied tree has no git)."""
    if os.environ.get("LLMSERVE_COMMIT"):
        return os.environ["LLMSERVE_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _command_line() -> str:
    """How this run was started: ``llmserve ...`` for the CLI, ``python SCRIPT ...`` else."""
    prog = sys.argv[0]
    is_cli = os.path.basename(prog) == "llmserve" or prog.endswith(os.path.join("cli", "main.py"))
    head = ["llmserve"] if is_cli else ["python", os.path.relpath(prog)]
    return " ".join(head + sys.argv[1:])


def make_result(workload: str, engine: str, device: str, figures: dict[str, Any]) -> dict:
    return {"workload": workload, "engine": engine, "device": device_name(device),
            "commit": git_commit(), "command": _command_line(),
            "date": datetime.date.today().isoformat(), **figures}


def write_result(result: dict, results_dir: str) -> Path:
    folder = Path(results_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{result['date']}-{result['workload']}-{result['engine']}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path
