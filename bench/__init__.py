"""Benchmark: plain Envoy vs the Rungway full path (`python -m bench.run`, `make bench`)."""
