"""Hooks behave as pluggy documents them: call order, wrappers, tracing -- plus bagbot's
isolation of notifications and plugin names in every error."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pluggy
import pytest

from bagbot_core import hookimpl, hookspecs
from bagbot_core.connector import ConnectorSpec
from bagbot_core.errors import DuplicateNameError, PluginError, PluginLoadError
from bagbot_core.markers import PROJECT
from bagbot_core.plugins import BUILTIN_PLUGINS, PluginRegistry
from bagbot_core.risk import RiskCheck


def _check(name: str) -> RiskCheck:
    return RiskCheck(name, lambda ctx: None)


class Told:
    """Records, in ``log``, that it was told; contributes one risk check named after it."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log

    def _add(self) -> list[RiskCheck]:
        return [_check(f"check_{self.name}")]

    def _told(self, order: object) -> None:
        self.log.append(self.name)


class First(Told):
    @hookimpl(tryfirst=True)
    def bagbot_add_risk_checks(self) -> list[RiskCheck]:
        return self._add()

    @hookimpl(tryfirst=True)
    def bagbot_after_route(self, order: object) -> None:
        self._told(order)


class Plain(Told):
    @hookimpl
    def bagbot_add_risk_checks(self) -> list[RiskCheck]:
        return self._add()

    @hookimpl
    def bagbot_after_route(self, order: object) -> None:
        self._told(order)


class Last(Told):
    @hookimpl(trylast=True)
    def bagbot_add_risk_checks(self) -> list[RiskCheck]:
        return self._add()

    @hookimpl(trylast=True)
    def bagbot_after_route(self, order: object) -> None:
        self._told(order)


def registry_with(*plugins: tuple[str, object]) -> PluginRegistry:
    return PluginRegistry(disabled=(), load_entrypoints=False, plugins=plugins)


def test_call_order_with_tryfirst_and_trylast_is_pluggys() -> None:
    log: list[str] = []
    # Registered in the order that makes "list order" and pluggy's call order differ.
    plugins = [("last", Last("last", log)), ("plain", Plain("plain", log)),
               ("first", First("first", log))]
    registry = registry_with(*plugins)

    reference = pluggy.PluginManager(PROJECT)
    reference.add_hookspecs(hookspecs)
    for name in BUILTIN_PLUGINS:  # the registry registers the built-ins first
        reference.register(registry.pm.get_plugin(name), name)
    for name, plugin in plugins:
        reference.register(plugin, name)

    expected_checks = [c.name for result in reference.hook.bagbot_add_risk_checks()
                       for c in result]
    assert [c.name for c in registry.risk_checks()] == expected_checks
    assert expected_checks[0] == "check_first" and expected_checks[-1] == "check_last"

    reference.hook.bagbot_after_route(order=None)
    expected_calls, log[:] = list(log), []
    assert registry.notify("bagbot_after_route", order=None) == []
    assert log == expected_calls == ["first", "plain", "last"]


class NewStyleWrapper:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    @hookimpl(wrapper=True)
    def bagbot_add_risk_checks(self) -> Generator[None, list[Any], list[Any]]:
        results = yield
        kept = [[c for c in result if c.name != "check_dropped"] for result in results]
        return [*kept, [_check("check_added_by_wrapper")]]

    @hookimpl(wrapper=True)
    def bagbot_after_route(self, order: object) -> Generator[None, list[Any], list[Any]]:
        self.log.append("wrapper before")
        try:
            return (yield)
        finally:
            self.log.append("wrapper after")


class Dropped:
    @hookimpl
    def bagbot_add_risk_checks(self) -> list[RiskCheck]:
        return [_check("check_dropped"), _check("check_kept")]


def test_new_style_wrapper_wraps_registration_and_notification_calls() -> None:
    log: list[str] = []
    registry = registry_with(("wrapper", NewStyleWrapper(log)), ("dropped", Dropped()),
                             ("plain", Plain("plain", log)))
    names = [c.name for c in registry.risk_checks()]
    assert "check_dropped" not in names
    assert {"check_kept", "check_plain", "check_added_by_wrapper", "max_quantity"} <= set(names)
    infos = {i.provenance.plugin: i for i in registry.plugin_infos()}
    assert infos["wrapper"].risk_checks == ("check_added_by_wrapper",)
    assert infos["dropped"].risk_checks == ("check_kept",)

    assert registry.notify("bagbot_after_route", order=None) == []
    assert log == ["wrapper before", "plain", "wrapper after"]


class OldStyleWrapper:
    @hookimpl(hookwrapper=True)
    def bagbot_add_connectors(self) -> Generator[None, pluggy.Result[list[Any]], None]:
        outcome = yield
        outcome.force_result([*outcome.get_result(),
                              [ConnectorSpec("wrapped", lambda settings: None)]])


def test_old_style_hookwrapper_works_and_a_wrapper_must_be_a_generator() -> None:
    registry = registry_with(("old", OldStyleWrapper()))
    assert registry.connectors()["wrapped"][1].plugin == "old"

    class NotAGenerator:
        @hookimpl(wrapper=True)
        def bagbot_after_route(self, order: object) -> None:
            return None

    with pytest.raises(PluginLoadError, match=r"plugin 'notgen'.*bagbot_after_route"):
        registry_with(("notgen", NotAGenerator()))


def test_tracing_shows_every_registration_and_notification_call(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BAGBOT_TRACE_HOOKS", "1")
    registry = registry_with(("plain", Plain("plain", [])), ("loud", Loud()))
    registry.connectors()
    registry.risk_checks()
    registry.notify("bagbot_after_route", order="order-1")
    registry.notify("bagbot_after_route", order="order-2")
    err = capsys.readouterr().err
    for hook in ("bagbot_add_connectors", "bagbot_add_risk_checks"):
        assert err.count(f"{hook} [hook]") == 1
        assert err.count(f"finish {hook} --> ") == 1
    assert err.count("bagbot_after_route [hook]") == 2
    assert "order: order-1" in err and "order: order-2" in err
    assert err.count("failed bagbot_after_route [loud] RuntimeError [hook]") == 2


class Loud:
    @hookimpl(tryfirst=True)
    def bagbot_after_route(self, order: object) -> None:
        raise RuntimeError("pager down")


class LoudToo:
    @hookimpl(trylast=True)
    def bagbot_after_route(self) -> None:
        raise ValueError("metrics down")


def test_a_failing_notification_does_not_stop_the_others_or_the_wrappers() -> None:
    log: list[str] = []
    registry = registry_with(("loud", Loud()), ("plain", Plain("plain", log)),
                             ("loud_too", LoudToo()), ("wrapper", NewStyleWrapper(log)))
    failures = registry.notify("bagbot_after_route", order=None)
    assert [(name, str(exc)) for name, exc in failures] == [
        ("loud", "pager down"), ("loud_too", "metrics down")]
    assert log == ["wrapper before", "plain", "wrapper after"]


def test_a_failing_notification_wrapper_is_named_and_the_plugins_are_still_told() -> None:
    class BrokenWrapper:
        @hookimpl(wrapper=True)
        def bagbot_after_route(self) -> Generator[None, None, None]:
            raise RuntimeError("wrapper broke")
            yield  # pragma: no cover

    log: list[str] = []
    registry = registry_with(("plain", Plain("plain", log)), ("broken", BrokenWrapper()),
                             ("first", First("first", log)))
    failures = registry.notify("bagbot_after_route", order=None)
    assert [(name, str(exc)) for name, exc in failures] == [("broken", "wrapper broke")]
    assert log == ["first", "plain"]


def test_a_raising_implementation_under_a_wrapper_names_its_own_plugin() -> None:
    seen: list[str] = []

    class Boom:
        @hookimpl
        def bagbot_add_risk_checks(self) -> list[RiskCheck]:
            raise RuntimeError("no checks today")

    class Watching:
        @hookimpl(wrapper=True)
        def bagbot_add_risk_checks(self) -> Generator[None, list[Any], list[Any]]:
            try:
                return (yield)
            except RuntimeError as exc:  # pluggy throws the exception into the wrapper
                seen.append(str(exc))
                raise

    registry = registry_with(("watching", Watching()))
    registry.register(Boom(), "boom", distribution="boom-dist", version="2.0")
    with pytest.raises(PluginError, match=r"boom-dist 2\.0 \(plugin 'boom'\) raised "
                                          r"RuntimeError: no checks today"):
        registry.risk_checks()
    assert seen == ["no checks today"]


def test_a_wrapper_returning_a_wrong_type_is_named() -> None:
    class BadWrapper:
        @hookimpl(wrapper=True)
        def bagbot_add_connectors(self) -> Generator[None, list[Any], list[Any]]:
            results = yield
            return [*results, ["not a spec"]]

    registry = registry_with(("bad", BadWrapper()))
    with pytest.raises(PluginError, match=r"plugin 'bad'.*returned str, expected ConnectorSpec"):
        registry.connectors()


def test_wrong_type_and_duplicates_name_the_plugins_and_distributions() -> None:
    """Errors still name plugin and distribution, and follow pluggy's call order."""

    class WrongLast:
        @hookimpl(trylast=True)
        def bagbot_add_risk_checks(self) -> list[object]:
            return [_check("fine"), 42]

    class WrongFirst:
        @hookimpl(tryfirst=True)
        def bagbot_add_risk_checks(self) -> list[object]:
            return ["early"]

    registry = PluginRegistry(disabled=(), load_entrypoints=False)
    registry.register(WrongLast(), "late", distribution="late-dist", version="3.1")
    registry.register(WrongFirst(), "early", distribution="early-dist", version="1.0")
    with pytest.raises(PluginError, match=r"early-dist 1\.0 \(plugin 'early'\) returned str"):
        registry.risk_checks()
    registry.unregister("early")
    with pytest.raises(PluginError, match=r"late-dist 3\.1 \(plugin 'late'\) returned int"):
        registry.risk_checks()

    registry = PluginRegistry(disabled=(), load_entrypoints=False)
    registry.register(Last("x", []), "two", distribution="two-dist", version="2.0")
    registry.register(First("x", []), "one", distribution="one-dist", version="1.0")
    with pytest.raises(DuplicateNameError, match="check_x") as raised:
        registry.risk_checks()
    assert "by one-dist 1.0 (plugin 'one') and by two-dist 2.0 (plugin 'two')" in str(
        raised.value)
