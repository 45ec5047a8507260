"""The component registry: pluggy plugins register named routers, gates, losses, ... here.

Built-in and third-party plugins are discovered the same way — the ``prunekit`` entry-point
group — so a built-in has no privilege a package of yours lacks.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.metadata as importlib_metadata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import pluggy

from prunekit import hookspecs
from prunekit.errors import PluginError

KINDS: tuple[str, ...] = (
    "method",
    "model",
    "dataset",
    "prompt_encoder",
    "router",
    "gate",
    "loss",
    "budget",
    "metric",
)

ENTRY_POINT_GROUP = hookspecs.PROJECT
BUILTIN_DIST = "prunekit"


@dataclass(frozen=True)
class Component:
    """One registered component: ``factory(config, **context)`` builds it from a validated config."""

    kind: str
    name: str
    factory: Callable[..., Any]
    schema: type | None
    doc: str
    plugin: str
    origin: str
    # Shapes it has (see prunekit.interfaces.CAPABILITIES), and for losses the LossInputs fields it reads.
    provides: frozenset[str] = frozenset()
    needs: frozenset[str] = frozenset()

    @property
    def summary(self) -> str:
        return self.doc.strip().splitlines()[0] if self.doc.strip() else ""


class Register:
    """The callable handed to ``prunekit_register_components``; records who registered what."""

    def __init__(self, registry: Registry, plugin: str, origin: str) -> None:
        self._registry = registry
        self._plugin = plugin
        self._origin = origin

    def __call__(
        self,
        kind: str,
        name: str,
        factory: Callable[..., Any],
        *,
        schema: type | None = None,
        doc: str | None = None,
        provides: Iterable[str] = (),
        needs: Iterable[str] | None = None,
    ) -> None:
        """Register ``factory`` as ``kind`` ``name``. ``provides`` names the shapes the built object
        has (``("trainable",)`` for a router a method can train); a loss's ``needs`` defaults to its
        factory's ``needs`` attribute (the :class:`~prunekit.losses.LossInputs` fields it reads)."""
        where = f"plugin {self._plugin!r}"
        if kind not in KINDS:
            raise PluginError(f"{where} registers unknown kind {kind!r} (kinds: {', '.join(KINDS)})")
        if not isinstance(name, str) or not name.isidentifier():
            raise PluginError(f"{where} registers {kind} {name!r}: names must be identifiers")
        if not callable(factory):
            raise PluginError(f"{where} registers {kind} {name!r} with a factory that is not callable")
        if schema is not None and not dataclasses.is_dataclass(schema):
            raise PluginError(f"{where} registers {kind} {name!r} with a schema that is not a dataclass")
        if schema is not None and any(f.name == "name" for f in dataclasses.fields(schema)):
            raise PluginError(f"{where}: the schema of {kind} {name!r} may not define a 'name' field")
        existing = self._registry._components.get((kind, name))
        if existing is not None:
            raise PluginError(
                f"{kind} {name!r} is registered twice: by plugin {existing.plugin!r} "
                f"({existing.origin}) and by plugin {self._plugin!r} ({self._origin})"
            )
        from prunekit.interfaces import CAPABILITIES
        from prunekit.losses import INPUT_FIELDS

        provides = frozenset(provides)
        unknown = sorted(provides - set(CAPABILITIES.get(kind, {})))
        if unknown:
            raise PluginError(f"{where} registers {kind} {name!r} providing unknown {', '.join(map(repr, unknown))} "
                              f"(a {kind} may provide: {', '.join(CAPABILITIES.get(kind, {})) or 'nothing'})")
        needs = frozenset(needs if needs is not None else getattr(factory, "needs", ()))
        if needs - INPUT_FIELDS:
            raise PluginError(f"{where} registers {kind} {name!r} needing unknown inputs "
                              f"{', '.join(sorted(needs - INPUT_FIELDS))} (LossInputs has: {', '.join(sorted(INPUT_FIELDS))})")
        text = doc if doc is not None else (factory.__doc__ or "")
        self._registry._components[(kind, name)] = Component(
            kind, name, factory, schema, text, self._plugin, self._origin, provides, needs
        )


class Registry:
    """All components of all plugins, keyed by (kind, name)."""

    def __init__(self) -> None:
        self._components: dict[tuple[str, str], Component] = {}
        self.plugin_manager = pluggy.PluginManager(hookspecs.PROJECT)
        self.plugin_manager.add_hookspecs(hookspecs)
        self._origins: dict[str, str] = {}

    # -- loading ----------------------------------------------------------------------------

    def add_plugin(self, plugin: object, name: str, origin: str = "local") -> None:
        """Register one plugin object (module or instance) and collect its components."""
        if self.plugin_manager.has_plugin(name):
            raise PluginError(f"two plugins are named {name!r}; entry-point names must be unique")
        try:
            self.plugin_manager.register(plugin, name=name)
            self.plugin_manager.check_pending()
        except pluggy.PluginValidationError as exc:
            self._unregister(name)
            raise PluginError(f"plugin {name!r} ({origin}) is invalid: {exc}") from None
        except ValueError as exc:
            raise PluginError(f"plugin {name!r} ({origin}) could not be registered: {exc}") from None
        self._origins[name] = origin
        impl = getattr(plugin, "prunekit_register_components", None)
        if impl is not None:
            try:
                impl(register=Register(self, name, origin))
            except PluginError:
                self._unregister(name)
                raise
            except Exception as exc:  # a broken plugin must name itself, not crash the CLI
                self._unregister(name)
                raise PluginError(
                    f"plugin {name!r} ({origin}) failed while registering: {type(exc).__name__}: {exc}"
                ) from exc

    def _unregister(self, name: str) -> None:
        if self.plugin_manager.has_plugin(name):
            self.plugin_manager.unregister(name=name)

    def load_entry_points(self, group: str = ENTRY_POINT_GROUP) -> None:
        """Import and register every plugin advertised under the entry-point ``group``."""
        seen: set[str] = set()
        for ep in sorted(importlib_metadata.entry_points(group=group), key=lambda e: e.name):
            dist = ep.dist.name if ep.dist is not None else "unknown"
            key = f"{dist}:{ep.name}"
            if key in seen:  # the same distribution visible twice on sys.path
                continue
            seen.add(key)
            origin = "built-in" if dist == BUILTIN_DIST else f"package {dist}"
            try:
                plugin = ep.load()
            except Exception as exc:
                raise PluginError(
                    f"plugin {ep.name!r} ({origin}, {ep.value}) failed to import: {type(exc).__name__}: {exc}"
                ) from exc
            self.add_plugin(plugin, name=ep.name, origin=origin)

    # -- queries ----------------------------------------------------------------------------

    def names(self, kind: str) -> list[str]:
        return sorted(name for (k, name) in self._components if k == kind)

    def components(self, kind: str | None = None) -> list[Component]:
        items = [c for (k, _), c in self._components.items() if kind is None or k == kind]
        return sorted(items, key=lambda c: (KINDS.index(c.kind), c.name))

    def find(self, kind: str, name: str) -> Component | None:
        return self._components.get((kind, name))

    def get(self, kind: str, name: str) -> Component:
        component = self.find(kind, name)
        if component is None:
            raise PluginError(unknown_name_message(kind, name, self.names(kind)))
        return component

    def build(self, kind: str, section: dict[str, Any] | Any, **context: Any) -> Any:
        """Instantiate the component a validated recipe section selects.

        ``section`` is ``{"name": ..., **options}`` (a dict or an omegaconf node); options are
        turned into the component's schema dataclass before the factory is called.
        """
        from prunekit.config import instantiate_schema

        options = dict(section)
        name = options.pop("name")
        component = self.get(kind, name)
        config = instantiate_schema(component.schema, options) if component.schema else options
        built = component.factory(config, **context)
        if component.provides:
            from prunekit.interfaces import check_built

            problem = check_built(kind, name, built, sorted(component.provides))
            if problem:
                raise PluginError(f"{problem} ({component.plugin}, {component.origin})")
        return built

    @property
    def hook(self) -> Any:
        return self.plugin_manager.hook


def unknown_name_message(kind: str, name: str, registered: Iterable[str]) -> str:
    registered = list(registered)
    hint = difflib.get_close_matches(str(name), registered, n=1)
    text = f"unknown {kind} {name!r}"
    if hint:
        text += f" (did you mean {hint[0]!r}?)"
    return text + f"; registered {kind}s: {', '.join(registered) or 'none'}"


_REGISTRY: Registry | None = None


def get_registry(*, refresh: bool = False, extra_plugins: Iterable[tuple[str, object]] = ()) -> Registry:
    """The process-wide registry built from installed entry points (plus ``extra_plugins``)."""
    global _REGISTRY
    if _REGISTRY is None or refresh or extra_plugins:
        registry = Registry()
        registry.load_entry_points()
        for name, plugin in extra_plugins:
            registry.add_plugin(plugin, name=name, origin="local")
        _REGISTRY = registry
    return _REGISTRY
