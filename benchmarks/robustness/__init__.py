"""The robustness sweep (``benchmarks/robustness_sweep.py``): case model, checks, fixtures, cases, runner."""
