"""Command-line options generated from the option groups (`experiments/config.py`) and the plug-in
registries (`pruning/registry.py`): an option, its default and its help are written once, in a dataclass
field or a plug-in's options, and every command that takes it shows the same flag, default and help.

    @with_options(lambda: group_options(EvaluationOptions) + plugin_options())
    @user_errors
    def study(out: OutOpt = ..., **options): ...

The signature typer reads is rebuilt by `refresh(command)` (cli.py calls it when it assembles the app), so
a plug-in registered before that, e.g. from a test, gets its options on every command.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer


@dataclass(frozen=True)
class CliOption:
    name: str  # the Python parameter (and, dashed, the flag)
    type: Any
    default: Any
    help: str
    flags: tuple[str, ...] = ()
    # What --help shows as the default when the value itself says nothing (None resolved later, e.g. 0.3).
    shown_default: str | None = None

    def parameter(self) -> inspect.Parameter:
        flags = self.flags or (f"--{self.name.replace('_', '-')}",)
        if self.type is bool and len(flags) == 1:
            flags = (f"{flags[0]}/--no-{flags[0][2:]}",)
        shown = {"show_default": self.shown_default} if self.shown_default is not None else {}
        annotation = Annotated[self.type, typer.Option(*flags, help=self.help, **shown)]
        return inspect.Parameter(
            self.name, inspect.Parameter.KEYWORD_ONLY, default=self.default, annotation=annotation
        )

    def replace(self, **changes: Any) -> CliOption:
        return dataclasses.replace(self, **changes)


# The options of a command's output, the same in every command (common.py derives its aliases from them).
OUT = CliOption(
    "out", Path, None, "Output folder; written whole or not at all (see --overwrite).", ("--out", "-o")
)
OVERWRITE = CliOption("overwrite", bool, False, "Replace an existing output folder.")
PROGRESS = CliOption("progress", bool, True, "Show progress on stderr.")
CONFIG = CliOption(
    "config",
    Path | None,
    None,
    "A results folder's run.json: re-run that configuration exactly; flags given override it.",
)


def run_options(out: str) -> list[CliOption]:
    """--out (defaulting to `out`), --overwrite, --config and --progress of a command that runs a study."""
    return [OUT.replace(default=Path(out)), OVERWRITE, CONFIG, PROGRESS]


def _help(text: str | Callable[[], str]) -> str:
    return text() if callable(text) else text


def _cli_default(f: dataclasses.Field, cli_type: Any) -> Any:
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    if isinstance(default, list):
        # A comma list on the command line ("dense,masked"), or a repeatable option that defaults to none.
        return ",".join(str(item) for item in default) if cli_type in (str,) else None
    return default


def group_options(
    cls: type, *, only: Iterable[str] | None = None, skip: Iterable[str] = ()
) -> list[CliOption]:
    """The fields of an option group as command-line options (fields with `cli=False` are not options)."""
    names = list(only) if only is not None else None
    options = []
    for f in dataclasses.fields(cls):
        if f.metadata.get("cli") is False or f.name in skip or (names is not None and f.name not in names):
            continue
        cli_type = f.metadata.get("type", f.type)
        if isinstance(cli_type, str):  # postponed annotation: resolve it from the class's module
            cli_type = inspect.get_annotations(cls, eval_str=True)[f.name]
        options.append(
            CliOption(
                f.name,
                cli_type,
                _cli_default(f, cli_type),
                _help(f.metadata.get("help", "")),
                f.metadata.get("flags", ()),
                f.metadata.get("shown_default"),
            )
        )
    if names is not None:
        options.sort(key=lambda o: names.index(o.name))
    return options


def option_annotation(name: str) -> Any:
    """`Annotated[type, typer.Option(...)]` of one option of a study's groups, for a command that declares
    it as its own parameter (the default is the group's: write it as the parameter's default)."""
    from ..experiments.config import GROUPS, group_of

    (option,) = group_options(GROUPS[group_of(name)], only=[name])
    return option.parameter().annotation


def plugin_options(kinds: Iterable[str] = ("method", "allocation", "refinement")) -> list[CliOption]:
    """Every registered plug-in option of `kinds`, by its flat name (--ria-alpha, --owl-m, ...)."""
    from ..pruning import registry

    kinds = tuple(kinds)
    return [CliOption(o.name, o.type, o.default, o.help) for o in registry.option_fields() if o.kind in kinds]


def override(options: list[CliOption], **changes: dict[str, Any]) -> list[CliOption]:
    """`options` with some fields changed per option, e.g. override(opts, sparsity={"default": 0.5}); a new
    default is what --help shows."""
    shown = {name: {"shown_default": None} if "default" in change else {} for name, change in changes.items()}
    return [o.replace(**{**shown[o.name], **changes[o.name]}) if o.name in changes else o for o in options]


def refresh(command: Callable) -> Callable:
    """Rebuild the signature typer reads from the command's own parameters and its generated options."""
    own = [
        p
        for p in inspect.signature(command.__wrapped__).parameters.values()
        if p.kind is not inspect.Parameter.VAR_KEYWORD
    ]
    taken = {p.name for p in own}
    generated = []
    for option in command.__options__():
        if option.name not in taken:
            taken.add(option.name)
            generated.append(option.parameter())
    params = own + generated
    hints = inspect.get_annotations(command.__wrapped__, eval_str=True)
    command.__signature__ = inspect.Signature(
        [p.replace(annotation=hints.get(p.name, p.annotation)) for p in own] + generated
    )
    command.__annotations__ = {p.name: command.__signature__.parameters[p.name].annotation for p in params}
    return command


def with_options(options: Callable[[], list[CliOption]]):
    """Give a command (a function taking `**options`) the generated options; see the module docstring."""

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def command(**kwargs: Any) -> Any:
            return fn(**kwargs)

        command.__options__ = options
        del command.__annotations__
        return refresh(command)

    return decorate


def _typed_parameters() -> tuple[Any, set[str]]:
    """The running command's click context (None outside a command) and the parameters the user typed."""
    try:
        from typer._click.core import ParameterSource
        from typer._click.globals import get_current_context
    except ImportError:  # pragma: no cover - older typer on top of click
        from click.core import ParameterSource
        from click.globals import get_current_context
    ctx = get_current_context(silent=True)
    if ctx is None:
        return None, set()
    return ctx, {name for name in ctx.params if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE}


def given_on_command_line() -> set[str]:
    """Parameters the user typed (not defaults): with --config, only these override the recorded run."""
    return _typed_parameters()[1]


def command_line() -> str:
    """The running command as a shell line from what the user typed (defaults left out), for records such
    as a pruned checkpoint's model card; "" outside a command."""
    import shlex

    ctx, typed = _typed_parameters()
    if ctx is None:
        return ""
    words = ["prunescope", ctx.info_name or ""]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if param.name not in typed or value is None:
            continue
        if param.param_type_name != "option":
            words.append(str(value))
        elif isinstance(value, bool):
            words.append(param.opts[0] if value or not param.secondary_opts else param.secondary_opts[0])
        else:
            for item in value if isinstance(value, list | tuple) else [value]:
                words += [param.opts[0], str(item)]
    return shlex.join(words)


def study_options(
    skip: Iterable[str] = (), groups: Iterable[str] | None = None, kinds: Iterable[str] | None = None
) -> list[CliOption]:
    """The options of a study's `groups` (default: all) and plug-in `kinds`; a command drops what it does
    not take with `skip`."""
    from ..experiments.config import GROUPS

    skip = set(skip)
    chosen = [GROUPS[g] for g in groups] if groups is not None else list(GROUPS.values())
    options = [o for cls in chosen for o in group_options(cls, skip=skip)]
    plugins = plugin_options() if kinds is None else plugin_options(kinds)
    return options + [o for o in plugins if o.name not in skip]


def load_config(path: Any) -> dict:
    """The "config" of a recorded run.json (study or sensitivity base) for `--config`."""
    import json
    from pathlib import Path

    from ..errors import PrunescopeError

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise PrunescopeError(f"--config {str(path)!r}: cannot read a run.json ({error})") from None
    config = data.get("config", data) if isinstance(data, dict) else None
    if isinstance(config, dict) and "base" in config:  # a sensitivity or sweep record
        config = config["base"]
    if not isinstance(config, dict):
        raise PrunescopeError(f"--config {str(path)!r}: no study configuration in it")
    return config


def build_config(options: dict, config_file: Any = None, **fixed: Any):
    """A StudyConfig from the command's options; with a recorded run, only the typed flags override it."""
    from ..experiments.config import StudyConfig
    from ..pruning.spec import Pattern

    if config_file is None:
        return StudyConfig(**options, **fixed)
    given = given_on_command_line()
    recorded = StudyConfig.from_dict(load_config(config_file))
    changes = {k: v for k, v in options.items() if k in given}
    if "pattern" in changes and "sparsity" not in changes and Pattern.parse(changes["pattern"]).structured:
        changes["sparsity"] = None  # a new N:M pattern fixes its own, not the run's recorded sparsity
    return recorded.replace(**changes, **fixed)
