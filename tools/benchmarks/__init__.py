"""Benchmarks behind ``make bench``: each module measures one target against a baseline run in the same process.

A benchmark module exposes ``run(quick: bool) -> BenchSection``; ``python -m tools.benchmarks`` runs them
all and rewrites ``docs/benchmarks.md`` with the machine, the command and every ratio.
"""
