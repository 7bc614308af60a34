"""The mixing-law core: loss model, fit, solve, analysis and baselines."""
