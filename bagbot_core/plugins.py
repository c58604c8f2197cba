"""Plugin discovery and the typed facade the rest of bagbot calls hooks through.

Built-in plugins (the five risk checks, the paper exchange) register exactly like installed
ones; installed distributions are found through the ``bagbot`` entry-point group. Core code
never calls ``pm.hook.x`` directly: :class:`PluginRegistry` has one typed method per hook.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import sys
from collections.abc import Iterable, Mapping
from typing import Any

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
from bagbot_core.settings import env_bool

#: The entry-point group installed plugins register under.
ENTRY_POINT_GROUP = "bagbot"
#: Comma-separated plugin names not to load (built-ins included, except ``risk``).
ENV_DISABLE = "BAGBOT_DISABLE_PLUGINS"
#: A true boolean (see :mod:`bagbot_core.settings`) prints every hook call to stderr.
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


def disabled_from_env(environ: Mapping[str, str] | None = None) -> frozenset[str]:
    raw = (os.environ if environ is None else environ).get(ENV_DISABLE, "")
    return frozenset(name.strip() for name in raw.split(",") if name.strip())


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
        self._trace = env_bool(ENV_TRACE)
        self.pm = pluggy.PluginManager(PROJECT)
        self.pm.add_hookspecs(hookspecs)
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
        if self._trace:
            self.pm.trace.root.setwriter(sys.stderr.write)
            self.pm.enable_tracing()

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
        """Call a registration hook plugin by plugin, keeping who returned what."""
        out: list[tuple[Any, Provenance]] = []
        hook = getattr(self.pm.hook, hook_name)
        for impl in hook.get_hookimpls():  # registration order
            provenance = self._provenance.get(
                impl.plugin_name, Provenance(impl.plugin_name, "<unknown>", "")
            )
            try:
                items = list(impl.function() or ())
                self._trace_call(hook_name, impl.plugin_name, f"returned {len(items)}")
            except BagbotError:
                raise
            except Exception as exc:
                raise PluginError(
                    f"{hook_name} of {provenance} raised {type(exc).__name__}: {exc}"
                ) from exc
            out.extend((item, provenance) for item in items)
        return out

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
        """Every risk check, in plugin registration order. Cached."""
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
        """Call a notification hook on every plugin; failures are returned, not raised.

        Each implementation is called on its own, so one failing plugin does not stop the
        others from being told.
        """
        failures: list[tuple[str, BaseException]] = []
        hook = getattr(self.pm.hook, hook_name)
        for impl in hook.get_hookimpls():
            args = {name: kwargs[name] for name in impl.argnames}
            try:
                impl.function(**args)
                self._trace_call(hook_name, impl.plugin_name, "ok")
            except Exception as exc:
                self._trace_call(hook_name, impl.plugin_name, f"raised {type(exc).__name__}")
                failures.append((impl.plugin_name, exc))
        return failures

    def _trace_call(self, hook_name: str, plugin: str, outcome: str) -> None:
        """One line per hook call with ``BAGBOT_TRACE_HOOKS`` on: names only, no values."""
        if self._trace:
            sys.stderr.write(f"bagbot hook {hook_name} [{plugin}]: {outcome}\n")


def _import(module: str, name: str, distribution: str) -> object:
    try:
        return importlib.import_module(module)
    except Exception as exc:
        raise PluginLoadError(
            f'Error importing bagbot plugin "{name}" ({module}) from {distribution}: '
            f"{type(exc).__name__}: {exc}"
        ) from exc

