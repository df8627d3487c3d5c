"""Shared fixtures: one torch thread, a tiny local model folder (model builders live in tests/helpers.py)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

# Triton fixes at its first import whether it interprets kernels: without a GPU the suite runs the Triton
# kernels on the CPU through its interpreter (tests/formats/test_triton_bitmask.py); with one, compiled.
if "triton" not in __import__("sys").modules and not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from tests.helpers import make_tokenizer, tiny_opt  # noqa: E402


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for the module: tiny matrices gain nothing from threads, and on a shared 2-core
    machine OpenMP threads competing with other work make every small op ~10x slower. Use with
    `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A saved tiny OPT + tokenizer folder, loadable through from_pretrained like any local model."""
    path = tmp_path_factory.mktemp("tiny-opt")
    tokenizer = make_tokenizer()
    model = tiny_opt(vocab_size=len(tokenizer))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
