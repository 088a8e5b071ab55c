"""Offline evaluation: split a dataset by time, train through the serving code, rank the full catalogue, and
compare every scenario template with popularity and ALS baselines."""
