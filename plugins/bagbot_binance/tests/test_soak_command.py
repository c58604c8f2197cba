"""The Binance soak as the plugin contributes it: ``bagbot soak --connector binance`` end to
end, ``bagbot-soak`` kept working, and the old ``bagbot_core.soak`` names still importable."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from bagbot_core import audit
from bagbot_core.cli import main

SOAK_SCRIPT = Path(sys.executable).with_name("bagbot-soak")


@pytest.fixture(autouse=True)
def _restore_audit() -> Iterator[None]:
    saved_config, saved_configured = structlog.get_config(), audit._configured
    yield
    structlog.configure(**saved_config)
    audit._configured = saved_configured


def _report(tmp_path: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads((tmp_path / "report.json").read_text())
    return data


def test_bagbot_soak_connector_binance_end_to_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["soak", "--connector", "binance", "-n", "25", "--seed", "3", "--workdir",
                 str(tmp_path), "--report-json", str(tmp_path / "report.json")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "RESULT: PASS" in out
    report = _report(tmp_path)
    assert report["attempted"] == report["rows"] == 25 and report["passed"] is True
    assert (tmp_path / "soak.db").exists()


def test_bagbot_soak_connector_binance_help_and_usage(capsys: pytest.CaptureFixture[str]
                                                     ) -> None:
    assert main(["soak", "--connector", "binance", "--help"]) == 0
    assert "usage: bagbot soak --connector binance" in capsys.readouterr().out
    assert main(["soak", "--connector", "binance", "--orders", "0"]) == 2
    assert main(["soak", "--help"]) == 0
    assert "binance" in capsys.readouterr().out


def test_bagbot_soak_script_runs_the_binance_soak(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``bagbot-soak`` without --connector: the only soak installed (in process)."""
    from bagbot_core import soak

    code = soak.main(["-n", "10", "--workdir", str(tmp_path), "--report-json",
                      str(tmp_path / "report.json")])
    assert code == soak.EXIT_PASS, capsys.readouterr()
    assert _report(tmp_path)["attempted"] == 10


def test_bagbot_soak_console_script(tmp_path: Path) -> None:
    done = subprocess.run([str(SOAK_SCRIPT), "--help"], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "bagbot soak --connector binance" in done.stdout and "bagbot-soak" in done.stdout
    done = subprocess.run([str(SOAK_SCRIPT), "--connector", "kraken", "-n", "1"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "no fault soak for connector 'kraken' (available: binance" in done.stderr


def test_old_soak_names_import_with_a_deprecation_warning() -> None:
    import bagbot_binance.soak

    from bagbot_core import soak

    with pytest.warns(DeprecationWarning, match="moved to bagbot_binance.soak.SoakConfig"):
        config = soak.SoakConfig
    assert config is bagbot_binance.soak.SoakConfig
    with pytest.warns(DeprecationWarning, match="moved to bagbot_binance.soak"):
        from bagbot_core.soak import evaluate, run_soak
    assert (evaluate, run_soak) == (bagbot_binance.soak.evaluate, bagbot_binance.soak.run_soak)
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = soak.no_such_name


def test_registering_the_soak_command_stays_light() -> None:
    """Adding the plugin's commands imports neither the soak nor ccxt nor aiohttp."""
    code = (
        "import sys\n"
        "from bagbot_core.cli import cli_with_plugins\n"
        "group = cli_with_plugins()\n"
        "assert 'binance' in group.commands['soak'].commands\n"
        "print(','.join(m for m in ('ccxt', 'aiohttp', 'bagbot_binance.soak', 'sqlalchemy')\n"
        "               if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""
