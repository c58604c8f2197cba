"""Untrusted text made safe to write to a terminal.

Symbols, connector names, user ids and exchange messages come from users and exchanges; a
control character or escape sequence among them must be shown, not obeyed by the terminal.
No heavy imports: the command line uses it before anything else is loaded.
"""

from __future__ import annotations


def printable(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` with every non-printable character (controls, escape sequences, bidi marks,
    lone surrogates from undecodable bytes) shown as its backslash escape, e.g. ``\\x1b``."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or (keep_newlines and c == "\n") else repr(c)[1:-1]
                   for c in text)
