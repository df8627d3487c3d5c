"""Run a command in a fresh subprocess and measure its wall time and peak RSS (kernel high-water mark)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

CLI = [sys.executable, "-c", "from prunescope.cli import app; app()"]


def run_measured(command: list[str]) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = process.stdout.read().decode(errors="replace")
    _, status, usage = os.wait4(process.pid, 0)  # rusage of this child alone
    seconds = time.perf_counter() - start
    if status != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{output[-2000:]}")
    return {"wall_s": seconds, "peak_rss_bytes": usage.ru_maxrss * 1024, "command": command[3:]}
