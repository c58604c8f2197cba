// bagbot dashboard: talks to the /v1 JSON API with the token the user typed in.
//
// Security rules of this file: the token lives in sessionStorage (this tab only) and travels
// only in the Authorization header -- no cookies, so no cross-site request can act as the
// user. Everything that came from the API is untrusted text: it reaches the page through
// textContent and createTextNode only, never through innerHTML or markup strings.
"use strict";

(function () {
  const TOKEN_KEY = "bagbot.token";
  const PAGE_SIZE = 50;
  const STATUSES = new Set([
    "pending", "open", "partially_filled", "filled", "canceled", "rejected", "expired",
    "unknown",
  ]);
  const STATES = new Set(["active", "reducing", "halted"]);

  const body = document.body;
  const refreshMs = Math.max(1, Number(body.dataset.refreshSeconds) || 5) * 1000;
  const cancelable = new Set((body.dataset.cancelable || "").split(" ").filter(Boolean));

  const $ = (id) => document.getElementById(id);
  let timer = null;
  let offset = 0;
  let busy = false;
  let again = false;
  let identity = null;
  // The filters as last applied (typing into a field changes nothing until "Apply").
  let filters = { symbol: "", status: "", connector: "", user: "" };

  // -- small DOM helpers (text only) -------------------------------------------------------

  function text(value) {
    return document.createTextNode(value === null || value === undefined ? "" : String(value));
  }

  function cell(value, className) {
    const td = document.createElement("td");
    if (className) td.className = className;
    td.appendChild(text(value === null || value === undefined || value === "" ? "-" : value));
    return td;
  }

  function row(cells) {
    const tr = document.createElement("tr");
    for (const c of cells) tr.appendChild(c);
    return tr;
  }

  function fill(tbody, rows, columns, emptyText) {
    const fresh = document.createElement("tbody");
    if (rows.length === 0) {
      const td = document.createElement("td");
      td.colSpan = columns;
      td.className = "empty";
      td.appendChild(text(emptyText));
      fresh.appendChild(row([td]));
    }
    for (const r of rows) fresh.appendChild(r);
    tbody.replaceWith(fresh);
  }

  function say(message, kind) {
    const node = $("message");
    node.textContent = message || "";
    node.className = kind || "";
  }

  function describeError(error) {
    if (error instanceof ApiError) {
      const b = error.body;
      if (b && typeof b === "object" && typeof b.message === "string") {
        const kind = typeof b.type === "string" ? b.type + ": " : "";
        return kind + b.message + " (HTTP " + error.status + ")";
      }
      return "HTTP " + error.status;
    }
    return "request failed: " + (error && error.message ? error.message : String(error));
  }

  function when(iso) {
    // "2024-05-01T12:00:00.123456+00:00" -> "2024-05-01 12:00:00"
    if (typeof iso !== "string") return "";
    return iso.replace("T", " ").replace(/\.\d+/, "").replace(/(\+00:00|Z)$/, "");
  }

  // -- the API ------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, responseBody) {
      super("HTTP " + status);
      this.status = status;
      this.body = responseBody;
    }
  }

  async function api(method, path, payload) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (!token) throw new ApiError(401, { type: "Unauthorized", message: "not logged in" });
    const headers = { Authorization: "Bearer " + token, Accept: "application/json" };
    const init = { method: method, headers: headers, credentials: "omit", cache: "no-store" };
    if (payload !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(payload);
    }
    const response = await fetch(path, init);
    let data = null;
    try {
      data = await response.json();
    } catch (ignored) {
      data = null;
    }
    if (response.status === 401) {
      logout();
      say("The token was refused (unknown, expired or revoked): log in again.", "error");
      throw new ApiError(401, data);
    }
    if (!response.ok) throw new ApiError(response.status, data);
    return data;
  }

  // -- identity -------------------------------------------------------------------------------

  async function loadIdentity() {
    identity = await api("GET", "/v1/me");
    const node = $("identity");
    node.textContent = "user " + identity.user_id + (identity.admin ? " (admin)" : "") +
      (identity.live ? ", live" : "") + ", token " + identity.token_id;
    node.hidden = false;
    $("admin").hidden = !identity.admin;
    $("filter-user-field").hidden = !identity.admin;  // only an admin may name another user
  }

  // -- orders ---------------------------------------------------------------------------------

  function ordersQuery() {
    const params = new URLSearchParams();
    if (filters.symbol) params.set("symbol", filters.symbol);
    if (filters.status) params.append("status", filters.status);
    if (filters.connector) params.set("connector", filters.connector);
    if (filters.user) params.set("user", filters.user);
    params.set("limit", String(PAGE_SIZE));
    params.set("offset", String(offset));
    return "/v1/orders?" + params.toString();
  }

  function statusBadge(status) {
    const span = document.createElement("span");
    span.className = "status " + (STATUSES.has(status) ? "status-" + status : "status-other");
    span.appendChild(text(status));
    const td = document.createElement("td");
    td.className = "status-cell";
    td.appendChild(span);
    return td;
  }

  function cancelCell(order) {
    const td = document.createElement("td");
    if (cancelable.has(order.status)) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "cancel";
      button.textContent = "Cancel";
      button.addEventListener("click", () => cancelOrder(order.id, button));
      td.appendChild(button);
    }
    return td;
  }

  function orderRow(order) {
    const tr = row([
      cell(order.id, "num"),
      cell(when(order.created_at)),
      cell(order.user_id),
      cell(order.connector),
      cell(order.symbol),
      cell(order.side),
      cell(order.order_type),
      cell(order.qty, "num"),
      cell(order.price, "num"),
      statusBadge(order.status),
      cell(order.filled_qty, "num"),
      cell(order.avg_price, "num"),
      cell(order.testnet ? "yes" : "no"),
      cell(order.reason, "wrap"),
      cancelCell(order),
    ]);
    tr.className = "order";
    tr.dataset.orderId = String(order.id);
    tr.dataset.status = String(order.status);
    return tr;
  }

  async function loadOrders() {
    const data = await api("GET", ordersQuery());
    const orders = Array.isArray(data.orders) ? data.orders : [];
    fill($("orders-table").tBodies[0], orders.map(orderRow), 15, "No orders match.");
    $("newer").disabled = offset === 0;
    $("older").disabled = data.next_offset === null || data.next_offset === undefined;
    $("older").dataset.next = data.next_offset === null ? "" : String(data.next_offset);
    $("page-info").textContent = orders.length
      ? "orders " + (offset + 1) + "-" + (offset + orders.length) : "";
    $("updated").textContent = "updated " + new Date().toISOString().slice(11, 19) + " UTC";
  }

  async function cancelOrder(id, button) {
    button.disabled = true;
    try {
      const order = await api("POST", "/v1/orders/" + encodeURIComponent(id) + "/cancel");
      const old = button.closest("tr");
      if (old) old.replaceWith(orderRow(order));
      say("Order " + order.id + " is " + order.status + ".", "ok");
    } catch (error) {
      say("Cancel of order " + id + " failed: " + describeError(error), "error");
      button.disabled = false;
    }
    await refresh();
  }

  // -- risk and trading state --------------------------------------------------------------

  function stateSpan(node, state) {
    node.textContent = state || "-";
    node.className = STATES.has(state) ? "state-" + state : "";
  }

  function scopeRows(tradingState) {
    // trading_state: {"state": ..., "source": {...}|null, "scopes": [ScopeState, ...]}
    const scopes = Array.isArray(tradingState.scopes) ? tradingState.scopes : [];
    return scopes.map((s) => {
      const state = document.createElement("td");
      const span = document.createElement("span");
      stateSpan(span, s.state);
      state.appendChild(span);
      return row([
        cell(s.scope), cell(s.user_id), cell(s.connector), state, cell(s.reason, "wrap"),
        cell(s.who), cell(when(s.changed_at)),
      ]);
    });
  }

  async function loadRisk() {
    const user = filters.user;
    const data = await api("GET", "/v1/risk" + (user ? "?user=" + encodeURIComponent(user) : ""));
    const tradingState = data.trading_state && typeof data.trading_state === "object"
      ? data.trading_state : {};
    stateSpan($("trading-state"), tradingState.state);
    fill($("state-table").tBodies[0], scopeRows(tradingState), 7, "No scope is halted or reducing.");
    $("risk-user").textContent = data.user ? "for user " + data.user : "(global)";
    const limits = data.limits && typeof data.limits === "object" ? data.limits : {};
    const checks = Array.isArray(limits.checks) ? limits.checks : [];
    fill($("risk-table").tBodies[0], checks.map((c) => row([
      cell(String(c.check) + (c.skipped ? " (SKIPPED)" : "")),
      cell(c.limit), cell(c.value === null && c.limit ? "off" : c.value), cell(c.scope),
      cell(c.source, "wrap"),
    ])), 5, "No risk check is loaded.");
    const notes = [];
    if (Array.isArray(limits.off) && limits.off.length) {
      notes.push("off (not configured): " + limits.off.join(", "));
    }
    if (Array.isArray(limits.skipped) && limits.skipped.length) {
      notes.push("SKIPPED by BAGBOT_SKIP_RISK_CHECKS: " + limits.skipped.join(", "));
    }
    $("risk-notes").textContent = notes.join("; ");
  }

  // -- plugins ----------------------------------------------------------------------------------

  async function loadPlugins() {
    const data = await api("GET", "/v1/plugins");
    const plugins = Array.isArray(data) ? data : [];
    const list = (items) => (Array.isArray(items) && items.length ? items.join(", ") : "-");
    fill($("plugins-table").tBodies[0], plugins.map((p) => row([
      cell(p.plugin), cell(p.distribution), cell(p.version), cell(list(p.connectors), "wrap"),
      cell(list(p.risk_checks), "wrap"),
    ])), 5, "No plugin is loaded.");
  }

  // -- halt / resume ------------------------------------------------------------------------------

  async function changeState(action) {
    const reason = $("admin-reason").value.trim();
    if (!reason) {
      say("A halt or resume needs a reason.", "error");
      return;
    }
    const payload = {
      user: $("admin-user").value.trim() || null,
      connector: $("admin-connector").value.trim() || null,
      reason: reason,
    };
    if (action === "halt") payload.cancel_open = $("admin-cancel-open").checked;
    try {
      const change = await api("POST", "/v1/" + action, payload);
      say("Trading is " + change.state + " (" + change.scope + ").", "ok");
      $("admin-reason").value = "";
    } catch (error) {
      say(action + " failed: " + describeError(error), "error");
    }
    await refresh();
  }

  // -- refresh loop and session -----------------------------------------------------------------

  async function refresh() {
    if (!sessionStorage.getItem(TOKEN_KEY)) return;
    if (busy) {  // one request set at a time; a refresh asked for meanwhile runs right after
      again = true;
      return;
    }
    busy = true;
    try {
      do {
        again = false;
        await Promise.all([loadOrders(), loadRisk()]);
      } while (again && sessionStorage.getItem(TOKEN_KEY));
    } catch (error) {
      if (!(error instanceof ApiError && error.status === 401)) say(describeError(error), "error");
    } finally {
      busy = false;
    }
  }

  function schedule() {
    if (timer !== null) clearInterval(timer);
    timer = null;
    if ($("auto-refresh").checked && sessionStorage.getItem(TOKEN_KEY)) {
      timer = setInterval(() => {
        if (!document.hidden) refresh();
      }, refreshMs);
    }
  }

  function clearTables() {
    for (const id of ["orders-table", "state-table", "risk-table", "plugins-table"]) {
      $(id).tBodies[0].replaceWith(document.createElement("tbody"));
    }
  }

  function logout() {
    sessionStorage.removeItem(TOKEN_KEY);
    identity = null;
    if (timer !== null) clearInterval(timer);
    timer = null;
    clearTables();
    $("app").hidden = true;
    $("admin").hidden = true;
    $("filter-user-field").hidden = true;
    $("filters").reset();
    filters = { symbol: "", status: "", connector: "", user: "" };
    $("identity").hidden = true;
    $("identity").textContent = "";
    $("logout").hidden = true;
    $("login").hidden = false;
  }

  async function start() {
    try {
      await loadIdentity();
    } catch (error) {
      if (!(error instanceof ApiError && error.status === 401)) {
        say(describeError(error), "error");
      }
      return;
    }
    $("login").hidden = true;
    $("app").hidden = false;
    $("logout").hidden = false;
    say("", "");
    offset = 0;
    await Promise.all([refresh(), loadPlugins().catch((e) => say(describeError(e), "error"))]);
    schedule();
  }

  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $("token");
    const token = input.value.trim();
    input.value = "";
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    start();
  });

  $("logout").addEventListener("click", () => {
    logout();
    say("Logged out.", "ok");
  });

  $("filters").addEventListener("submit", (event) => {
    event.preventDefault();
    filters = {
      symbol: $("filter-symbol").value.trim(),
      status: $("filter-status").value,
      connector: $("filter-connector").value.trim(),
      user: identity && identity.admin ? $("filter-user").value.trim() : "",
    };
    offset = 0;
    refresh();
  });

  $("refresh").addEventListener("click", () => {
    refresh();
    loadPlugins().catch((e) => say(describeError(e), "error"));
  });

  $("auto-refresh").addEventListener("change", schedule);

  $("newer").addEventListener("click", () => {
    offset = Math.max(0, offset - PAGE_SIZE);
    refresh();
  });

  $("older").addEventListener("click", () => {
    const next = Number($("older").dataset.next);
    if (Number.isFinite(next) && next > offset) {
      offset = next;
      refresh();
    }
  });

  $("admin-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const action = event.submitter && event.submitter.value === "resume" ? "resume" : "halt";
    changeState(action);
  });

  if (sessionStorage.getItem(TOKEN_KEY)) start();
})();
