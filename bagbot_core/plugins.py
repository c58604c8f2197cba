"""Plugin discovery and the typed facade the rest of bagbot calls hooks through.

Built-in plugins (the five risk checks, the paper exchange) register exactly like installed
ones; installed distributions are found through the ``bagbot`` entry-point group. Core code
never calls ``pm.hook.x`` directly: :class:`PluginRegistry` has one typed method per hook.

Every hook is called through pluggy (``pm.hook.<name>(...)``), so call order (``tryfirst``,
``trylast``, last registered first), ``wrapper=True`` / ``hookwrapper=True`` implementations
and ``BAGBOT_TRACE_HOOKS`` tracing are pluggy's own and follow pluggy's documentation and
upgrades; reproducing them would drift. bagbot adds only what pluggy does not do: it names
the plugin behind each result and each error, and a failing notification implementation
does not stop the others. It does so at pluggy's one execution seam
(``PluginManager._inner_hookexec``, the one ``enable_tracing`` wraps): for a call the
registry makes, each plain implementation is handed to pluggy as a copy whose function
records what it returned or raised (see :class:`_HookCall`).
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import inspect
import sys
from collections.abc import Iterable, Mapping, Sequence
from contextvars import ContextVar
from types import CodeType
from typing import TYPE_CHECKING, Any

import attrs
import pluggy

from bagbot_core import hookspecs
from bagbot_core.connector import ConnectorSpec
from bagbot_core.errors import (
    BagbotError,
    ConfigurationError,
    DuplicateNameError,
    PluginError,
    PluginLoadError,
    UnknownConnectorError,
)
from bagbot_core.markers import PROJECT
from bagbot_core.payload import check_connector_name
from bagbot_core.risk import ENV_SKIP_RISK_CHECKS, RiskCheck
from bagbot_core.settings import Settings

if TYPE_CHECKING:
    import click

#: The entry-point group installed plugins register under.
ENTRY_POINT_GROUP = "bagbot"
#: Comma-separated plugin names not to load (built-ins included, except ``risk``).
ENV_DISABLE = "BAGBOT_DISABLE_PLUGINS"
#: A true boolean (see :mod:`bagbot_core.settings`) prints every hook call to stderr, in
#: pluggy's trace format (hook name and arguments, then its result).
ENV_TRACE = "BAGBOT_TRACE_HOOKS"

#: Built-in plugins: name -> module. Disable them like any other plugin, except ``risk``.
BUILTIN_PLUGINS: Mapping[str, str] = {
    "risk": "bagbot_core.risk_checks",
    "paper": "bagbot_core.paper.plugin",
}
#: Plugins the plugin switch cannot remove: the built-in risk checks are skipped only
#: through their own, logged setting (``BAGBOT_SKIP_RISK_CHECKS``), never in silence.
PROTECTED_PLUGINS = frozenset({"risk"})


def _refuse_protected(names: Iterable[str], how: str) -> None:
    protected = sorted(PROTECTED_PLUGINS.intersection(names))
    if protected:
        raise ConfigurationError(
            f"the built-in {protected[0]!r} plugin cannot be removed with {how}: to skip risk "
            f"checks set {ENV_SKIP_RISK_CHECKS} to check names or 'all' (in code: "
            "Router(skip_risk_checks=...)); every order is then logged as bypassing them"
        )


@attrs.frozen
class Provenance:
    """Which distribution a plugin came from (``bagbot-core`` for built-ins)."""

    plugin: str
    distribution: str
    version: str

    def __str__(self) -> str:
        version = f" {self.version}" if self.version else ""
        return f"{self.distribution}{version} (plugin {self.plugin!r})"


@attrs.frozen
class PluginInfo:
    """One loaded plugin, what it provides, and where it came from (``bagbot plugins``)."""

    provenance: Provenance
    connectors: tuple[str, ...]
    risk_checks: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        """One entry of ``bagbot plugins --json`` and ``GET /v1/plugins``."""
        return {"plugin": self.provenance.plugin, "distribution": self.provenance.distribution,
                "version": self.provenance.version, "connectors": list(self.connectors),
                "risk_checks": list(self.risk_checks)}


@attrs.define(eq=False)
class _HookCall:
    """One hook call the registry makes: who was called, what each returned or raised.

    Results are attributed by identity, so a hook wrapper may reorder, filter or copy the
    results and each item still names the plugin that returned it; an item no implementation
    returned was made by a wrapper and names the wrappers.
    """

    registry: PluginRegistry
    hook_name: str
    #: Notification: an implementation's exception is recorded in ``failures``, not raised.
    isolate: bool
    started: bool = False
    #: Attributed copies of the plain implementations, in pluggy's list order.
    plain: list[pluggy.HookImpl] = attrs.Factory(list)
    wrappers: list[pluggy.HookImpl] = attrs.Factory(list)
    called: set[int] = attrs.Factory(set)
    returned: list[tuple[str, object]] = attrs.Factory(list)
    raised: list[tuple[BaseException, str]] = attrs.Factory(list)
    failures: list[tuple[str, BaseException]] = attrs.Factory(list)

    def culprit(self, exc: BaseException) -> list[str]:
        """The plugin(s) an exception escaping pluggy is due to."""
        for raised, name in self.raised:  # an implementation raised it first
            if raised is exc:
                return [name]
        codes: dict[CodeType, str] = {}
        for impl in self.wrappers:
            code = _code_of(impl.function)
            if code is not None:
                codes[code] = impl.plugin_name
        found = None
        tb = exc.__traceback__
        while tb is not None:  # the innermost wrapper frame in the traceback
            found = codes.get(tb.tb_frame.f_code, found)
            tb = tb.tb_next
        return [found] if found is not None else self.wrapper_plugins()

    def wrapper_plugins(self) -> list[str]:
        return list(dict.fromkeys(impl.plugin_name for impl in self.wrappers))


#: The hook call a registry is making in this context (see :meth:`PluginRegistry._hookexec`).
_CURRENT_CALL: ContextVar[_HookCall | None] = ContextVar("bagbot_hook_call", default=None)


def _code_of(function: object) -> CodeType | None:
    function = inspect.unwrap(function)  # type: ignore[arg-type]
    function = getattr(function, "__func__", function)
    code = getattr(function, "__code__", None)
    return code if isinstance(code, CodeType) else None


def _hook_args(impl: pluggy.HookImpl, kwargs: Mapping[str, object]
               ) -> tuple[list[object], dict[str, object]]:
    return ([kwargs[name] for name in impl.argnames],
            {name: kwargs[name] for name in impl.kwargnames if name in kwargs})


def disabled_from_env(environ: Mapping[str, str] | None = None) -> frozenset[str]:
    return Settings.from_env(environ, only=("disable_plugins",)).disable_plugins


def _core_version() -> str:
    try:
        return importlib.metadata.version("bagbot-core")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree
        return "0+unknown"


class PluginRegistry:
    """Owns one pluggy manager: loads plugins, and answers the core's questions.

    Build one per router (or per test); there is no module-global manager.

    :param disabled: plugin names not to load; ``None`` reads ``BAGBOT_DISABLE_PLUGINS``.
        ``risk`` is refused with :class:`ConfigurationError`: see :data:`PROTECTED_PLUGINS`.
    :param load_entrypoints: load installed plugins (``False`` gives built-ins only).
    :param plugins: extra ``(name, plugin)`` pairs to register, e.g. a test's plugin object.
    """

    def __init__(
        self,
        *,
        disabled: Iterable[str] | None = None,
        load_entrypoints: bool = True,
        plugins: Iterable[tuple[str, object]] = (),
    ) -> None:
        if disabled is None:
            self.disabled = disabled_from_env()
            _refuse_protected(self.disabled, ENV_DISABLE)
        else:
            self.disabled = frozenset(disabled)
            _refuse_protected(self.disabled, "PluginRegistry(disabled=...)")
        self.pm = pluggy.PluginManager(PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self._pluggy_exec = self.pm._inner_hookexec
        self.pm._inner_hookexec = self._hookexec
        self._hooktrace = self.pm.trace.root.get("hook")
        if Settings.from_env(only=("trace_hooks",)).trace_hooks:
            self.pm.trace.root.setwriter(lambda text: sys.stderr.write(text))
            self.pm.enable_tracing()
        self._provenance: dict[str, Provenance] = {}
        self._connectors: dict[str, tuple[ConnectorSpec, Provenance]] | None = None
        self._checks: list[tuple[RiskCheck, Provenance]] | None = None
        for name in self.disabled:
            self.pm.set_blocked(name)
        core = _core_version()
        for name, module in BUILTIN_PLUGINS.items():
            if name not in self.disabled:
                self._register(_import(module, name, "bagbot-core"), name,
                               Provenance(name, "bagbot-core", core))
        if load_entrypoints:
            self._load_entrypoints()
        for name, plugin in plugins:
            self.register(plugin, name)

    # -- loading ----------------------------------------------------------------------

    def _load_entrypoints(self) -> None:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in self.disabled or self.pm.has_plugin(ep.name):
                continue
            dist = ep.dist
            provenance = Provenance(
                ep.name,
                dist.metadata["Name"] if dist is not None else "<unknown distribution>",
                dist.version if dist is not None else "?",
            )
            try:
                plugin = ep.load()
            except Exception as exc:
                raise PluginLoadError(
                    f'Error importing bagbot plugin "{ep.name}" ({ep.value}) from '
                    f"{provenance.distribution} {provenance.version}: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            self._register(plugin, ep.name, provenance)

    def register(self, plugin: object, name: str, *, distribution: str = "<in-process>",
                 version: str = "") -> None:
        """Register a plugin object from code (tests, embedding applications)."""
        self._register(plugin, name, Provenance(name, distribution, version))

    def unregister(self, name: str) -> None:
        """Remove a loaded plugin by name (the code-side equivalent of disabling it).

        :raises ConfigurationError: for ``risk`` (see :data:`PROTECTED_PLUGINS`).
        """
        _refuse_protected([name], "PluginRegistry.unregister")
        plugin = self.pm.get_plugin(name)
        if plugin is not None:
            self.pm.unregister(plugin, name=name)
        self._provenance.pop(name, None)
        self._connectors = None
        self._checks = None

    def _register(self, plugin: object, name: str, provenance: Provenance) -> None:
        if name in self.disabled:
            return
        try:
            self.pm.register(plugin, name=name)
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            raise PluginLoadError(f"bagbot plugin from {provenance} is invalid: {exc}") from exc
        except ValueError as exc:  # name already registered
            raise PluginLoadError(f"cannot register {provenance}: {exc}") from exc
        self._provenance[name] = provenance
        self._connectors = None
        self._checks = None

    # -- registration hooks --------------------------------------------------------------

    def _collect(self, hook_name: str) -> list[tuple[Any, Provenance]]:
        """Call a registration hook through pluggy, keeping who returned what."""
        call = _HookCall(self, hook_name, isolate=False)
        token = _CURRENT_CALL.set(call)
        try:
            results = getattr(self.pm.hook, hook_name)()
        except BagbotError:
            raise
        except Exception as exc:
            raise PluginError(
                f"{hook_name} of {self._provenance_of(call.culprit(exc))} raised "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        finally:
            _CURRENT_CALL.reset(token)
        by_wrappers = self._provenance_of(call.wrapper_plugins())
        if not isinstance(results, list):
            raise PluginError(
                f"{hook_name} of {by_wrappers} returned {type(results).__name__}, expected "
                "the list of each plugin's results"
            )
        pending = list(call.returned)
        owners: dict[int, str] | None = None  # id(item) -> plugin, built if a wrapper copied
        out: list[tuple[Any, Provenance]] = []
        for result in results:
            index = next((i for i, (_, value) in enumerate(pending) if value is result), None)
            owner = None if index is None else pending.pop(index)[0]
            try:
                items = list(result)
            except Exception as exc:
                where = by_wrappers if owner is None else self._provenance_of([owner])
                raise PluginError(
                    f"{hook_name} of {where} raised {type(exc).__name__}: {exc}"
                ) from exc
            if owner is not None:
                out.extend((item, self._provenance_of([owner])) for item in items)
                continue
            if owners is None:
                owners = {}
                for name, value in call.returned:
                    if isinstance(value, (list, tuple)):
                        for item in value:
                            owners.setdefault(id(item), name)
            out.extend(
                (item, by_wrappers if id(item) not in owners
                 else self._provenance_of([owners[id(item)]]))
                for item in items
            )
        return out

    def _provenance_of(self, names: Sequence[str]) -> Provenance:
        found = [self._provenance.get(name, Provenance(name, "<unknown>", "")) for name in names]
        if len(found) == 1:
            return found[0]
        if not found:
            return Provenance("<unknown>", "<unknown>", "")
        return Provenance(" or ".join(p.plugin for p in found),
                          " or ".join(dict.fromkeys(p.distribution for p in found)), "")

    def connectors(self) -> dict[str, tuple[ConnectorSpec, Provenance]]:
        """Every connector by name, with its provenance. Cached."""
        if self._connectors is None:
            found: dict[str, tuple[ConnectorSpec, Provenance]] = {}
            for spec, provenance in self._collect("bagbot_add_connectors"):
                if not isinstance(spec, ConnectorSpec):
                    raise PluginError(
                        f"bagbot_add_connectors of {provenance} returned "
                        f"{type(spec).__name__}, expected ConnectorSpec"
                    )
                if not check_connector_name(spec.name):
                    raise PluginError(
                        f"bagbot_add_connectors of {provenance} returned a connector named "
                        f"{ascii(spec.name)[:80]}: names are 1-64 characters of letters, "
                        "digits, '_', '.' or '-'"
                    )
                if spec.name in found:
                    raise DuplicateNameError(
                        f"connector {spec.name!r} is provided twice: by {found[spec.name][1]} "
                        f"and by {provenance}; disable one with {ENV_DISABLE}"
                    )
                found[spec.name] = (spec, provenance)
            self._connectors = found
        return self._connectors

    def connector_spec(self, name: str) -> ConnectorSpec:
        """:raises UnknownConnectorError: listing the connectors that do exist."""
        try:
            return self.connectors()[name][0]
        except KeyError:
            available = ", ".join(sorted(self.connectors())) or "none"
            raise UnknownConnectorError(
                f"no connector named {name!r} (available: {available})"
            ) from None

    def risk_checks(self) -> list[RiskCheck]:
        """Every risk check, in pluggy's call order of the plugins. Cached."""
        return [check for check, _ in self._risk_checks_with_provenance()]

    def _risk_checks_with_provenance(self) -> list[tuple[RiskCheck, Provenance]]:
        if self._checks is None:
            seen: dict[str, Provenance] = {}
            checks: list[tuple[RiskCheck, Provenance]] = []
            for check, provenance in self._collect("bagbot_add_risk_checks"):
                if not isinstance(check, RiskCheck):
                    raise PluginError(
                        f"bagbot_add_risk_checks of {provenance} returned "
                        f"{type(check).__name__}, expected RiskCheck"
                    )
                if check.name in seen:
                    raise DuplicateNameError(
                        f"risk check {check.name!r} is provided twice: by {seen[check.name]} "
                        f"and by {provenance}"
                    )
                seen[check.name] = provenance
                checks.append((check, provenance))
            self._checks = checks
        return self._checks

    def plugin_infos(self) -> list[PluginInfo]:
        """What each loaded plugin provides, for ``bagbot plugins``."""
        connectors = self.connectors()
        checks = self._risk_checks_with_provenance()
        infos = []
        for name, provenance in self._provenance.items():
            infos.append(PluginInfo(
                provenance,
                tuple(sorted(c for c, (_, p) in connectors.items() if p.plugin == name)),
                tuple(check.name for check, p in checks if p.plugin == name),
            ))
        return infos

    # -- notification hooks --------------------------------------------------------------

    def notify(self, hook_name: str, **kwargs: Any) -> list[tuple[str, BaseException]]:
        """Call a notification hook through pluggy; failures are returned, not raised.

        pluggy stops a call at the first exception; here an implementation's exception is
        recorded and the next implementation is still told, in pluggy's order and inside the
        hook wrappers. A wrapper that raises is recorded too, and any implementation it kept
        from running is then told directly (its wrappers failed, so without them).

        :return: ``(plugin name, exception)`` per failure, in call order.
        """
        call = _HookCall(self, hook_name, isolate=True)
        token = _CURRENT_CALL.set(call)
        try:
            getattr(self.pm.hook, hook_name)(**kwargs)
        except pluggy.HookCallError:
            raise  # the core passed the wrong arguments: a bug, not a plugin's failure
        except Exception as exc:
            culprit = self._provenance_of(call.culprit(exc)).plugin
            call.failures.append((culprit, exc))
            self._hooktrace("failed", hook_name, f"[{culprit}]", type(exc).__name__)
            for impl in reversed(call.plain):
                if id(impl) not in call.called:
                    args, kw = _hook_args(impl, kwargs)
                    impl.function(*args, **kw)
        finally:
            _CURRENT_CALL.reset(token)
        return call.failures

    # -- command line ---------------------------------------------------------------------

    def register_commands(self, cli: click.Group) -> list[tuple[Provenance, BaseException]]:
        """Let every plugin add its commands to ``cli`` (``bagbot_register_commands``).

        Called like a notification (see :meth:`notify`): a plugin whose hook raises is
        returned with its provenance, the others still add theirs, so one broken plugin
        never takes the whole command line down.
        """
        return [(self._provenance_of([name]), exc)
                for name, exc in self.notify("bagbot_register_commands", cli=cli)]

    # -- pluggy's execution seam ------------------------------------------------------------

    def _hookexec(self, hook_name: str, hook_impls: Sequence[pluggy.HookImpl],
                  caller_kwargs: Mapping[str, object], firstresult: bool) -> object:
        """pluggy's call, with attributed implementations for a call this registry makes."""
        call = _CURRENT_CALL.get()
        if (call is None or call.registry is not self or call.hook_name != hook_name
                or call.started):
            return self._pluggy_exec(hook_name, hook_impls, caller_kwargs, firstresult)
        call.started = True
        impls = [self._attributed(call, impl) for impl in hook_impls]
        return self._pluggy_exec(hook_name, impls, caller_kwargs, firstresult)

    def _attributed(self, call: _HookCall, impl: pluggy.HookImpl) -> pluggy.HookImpl:
        """``impl`` with a function that records its result, or its exception, in ``call``.

        Wrappers are handed to pluggy unchanged (their exceptions are attributed from the
        traceback, see :meth:`_HookCall.culprit`), so pluggy drives them exactly as documented.
        """
        if impl.wrapper or impl.hookwrapper:
            call.wrappers.append(impl)
            return impl
        function, name, hooktrace = impl.function, impl.plugin_name, self._hooktrace

        @functools.wraps(function)
        def attributed(*args: object, **kwargs: object) -> object:
            call.called.add(id(copy))
            try:
                result = function(*args, **kwargs)
            except Exception as exc:
                if not call.isolate:
                    call.raised.append((exc, name))
                    raise
                call.failures.append((name, exc))
                hooktrace("failed", call.hook_name, f"[{name}]", type(exc).__name__)
                return None
            if result is not None:
                call.returned.append((name, result))
            return result

        copy = pluggy.HookImpl(impl.plugin, name, attributed, impl.opts)
        call.plain.append(copy)
        return copy


def _import(module: str, name: str, distribution: str) -> object:
    try:
        return importlib.import_module(module)
    except Exception as exc:
        raise PluginLoadError(
            f'Error importing bagbot plugin "{name}" ({module}) from {distribution}: '
            f"{type(exc).__name__}: {exc}"
        ) from exc

