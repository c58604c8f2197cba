"""The risk-author guide's example plugin works as written, installed as a distribution."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.test_plugins import build_and_install, run_with

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "writing-a-risk-check.md"


def example() -> str:
    text = GUIDE.read_text()
    section = text[text.index("## Example: a daily notional limit"):]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match
    return match.group(1)


def test_the_example_is_about_thirty_lines() -> None:
    assert 25 <= len(example().strip().splitlines()) <= 35


def test_the_daily_notional_example_holds_its_limit(tmp_path: Path) -> None:
    site = build_and_install(tmp_path, "acme-limits", "acme_limits", example(), "acme_limits")
    result = run_with(site, f"""
        import asyncio, json
        from bagbot_core import PluginRegistry, RiskCheckError, Router
        from bagbot_core.db import get_engine, session_factory
        from tests.scripted import ScriptedExchange, scripted_plugin

        BUY = {{"symbol": "BTC/USDT", "side": "buy", "type": "market", "amount": "0.01"}}

        async def main():
            registry = PluginRegistry(plugins=[("scripted", scripted_plugin(ScriptedExchange()))])
            router = Router(registry)
            db = session_factory(get_engine("sqlite:///{tmp_path}/t.db"))()
            seen = []
            for user in ("alice", "alice", "alice", "bob"):
                dry = await router.check_order("scripted", BUY, db, user)
                try:
                    order = await router.route_order("scripted", BUY, db, user)
                    seen.append([order.status, [v.check for v in dry]])
                except RiskCheckError as exc:
                    seen.append([[v.as_dict() for v in exc.violations], [v.check for v in dry]])
            print(json.dumps(seen))
            await router.aclose()

        asyncio.run(main())
    """, ACME_DAILY_NOTIONAL_USD="1000.2", BAGBOT_LOG_LEVEL="error")
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    # 0.01 BTC at the ask of 50010 is 500.1 USD: two fit exactly (the limit is inclusive).
    assert seen[:2] == [["filled", []], ["filled", []]]
    assert seen[2] == [[{"check": "acme_daily_notional",
                         "reason": "1000.2 USD today + 500.1 USD is over 1000.2 USD",
                         "limit": "1000.2", "actual": "1500.3"}], ["acme_daily_notional"]]
    assert seen[3] == ["filled", []]  # another user has a limit of their own
