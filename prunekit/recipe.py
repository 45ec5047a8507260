"""Recipes: YAML files (optionally extending a base recipe) plus CLI dotlist overrides.

A recipe is validated as a whole, against the core sections below and against the config schema
of every plugin it names, before any model or data is loaded; all problems are reported at once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prunekit.config import unknown_key_message, validate_options
from prunekit.errors import RecipeError
from prunekit.model_objective import objective_problems
from prunekit.registry import Registry, get_registry, unknown_name_message

# Sections that select exactly one component: ``router: {name: aptp, num_codes: 8}``.
SINGLE_SECTIONS: dict[str, str] = {
    "method": "method",
    "model": "model",
    "dataset": "dataset",
    "prompt_encoder": "prompt_encoder",
    "router": "router",
    "gate": "gate",
    "budget": "budget",
}
# Sections that select several components of a kind, keyed by name: ``losses: {ddpm: {weight: 1}}``.
MULTI_SECTIONS: dict[str, str] = {"losses": "loss", "metrics": "metric"}
# Core sections validated against core schemas.
SCALAR_KEYS: dict[str, type] = {"name": str, "description": str, "seed": int, "output_dir": str}
EXTEND_KEY = "base"


def _core_sections() -> dict[str, type]:
    from prunekit.engine_config import EngineConfig
    from prunekit.eval_config import EvalConfig

    return {"engine": EngineConfig, "eval": EvalConfig}


def known_top_level_keys() -> list[str]:
    return [*SCALAR_KEYS, EXTEND_KEY, *SINGLE_SECTIONS, *MULTI_SECTIONS, *_core_sections()]


@dataclass
class Recipe:
    """A merged, resolved and validated recipe."""

    path: Path
    data: dict[str, Any]
    overrides: list[str] = dataclasses.field(default_factory=list)

    @property
    def name(self) -> str:
        return self.data["name"]

    def section(self, key: str) -> dict[str, Any] | None:
        return self.data.get(key)

    def to_yaml(self) -> str:
        from omegaconf import OmegaConf

        return OmegaConf.to_yaml(OmegaConf.create(self.data))


def _load_yaml(path: Path, problems: list[str]) -> Any:
    from omegaconf import OmegaConf

    try:
        return OmegaConf.load(path)
    except FileNotFoundError:
        problems.append(f"{path}: recipe file not found")
    except Exception as exc:  # yaml syntax errors carry line numbers; keep them on one line
        problems.append(f"{path}: cannot parse YAML: {' '.join(str(exc).split())}")
    return None


def _load_chain(path: Path, problems: list[str], stack: tuple[Path, ...] = ()) -> Any:
    """Load ``path`` and the recipes it extends (``base: other.yaml`` or a list), base first."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    path = path.resolve()
    if path in stack:
        chain = " -> ".join(p.name for p in (*stack, path))
        problems.append(f"{path}: recipes extend each other in a cycle ({chain})")
        return None
    node = _load_yaml(path, problems)
    if node is None:
        return None
    if not isinstance(node, DictConfig):
        problems.append(f"{path}: a recipe must be a mapping at the top level")
        return None
    bases = node.get(EXTEND_KEY) if EXTEND_KEY in node else None
    if EXTEND_KEY in node:
        del node[EXTEND_KEY]
    if bases is None:
        return node
    if isinstance(bases, str):
        bases = [bases]
    elif isinstance(bases, ListConfig) and all(isinstance(b, str) for b in bases):
        bases = list(bases)
    else:
        problems.append(f"{path}: {EXTEND_KEY}: expected a recipe path or a list of them, got {bases!r}")
        return None
    merged = OmegaConf.create({})
    for base in bases:
        base_node = _load_chain(path.parent / base, problems, (*stack, path))
        if base_node is None:
            return None
        merged = _merge(merged, base_node)
    return _merge(merged, node)


def _merge(base: Any, child: Any) -> Any:
    """omegaconf merge, except that a section selecting a *different* component replaces the
    inherited one: the old component's options mean nothing to the new one."""
    from omegaconf import DictConfig, OmegaConf

    def replace_if_renamed(parent: Any, other: Any, key: str) -> None:
        old, new = parent.get(key) if key in parent else None, other.get(key) if key in other else None
        if isinstance(old, DictConfig) and isinstance(new, DictConfig):
            if "name" in new and new.get("name") != old.get("name"):
                del parent[key]

    for key in SINGLE_SECTIONS:
        replace_if_renamed(base, child, key)
    # The same inside the eval section: its split (eval.dataset) is a component section too.
    old_eval, new_eval = (n.get("eval") if "eval" in n else None for n in (base, child))
    if isinstance(old_eval, DictConfig) and isinstance(new_eval, DictConfig):
        replace_if_renamed(old_eval, new_eval, "dataset")
    return OmegaConf.merge(base, child)


def _apply_overrides(node: Any, overrides: Sequence[str], problems: list[str]) -> Any:
    from omegaconf import OmegaConf

    good = []
    for item in overrides:
        if "=" not in item or item.startswith("="):
            problems.append(f"override {item!r}: expected KEY=VALUE (e.g. budget.target=0.7)")
            continue
        try:
            OmegaConf.from_dotlist([item])
        except Exception as exc:
            problems.append(f"override {item!r}: {' '.join(str(exc).split())}")
            continue
        good.append(item)
    if not good:
        return node
    # Same rule as a child recipe: dataset.name=coco on the command line drops the old dataset's options.
    return _merge(node, OmegaConf.from_dotlist(good))


def _resolve(node: Any, origin: str, problems: list[str]) -> dict[str, Any] | None:
    """Interpolations resolve with omegaconf's built-in resolvers only; none executes code."""
    from omegaconf import OmegaConf

    try:
        data = OmegaConf.to_container(node, resolve=True, throw_on_missing=True)
    except Exception as exc:
        msg = " ".join(str(exc).split())
        # omegaconf appends "full_key: ..., object_type=dict"; keep the first sentence
        problems.append(f"{origin}: {msg.split(' full_key:')[0]}")
        return None
    return data  # type: ignore[return-value]


def validate_data(data: Mapping[str, Any], registry: Registry) -> list[str]:
    """Every problem with a merged recipe, one message each."""
    problems: list[str] = []
    core = _core_sections()
    known = known_top_level_keys()
    for key in data:
        if key not in known:
            problems.append(unknown_key_message("", str(key), known))
    for key, tp in SCALAR_KEYS.items():
        if key in data:
            value = data[key]
            ok = isinstance(value, tp) and not (tp is int and isinstance(value, bool))
            if not ok:
                problems.append(f"{key}: expected {'an integer' if tp is int else 'a string'}, got {value!r}")
    if "name" not in data:
        problems.append("name: required key is missing (the run directory is named after it)")
    for key, schema in core.items():
        section = data.get(key, {})
        if not isinstance(section, Mapping):
            problems.append(f"{key}: expected a mapping, got {section!r}")
        else:
            problems.extend(validate_options(schema, section, key))

    for key, kind in SINGLE_SECTIONS.items():
        if key in data and data[key] is not None:
            section = data[key]
            if key == "method" and isinstance(section, Mapping) and "eval" in section:
                problems.append("method.eval: the evaluation settings are the top-level eval: section now "
                                "(e.g. eval.prompts=1000 instead of method.eval.prompts=1000)")
                section = {k: v for k, v in section.items() if k != "eval"}
            problems.extend(_validate_component(registry, kind, section, key))
    for key, kind in MULTI_SECTIONS.items():
        section = data.get(key)
        if section is None:
            continue
        if not isinstance(section, Mapping):
            problems.append(f"{key}: expected a mapping of {kind} name -> options, got {section!r}")
            continue
        for name, options in section.items():
            where = f"{key}.{name}"
            if options is None:  # ``losses.contrastive: null`` in a child recipe drops it
                continue
            if not isinstance(options, Mapping):
                problems.append(f"{where}: expected a mapping of options, got {options!r}")
                continue
            component = registry.find(kind, str(name))
            if component is None:
                problems.append(f"{where}: {unknown_name_message(kind, str(name), registry.names(kind))}")
            elif component.schema is not None:
                problems.extend(validate_options(component.schema, options, where))

    method = data.get("method")
    if method is None:
        problems.append("method: required section is missing (e.g. method: {name: aptp})")
    elif isinstance(method, Mapping) and isinstance(method.get("name"), str):
        component = registry.find("method", method["name"])
        requires = getattr(component.schema, "requires", ()) if component and component.schema else ()
        for needed in requires:
            if not data.get(needed):
                problems.append(f"{needed}: method {method['name']!r} needs a {needed!r} section")
        if component is not None and component.schema is not None:
            problems.extend(_check_contracts(data, registry, method["name"], component.schema))
    return problems


def _at(data: Mapping[str, Any], dotted: str) -> Any:
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _check_contracts(data: Mapping[str, Any], registry: Registry, method: str, schema: type) -> list[str]:
    """The components a method uses have the shapes it needs, and its losses read only what it provides."""
    problems: list[str] = []
    for key, capability in getattr(schema, "capabilities", {}).items():
        section = data.get(key)
        name = section.get("name") if isinstance(section, Mapping) else None
        component = registry.find(SINGLE_SECTIONS.get(key, key), name) if isinstance(name, str) else None
        if component is not None and capability not in component.provides:
            has = ", ".join(sorted(component.provides)) or "no declared capability"
            problems.append(f"{key}.name: method {method!r} needs a {capability} {SINGLE_SECTIONS.get(key, key)}; "
                            f"{name!r} ({component.origin}) is not one (it provides: {has})")
    for path, provided in getattr(schema, "loss_inputs", {}).items():
        section = _at(data, path)
        if section is None and path.startswith("method."):
            section = _schema_default(schema, path.split(".")[1:])
        if not isinstance(section, Mapping):
            continue
        for name, options in section.items():
            if options is None:
                continue
            loss = registry.find("loss", str(name))
            where = f"{path}.{name}"
            if loss is None:
                if path != "losses":  # the top-level section's names are checked with the other sections
                    problems.append(f"{where}: {unknown_name_message('loss', str(name), registry.names('loss'))}")
                continue
            if path != "losses":
                if not isinstance(options, Mapping):
                    problems.append(f"{where}: expected a mapping of options, got {options!r}")
                    continue
                if loss.schema is not None:
                    problems.extend(validate_options(loss.schema, options, where))
            missing = sorted(loss.needs - provided)
            if missing:
                problems.append(f"{where}: loss {name!r} needs {', '.join(missing)}, which method {method!r} "
                                f"does not provide there (it provides: {', '.join(sorted(provided))})")
    return problems


def _schema_default(schema: type, parts: list[str]) -> Any:
    from prunekit.config import schema_defaults

    node: Any = schema_defaults(schema)
    for part in parts:
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _validate_component(registry: Registry, kind: str, section: Any, key: str) -> list[str]:
    if not isinstance(section, Mapping):
        return [f"{key}: expected a mapping with a 'name' key, got {section!r}"]
    name = section.get("name")
    if not isinstance(name, str):
        return [f"{key}.name: required: which {kind} to use ({', '.join(registry.names(kind)) or 'none registered'})"]
    component = registry.find(kind, name)
    if component is None:
        return [f"{key}.name: {unknown_name_message(kind, name, registry.names(kind))}"]
    options = {k: v for k, v in section.items() if k != "name"}
    if component.schema is None:
        return [f"{key}.{k}: unknown key ({kind} {name!r} takes no options)" for k in options]
    return validate_options(component.schema, options, key)


def load_recipe(
    path: str | Path, overrides: Sequence[str] = (), *, registry: Registry | None = None, model_files: bool = True
) -> Recipe:
    """Load, extend, override, resolve and validate a recipe; raise :class:`RecipeError` listing
    every problem (one per line) when it is not valid.

    The sampler and the denoising loss are checked against the model's prediction type
    (:mod:`prunekit.model_objective`); ``model_files=False`` (a recipe for another machine) leaves out
    what only a local model folder or the Hugging Face cache of this machine would tell."""
    path = Path(path)
    problems: list[str] = []
    node = _load_chain(path, problems)
    if node is None:
        raise RecipeError(problems)
    node = _apply_overrides(node, overrides, problems)
    data = _resolve(node, str(path), problems)
    if data is None:
        raise RecipeError(problems)
    registry = registry or get_registry()
    problems.extend(validate_data(data, registry))
    problems.extend(objective_problems(data, registry, local_files=model_files))
    if not problems:
        for extra in registry.hook.prunekit_check_recipe(recipe=data):
            problems.extend(extra or [])
    if problems:
        raise RecipeError([f"{path}: {p}" for p in problems])
    data = _with_defaults(data)
    return Recipe(path=path, data=data, overrides=list(overrides))


def _with_defaults(data: dict[str, Any]) -> dict[str, Any]:
    """Fill core defaults so the recipe written into a run directory is complete."""
    from prunekit.config import instantiate_schema

    out = dict(data)
    out.setdefault("seed", 0)
    out.setdefault("output_dir", "runs")
    for key, schema in _core_sections().items():
        out[key] = dataclasses.asdict(instantiate_schema(schema, out.get(key) or {}))
    for key in MULTI_SECTIONS:
        if isinstance(out.get(key), Mapping):
            out[key] = {k: v for k, v in out[key].items() if v is not None}
    return _plain(out)


def _plain(value: Any) -> Any:
    """Tuples become lists, as they read back from YAML (resume compares the two)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
