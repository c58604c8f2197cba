"""A string wrapper that keeps API secrets out of reprs, logs and exception texts."""

from __future__ import annotations

import hashlib

import attrs


@attrs.frozen(repr=False)
class Secret:
    """Holds a credential; ``repr``/``str`` show ``'***'``, never the value.

    Call :meth:`reveal` at the one place the value is handed to an exchange client.
    """

    _value: str = attrs.field(alias="value")

    def reveal(self) -> str:
        return self._value

    def fingerprint(self) -> str:
        """A short, non-reversible id, so cached clients can be keyed by credentials."""
        return hashlib.sha256(self._value.encode()).hexdigest()[:16]

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"

    def __bool__(self) -> bool:
        return bool(self._value)
