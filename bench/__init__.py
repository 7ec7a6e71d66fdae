"""Benchmarks (issue 5): kubetask measured side by side with its peers in one run (`python -m bench.run`)."""
