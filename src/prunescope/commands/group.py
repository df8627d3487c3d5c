"""The `prunescope` command group: usage errors in one line, and each command imported only when it is run
or its own help is asked for (click's "LazyGroup" pattern), so that `prunescope --help`, `--version` and a
mistyped command start without torch, transformers or pandas.

This module stays import-light: typer, rich and `options.py` (itself typer only), nothing of the package's
models, pruning or experiments.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass

import typer
import typer.main
from rich.console import Console
from typer.core import TyperCommand, TyperGroup

from .options import refresh

try:  # typer >= 0.20 vendors click; its classes are what the parser uses
    from typer._click.core import Command, Context
    from typer._click.exceptions import ClickException, NoArgsIsHelpError
except ImportError:  # pragma: no cover - older typer on top of click
    from click.core import Command, Context
    from click.exceptions import ClickException, NoArgsIsHelpError

# Every one-line error goes here (usage errors below, PrunescopeError in common.user_errors).
err_console = Console(stderr=True)


class OneLineErrors(TyperGroup):
    """The command group whose usage errors (a value of the wrong type, an unknown option) are one line
    and exit 2, like every other bad input; `prunescope` alone still prints the help."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except NoArgsIsHelpError as error:
            error.show()
            sys.exit(error.exit_code)
        except ClickException as error:
            name = error.ctx.command_path if getattr(error, "ctx", None) else "prunescope"
            err_console.print(
                f"[bold red]error:[/] {error.format_message()} (see {name} --help)",
                highlight=False,
                soft_wrap=True,
            )
            sys.exit(error.exit_code)
        except typer.Abort:
            err_console.print("aborted; nothing was written")
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


@dataclass(frozen=True)
class LazyCommand:
    """Where a command's function lives, and what the group's help lists for it without importing it."""

    module: str  # e.g. "prunescope.commands.study"
    function: str
    help: str  # the first paragraph of the function's docstring (tests/commands/test_startup.py checks)

    def load(self) -> Callable:
        """The command's function, its options generated now from the registries as they are (a plug-in
        registered before this call has its options on every command that takes its kind)."""
        function = getattr(importlib.import_module(self.module), self.function)
        return refresh(function) if hasattr(function, "__options__") else function

    def build(self, name: str) -> Command:
        # A one-command typer app turns the function into the click command a group would hold.
        single = typer.Typer(add_completion=False)
        single.command(name)(self.load())
        return typer.main.get_command(single)

    def placeholder(self, name: str) -> Command:
        """The command as the group's help lists it: name and help, nothing imported."""
        return TyperCommand(name, help=self.help)


class LazyCommands(MutableMapping[str, Command]):
    """A group's commands by name; a command is built the first time it is looked up (a name test or a
    listing of names builds none)."""

    def __init__(self, lazy: Mapping[str, LazyCommand], built: Mapping[str, Command]) -> None:
        self._lazy = dict(lazy)
        self._built = dict(built)

    def __getitem__(self, name: str) -> Command:
        if name not in self._built:
            if name not in self._lazy:
                raise KeyError(name)
            self._built[name] = self._lazy[name].build(name)
        return self._built[name]

    def __setitem__(self, name: str, command: Command) -> None:
        self._built[name] = command

    def __delitem__(self, name: str) -> None:
        if name not in self:
            raise KeyError(name)
        self._lazy.pop(name, None)
        self._built.pop(name, None)

    def __contains__(self, name: object) -> bool:
        return name in self._lazy or name in self._built

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys([*self._lazy, *self._built]))

    def __len__(self) -> int:
        return len(dict.fromkeys([*self._lazy, *self._built]))

    def listed(self, name: str) -> Command | None:
        """The command for the group's help: the built one if it is, else its placeholder."""
        if name in self._built or name not in self._lazy:
            return self._built.get(name)
        return self._lazy[name].placeholder(name)


class LazyGroup(OneLineErrors):
    """A group whose commands are the `lazy` table's, each imported and built when asked for: running
    it or its --help imports one command; the group's own --help and an unknown name import none.

    Subclass it with the table: `class Group(LazyGroup): lazy = {"study": LazyCommand(...)}`."""

    lazy: Mapping[str, LazyCommand] = {}

    def __init__(self, **attrs) -> None:
        super().__init__(**attrs)
        self.commands = LazyCommands(self.lazy, built=self.commands)
        self._listing = False

    def list_commands(self, ctx: Context) -> list[str]:
        return list(self.commands)

    def get_command(self, ctx: Context, cmd_name: str) -> Command | None:
        if self._listing:
            return self.commands.listed(cmd_name)
        return self.commands.get(cmd_name)

    def format_help(self, ctx: Context, formatter) -> None:
        # The listing needs each command's name and help only: placeholders, so that no command module
        # (nor torch behind its options) is imported to print it.
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False
