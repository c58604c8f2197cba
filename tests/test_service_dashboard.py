"""The dashboard at ``/``, against a real ``bagbot serve`` on loopback and a real SQLite file.

The HTTP tests check what the page and its assets promise (security headers, packaged
files, no HTML built from API text). The browser tests drive Debian's Chromium headless
through Selenium: log in with a token, see orders, cancel a resting order, and the admin
controls. They skip when Chromium, chromedriver or Selenium are missing, unless
``BAGBOT_REQUIRE_BROWSER=1`` (CI sets it): then that is a failure.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
from sqlalchemy import select

from bagbot_core.db import dispose_engines, get_engine, session_factory
from bagbot_core.models import Order
from bagbot_core.service import dashboard
from tests.service_helpers import make_token, serve_process

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
#: How long to wait for the page to show something (a bound, not an assertion).
WAIT_SECONDS = 30


# -- a real `bagbot serve` --------------------------------------------------------------------


@attrs.frozen
class Server:
    url: str
    database_url: str
    user_token: str
    admin_token: str

    def client(self, token: str) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"},
                            timeout=30, trust_env=False)

    def order_status(self, order_id: int) -> str:
        engine = get_engine(self.database_url, create_tables=False)
        with session_factory(engine)() as session:
            status = session.execute(select(Order.status).where(Order.id == order_id)).scalar_one()
        return str(status)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``bagbot serve`` on a free loopback port, a user token (alice) and an admin token."""
    tmp = tmp_path_factory.mktemp("dashboard")
    database_url = f"sqlite:///{tmp}/bagbot.db"
    user_token = make_token(database_url, "alice")  # creates the schema first
    admin_token = make_token(database_url, "root", admin=True)
    env = {"XDG_DATA_HOME": str(tmp / "xdg"), "XDG_CONFIG_HOME": str(tmp / "xdg-config"),
           "BAGBOT_RECONCILE_INTERVAL": "0"}
    try:
        with serve_process(database_url, env, log=tmp / "serve.log") as served:
            yield Server(served.url, database_url, user_token, admin_token)
    finally:
        dispose_engines()


def _place(server: Server, token: str, **order: Any) -> dict[str, Any]:
    body = {"connector": "paper", "symbol": "BTC/USDT", "side": "buy", "amount": "0.01",
            "testnet": True, **order}
    with server.client(token) as client:
        response = client.post("/v1/orders", json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


# -- over HTTP: the page, its headers, its assets ---------------------------------------------


def test_page_sets_a_strict_content_security_policy(server: Server) -> None:
    response = httpx.get(f"{server.url}/", trust_env=False)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    policy = {part.split()[0]: part.split()[1:]
              for part in response.headers["content-security-policy"].split("; ")}
    assert policy["default-src"] == ["'none'"]
    assert policy["script-src"] == ["'self'"]  # no 'unsafe-inline', no other origin
    assert policy["frame-ancestors"] == ["'none'"]
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert "set-cookie" not in response.headers
    assert "<script>" not in response.text  # every script is a file under /static


def test_page_loads_its_assets_from_this_server(server: Server) -> None:
    page = httpx.get(f"{server.url}/", trust_env=False).text
    for name, kind in (("dashboard.js", "javascript"), ("dashboard.css", "text/css"),
                       ("favicon.svg", "image/svg+xml")):
        url = dashboard._asset_urls()[name]
        assert f'"{url}"' in page
        response = httpx.get(f"{server.url}{url}", trust_env=False)
        assert response.status_code == 200
        assert kind in response.headers["content-type"]
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.content == (dashboard.STATIC / name).read_bytes()
    # Every src and href points under /static: nothing from a CDN or another origin.
    assert re.findall(r'(?:src|href)="([^"]*)"', page)
    assert all(url.startswith("/static/") for url in re.findall(r'(?:src|href)="([^"]*)"', page))


def test_assets_outside_static_are_not_served(server: Server) -> None:
    for path in ("/static/../dashboard.py", "/static/%2e%2e/dashboard.py",
                 "/static/nothing.js"):
        response = httpx.get(f"{server.url}{path}", trust_env=False)
        assert response.status_code == 404
        assert "def install" not in response.text


def test_script_builds_no_html_from_text() -> None:
    """API text is untrusted: the script must reach the DOM through textContent only."""
    lines = (dashboard.STATIC / "dashboard.js").read_text().splitlines()
    script = "\n".join(line for line in lines if not line.lstrip().startswith("//"))
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
                 "new Function", "setAttribute(\"on", "localStorage", "document.cookie"):
        assert sink not in script, sink


def test_docs_state_the_policy_the_page_sends() -> None:
    docs = Path(__file__).parents[1] / "docs" / "http-api.md"
    assert dashboard.CONTENT_SECURITY_POLICY in " ".join(docs.read_text().split())


def test_page_renders_without_a_request() -> None:
    html = dashboard.render_page()
    assert 'data-cancelable="open partially_filled"' in html
    assert '<option value="unknown">unknown</option>' in html


# -- in a browser -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium through Debian's chromedriver; Selenium downloads nothing."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("selenium (pip install 'bagbot-core[testing]')")
    if missing:
        message = f"the browser tests need {', '.join(missing)}"
        if os.environ.get("BAGBOT_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{message} (BAGBOT_REQUIRE_BROWSER=1)")
        pytest.skip(message)
    patch = pytest.MonkeyPatch()
    patch.setenv("SE_OFFLINE", "true")  # Selenium Manager: no driver or browser downloads
    patch.setenv("SE_AVOID_STATS", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
        "--window-size=1600,1000", "--no-first-run", "--no-default-browser-check",
        "--disable-extensions", "--disable-sync", "--disable-background-networking",
        "--disable-component-update", "--disable-default-apps", "--disable-domain-reliability",
        "--no-pings", "--metrics-recording-only",
        # Nothing leaves the machine: other hosts resolve nowhere and go to a dead proxy.
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
        "--proxy-server=http://127.0.0.1:9",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        patch.undo()


def _wait(driver: Any, condition: Any, what: str) -> Any:
    """Wait for ``condition``; the page re-renders its tables on every refresh, so an
    element found a moment ago may be gone: that is retried, not a failure."""
    from selenium.common.exceptions import (
        NoSuchElementException,
        StaleElementReferenceException,
        TimeoutException,
    )
    from selenium.webdriver.support.ui import WebDriverWait

    waiting = WebDriverWait(driver, WAIT_SECONDS, ignored_exceptions=(
        NoSuchElementException, StaleElementReferenceException))
    try:
        return waiting.until(condition)
    except TimeoutException:
        message = driver.find_element("id", "message").text
        pytest.fail(f"the page never showed {what}; its message line: {message!r}")


def _log_in(driver: Any, server: Server, token: str) -> None:
    driver.get(f"{server.url}/")
    driver.execute_script("sessionStorage.clear()")
    driver.refresh()
    driver.find_element("id", "token").send_keys(token)
    driver.find_element("id", "login-button").click()
    _wait(driver, lambda d: d.find_element("id", "app").is_displayed(), "the logged-in view")


#: The order rows as the page shows them, read in one go (a refresh cannot interleave).
_ROWS_SCRIPT = """
return Array.from(document.querySelectorAll("#orders-table tr.order")).map((tr) => {
  const badge = tr.querySelector(".status");
  return {id: Number(tr.dataset.orderId), status: tr.dataset.status,
          badge: badge ? badge.textContent : null,
          badge_classes: badge ? Array.from(badge.classList) : [],
          cells: Array.from(tr.cells).map((td) => td.textContent),
          cancel: tr.querySelector("button.cancel") !== null};
});
"""


def _rows(driver: Any) -> list[dict[str, Any]]:
    return list(driver.execute_script(_ROWS_SCRIPT))


def _order_row(driver: Any, order_id: int, status: str | None = None) -> dict[str, Any]:
    def find(d: Any) -> dict[str, Any] | bool:
        for found in _rows(d):
            if found["id"] == order_id and (status is None or found["status"] == status):
                return found
        return False

    return dict(_wait(driver, find, f"order {order_id}" + (f" as {status}" if status else "")))


def _click(driver: Any, selector: str) -> None:
    def click(d: Any) -> bool:
        d.find_element("css selector", selector).click()
        return True

    _wait(driver, click, selector)


def _policy_violations(driver: Any) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser")
            if "Content Security Policy" in entry["message"]]


def test_orders_show_with_their_status(server: Server, browser: Any, tmp_path: Path) -> None:
    filled = _place(server, server.user_token, type="market")
    assert filled["status"] == "filled"
    _log_in(browser, server, server.user_token)

    row = _order_row(browser, filled["id"])
    assert row["badge"] == "filled"
    assert "status-filled" in row["badge_classes"]
    assert not row["cancel"]  # nothing to cancel
    assert "BTC/USDT" in row["cells"]
    assert "alice" in browser.find_element("id", "identity").text
    assert not browser.find_element("id", "admin").is_displayed()
    _wait(browser, lambda d: d.find_element("id", "trading-state").text == "active",
          "the trading state")
    _wait(browser, lambda d: "paper" in d.find_element("id", "plugins-table").text,
          "the paper plugin")
    assert browser.execute_script("return document.cookie") == ""  # the token is no cookie
    assert browser.save_screenshot(str(tmp_path / "orders.png"))
    assert (tmp_path / "orders.png").read_bytes().startswith(b"\x89PNG")
    assert _policy_violations(browser) == []


def test_filters_narrow_the_orders(server: Server, browser: Any) -> None:
    eth = _place(server, server.user_token, type="market", symbol="ETH/USDT")
    btc = _place(server, server.user_token, type="market")
    _log_in(browser, server, server.user_token)
    _order_row(browser, eth["id"])
    _order_row(browser, btc["id"])

    browser.find_element("id", "filter-symbol").send_keys("ETH/USDT")
    browser.find_element("css selector", "#filters button[type=submit]").click()

    def only_eth(d: Any) -> list[dict[str, Any]] | bool:
        rows = _rows(d)
        return bool(rows) and all("ETH/USDT" in r["cells"] for r in rows) and rows

    ids = [r["id"] for r in _wait(browser, only_eth, "only ETH/USDT orders")]
    assert eth["id"] in ids
    assert btc["id"] not in ids


def test_orders_are_newest_first_and_refresh_by_themselves(
        server: Server, browser: Any) -> None:
    _log_in(browser, server, server.user_token)
    assert browser.find_element("id", "auto-refresh").is_selected()
    later = _place(server, server.user_token, type="market")  # after the page loaded
    _order_row(browser, later["id"])  # no click: the auto-refresh brought it
    ids = [r["id"] for r in _rows(browser)]
    assert ids[0] == later["id"]
    assert ids == sorted(ids, reverse=True)


def test_refresh_now_works_with_auto_refresh_paused(server: Server, browser: Any) -> None:
    _log_in(browser, server, server.user_token)
    browser.find_element("id", "auto-refresh").click()
    assert not browser.find_element("id", "auto-refresh").is_selected()
    later = _place(server, server.user_token, type="market")
    browser.find_element("id", "refresh").click()
    assert _order_row(browser, later["id"])["badge"] == "filled"


def test_cancel_button_cancels_a_resting_order(server: Server, browser: Any) -> None:
    # Far below the paper market's price: the limit buy rests open.
    resting = _place(server, server.user_token, type="limit", price="1000")
    assert resting["status"] == "open"
    _log_in(browser, server, server.user_token)

    assert _order_row(browser, resting["id"], "open")["cancel"]
    order_id = resting["id"]
    _click(browser, f'tr.order[data-order-id="{order_id}"] button.cancel')

    row = _order_row(browser, resting["id"], "canceled")
    assert row["badge"] == "canceled"
    assert "status-canceled" in row["badge_classes"]
    assert not row["cancel"]
    assert server.order_status(resting["id"]) == "canceled"
    assert _policy_violations(browser) == []


def test_only_an_admin_sees_the_halt_control(server: Server, browser: Any) -> None:
    _log_in(browser, server, server.user_token)
    assert not browser.find_element("id", "admin").is_displayed()
    assert not browser.find_element("id", "halt-button").is_displayed()
    assert not browser.find_element("id", "filter-user").is_displayed()

    browser.find_element("id", "logout").click()
    assert browser.execute_script("return sessionStorage.length") == 0
    _log_in(browser, server, server.admin_token)
    assert browser.find_element("id", "admin").is_displayed()
    assert browser.find_element("id", "halt-button").is_displayed()


def test_an_admin_sees_every_user_and_filters_by_user(server: Server, browser: Any) -> None:
    alices = _place(server, server.user_token, type="market")
    roots = _place(server, server.admin_token, type="market")
    _log_in(browser, server, server.admin_token)
    _order_row(browser, alices["id"])
    _order_row(browser, roots["id"])

    browser.find_element("id", "filter-user").send_keys("alice")
    browser.find_element("css selector", "#filters button[type=submit]").click()

    def only_alice(d: Any) -> list[dict[str, Any]] | bool:
        rows = _rows(d)
        return bool(rows) and all(r["cells"][2] == "alice" for r in rows) and rows

    ids = [r["id"] for r in _wait(browser, only_alice, "only alice's orders")]
    assert alices["id"] in ids
    assert roots["id"] not in ids
    _wait(browser, lambda d: d.find_element("id", "risk-user").text == "for user alice",
          "alice's limits")


def test_admin_halts_and_resumes_and_the_reason_stays_text(
        server: Server, browser: Any) -> None:
    hostile = '<img src=x id=injected onerror="document.title=\'owned\'">'
    _log_in(browser, server, server.admin_token)
    browser.find_element("id", "admin-reason").send_keys(hostile)
    browser.find_element("id", "halt-button").click()
    _wait(browser, lambda d: d.find_element("id", "trading-state").text == "halted",
          "the halted state")
    assert hostile in browser.find_element("id", "state-table").text  # shown as text
    assert browser.find_elements("id", "injected") == []  # not as markup
    assert browser.title == "bagbot"
    with server.client(server.user_token) as client:
        refused = client.post("/v1/orders", json={
            "connector": "paper", "symbol": "BTC/USDT", "side": "buy", "type": "market",
            "amount": "0.01"})
    assert refused.status_code == 422, refused.text

    browser.find_element("id", "admin-reason").send_keys("drill over")
    browser.find_element("id", "resume-button").click()
    _wait(browser, lambda d: d.find_element("id", "trading-state").text == "active",
          "the active state")
    assert _policy_violations(browser) == []


def test_a_refused_token_stays_logged_out(server: Server, browser: Any) -> None:
    browser.get(f"{server.url}/")
    browser.execute_script("sessionStorage.clear()")
    browser.refresh()
    browser.find_element("id", "token").send_keys("bgt_aaaaaaaaaaaa_" + "A" * 43)
    browser.find_element("id", "login-button").click()
    _wait(browser, lambda d: "refused" in d.find_element("id", "message").text,
          "the refusal")
    assert browser.find_element("id", "login").is_displayed()
    assert not browser.find_element("id", "app").is_displayed()
    assert browser.execute_script("return sessionStorage.length") == 0
