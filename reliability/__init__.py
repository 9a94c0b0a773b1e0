"""Reliability runs for zoomtoken: a fault matrix, crash consistency and a 30-day soak.

``python -m reliability`` runs all three and prints one table of figures (also written to
``reliability/results.md``); ``python -m reliability --quick`` is the bounded form for CI.
The property, canary, transport and time checks live in the test suite (``tests/``).
"""
