"""``bagbot_register_commands``: plugins add commands; a broken one never takes the CLI down;
and nothing in the core depends on a plugin (the soak is contributed, not built in)."""

from __future__ import annotations

import ast
import io
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from bagbot_core import hookimpl
from bagbot_core.cli import cli, cli_with_plugins, main
from bagbot_core.cli_soak import NO_SOAK, connector_as_command
from bagbot_core.plugins import PluginRegistry

ROOT = Path(__file__).resolve().parent.parent


class Greeter:
    """A throwaway plugin adding ``bagbot hello NAME`` and a soak for ``acme``."""

    @hookimpl
    def bagbot_register_commands(self, cli: click.Group) -> None:
        @click.command()
        @click.argument("name")
        def hello(name: str) -> None:
            """Say hello."""
            click.echo(f"hello {name}")

        @click.command(context_settings={"ignore_unknown_options": True})
        @click.argument("args", nargs=-1, type=click.UNPROCESSED)
        def acme(args: tuple[str, ...]) -> None:
            """Soak acme."""
            click.echo(f"acme soak {' '.join(args)}")

        cli.add_command(hello)
        soak = cli.commands["soak"]
        assert isinstance(soak, click.Group)
        soak.add_command(acme)


class Broken:
    @hookimpl
    def bagbot_register_commands(self, cli: click.Group) -> None:
        raise RuntimeError("cannot build my commands")


def _registry(*plugins: tuple[str, object]) -> PluginRegistry:
    return PluginRegistry(disabled=(), load_entrypoints=False, plugins=plugins)


def test_a_plugin_adds_a_command() -> None:
    group = cli_with_plugins(_registry(("greeter", Greeter())))
    result = CliRunner().invoke(group, ["hello", "world"])
    assert result.exit_code == 0, result.output
    assert result.output == "hello world\n"
    assert "hello" in CliRunner().invoke(group, ["--help"]).output
    # The core's group is untouched: the plugin changed a copy made for this run.
    assert "hello" not in cli.commands
    soak = cli.commands["soak"]
    assert isinstance(soak, click.Group) and soak.commands == {}


def test_a_failing_command_hook_is_reported_and_the_rest_works() -> None:
    registry = _registry(("greeter", Greeter()))
    registry.register(Broken(), "broken", distribution="broken-dist", version="1.2")
    err = io.StringIO()
    group = cli_with_plugins(registry, err=err)
    assert err.getvalue() == (
        "warning: plugin 'broken' from broken-dist could not add its commands: "
        "RuntimeError: cannot build my commands\n")
    result = CliRunner().invoke(group, ["hello", "you"])
    assert (result.exit_code, result.output) == (0, "hello you\n")
    assert CliRunner().invoke(group, ["--help"]).exit_code == 0


def test_the_registry_returns_each_failure_with_its_provenance() -> None:
    registry = _registry(("greeter", Greeter()))
    registry.register(Broken(), "broken", distribution="broken-dist", version="1.2")
    group = click.Group(commands={"soak": click.Group("soak")})
    failures = registry.register_commands(group)
    assert [(str(p), str(e)) for p, e in failures] == [
        ("broken-dist 1.2 (plugin 'broken')", "cannot build my commands")]
    assert "hello" in group.commands


def test_main_runs_plugin_commands(capsys: pytest.CaptureFixture[str]) -> None:
    group = cli_with_plugins(_registry(("greeter", Greeter())))
    assert main(["hello", "main"], group=group) == 0
    assert capsys.readouterr().out == "hello main\n"


def test_soak_connector_picks_the_contributed_soak() -> None:
    group = cli_with_plugins(_registry(("greeter", Greeter())))
    for args in (["soak", "--connector", "acme", "-n", "5"], ["soak", "--connector=acme", "-n",
                                                              "5"],
                 ["soak", "-n", "5", "--connector", "acme"], ["soak", "acme", "-n", "5"]):
        result = CliRunner().invoke(group, args)
        assert (result.exit_code, result.output) == (0, "acme soak -n 5\n"), args
    unknown = CliRunner().invoke(group, ["soak", "--connector", "nope"])
    assert unknown.exit_code == 2
    assert "no fault soak for connector 'nope' (available: acme)" in unknown.output


def test_soak_without_a_contributing_plugin_names_the_package() -> None:
    result = CliRunner().invoke(cli_with_plugins(_registry()), ["soak", "-n", "5"])
    assert result.exit_code == 2
    assert NO_SOAK in result.output and "bagbot-binance" in result.output


def test_bagbot_soak_script_without_a_soak_names_the_package(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from bagbot_core import soak

    monkeypatch.setenv("BAGBOT_DISABLE_PLUGINS", "binance,coinbase")
    assert soak.main(["-n", "5"]) == soak.EXIT_USAGE
    assert capsys.readouterr().err == f"error: {NO_SOAK}\n"


def test_connector_as_command() -> None:
    assert connector_as_command(["-n", "3"]) == ["-n", "3"]
    assert connector_as_command(["-n", "3", "--connector", "x"]) == ["x", "-n", "3"]
    assert connector_as_command(["--", "--connector", "x"]) == ["--", "--connector", "x"]


def test_the_core_imports_no_plugin() -> None:
    """Nothing under bagbot_core imports a connector plugin (the soak used to)."""
    offending = []
    for path in sorted((ROOT / "bagbot_core").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([node.module or ""] if isinstance(node, ast.ImportFrom)
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            offending += [f"{path.relative_to(ROOT)}: {n}" for n in names
                          if n.split(".")[0] in ("bagbot_binance", "bagbot_coinbase")]
    assert offending == []
