"""lm-evaluation-harness task configs shipped with coconav (gsm8k_coconav.yaml) and their scoring (utils.py)."""
