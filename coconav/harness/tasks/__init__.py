"""lm-evaluation-harness task configs shipped with coconav (gsm8k_coconav, coconav_test, coconav_data,
prosqa_coconav) and their data and scoring (utils.py)."""
