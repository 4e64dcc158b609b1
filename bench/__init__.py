"""Benchmarks of the farm (docs/BENCHMARKS.md has the numbers). Each module is a script with --help."""
