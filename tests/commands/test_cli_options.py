"""Options defined once: every option two commands share is spelled, explained and defaulted alike, and its
default is the option group's (experiments/config.py) or the plug-in's (pruning/registry.py)."""

from __future__ import annotations

import dataclasses
import json

import typer.main

from prunescope.cli import build_app
from prunescope.experiments.config import GROUPS, StudyConfig
from prunescope.pruning import registry

# Where a command deliberately means something else by a shared name (a sweep's axes are comma lists, its
# folder is resumed; sensitivity prunes one unit at 0.5 with Wanda by default; train-demo resumes too).
OWN_MEANING = {
    "sweep": {
        "method",
        "sparsity",
        "pattern",
        "allocation",
        "refine",
        "variants",
        "latency",
        "out",
        "overwrite",
    },
    "sensitivity": {"method", "sparsity"},
    "train-demo": {"out", "overwrite", "seed", "device", "dtype"},
    "bench": {"out", "overwrite"},
    "evaluate": {"out", "overwrite", "device", "dtype", "batch_size", "max_tokens", "seqlen", "corpus"},
    "inspect": set(),
}


def _commands():
    return typer.main.get_command(build_app()).commands


def test_every_shared_option_is_spelled_explained_and_defaulted_alike():
    seen: dict[str, tuple] = {}
    shared = 0
    for name, command in _commands().items():
        for param in command.params:
            if param.name in OWN_MEANING.get(name, set()) or param.param_type_name != "option":
                continue
            # An output folder's default names its command (results/study, results/sweep, ...).
            default = None if param.name == "out" else param.default
            facts = (tuple(param.opts), tuple(param.secondary_opts), param.help, default)
            if param.name in seen:
                shared += 1
                assert seen[param.name][1] == facts, (name, param.name, seen[param.name], facts)
            else:
                seen[param.name] = (name, facts)
    assert shared > 40  # study, sweep, sensitivity and prune share most of their options
    for name, command in _commands().items():
        if name in ("study", "sweep", "bench", "prune", "evaluate", "sensitivity"):
            progress = next(p for p in command.params if p.name == "progress")
            assert "--no-progress" in progress.secondary_opts, name


def test_defaults_come_from_the_option_groups_and_the_plugins():
    study = _commands()["study"]
    params = {p.name: p for p in study.params}
    for cls in GROUPS.values():
        for field in dataclasses.fields(cls):
            if field.metadata.get("cli") is False:
                continue
            default = (
                field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
            )
            cli = params[field.name].default
            if isinstance(default, list):
                assert cli in (None, ",".join(map(str, default))), field.name
            else:
                assert cli == default, field.name
    for option in registry.option_fields():
        assert params[option.name].default == option.default, option.name
        assert params[option.name].help == option.help


def test_config_round_trips_through_run_json():
    config = StudyConfig(method="ria", sparsity=0.5, ria_alpha=0.25, variants="dense,masked", seqlen=64)
    again = StudyConfig.from_dict(json.loads(json.dumps(config.asdict())))
    assert again == config
    assert again.prune_spec(64).describe() == config.prune_spec(64).describe()
    changed = again.replace(sparsity=0.4)
    assert changed.prune.sparsity == 0.4 and changed.prune.method == "ria" and config.prune.sparsity == 0.5


def test_one_sparsity_default_shown_everywhere_and_recorded_resolved():
    """study, bench and prune prune at 0.3 by default and --help says so; run.json never records null."""
    shown = {}
    for name, command in _commands().items():
        param = next((p for p in command.params if p.name == "sparsity"), None)
        if param is not None:
            shown[name] = param.show_default if isinstance(param.show_default, str) else param.default
    assert shown["study"] == shown["bench"] == shown["prune"] == "0.3"
    assert all(value not in (None, "") for value in shown.values()), shown  # sweep and sensitivity: their own
    assert StudyConfig().asdict()["prune"]["sparsity"] == 0.3
    assert StudyConfig(pattern="2:4").asdict()["prune"]["sparsity"] == 0.5  # what N:M implies
    recorded = StudyConfig.from_dict(json.loads(json.dumps(StudyConfig().asdict())))
    assert recorded.prune_spec(64).sparsity == 0.3


def test_sweep_default_variants_include_a_format_whose_cost_moves_with_sparsity():
    from prunescope.experiments.config import SWEEP_VARIANTS
    from prunescope.experiments.sweep import SweepConfig

    sweep = {p.name: p for p in _commands()["sweep"].params}
    assert sweep["variants"].default == ",".join(SWEEP_VARIANTS) and "csr" in SWEEP_VARIANTS
    assert SweepConfig().variants == SWEEP_VARIANTS


def test_config_replay_with_a_new_n_m_pattern_takes_that_patterns_sparsity(tmp_path, monkeypatch):
    from prunescope.commands import options

    recorded = tmp_path / "run.json"
    recorded.write_text(json.dumps({"config": StudyConfig(sparsity=0.4).asdict()}))
    monkeypatch.setattr(options, "given_on_command_line", lambda: {"pattern"})
    assert options.build_config({"pattern": "2:4"}, recorded).prune_spec(64).sparsity == 0.5
    assert options.build_config({"pattern": "unstructured"}, recorded).prune_spec(64).sparsity == 0.4
