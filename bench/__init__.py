"""citytel's benchmark: ingestion drain, steady-state latency, scale-out, API, profile.

Run ``python -m bench`` (or ``--quick``); see docs/benchmarks.md.
"""
