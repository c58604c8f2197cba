"""The conformance suite itself, run with ``pytester`` against deliberately broken connectors.

Each variant is the ``paper`` connector with one defect, registered in-process under the
name ``variant``. A suite that passes a broken connector is worthless, so every variant
states exactly which conformance tests must fail -- and the control (paper unchanged)
proves the rest pass on their own. Declared-unsupported features must skip, with the
declared reason in the report.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterable
from pathlib import Path

import pytest

# Imported here, before any inner run: pytester's in-process runs drop the modules they
# imported afterwards, and SQLAlchemy tables cannot be declared twice in one process.
import bagbot_core.paper.connector
import bagbot_core.testing.conformance  # noqa: F401
import tests.test_conformance_paper  # noqa: F401

pytest_plugins = ["pytester"]

VARIANTS = textwrap.dedent('''
    """Broken (and one honest) variants of the paper connector, for the suite's own tests."""
    import logging
    import uuid

    import attrs
    import pytest

    from bagbot_core.connector import (
        Capabilities, ConnectorSpec, check_market_limits)
    from bagbot_core.errors import ExchangeRejectedError, ExchangeUnavailableError
    from bagbot_core.markers import hookimpl
    from bagbot_core.orders import OrderType
    from bagbot_core.paper.connector import PaperConnector
    from bagbot_core.params import ParamSpec, declare_params
    from bagbot_core.plugins import PluginRegistry
    from bagbot_core.status import OrderStatus
    from bagbot_core.testing.conformance import (
        ConnectorConformance, ExchangeHandle, Requirements, unsupported)
    from decimal import Decimal
    from tests.test_conformance_paper import PaperHandle


    class Honest(PaperConnector):
        """Paper as it is: the control."""


    class ClaimsFilledWhileResting(Honest):
        """Reports a resting limit order as filled, though the exchange has not filled it."""

        async def create_order(self, order, client_order_id):
            state = await super().create_order(order, client_order_id)
            if state.status is OrderStatus.OPEN:
                return attrs.evolve(state, status=OrderStatus.FILLED,
                                    filled_qty=order.amount, avg_price=order.price)
            return state


    class LosesClientOrderId(Honest):
        """Places the order under an id of its own instead of the router's."""

        async def create_order(self, order, client_order_id):
            return await super().create_order(order, "own" + uuid.uuid4().hex)


    class PlainExceptionOnReject(Honest):
        """Turns the exchange's definite refusal into a bare Exception."""

        async def create_order(self, order, client_order_id):
            try:
                return await super().create_order(order, client_order_id)
            except ExchangeRejectedError as exc:
                raise Exception(str(exc)) from None


    class FloatAverage(Honest):
        """Passes prices through float on the way out."""

        @staticmethod
        def _view(row):
            state = PaperConnector._view(row)
            if state.avg_price is None:
                return state
            return attrs.evolve(state, avg_price=Decimal(float(state.avg_price)))


    class NoRounding(Honest):
        """Checks the limits but never rounds to the market's increments."""

        def prepare_order(self, order, market, reference_price=None):
            return check_market_limits(order, market, reference_price)


    class TakesSecret(Honest):
        """Takes a credential and keeps it to itself: the control for LeaksSecret."""

        def __init__(self, settings):
            config = dict(settings.config)
            self.secret = config.pop("api_secret")
            super().__init__(attrs.evolve(settings, config=config))


    class LeaksSecret(TakesSecret):
        """Writes its credential to a debug log line."""

        async def create_order(self, order, client_order_id):
            logging.getLogger("leaky").debug("signing %s with %s", client_order_id, self.secret)
            return await super().create_order(order, client_order_id)


    class NoCancelNoLookup(Honest):
        """Declares that it can neither cancel nor find an order by client order id."""

        capabilities = Capabilities(cancel=False, fetch_by_client_order_id=False)


    class ParamsOverrideAmount(Honest):
        """Declares a harmless-looking param, then lets it double the amount it places."""

        allowed_params = declare_params(ParamSpec(
            "timeInForce", choices={"GTC", "IOC"}, order_types={OrderType.LIMIT}))

        async def create_order(self, order, client_order_id):
            if order.params:
                order = attrs.evolve(order, amount=order.amount * 2)
            return await super().create_order(order, client_order_id)


    class DeclaresForbiddenParam(Honest):
        """Declares ``quantity`` as a pass-through param (bypassing declare_params)."""

        allowed_params = {"quantity": ParamSpec("quantity")}


    class UndeclaredEndpoints(Honest):
        """Does not say where its orders go."""

        def endpoints(self):
            return None


    class TakesUrl(Honest):
        """Takes an exchange URL and declares it: the control for HidesUrl."""

        def __init__(self, settings):
            config = dict(settings.config)
            self.api_url = config.pop("api_url")
            super().__init__(attrs.evolve(settings, config=config))

        def endpoints(self):
            return (self.api_url,)


    class HidesUrl(TakesUrl):
        """Takes an exchange URL but declares no endpoint at all."""

        def endpoints(self):
            return ()


    class PlainExceptionOnReadFault(Honest):
        """Its error classification turns a backend failure into a bare Exception (paper's
        backend is its database; a ccxt connector's would be ``classify_error``)."""

        def _run(self, work, **kwargs):
            try:
                return super()._run(work, **kwargs)
            except ExchangeUnavailableError as exc:
                raise Exception(str(exc)) from None


    class PartialFillsReadOpen(Honest):
        """Reports a partly filled order as plain ``open``."""

        @staticmethod
        def _view(row):
            state = PaperConnector._view(row)
            if state.status is OrderStatus.PARTIALLY_FILLED:
                return attrs.evolve(state, status=OrderStatus.OPEN)
            return state


    def _kraken_ok(client_order_id):
        if len(client_order_id) <= 18:
            return True
        try:
            return str(uuid.UUID(client_order_id)) == client_order_id
        except ValueError:
            return False


    class KrakenLikeIds(Honest):
        """An exchange taking a UUID or at most 18 characters, with the mapping declared."""

        def exchange_client_id(self, client_order_id):
            return str(uuid.uuid5(uuid.NAMESPACE_URL, "bagbot:" + client_order_id))

        def _check(self, client_order_id):
            if not _kraken_ok(client_order_id):
                raise ExchangeRejectedError(f"invalid client order id {client_order_id!r}")

        async def create_order(self, order, client_order_id):
            self._check(client_order_id)
            return await super().create_order(order, client_order_id)

        async def fetch_order(self, symbol, *, external_id, client_order_id):
            self._check(client_order_id)
            return await super().fetch_order(
                symbol, external_id=external_id, client_order_id=client_order_id)

        async def cancel_order(self, symbol, *, external_id, client_order_id):
            self._check(client_order_id)
            return await super().cancel_order(
                symbol, external_id=external_id, client_order_id=client_order_id)


    class RandomIdForm(KrakenLikeIds):
        """Maps client order ids to a fresh UUID each time: nothing can be found again."""

        def exchange_client_id(self, client_order_id):
            return str(uuid.uuid4())


    class Plugin:
        def __init__(self, cls):
            self.cls = cls

        @hookimpl
        def bagbot_add_connectors(self):
            return [ConnectorSpec("variant", self.cls, f"paper variant {self.cls.__name__}")]


    class VariantHandle(PaperHandle):
        requirements = attrs.evolve(
            PaperHandle.requirements,
            entry_point=unsupported("registered in-process by the suite's own tests"))


    class LeakyHandle(VariantHandle):
        requirements = attrs.evolve(VariantHandle.requirements,
                                    credentials=Requirements().credentials)
        canary = "canary-" + uuid.uuid4().hex

        @property
        def connector_config(self):
            return {**super().connector_config, "api_secret": self.canary}

        @property
        def secrets(self):
            return [self.canary]


    class UrlHandle(VariantHandle):
        @property
        def connector_config(self):
            return {**super().connector_config, "api_url": "http://127.0.0.1:9"}


    class SilentHandle(VariantHandle):
        """A third-party handle written before placements() existed."""

        placements = ExchangeHandle.placements


    class OpaqueHandle(SilentHandle):
        """... that says why it cannot report placements."""

        requirements = attrs.evolve(
            VariantHandle.requirements,
            inspect_placements=unsupported("the fake keeps no request log"))


    class OldHandle(VariantHandle):
        """A third-party handle written before fail_next_read() and fill_partially()."""

        fail_next_read = ExchangeHandle.fail_next_read
        fill_partially = ExchangeHandle.fill_partially


    class OldFake(Honest):
        """Paper as it is, behind a handle without the newer fault operations."""


    class SilentFake(Honest):
        """Paper as it is, behind a handle without placements()."""


    class OpaqueFake(Honest):
        """Paper as it is, behind a handle that declares placements unsupported."""


    def suite_for(cls, handle_cls=VariantHandle):
        class Suite(ConnectorConformance):
            connector_name = "variant"

            def make_registry(self):
                return PluginRegistry(disabled=(), plugins=[("variant", Plugin(cls))])

            @pytest.fixture
            def handle(self):
                return handle_cls()

        Suite.__name__ = Suite.__qualname__ = f"Test{cls.__name__}"
        return Suite


    TestHonest = suite_for(Honest)
    TestTakesSecret = suite_for(TakesSecret, LeakyHandle)
    TestClaimsFilledWhileResting = suite_for(ClaimsFilledWhileResting)
    TestLosesClientOrderId = suite_for(LosesClientOrderId)
    TestPlainExceptionOnReject = suite_for(PlainExceptionOnReject)
    TestFloatAverage = suite_for(FloatAverage)
    TestNoRounding = suite_for(NoRounding)
    TestLeaksSecret = suite_for(LeaksSecret, LeakyHandle)
    TestNoCancelNoLookup = suite_for(NoCancelNoLookup)
    TestParamsOverrideAmount = suite_for(ParamsOverrideAmount)
    TestDeclaresForbiddenParam = suite_for(DeclaresForbiddenParam)
    TestSilentFake = suite_for(SilentFake, SilentHandle)
    TestOpaqueFake = suite_for(OpaqueFake, OpaqueHandle)
    TestUndeclaredEndpoints = suite_for(UndeclaredEndpoints)
    TestTakesUrl = suite_for(TakesUrl, UrlHandle)
    TestHidesUrl = suite_for(HidesUrl, UrlHandle)
    TestOldFake = suite_for(OldFake, OldHandle)
    TestPlainExceptionOnReadFault = suite_for(PlainExceptionOnReadFault)
    TestPartialFillsReadOpen = suite_for(PartialFillsReadOpen)
    TestKrakenLikeIds = suite_for(KrakenLikeIds)
    TestRandomIdForm = suite_for(RandomIdForm)
''')

#: Every test of the suite (kept in step with ConnectorConformance on purpose).
ALL_TESTS = frozenset({
    "test_declares_where_its_orders_go",
    "test_testnet_on_a_live_host_is_refused",
    "test_discovered_through_entry_point",
    "test_plugin_import_is_light",
    "test_market_buy_fills_with_exact_amount_and_price",
    "test_limit_order_rests_then_fills_when_the_market_moves",
    "test_limit_order_is_canceled",
    "test_cancel_of_an_order_that_filled_meanwhile_changes_nothing",
    "test_route_order_leaves_one_row_per_call",
    "test_client_order_id_reaches_the_exchange_and_finds_the_order",
    "test_idempotency_key_never_places_a_second_order",
    "test_fetch_of_an_unknown_order_is_not_found",
    "test_exchange_rejection_becomes_a_rejected_row",
    "test_timeout_after_accept_is_unknown_and_reconciles",
    "test_insufficient_funds_is_rejected",
    "test_unknown_symbol_is_refused_before_the_exchange",
    "test_amount_is_rounded_down_to_the_market_step",
    "test_no_secret_leaks",
    "test_connector_is_reused_across_orders",
    "test_markets_are_loaded_once",
    "test_declared_params_are_well_formed",
    "test_params_that_change_the_order_are_refused_before_the_exchange",
    "test_params_never_change_the_order_the_exchange_receives",
    "test_read_faults_on_orders_raise_exchange_unavailable",
    "test_read_faults_on_markets_and_quotes_raise_exchange_unavailable",
    "test_partial_fill_reads_partially_filled",
    "test_client_order_id_in_the_exchange_form_is_found_again",
})
#: What the paper handle declares unsupported (and the in-process registration).
PAPER_SKIPS = frozenset({
    "test_testnet_on_a_live_host_is_refused",
    "test_discovered_through_entry_point",
    "test_no_secret_leaks",
    "test_markets_are_loaded_once",
    "test_read_faults_on_markets_and_quotes_raise_exchange_unavailable",
})


class Outcomes:
    def __init__(self, reports: Iterable[pytest.TestReport]) -> None:
        self.passed: set[str] = set()
        self.failed: dict[str, str] = {}
        self.skipped: dict[str, str] = {}
        for report in reports:
            name = report.nodeid.rsplit("::", 1)[-1]
            if report.failed:
                self.failed[name] = str(report.longrepr)
            elif report.skipped:
                longrepr = report.longrepr
                reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
                self.skipped[name] = reason
            elif report.when == "call":
                self.passed.add(name)

    @property
    def seen(self) -> set[str]:
        return self.passed | set(self.failed) | set(self.skipped)


@pytest.fixture
def pytester(pytester: pytest.Pytester) -> pytest.Pytester:
    """Strict asyncio mode (no ``asyncio_mode = auto``): the suite must mark its own tests."""
    pytester.makeini("[pytest]\nasyncio_mode = strict\n"
                     "asyncio_default_fixture_loop_scope = function\n")
    return pytester


def run_variant(pytester: pytest.Pytester, cls: str) -> Outcomes:
    pytester.makepyfile(test_variants=VARIANTS)
    recorder = pytester.inline_run("-p", "no:cacheprovider", "-k", f"Test{cls}",
                                   "test_variants.py")
    reports = recorder.getreports("pytest_runtest_logreport")
    outcomes = Outcomes(reports)
    assert outcomes.seen == ALL_TESTS, sorted(ALL_TESTS ^ outcomes.seen)
    return outcomes


def expect_failures(outcomes: Outcomes, *names: str) -> None:
    assert set(outcomes.failed) == set(names), {
        "unexpected failures": {n: outcomes.failed[n][-600:]
                                for n in set(outcomes.failed) - set(names)},
        "should have failed": sorted(set(names) - set(outcomes.failed)),
    }
    assert set(outcomes.skipped) == PAPER_SKIPS, outcomes.skipped


def test_the_control_passes(pytester: pytest.Pytester) -> None:
    outcomes = run_variant(pytester, "Honest")
    expect_failures(outcomes)
    assert outcomes.passed == ALL_TESTS - PAPER_SKIPS
    assert "registered in-process" in outcomes.skipped["test_discovered_through_entry_point"]


def test_the_control_with_credentials_does_not_leak(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_variants=VARIANTS)
    recorder = pytester.inline_run("-p", "no:cacheprovider", "-k",
                                   "TestTakesSecret and test_no_secret_leaks",
                                   "test_variants.py")
    recorder.assertoutcome(passed=1)


def test_reporting_filled_without_filling_fails(pytester: pytest.Pytester) -> None:
    outcomes = run_variant(pytester, "ClaimsFilledWhileResting")
    expect_failures(
        outcomes,
        "test_limit_order_rests_then_fills_when_the_market_moves",
        "test_limit_order_is_canceled",
        "test_cancel_of_an_order_that_filled_meanwhile_changes_nothing",
        "test_client_order_id_reaches_the_exchange_and_finds_the_order",
        "test_partial_fill_reads_partially_filled",
    )
    assert "must rest open" in outcomes.failed[
        "test_limit_order_rests_then_fills_when_the_market_moves"]


def test_losing_the_client_order_id_fails(pytester: pytest.Pytester) -> None:
    outcomes = run_variant(pytester, "LosesClientOrderId")
    expect_failures(
        outcomes,
        "test_client_order_id_reaches_the_exchange_and_finds_the_order",
        "test_idempotency_key_never_places_a_second_order",
        "test_params_never_change_the_order_the_exchange_receives",
        "test_timeout_after_accept_is_unknown_and_reconciles",
        "test_partial_fill_reads_partially_filled",
        "test_client_order_id_in_the_exchange_form_is_found_again",
    )


def test_a_plain_exception_for_a_rejection_fails(pytester: pytest.Pytester) -> None:
    outcomes = run_variant(pytester, "PlainExceptionOnReject")
    expect_failures(
        outcomes,
        "test_exchange_rejection_becomes_a_rejected_row",
        "test_insufficient_funds_is_rejected",
    )
    assert "OrderStatusUnknownError" in outcomes.failed[
        "test_exchange_rejection_becomes_a_rejected_row"]


def test_float_prices_fail(pytester: pytest.Pytester) -> None:
    outcomes = run_variant(pytester, "FloatAverage")
    expect_failures(
        outcomes,
        "test_market_buy_fills_with_exact_amount_and_price",
        "test_limit_order_rests_then_fills_when_the_market_moves",
        "test_partial_fill_reads_partially_filled",
    )


def test_not_rounding_to_the_step_fails(pytester: pytest.Pytester) -> None:
    outcomes = run_variant(pytester, "NoRounding")
    expect_failures(outcomes, "test_amount_is_rounded_down_to_the_market_step")


def test_a_leaked_secret_fails(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_variants=VARIANTS)
    recorder = pytester.inline_run("-p", "no:cacheprovider", "-k",
                                   "TestLeaksSecret and test_no_secret_leaks",
                                   "test_variants.py")
    outcomes = Outcomes(recorder.getreports("pytest_runtest_logreport"))
    assert list(outcomes.failed) == ["test_no_secret_leaks"]
    assert "leaked into the stdlib logging" in outcomes.failed["test_no_secret_leaks"]


def test_not_declaring_where_orders_go_fails(pytester: pytest.Pytester) -> None:
    outcomes = run_variant(pytester, "UndeclaredEndpoints")
    expect_failures(outcomes, "test_declares_where_its_orders_go")
    assert "override Connector.endpoints()" in outcomes.failed[
        "test_declares_where_its_orders_go"]


def test_accepting_a_live_host_as_testnet_fails(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_variants=VARIANTS)
    recorder = pytester.inline_run(
        "-p", "no:cacheprovider", "-k",
        "(TestTakesUrl or TestHidesUrl) and (test_testnet_on_a_live_host_is_refused "
        "or test_declares_where_its_orders_go)",
        "test_variants.py")
    reports = [r for r in recorder.getreports("pytest_runtest_logreport")
               if r.when == "call" or r.outcome != "passed"]
    outcomes = {r.nodeid.split("::", 1)[1]: r for r in reports}
    assert {k: v.outcome for k, v in outcomes.items()} == {
        "TestTakesUrl::test_declares_where_its_orders_go": "passed",
        "TestTakesUrl::test_testnet_on_a_live_host_is_refused": "passed",
        "TestHidesUrl::test_declares_where_its_orders_go": "passed",
        "TestHidesUrl::test_testnet_on_a_live_host_is_refused": "failed",
    }
    assert "accepted testnet=True with api_url on api.example.com" in str(
        outcomes["TestHidesUrl::test_testnet_on_a_live_host_is_refused"].longrepr)


def test_a_plain_exception_for_a_read_fault_fails(pytester: pytest.Pytester) -> None:
    outcomes = run_variant(pytester, "PlainExceptionOnReadFault")
    expect_failures(outcomes, "test_read_faults_on_orders_raise_exchange_unavailable")
    failure = outcomes.failed["test_read_faults_on_orders_raise_exchange_unavailable"]
    assert "fetch_order with a server_error raised Exception" in failure


def test_a_partial_fill_read_as_open_fails(pytester: pytest.Pytester) -> None:
    outcomes = run_variant(pytester, "PartialFillsReadOpen")
    expect_failures(outcomes, "test_partial_fill_reads_partially_filled")
    assert "must read partially_filled" in outcomes.failed[
        "test_partial_fill_reads_partially_filled"]


def test_client_ids_in_the_exchange_form_pass_the_whole_suite(
    pytester: pytest.Pytester,
) -> None:
    """An exchange refusing bagbot's 34-character ids works once the connector declares
    ``exchange_client_id``: the router places, syncs, cancels and reconciles by that form."""
    outcomes = run_variant(pytester, "KrakenLikeIds")
    expect_failures(outcomes)
    assert "test_client_order_id_in_the_exchange_form_is_found_again" in outcomes.passed
    assert "test_timeout_after_accept_is_unknown_and_reconciles" in outcomes.passed


def test_a_client_id_form_that_is_not_deterministic_fails(pytester: pytest.Pytester) -> None:
    outcomes = run_variant(pytester, "RandomIdForm")
    expect_failures(
        outcomes,
        "test_client_order_id_reaches_the_exchange_and_finds_the_order",
        "test_idempotency_key_never_places_a_second_order",
        "test_timeout_after_accept_is_unknown_and_reconciles",
        "test_partial_fill_reads_partially_filled",
        "test_client_order_id_in_the_exchange_form_is_found_again",
        "test_params_never_change_the_order_the_exchange_receives",
    )
    assert "not deterministic" in outcomes.failed[
        "test_client_order_id_in_the_exchange_form_is_found_again"]


def test_params_that_change_the_placed_order_fail(pytester: pytest.Pytester) -> None:
    outcomes = run_variant(pytester, "ParamsOverrideAmount")
    expect_failures(outcomes, "test_params_never_change_the_order_the_exchange_receives")


def test_declaring_a_forbidden_param_fails(pytester: pytest.Pytester) -> None:
    outcomes = run_variant(pytester, "DeclaresForbiddenParam")
    expect_failures(outcomes, "test_declared_params_are_well_formed")
    assert "would change the order itself" in outcomes.failed[
        "test_declared_params_are_well_formed"]


def _params_property(pytester: pytest.Pytester, cls: str) -> Outcomes:
    pytester.makepyfile(test_variants=VARIANTS)
    recorder = pytester.inline_run(
        "-p", "no:cacheprovider", "-k",
        f"Test{cls} and test_params_never_change_the_order_the_exchange_receives",
        "test_variants.py")
    return Outcomes(recorder.getreports("pytest_runtest_logreport"))


def test_a_handle_without_placements_is_told_to_implement_it(
    pytester: pytest.Pytester,
) -> None:
    outcomes = _params_property(pytester, "SilentFake")
    (failure,) = outcomes.failed.values()
    assert "placements() is not implemented" in failure
    assert "inspect_placements=unsupported" in failure


def test_a_handle_without_the_newer_operations_is_told_what_to_do(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_variants=VARIANTS)
    recorder = pytester.inline_run(
        "-p", "no:cacheprovider", "-k",
        "TestOldFake and (test_read_faults_on_orders or test_partial_fill)",
        "test_variants.py")
    outcomes = Outcomes(recorder.getreports("pytest_runtest_logreport"))
    assert "fail_next_read() is not implemented" in outcomes.failed[
        "test_read_faults_on_orders_raise_exchange_unavailable"]
    assert "Requirements(partial_fills=unsupported('why'))" in outcomes.failed[
        "test_partial_fill_reads_partially_filled"]


def test_a_handle_declaring_placements_unsupported_gets_the_weaker_check(
    pytester: pytest.Pytester,
) -> None:
    outcomes = _params_property(pytester, "OpaqueFake")
    assert outcomes.passed == {"test_params_never_change_the_order_the_exchange_receives"}


def test_declared_unsupported_capabilities_skip_with_the_reason(
    pytester: pytest.Pytester,
) -> None:
    outcomes = run_variant(pytester, "NoCancelNoLookup")
    assert outcomes.failed == {}
    cancel = outcomes.skipped["test_limit_order_is_canceled"]
    assert "declares Capabilities(cancel=False)" in cancel
    for name in ("test_client_order_id_reaches_the_exchange_and_finds_the_order",
                 "test_fetch_of_an_unknown_order_is_not_found"):
        assert "declares Capabilities(fetch_by_client_order_id=False)" in outcomes.skipped[name]
    # Handle-level declarations skip the same way, with the handle's words.
    assert "no request to fail" in outcomes.skipped[
        "test_read_faults_on_markets_and_quotes_raise_exchange_unavailable"]
    assert "no market request to count" in outcomes.skipped["test_markets_are_loaded_once"]


def test_an_installed_suite_failure_shows_the_compared_values(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The suite lives outside the tested package's tree (as when installed from a wheel):
    pytest rewrites its asserts only because ``bagbot_core.testing`` registers it."""
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[1]))
    pytester.makepyfile(test_variants=VARIANTS)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-k",
        "TestFloatAverage and test_market_buy_fills_with_exact_amount_and_price",
        "test_variants.py")
    result.assert_outcomes(failed=1)
    output = result.stdout.str()
    assert "(floats?)" in output  # the suite's own message ...
    # ... and, from the rewritten assert, both compared values
    compared = r"assert Decimal\('\d+\.\d{10,}'\) == Decimal\('\d+\.\d+'\)"
    assert re.search(compared, output), output[-3000:]


def test_a_subclass_without_a_handle_fails_loudly(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_nohandle='''
        from bagbot_core.testing.conformance import ConnectorConformance

        class TestForgotten(ConnectorConformance):
            connector_name = "paper"
    ''')
    recorder = pytester.inline_run("-p", "no:cacheprovider", "-k",
                                   "test_market_buy", "test_nohandle.py")
    reports = [r for r in recorder.getreports("pytest_runtest_logreport") if r.failed]
    assert reports and "must define a `handle` fixture" in str(reports[0].longrepr)
