"""Evaluation: accuracy and compute per question, vote baselines, the frontier of fixed thought budgets
and its oracle ceilings, and plots."""
