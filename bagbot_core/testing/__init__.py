"""Test helpers for bagbot and its plugins: fake exchanges and the connector conformance suite.

The suite's module is registered for pytest's assertion rewriting before anything imports
it, so a failing conformance test installed from a wheel prints the compared values (as a
test in the package's own tree would), not a bare ``AssertionError``.
"""

try:
    import pytest
except ImportError:  # the fakes work without pytest; the suite itself needs it
    pass
else:
    pytest.register_assert_rewrite("bagbot_core.testing.conformance")
