"""Watching the model in production: live (prequential) accuracy, drift signals, Prometheus metrics."""
