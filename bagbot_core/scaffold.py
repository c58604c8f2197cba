"""``bagbot new-plugin``: write a plugin package that installs and passes its own tests.

The files are templates shipped inside bagbot-core (``bagbot_core/templates/plugin/<kind>``,
``*.tmpl``, ``$name``-style placeholders), so a generated package always matches the API of
the bagbot-core that wrote it, and its dependency range is derived from that version.
"""

from __future__ import annotations

import importlib.metadata
import keyword
import re
import string
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

from bagbot_core.errors import ConfigurationError

__all__ = ["KINDS", "check_name", "core_requirement", "new_plugin"]

#: What ``bagbot new-plugin`` can write.
KINDS = ("connector", "risk")

_NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")
#: Names bagbot-core registers itself: a plugin offering them would collide at load time.
_TAKEN = frozenset({"paper", "risk", "bagbot", "core"})
_MODULE_DIR = "MODULE"
_SUFFIX = ".tmpl"


def check_name(name: str) -> str:
    """``name`` if it can be a plugin (and connector) name, a Python module and a
    distribution name at once.

    :raises ConfigurationError: saying what is allowed.
    """
    if not _NAME.fullmatch(name) or name.endswith("_") or "__" in name:
        raise ConfigurationError(
            f"plugin name {name[:60]!r} must be 1-40 lower-case ASCII letters, digits and "
            "single underscores, starting with a letter (e.g. kraken, acme_limits)")
    if keyword.iskeyword(name) or name in _TAKEN:
        raise ConfigurationError(f"plugin name {name!r} is reserved; choose another")
    return name


def core_requirement(version: str | None = None) -> str:
    """The bagbot-core range a new plugin depends on: this release up to the next one that
    may change the plugin API (the next minor before 1.0, the next major after)."""
    version = version or importlib.metadata.version("bagbot-core")
    parts = [int(p) for p in re.findall(r"\d+", version)[:2]] + [0, 0]
    major, minor = parts[0], parts[1]
    upper = f"0.{minor + 1}" if major == 0 else f"{major + 1}"
    return f"bagbot-core>={major}.{minor},<{upper}"


def _template_root(kind: str) -> Traversable:
    return files("bagbot_core").joinpath("templates", "plugin", kind)


def _walk(root: Traversable, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], str]]:
    found: list[tuple[tuple[str, ...], str]] = []
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        if entry.is_dir():
            if entry.name != "__pycache__":
                found += _walk(entry, (*prefix, entry.name))
        elif entry.name.endswith(_SUFFIX):
            found.append(((*prefix, entry.name[: -len(_SUFFIX)]), entry.read_text("utf-8")))
    return found


def new_plugin(kind: str, name: str, directory: Path | None = None) -> Path:
    """Write a ``kind`` plugin package named ``name`` into ``directory`` (default
    ``./bagbot-<name>``, underscores as hyphens, which must not exist) and return the directory.

    :raises ConfigurationError: an unknown kind, a bad name or an existing directory;
        nothing is written then.
    """
    if kind not in KINDS:
        raise ConfigurationError(f"plugin kind {kind!r} is not one of {', '.join(KINDS)}")
    check_name(name)
    module, dist = f"bagbot_{name}", f"bagbot-{name.replace('_', '-')}"
    target = Path(directory) if directory is not None else Path(dist)
    if target.exists() or target.is_symlink():
        raise ConfigurationError(f"{target} already exists; name a new directory")
    requirement = core_requirement()
    values = {
        "name": name,
        "upper": name.upper(),
        "module": module,
        "dist": dist,
        "cls": "".join(part.capitalize() for part in name.split("_")),
        "core_requirement": requirement,
        "core_testing": requirement.replace("bagbot-core", "bagbot-core[testing]", 1),
    }
    rendered = []
    for parts, text in _walk(_template_root(kind)):
        path = Path(*(module if p == _MODULE_DIR else p for p in parts))
        rendered.append((path, string.Template(text).substitute(values)))
    try:
        for path, text in rendered:
            (target / path).parent.mkdir(parents=True, exist_ok=True)
            (target / path).write_text(text, "utf-8")
    except OSError as exc:
        raise ConfigurationError(f"cannot write {target}: {exc.strerror or exc}") from None
    return target
