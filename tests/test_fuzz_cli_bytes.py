"""CLI fuzzing with arbitrary bytes in every argument and option.

A shell passes argv as bytes; Python decodes what is not UTF-8 into lone surrogates
(``b"\\xff"`` -> ``"\\udcff"``, see :func:`os.fsdecode`), which no database driver can encode.
For ``route``, ``orders list/show/sync/cancel/reconcile`` and ``db url``, with any bytes
(NUL excepted: argv cannot hold it) in any position:

* no traceback, ever: the exit code is 0, 1, 2 or 3, a failure is one ``error:`` line;
* ``route`` with a valid user id leaves exactly one new row (none for a usage error; none
  or one for a repeated idempotency key); with free text only in the symbol, connector, user and
  idempotency key (the parts the CLI does not parse), it is never a usage error;
* the other commands never write a row.

In process (Click's runner, both databases) with Hypothesis, plus real processes of the
installed console script given real bytes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from bagbot_core.cli import cli
from bagbot_core.db import get_engine, session_factory
from bagbot_core.models import Order
from bagbot_core.payload import CLIENT_ORDER_ID_RE
from tests import environment
from tests.scripted import ScriptedExchange

BAGBOT = Path(sys.executable).with_name("bagbot")
ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = 100

# -- the generators ------------------------------------------------------------------------------

NASTY = [
    b"\xff", b"\xfe\xff", b"BTC/\xff", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80abc",
    b"\x1b[2J", b"\x1b]0;owned\x07", b"\xe2\x80\xae", b"\r\n", b"\t", b"\x7f", b"\xc2\x9b31m",
    b"-", b"--", b"-1", b"--help", b"--json", b"--live", b"'; DROP TABLE orders; --", b"%s%n",
    b"9" * 400, b"\xff" * 2000, b"", b" ", b"nan", b"inf", b"1e999999", b"99999999999999999999999",
    b"\xd9\xa1", b"\xef\xbc\x91",  # Arabic-Indic and fullwidth digit one
]
raw_bytes = st.one_of(
    st.sampled_from(NASTY),
    st.binary(max_size=40),
    st.binary(min_size=200, max_size=3000),
    st.text(max_size=30).map(lambda s: s.encode("utf-8", "surrogatepass")),
).map(lambda b: b.replace(b"\x00", b""))


def argv(value: bytes) -> str:
    """What ``sys.argv`` holds for these bytes (UTF-8 locale, ``surrogateescape``)."""
    return os.fsdecode(value)


def mostly(good: st.SearchStrategy[str], one_in: int = 8
           ) -> st.SearchStrategy[tuple[str, bool]]:
    """(value, is_good): arbitrary bytes about once in ``one_in``, else ``good``.

    (Hypothesis favours a choice's first alternative and an integer's bounds: the good value
    comes first, so that a plain order is routed often enough to be tested too.)"""
    return st.sampled_from([True] * (one_in - 1) + [False]).flatmap(
        lambda ok: good.map(lambda v: (v, True)) if ok else raw_bytes.map(lambda b: (argv(b),
                                                                                    False)))


def free_text(good: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Text the CLI passes through unparsed: bytes once in three."""
    return mostly(good, 3).map(lambda pair: pair[0])


def valid_user(user: str) -> bool:
    return bool(user.strip()) and len(user) <= 128 and user.isprintable()


@st.composite
def route_args(draw: st.DrawFn) -> tuple[list[str], str, bool]:
    """(args after ``route``, user id, every CLI-parsed part is well formed)."""
    symbol = draw(free_text(st.sampled_from(["BTC/USDT"] * 4 + ["ETH/BTC", "OLD/USDT"])))
    connector = draw(free_text(st.just("scripted")))
    user = draw(free_text(st.sampled_from(["fuzz", "fuzz-2"])))
    side, side_ok = draw(mostly(st.sampled_from(["buy", "sell", "BUY"])))
    amount, amount_ok = draw(mostly(st.sampled_from(["0.001", "0.01", "0.5"] * 3 + ["20"])))
    options = ["--connector", connector, "--user", user]
    parsed_ok = side_ok and amount_ok
    if draw(st.booleans()):
        price, price_ok = draw(mostly(st.sampled_from(["49000", "50000.5"])))
        options += ["--type", "limit", "--price", price]
        parsed_ok = parsed_ok and price_ok
    elif draw(st.integers(0, 4)) == 0:
        order_type, type_ok = draw(mostly(st.just("market")))
        options += ["--type", order_type]
        parsed_ok = parsed_ok and type_ok
    if draw(st.integers(0, 2)) == 0:
        options += ["--client-order-id", draw(free_text(st.uuids().map(lambda u: u.hex)))]
    if draw(st.integers(0, 9)) == 0:
        options.append("--live")
    options += draw(st.sampled_from([[], ["--json"]]))
    separated = draw(st.integers(0, 3)) > 0  # "--": positionals can never read as options
    positionals = [symbol, side, amount]
    args = [*options, "--", *positionals] if separated else [*positionals, *options]
    return args, user, parsed_ok and separated


def orders_args() -> st.SearchStrategy[list[str]]:
    text = raw_bytes.map(argv)
    listing = st.lists(
        st.tuples(st.sampled_from(["--user", "--symbol", "--connector", "--status", "--since",
                                   "--until", "--limit", "--offset"]), text),
        max_size=4,
    ).map(lambda pairs: ["list", *[part for pair in pairs for part in pair]])
    by_id = st.tuples(st.sampled_from(["show", "sync", "cancel"]),
                      st.one_of(text, st.sampled_from(["1", "2", str(2**63 - 1), str(2**63)]))
                      ).map(lambda t: [t[0], "--", t[1]])
    reconcile = st.tuples(free_text(st.just("scripted")),
                          st.one_of(text, st.sampled_from(["0", "3600", "nan", "1e300"]))
                          ).map(lambda t: ["reconcile", "--connector", t[0], "--grace", t[1]])
    return st.one_of(listing, by_id, reconcile).flatmap(
        lambda args: st.sampled_from([args, [args[0], "--json", *args[1:]]]))


# -- the oracle ----------------------------------------------------------------------------------


def count_rows(factory: sessionmaker[Session]) -> int:
    with factory() as db:
        return int(db.scalar(select(func.count()).select_from(Order)) or 0)


def known_key(db: Session, key: str | None) -> bool:
    """Only a well-formed key can have a row (others are refused before any lookup)."""
    if key is None or CLIENT_ORDER_ID_RE.fullmatch(key) is None:
        return False
    return bool(db.scalar(select(func.count()).select_from(Order)
                          .where(Order.client_order_id == key)))


def no_crash(result: Result, args: list[str]) -> None:
    assert result.exit_code in (0, 1, 2, 3), (args, result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        args, repr(result.exception))
    assert "Traceback" not in result.output
    if result.exit_code and not result.stdout.startswith("Usage:"):
        assert result.stderr.startswith("error: "), (args, result.stderr)
        assert result.stderr.count("\n") == 1, (args, result.stderr)
    for control in ("\x1b", "\x07", "\x9b", "\u202e"):
        assert control not in result.stderr, (args, result.stderr)


# -- in process ----------------------------------------------------------------------------------


@pytest.fixture
def cli_env(cli_environment: None, scripted: ScriptedExchange, monkeypatch: pytest.MonkeyPatch,
            tmp_path: Path) -> ScriptedExchange:
    monkeypatch.setenv("BAGBOT_LOG_FILE", str(tmp_path / "audit.log"))
    return scripted


def test_fuzz_route_with_bytes(db_url: str, cli_env: ScriptedExchange) -> None:
    runner = CliRunner()
    factory = session_factory(get_engine(db_url))
    codes: Counter[int] = Counter()

    @settings(max_examples=EXAMPLES, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(route_args())
    def run(generated: tuple[list[str], str, bool]) -> None:
        args, user, parsed_ok = generated
        key = args[args.index("--client-order-id") + 1] if "--client-order-id" in args else None
        with factory() as db:
            replay = known_key(db, key)
        before = count_rows(factory)
        result = runner.invoke(cli, ["--database-url", db_url, "route", *args])
        codes[result.exit_code] += 1
        no_crash(result, args)
        added = count_rows(factory) - before
        helped = result.exit_code == 0 and result.stdout.startswith("Usage:")
        if parsed_ok:  # bytes only where the CLI passes text through: routed, never refused
            assert result.exit_code != 2, (args, result.stderr)
        routed = result.exit_code in (0, 1, 3) and valid_user(user) and not helped
        if replay:  # a repeated key: the first row answers (or a refused payload gets its
            assert added in (0, 1), (args, result.output)  # own row, before the key is read)
        else:
            assert added == (1 if routed else 0), (args, result.output, added)

    run()
    print(f"\nCLI bytes fuzz (route): exit codes {dict(codes)}")
    assert sum(codes.values()) >= EXAMPLES
    assert codes[0] and codes[1] and codes[2]  # successes, refusals and usage errors


def test_fuzz_orders_and_db_url_with_bytes(db_url: str, cli_env: ScriptedExchange) -> None:
    runner = CliRunner()
    factory = session_factory(get_engine(db_url))
    for args in (["BTC/USDT", "buy", "0.01"], ["BTC/USDT", "buy", "0.01", "--type", "limit",
                                               "--price", "49000"]):
        assert runner.invoke(cli, ["--database-url", db_url, "route", *args, "--connector",
                                   "scripted", "--user", "fuzz"]).exit_code == 0
    codes: Counter[int] = Counter()

    @settings(max_examples=EXAMPLES, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(st.one_of(orders_args().map(lambda a: ["--database-url", db_url, "orders", *a]),
                     raw_bytes.map(lambda b: ["--database-url", argv(b), "db", "url"])))
    def run(args: list[str]) -> None:
        before = count_rows(factory)
        result = runner.invoke(cli, args)
        codes[result.exit_code] += 1
        no_crash(result, args)
        assert count_rows(factory) == before, args

    run()
    print(f"\nCLI bytes fuzz (orders, db url): exit codes {dict(codes)}")
    assert codes[0] and codes[2]


# -- real processes ------------------------------------------------------------------------------

ROUTE_CASES: list[tuple[list[bytes], bytes, bool]] = [
    # (route arguments, user, routed: expect exactly one row)
    ([b"BTC/\xff\x1b]0;owned\x07", b"buy", b"0.001", b"--client-order-id", b"k\xff"], b"fuzz",
     True),
    ([b"--connector", b"pa\xffper", b"--", b"-BTC/\xfe", b"buy", b"0.001"], b"fuzz", True),
    ([b"BTC/USDT", b"buy", b"0.001"], b"\xff\xfe", False),
    ([b"BTC/USDT", b"b\xffy", b"0.001", b"--type", b"limit", b"--price", b"\xff" * 3000],
     b"fuzz", False),
]
OTHER_CASES: list[list[bytes]] = [
    [b"orders", b"list", b"--symbol", b"BTC/\xff", b"--connector", b"\x1b[2J"],
    [b"orders", b"show", b"99999999999999999999999"],
    [b"orders", b"reconcile", b"--connector", b"pa\xffper", b"--grace", b"nan"],
]


def _run(tmp_path: Path, url: str, *args: bytes) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if k not in environment.SETTINGS}
    env.update(XDG_DATA_HOME=str(tmp_path / "xdg"), HOME=str(tmp_path / "home"),
               BAGBOT_LOG_FILE=str(tmp_path / "audit.log"), PYTHONPATH=str(ROOT))
    return subprocess.run([os.fsencode(BAGBOT), b"--database-url", os.fsencode(url), *args],
                          capture_output=True, env=env, timeout=120, check=False)


def _no_crash(done: subprocess.CompletedProcess[bytes], args: list[bytes]) -> str:
    stderr = done.stderr.decode("utf-8", "replace")
    assert done.returncode in (0, 1, 2, 3), (args, stderr)
    assert "Traceback" not in stderr + done.stdout.decode("utf-8", "replace"), (args, stderr)
    if done.returncode:
        assert stderr.startswith("error: ") and stderr.count("\n") == 1, (args, stderr)
    assert b"\x1b" not in done.stderr and b"\x07" not in done.stderr, (args, stderr)
    return stderr


def test_console_script_with_bytes(sqlite_url: str, tmp_path: Path) -> None:
    """A handful of real processes (both databases get real processes with bytes in
    test_safety_cli_input)."""
    db_url = sqlite_url
    factory = session_factory(get_engine(db_url))
    for args, user, routed in ROUTE_CASES:
        before = count_rows(factory)
        done = _run(tmp_path, db_url, b"route", b"--user", user, *args)
        stderr = _no_crash(done, args)
        assert count_rows(factory) - before == (1 if routed else 0), (args, stderr)
        assert (done.returncode == 2) is (not routed and user == b"fuzz"), (args, stderr)
    for args in OTHER_CASES:
        before = count_rows(factory)
        _no_crash(_run(tmp_path, db_url, *args), args)
        assert count_rows(factory) == before, args
    done = _run(tmp_path, "sqlite:///" + str(tmp_path) + "/\udcff.db", b"db", b"url")
    assert done.returncode == 1 and b"not UTF-8" in done.stderr
