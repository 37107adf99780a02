"""Durable state: the sample store (and, to come, the FAISS rehearsal memory)."""
