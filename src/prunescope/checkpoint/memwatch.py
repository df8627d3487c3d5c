"""Run a prunescope command and record its peak memory (Linux): `python -m prunescope.checkpoint.memwatch
REPORT.json -- inspect MODEL ...`.

Two figures, because they answer different questions:
- `vm_hwm`: the kernel's peak resident set (VmHWM). Honest for our own streaming code, which reads tensors
  with plain file reads, but inflated by any memory-mapped file (accelerate/safetensors map checkpoints:
  those pages are counted while mapped although the kernel can drop them at any time).
- `peak_anon`: the highest anonymous resident memory (RssAnon, heap and tensors, what cannot be dropped),
  sampled every millisecond by a thread. A tensor must be touched page by page to count, which takes far
  longer than the sampling period for any allocation that matters here.
Both come with their value just before the command runs (imports done), so `peak - baseline` is the
command's own cost.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path


def status() -> dict[str, int]:
    """Fields of /proc/self/status in bytes (VmRSS, VmHWM, RssAnon, RssFile, ...)."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        parts = value.split()
        if len(parts) == 2 and parts[1] == "kB":
            fields[key] = int(parts[0]) * 1024
    return fields


class AnonPeak:
    def __init__(self, period: float = 0.001) -> None:
        self.period = period
        self.peak = status()["RssAnon"]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, status()["RssAnon"])
            time.sleep(self.period)

    def __enter__(self) -> AnonPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, status()["RssAnon"])


def main(argv: list[str]) -> int:
    report, args = Path(argv[0]), argv[2:] if argv[1:2] == ["--"] else argv[1:]
    # Model-independent framework code (~90 MB of modules for transformers 5) is part of the baseline too.
    import accelerate  # noqa: F401
    import transformers.generation  # noqa: F401
    import transformers.modeling_utils  # noqa: F401

    from prunescope.cli import app, import_everything

    import_everything()  # imports (torch, transformers, pandas) belong to the baseline

    before = status()
    start = time.perf_counter()
    code = 0
    with AnonPeak() as anon:
        try:
            # Without standalone mode click returns a typer.Exit's code instead of exiting.
            result = app(args, standalone_mode=False)
            code = result if isinstance(result, int) else 0
        except SystemExit as exit_:
            code = int(exit_.code or 0)
        except Exception as error:  # noqa: BLE001 - reported, then re-raised as a non-zero exit
            print(f"memwatch: {type(error).__name__}: {error}", file=sys.stderr)
            code = 1
    after = status()
    report.write_text(
        json.dumps(
            {
                "args": args,
                "returncode": code,
                "seconds": time.perf_counter() - start,
                "baseline_rss": before["VmRSS"],
                "baseline_anon": before["RssAnon"],
                "vm_hwm": after["VmHWM"],
                "peak_anon": anon.peak,
            },
            indent=2,
        )
    )
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
