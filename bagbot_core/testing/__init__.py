"""Test helpers for bagbot and its plugins: fake exchanges and the connector conformance suite."""
