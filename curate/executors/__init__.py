"""Executors: one run orchestration (run.py) over interchangeable shard runners (local pool, Ray)."""
