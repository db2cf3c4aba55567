"""The benchmark: `./bench/run` (the README's Benchmark section says what it measures)."""
