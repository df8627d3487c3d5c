"""The software a result was measured with (run.json)."""

from __future__ import annotations

import platform

import torch

from ..version import __version__


def versions() -> dict:
    import transformers

    return {
        "prunescope": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
    }
