"""Experiments as tables (reports/benchmark.md) and the CI gate on metric regressions."""
