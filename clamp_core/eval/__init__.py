"""Benchmarks and evaluation tools that compare the perception core against reference libraries."""
