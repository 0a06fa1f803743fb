"""Measurements: backend parity (bench.parity)."""
