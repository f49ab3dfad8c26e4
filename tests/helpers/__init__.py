"""Helpers the tests share: running predict.py, reading photos, building shards."""
