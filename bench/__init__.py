"""The benchmark: `./bench/run` (see bench/README.md)."""
