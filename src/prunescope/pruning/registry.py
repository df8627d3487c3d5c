"""One registry per kind of pruning plug-in: methods, allocations (per-block / per-matrix sparsity) and
refinements (mask changes after a layer is pruned).

A plug-in is one file that calls `register_method`, `register_allocation` or `register_refinement` with its
functions, the paper and code it follows, and a frozen dataclass of typed options. The options validate
themselves in `__post_init__` (PrunescopeError) and give each field a default and `metadata={"help": ...}`.
Outside the dataclass an option has a flat name, `<prefix>_<field>` (`ria` + `alpha` -> `ria_alpha`, the
command line's `--ria-alpha`; a trailing `_` is dropped, so OWL's `lambda_` is `owl_lambda`).
`option_fields()` lists every registered option: commands generate their flags from it and
`PruneSpec.create` accepts them by flat name (`options_from_flat`).
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

from ..errors import PrunescopeError

SCOPES = ("global", "layer", "row")  # the comparison groups a mask can be chosen in


@dataclass(frozen=True)
class NoOptions:
    """The options of a plug-in that has none."""


@dataclass(frozen=True)
class OptionField:
    """One plug-in option under its flat name, as the command line and `PruneSpec.create` see it."""

    name: str  # flat: "ria_alpha"
    type: type
    default: Any
    help: str
    kind: str  # "method", "allocation" or "refinement"
    plugin: str  # "ria"
    attribute: str  # the field of the plug-in's options dataclass: "alpha"


@dataclass(frozen=True, kw_only=True)
class Plugin:
    """What every kind of plug-in declares."""

    kind: ClassVar[str] = "plug-in"
    name: str
    cite: str  # the paper and the reference code it follows ("" for baselines)
    options: type = NoOptions
    prefix: str = ""  # of the flat option names
    # flat name -> the name older run.json files and callers use (SparseGPT's `damp`): describe() writes the
    # old name, `PruneSpec.create` accepts both.
    old_names: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (dataclasses.is_dataclass(self.options) and self.options.__dataclass_params__.frozen):
            raise TypeError(f"{self.kind} {self.name}: options must be a frozen dataclass")
        for item in dataclasses.fields(self.options):
            if item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING:
                raise TypeError(f"{self.kind} {self.name}: option {item.name} needs a default")
            if not item.metadata.get("help"):
                raise TypeError(f"{self.kind} {self.name}: option {item.name} needs metadata help")
        if dataclasses.fields(self.options) and not self.prefix:
            raise TypeError(f"{self.kind} {self.name}: options need a flat-name prefix")

    def option_fields(self) -> list[OptionField]:
        hints = typing.get_type_hints(self.options)
        return [
            OptionField(
                name=f"{self.prefix}_{item.name.rstrip('_')}",
                type=hints[item.name],
                default=item.default if item.default is not dataclasses.MISSING else item.default_factory(),
                help=item.metadata["help"],
                kind=self.kind,
                plugin=self.name,
                attribute=item.name,
            )
            for item in dataclasses.fields(self.options)
        ]

    def flat(self, options: Any) -> dict[str, Any]:
        """`options` (an instance of `self.options`) by flat name."""
        return {item.name: getattr(options, item.attribute) for item in self.option_fields()}

    def describe(self, options: Any) -> dict[str, Any]:
        """What run.json records of `options`: the flat names, or the old ones where there are."""
        return {self.old_names.get(name, name): value for name, value in self.flat(options).items()}


@dataclass(frozen=True, kw_only=True)
class MethodPlugin(Plugin):
    """A pruning method: how a projection's mask (and possibly its kept weights) is chosen.

    Either calibrated (`stats` + `prune_layer`): `stats(in_features, device)` accumulates over the calibration
    samples through `.add(inputs)` while the driver runs them through the still dense block, then
    `prune_layer(module, stats, spec) -> LayerChange` prunes the projection in place.
    Or scored without calibration (`score`): `score(weight, spec, layer_index)` -> float scores, lower =
    pruned first, and the shared selection (`scoring.py`) picks the mask by scope or N:M pattern. On the
    from-disk path scores are computed on row blocks, so a weight's score must depend on its own value
    only, or, with `weight_free`, on the layer's shape, the seed and the layer index only (random).
    """

    kind: ClassVar[str] = "method"
    natural_scope: str  # the scope of the method's paper, used when the user picks none
    scopes: tuple[str, ...] = SCOPES  # the scopes it accepts
    stats: type | None = None
    prune_layer: Callable | None = None
    score: Callable | None = None
    weight_free: bool = False
    # prune_layer honours `spec.quantize`: one pass prunes and quantizes (SparseGPT's joint GPTQ loop)
    quantizes: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.stats is None) != (self.prune_layer is None) or (self.score is None) == (self.stats is None):
            raise TypeError(f"method {self.name}: give either stats and prune_layer, or score")
        if self.natural_scope not in self.scopes or not set(self.scopes) <= set(SCOPES):
            raise TypeError(f"method {self.name}: scopes must be among {SCOPES} and hold the natural one")

    @property
    def calibrated(self) -> bool:
        return self.stats is not None


@dataclass(frozen=True, kw_only=True)
class AllocationPlugin(Plugin):
    """A sparsity allocation: `allocate(context) -> Allocation | None` (see `allocations/context.py`) gives
    per-block and / or per-matrix target sparsities before the pruning pass; None = `uniform`."""

    kind: ClassVar[str] = "allocation"
    allocate: Callable | None = None
    nm_patterns: bool = False  # works with N:M patterns (a changed sparsity is no N:M pattern any more)


@dataclass(frozen=True, kw_only=True)
class RefinementPlugin(Plugin):
    """A mask refinement run right after each layer is pruned:
    `refine(module, change, stats, spec) -> (LayerChange, summary dict)`, where `stats(in_features, device)`
    accumulates like a method's; the summaries land in `report["refine"][layer]`. None = `none`."""

    kind: ClassVar[str] = "refinement"
    refine: Callable | None = None
    stats: type | None = None


P = TypeVar("P", bound=Plugin)


class Registry(Generic[P]):
    """Plug-ins of one kind by name, in registration order; iterating gives the names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._plugins: dict[str, P] = {}
        self._suffixes: dict[str, str] = {}  # a value ending in the suffix -> that plug-in (a file path)

    def route_suffix(self, suffix: str, name: str) -> None:
        """Values ending in `suffix` (case-insensitive) resolve to plug-in `name`: `--allocation x.json`."""
        self._suffixes[suffix.lower()] = name

    def resolve(self, name: str) -> str:
        """The registered name `name` stands for: itself, or the plug-in its suffix routes to."""
        if name not in self._plugins:
            for suffix, target in self._suffixes.items():
                if str(name).lower().endswith(suffix):
                    return target
        return name

    def register(self, plugin: P) -> P:
        if plugin.kind != self.kind:
            raise TypeError(f"a {plugin.kind} cannot be registered as a {self.kind}")
        if plugin.name in self._plugins:
            raise ValueError(f"{self.kind} {plugin.name!r} is already registered")
        taken = set(_flat_names())
        clashes = [f.name for f in plugin.option_fields() if f.name in taken] + [
            old for old in plugin.old_names if old in taken
        ]
        if clashes:
            raise ValueError(f"{self.kind} {plugin.name!r}: option {clashes[0]!r} is already registered")
        self._plugins[plugin.name] = plugin
        return plugin

    def unregister(self, name: str) -> None:
        del self._plugins[name]

    @contextmanager
    def registered(self, plugin: P) -> Iterator[P]:
        """Register `plugin` for the duration of a `with` block (tests)."""
        self.register(plugin)
        try:
            yield plugin
        finally:
            self.unregister(plugin.name)

    def get(self, name: str) -> P:
        name = self.resolve(name)
        if name not in self._plugins:
            raise PrunescopeError(f"unknown {self.kind} {name!r}; choose one of {', '.join(self._plugins)}")
        return self._plugins[name]

    def names(self) -> tuple[str, ...]:
        return tuple(self._plugins)

    def plugins(self) -> list[P]:
        return list(self._plugins.values())

    def __iter__(self) -> Iterator[str]:
        return iter(tuple(self._plugins))

    def __contains__(self, name: object) -> bool:
        return name in self._plugins

    def __len__(self) -> int:
        return len(self._plugins)


METHODS: Registry[MethodPlugin] = Registry("method")
ALLOCATIONS: Registry[AllocationPlugin] = Registry("allocation")
REFINEMENTS: Registry[RefinementPlugin] = Registry("refinement")
REGISTRIES = (METHODS, ALLOCATIONS, REFINEMENTS)


def register_method(name: str, **fields: Any) -> MethodPlugin:
    """Register a method; `fields` are those of `MethodPlugin` (cite, natural_scope, options, ...)."""
    return METHODS.register(MethodPlugin(name=name, **fields))


def register_allocation(name: str, **fields: Any) -> AllocationPlugin:
    """Register an allocation; `fields` are those of `AllocationPlugin`."""
    return ALLOCATIONS.register(AllocationPlugin(name=name, **fields))


def register_refinement(name: str, **fields: Any) -> RefinementPlugin:
    """Register a refinement; `fields` are those of `RefinementPlugin`."""
    return REFINEMENTS.register(RefinementPlugin(name=name, **fields))


def option_fields() -> list[OptionField]:
    """Every registered plug-in's options by flat name: methods, allocations, refinements, each in
    registration order."""
    return [
        item for registry in REGISTRIES for plugin in registry.plugins() for item in plugin.option_fields()
    ]


def _flat_names() -> dict[str, tuple[Plugin, str]]:
    """Flat name (and old name) -> (plug-in, attribute of its options)."""
    names: dict[str, tuple[Plugin, str]] = {}
    for registry in REGISTRIES:
        for plugin in registry.plugins():
            for item in plugin.option_fields():
                names[item.name] = (plugin, item.attribute)
            for new, old in plugin.old_names.items():
                names[old] = names[new]
    return names


def options_from_flat(values: Mapping[str, Any], chosen: Sequence[Plugin]) -> list[Any]:
    """The options instances of the `chosen` plug-ins from flat-named `values` (defaults for the rest).

    Values of plug-ins that are not chosen are validated by their own options class, then ignored: the
    command line passes every option, and a bad value is an error whether it is used or not.
    """
    known = _flat_names()
    grouped: dict[tuple[str, str], tuple[Plugin, dict[str, Any]]] = {}
    for name, value in values.items():
        if name not in known:
            raise PrunescopeError(f"unknown pruning option {name!r}; choose one of {', '.join(known)}")
        plugin, attribute = known[name]
        _, given = grouped.setdefault((plugin.kind, plugin.name), (plugin, {}))
        if attribute in given:
            raise PrunescopeError(f"pruning option {name!r} is given twice (under its old name too)")
        given[attribute] = value
    for (kind, name), (plugin, given) in grouped.items():
        if not any(p.kind == kind and p.name == name for p in chosen):
            plugin.options(**given)
    return [plugin.options(**grouped.get((plugin.kind, plugin.name), (plugin, {}))[1]) for plugin in chosen]
