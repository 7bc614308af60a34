"""The end-to-end pipeline: plan, perturbation runs, fit, solve, validate, report."""
