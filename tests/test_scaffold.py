"""``bagbot new-plugin``: the generated packages install, pass their own tests and are
discovered; bad names and existing directories are refused with one error line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bagbot_core.cli import main
from bagbot_core.scaffold import core_requirement

ROOT = Path(__file__).resolve().parents[1]


def _install(project: Path, site: Path) -> None:
    """pip-install ``project`` into its own directory: the environment stays as it was."""
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
         "--no-build-isolation", "--target", str(site), str(project)],
        check=True, capture_output=True, timeout=300,
    )


def _env(site: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "name"), [("connector", "tplexchange"),
                                            ("risk", "tpl_limits")])
def test_generated_plugin_installs_passes_its_tests_and_is_discovered(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str, name: str
) -> None:
    project = tmp_path / "project"
    assert main(["new-plugin", kind, name, str(project)]) == 0
    assert str(project) in capsys.readouterr().out
    pyproject = (project / "pyproject.toml").read_text()
    assert f'{name} = "bagbot_{name}.plugin"' in pyproject
    assert f'"{core_requirement()}"' in pyproject
    assert (project / "noxfile.py").exists()

    site = tmp_path / "site"
    _install(project, site)
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=project, env=_env(site), capture_output=True, text=True, timeout=600,
    )
    assert tests.returncode == 0, tests.stdout[-4000:] + tests.stderr[-2000:]
    assert " passed" in tests.stdout and "failed" not in tests.stdout

    found = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import json
        from bagbot_core.plugins import PluginRegistry
        print(json.dumps([[i.provenance.plugin, i.provenance.distribution,
                           list(i.connectors), list(i.risk_checks)]
                          for i in PluginRegistry().plugin_infos()]))
    """)], cwd=tmp_path, env=_env(site), capture_output=True, text=True, timeout=120)
    assert found.returncode == 0, found.stderr
    infos = {row[0]: row[1:] for row in json.loads(found.stdout.strip().splitlines()[-1])}
    dist = f"bagbot-{name.replace('_', '-')}"
    expected = [dist, [name], []] if kind == "connector" else [dist, [], [name]]
    assert infos.get(name) == expected


@pytest.mark.parametrize("name", ["Kraken", "my-exchange", "9lives", "a__b", "b_", "paper",
                                  "risk", "class", "", "x" * 41, "kr\u0430ken"])
def test_bad_names_are_refused_with_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    assert main(["new-plugin", "risk", name, str(tmp_path / "p")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: plugin name"), err
    assert not (tmp_path / "p").exists()


def test_an_existing_directory_is_refused_and_left_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "mine.txt").write_text("keep")
    assert main(["new-plugin", "connector", "kraken", str(tmp_path / "p")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {tmp_path / 'p'} already exists; name a new directory"]
    assert [p.name for p in (tmp_path / "p").iterdir()] == ["mine.txt"]


def test_default_directory_is_named_after_the_distribution(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["new-plugin", "risk", "acme_limits"]) == 0
    assert (tmp_path / "bagbot-acme-limits" / "bagbot_acme_limits" / "plugin.py").exists()


@pytest.mark.parametrize(("version", "expected"), [
    ("0.1.0", "bagbot-core>=0.1,<0.2"), ("0.12.3.dev1", "bagbot-core>=0.12,<0.13"),
    ("1.4.2", "bagbot-core>=1.4,<2"),
])
def test_core_requirement_allows_releases_that_keep_the_plugin_api(
    version: str, expected: str
) -> None:
    assert core_requirement(version) == expected
