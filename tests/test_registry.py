"""The registry: built-ins and third-party plugins arrive through the same entry-point group."""

from __future__ import annotations

import textwrap
import types
from dataclasses import dataclass

import pytest
from helpers import FIXTURES, install_fake_distribution, run_cli

from prunekit.errors import PluginError
from prunekit.hookspecs import hookimpl
from prunekit.registry import KINDS, Registry, get_registry


def _plugin(body: str, name: str = "p") -> types.ModuleType:
    module = types.ModuleType(name)
    exec(textwrap.dedent(body), module.__dict__)
    return module


def test_builtins_come_from_entry_points():
    registry = get_registry(refresh=True)
    for kind, name in [("method", "dense_finetune"), ("model", "diffusers_sd"), ("dataset", "shapes"), ("loss", "ddpm")]:
        component = registry.get(kind, name)
        assert component.origin == "built-in"
        assert component.schema is not None and component.summary


def test_register_validates_kind_schema_and_duplicates():
    @dataclass
    class Cfg:
        k: int = 1

    def factory(config):
        return config

    registry = Registry()
    registry.add_plugin(_plugin_with(lambda register: register("router", "r1", factory, schema=Cfg)), "first")
    with pytest.raises(PluginError, match=r"router 'r1' is registered twice: by plugin 'first'.*by plugin 'second'"):
        registry.add_plugin(_plugin_with(lambda register: register("router", "r1", factory)), "second")
    with pytest.raises(PluginError, match=r"plugin 'third' registers unknown kind 'routr'"):
        registry.add_plugin(_plugin_with(lambda register: register("routr", "x", factory)), "third")
    with pytest.raises(PluginError, match=r"plugin 'fourth'.*schema that is not a dataclass"):
        registry.add_plugin(_plugin_with(lambda register: register("gate", "g", factory, schema=dict)), "fourth")
    # failed plugins leave nothing behind
    assert registry.names("gate") == [] and not registry.plugin_manager.has_plugin("fourth")
    assert registry.build("router", {"name": "r1", "k": 3}) == Cfg(k=3)


def _plugin_with(fn):
    class Plugin:
        @hookimpl
        def prunekit_register_components(self, register):
            fn(register)

    return Plugin()


def test_unknown_hook_names_the_plugin():
    bad = _plugin(
        """
        from prunekit.hookspecs import hookimpl
        @hookimpl
        def prunekit_register_component(register):
            pass
        """
    )
    with pytest.raises(PluginError, match=r"plugin 'typo' .*invalid.*prunekit_register_component"):
        Registry().add_plugin(bad, "typo")


def test_plugin_raising_while_registering_names_itself():
    def boom(register):
        raise RuntimeError("kaputt")

    with pytest.raises(PluginError, match=r"plugin 'broken' \(local\) failed while registering: RuntimeError: kaputt"):
        Registry().add_plugin(_plugin_with(boom), "broken")


def test_unknown_name_lists_registered_ones():
    registry = get_registry()
    with pytest.raises(PluginError, match=r"unknown loss 'dpm' \(did you mean 'ddpm'\?\); registered losss?: .*ddpm"):
        registry.get("loss", "dpm")


def test_every_kind_is_listed():
    assert set(KINDS) >= {"router", "gate", "loss", "budget", "method", "model", "dataset", "metric", "prompt_encoder"}


def test_third_party_plugin_is_discovered_listed_and_runs_from_a_recipe(tmp_path):
    site = install_fake_distribution(
        tmp_path / "site",
        "prunekit-example-router",
        {"example_router": "prunekit_example_router"},
        {"prunekit_example_router": (FIXTURES / "thirdparty" / "prunekit_example_router.py").read_text()},
    )
    listed = run_cli("plugins", "--kind", "router", extra_path=site)
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if "word_hash" in line)
    assert "package prunekit-example-router" in row

    recipe = tmp_path / "route.yaml"
    prompts = ["a red circle", "a blue square", "two green triangles", "a red square", "the end"]
    recipe.write_text(
        "name: route\nmethod: {name: route_counts}\nrouter: {name: word_hash, num_codes: 3}\n"
        f"dataset: {{name: prompts, items: {prompts}}}\n"
    )
    out = tmp_path / "run"
    result = run_cli("run", str(recipe), "--output", str(out), "router.num_codes=2", extra_path=site)
    assert result.returncode == 0, result.stderr
    import json
    import zlib

    metrics = json.loads((out / "metrics.json").read_text())
    expected = [zlib.crc32(p.split()[0].encode()) % 2 for p in prompts]
    assert metrics["routing"]["counts"] == [expected.count(0), expected.count(1)]


def test_plugin_that_fails_to_import_is_named(tmp_path):
    site = install_fake_distribution(
        tmp_path / "site", "prunekit-broken", {"broken_one": "prunekit_broken_mod"},
        {"prunekit_broken_mod": "import not_a_module_anywhere\n"},
    )
    result = run_cli("plugins", extra_path=site)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "plugin 'broken_one' (package prunekit-broken" in lines[0] and "failed to import" in lines[0]
    assert "Traceback" not in result.stderr
