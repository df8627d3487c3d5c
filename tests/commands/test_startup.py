"""What the command line imports before it answers: `prunescope --help`, `--version` and a mistyped command
import no command module (hence no torch, transformers or pandas); a command's own --help or a bad option
imports its options' plug-ins (torch) but no transformers, pandas, datasets, lm_eval or matplotlib.

Module sets are asserted, not times: each check runs in a fresh interpreter, where nothing is imported yet.
"""

from __future__ import annotations

import importlib
import inspect
import json
import subprocess
import sys

import pytest
import typer.main

import prunescope
from prunescope import __version__
from prunescope.cli import COMMANDS, build_app
from prunescope.commands.group import LazyCommands
from tests.helpers import run_cli

# Invokes the app once per JSON-encoded argument list, recording after each its exit code and every module
# imported so far.
PROBE = """
import json, sys
from prunescope.cli import app
report, runs = sys.argv[1], []
for args in map(json.loads, sys.argv[2:]):
    try:
        app(args, prog_name="prunescope")
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    runs.append({"args": args, "code": code, "modules": sorted(sys.modules)})
with open(report, "w", encoding="utf-8") as file:
    json.dump(runs, file)
"""

LIBRARIES = ("transformers", "pandas", "datasets", "lm_eval", "matplotlib")


def _probe(tmp_path, *invocations: list[str]) -> list[dict]:
    report = tmp_path / "report.json"
    argv = [sys.executable, "-c", PROBE, str(report), *map(json.dumps, invocations)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and report.exists(), done.stderr
    return json.loads(report.read_text(encoding="utf-8"))


def _imported(run: dict, libraries) -> list[str]:
    return [name for name in libraries if name in run["modules"]]


@pytest.mark.parametrize(
    "args, code", [(["--help"], 0), (["--version"], 0), (["stduy"], 2)], ids=["help", "version", "typo"]
)
def test_the_group_answers_without_any_command_or_heavy_library(args, code, tmp_path):
    (run,) = _probe(tmp_path, args)
    assert run["code"] == code
    assert _imported(run, ("torch", "numpy", *LIBRARIES)) == []
    commands = {m for m in run["modules"] if m.startswith("prunescope.commands.")}
    assert commands <= {"prunescope.commands.group", "prunescope.commands.options"}


@pytest.mark.slow  # imports torch: ~4 s alone, more on a shared machine
def test_a_command_help_or_bad_option_imports_no_model_or_data_library(tmp_path):
    # One interpreter for both: torch, which both import, is the slow part.
    help_run, bad_run = _probe(tmp_path, ["study", "--help"], ["study", "--bogus"])
    assert (help_run["code"], bad_run["code"]) == (0, 2)
    assert _imported(help_run, LIBRARIES) == []
    assert _imported(bad_run, LIBRARIES) == []
    assert "prunescope.commands.study" in help_run["modules"]
    assert "prunescope.commands.sweep" not in bad_run["modules"]  # only the command asked for


def test_the_public_api_resolves_each_name_on_first_use():
    assert set(prunescope.__all__) <= set(dir(prunescope))
    for name in prunescope.__all__:
        assert getattr(prunescope, name) is not None, name
    assert prunescope.PruneSpec is importlib.import_module("prunescope.pruning").PruneSpec
    with pytest.raises(AttributeError, match="no_such_name"):
        prunescope.no_such_name  # noqa: B018


def test_version_names_prunescope_and_python():
    output = run_cli(["--version"]).output
    assert output.startswith(f"prunescope {__version__} (Python 3.")


@pytest.mark.parametrize("name", list(COMMANDS))
def test_the_listed_help_is_the_first_paragraph_of_the_docstring(name):
    entry = COMMANDS[name]
    first_paragraph = inspect.getdoc(entry.load()).split("\n\n")[0]
    assert " ".join(first_paragraph.split()) == entry.help


def test_the_group_help_lists_every_command_with_its_help():
    output = " ".join(run_cli(["--help"]).output.replace("│", " ").split())
    for name, entry in COMMANDS.items():
        assert f"{name} {' '.join(entry.help.split()[:3])}" in output


class _Counted:
    """A LazyCommand stand-in that counts its builds."""

    def __init__(self) -> None:
        self.builds = 0

    def build(self, name: str):
        self.builds += 1
        return f"command {name}"

    def placeholder(self, name: str):
        return f"placeholder {name}"


def test_lazy_commands_build_on_lookup_only_and_once():
    study, sweep = _Counted(), _Counted()
    commands = LazyCommands({"study": study, "sweep": sweep}, built={})
    assert list(commands) == ["study", "sweep"] and "study" in commands and "nosuch" not in commands
    assert commands.listed("study") == "placeholder study" and commands.get("nosuch") is None
    assert (study.builds, sweep.builds) == (0, 0)
    assert commands["study"] == commands["study"] == "command study"
    assert (study.builds, sweep.builds) == (1, 0)
    assert commands.listed("study") == "command study"  # once built, the listing shows the real one


def test_build_app_gives_every_command_with_its_options():
    commands = typer.main.get_command(build_app()).commands
    assert list(commands) == list(COMMANDS)
    assert "--sparsity" in {opt for p in commands["study"].params for opt in p.opts}
