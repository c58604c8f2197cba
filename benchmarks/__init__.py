"""bagbot's benchmark harness: ``python -m benchmarks`` (``--quick`` for the smoke run).

Not part of the installed package and not run by the timed test suite; see README.md.
"""
