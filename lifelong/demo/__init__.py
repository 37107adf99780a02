"""The demo: a benchmark stream through a real daemon and broker, its report, and the demo producer.

An application of the daemon, like the CLI: the one room besides ``daemon`` that may import it.
"""
