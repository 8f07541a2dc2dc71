"""Benchmarks of serve_cleanup against upstream Ray Serve, side by side in one run.

Run ``python -m benchmarks`` (full) or ``python -m benchmarks --smoke`` (tiny sizes, to
keep the scripts working). Results go to ``docs/reports/benchmarks.md`` and PNG plots beside it.
"""
