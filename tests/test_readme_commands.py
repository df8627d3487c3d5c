"""Every `prunescope ...` line of README.md's ```bash blocks runs, in-process, on the demo at a small size.

The README's own flags stay as written; `SMALL` and `SMALL_WHEN` append the flags that keep each command
kind small (never one the README line already gives). A user's own files (`./my-local-hf-dir`,
`./checkpoint-dir`, `texts.txt`) are rewritten to local equivalents built in the test's folder (a copy of
the demo model, a text file). Hub models cannot be reached from the tests: those lines are asserted to end
in the one-line offline error with exit 2, as `--device cuda` does on a machine without CUDA. Each line
runs in its own empty folder (its default output folders collide with no other line's)."""

from __future__ import annotations

import functools
import json
import re
import shlex
import shutil
from pathlib import Path

import pytest
import torch

from prunescope.demo import training
from prunescope.demo.corpus import DEMO_MODEL_DIR
from tests.helpers import TINY_DEMO_RECIPE, run_cli

pytestmark = pytest.mark.usefixtures("one_thread")

README = Path(__file__).resolve().parents[1] / "README.md"

# Evaluation and calibration on a few 16-token windows.
EVAL = shlex.split("--max-tokens 32 --seqlen 16 --no-progress")
CALIB = shlex.split("--calib-samples 1 --calib-seqlen 16")
# Per command kind (its first word): the flags that make it small.
SMALL = {
    "study": EVAL + CALIB,
    "sensitivity": EVAL + CALIB,
    "sweep": EVAL + CALIB,
    "evaluate": EVAL,
    "bench": shlex.split(
        "--tokens 1 --min-time 0.001 --prefill-grid 1x8 --decode-batches 1 --decode-tokens 2 --no-progress"
    ),
    "prune": ["--no-progress"],
    "inspect": [],
    # and the tiny recipe of `TINY_DEMO_RECIPE` (no flag shrinks the corpus or the held-out evaluation)
    "train-demo": ["--minutes", "0.01"],
}
# A word of the command -> more flags for the costly work it asks for.
SMALL_WHEN = {
    "--tasks": ["--tasks-limit", "4"],
    "evo": shlex.split("--evo-generations 1 --evo-offspring 2 --evo-levels 1 --evo-stage-tokens 16,32"),
}
# Over ~5 s on a shared 2-core machine: a sweep of 54 points; lm-eval's task index.
SLOW_WHEN = ("sweep", "--tasks")
# Hub models: asserted to fail in one line, offline, with exit 2.
HUB_MODELS = ("facebook/opt-125m", "meta-llama/")
# Inputs a line reads that another step writes: that step runs first, in the same folder.
MADE_BY = {
    "results/demo/run.json": ["study", "--out", "results/demo"],  # `make demo`
    "pruned/": ["prune", "./checkpoint-dir", "--out", "pruned/", "--sparsity", "0.5"],  # README's prune
}


def readme_commands() -> list[list[str]]:
    """The prunescope lines of README's bash blocks as argv (continuations joined, comments and
    environment assignments dropped, `[--zeros]`'s optional flag given)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                words.pop(0)
            if words and Path(words[0]).name == "prunescope":
                commands.append([re.sub(r"^\[(--[\w-]+)\]$", r"\1", w) for w in words[1:]])
    return commands


def small(argv: list[str]) -> list[str]:
    """`argv` with the flags of `SMALL` and `SMALL_WHEN` it does not give itself (nor their values)."""
    extra = SMALL[argv[0]] + [flag for word, flags in SMALL_WHEN.items() if word in argv for flag in flags]
    kept, given = [], False
    for word in extra:
        if word.startswith("--"):
            given = word in argv
        if not given:
            kept.append(word)
    return argv + kept


def local(argv: list[str], folder: Path) -> list[str]:
    """The user's own files of `argv` made here: the demo model copied for a model folder, a text corpus."""
    rewritten = []
    for word in argv:
        if word in ("./my-local-hf-dir", "./checkpoint-dir"):
            word = str(folder / "model-dir")
            if not Path(word).exists():
                shutil.copytree(DEMO_MODEL_DIR, word)
        elif word == "texts.txt":
            (folder / word).write_text(Path(json.__file__).read_text(encoding="utf-8"), encoding="utf-8")
        rewritten.append(word)
    return rewritten


def inputs(argv: list[str]) -> list[str]:
    """The words of `argv` but its output folder."""
    return [w for i, w in enumerate(argv) if i == 0 or argv[i - 1] not in ("--out", "-o")]


def _case(argv: list[str]):
    marks = [pytest.mark.slow] if any(word in argv for word in SLOW_WHEN) else []
    return pytest.param(argv, id=" ".join(argv)[:80], marks=marks)


def test_the_readme_lists_the_commands_this_test_knows():
    commands = readme_commands()
    assert len(commands) >= 20 and {c[0] for c in commands} == set(SMALL)
    assert any(c[:1] == ["bench"] for c in commands)
    assert all(any(path in inputs(c) for c in commands) for path in MADE_BY)


def _expected_error(argv: list[str]) -> str | None:
    """What the line must fail with here (exit 2, one line), or None when it must succeed."""
    if any(word.startswith(HUB_MODELS) for word in argv):
        return "offline"
    if "cuda" in argv and not torch.cuda.is_available():
        return "CUDA is not available"
    return None


@pytest.mark.parametrize("argv", [_case(c) for c in readme_commands()])
def test_readme_command_runs(argv, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(training, "train_demo", functools.partial(training.train_demo, **TINY_DEMO_RECIPE))
    for path, step in MADE_BY.items():
        if path in inputs(argv):
            run_cli(small(local(step, tmp_path)))
    error = _expected_error(argv)
    result = run_cli(small(local(argv, tmp_path)), expect=2 if error else 0)
    if error:
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and error in lines[0], result.output
