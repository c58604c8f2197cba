"""The two pluggy markers. Plugins import ``hookimpl`` (also at ``bagbot_core.hookimpl``)."""

from __future__ import annotations

import pluggy

#: Project name pluggy matches hooks by; every hook is called ``bagbot_...``.
PROJECT = "bagbot"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)
