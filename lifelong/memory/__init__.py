"""Durable state: the sample store (SQLite) and the FAISS rehearsal memory with its snapshots."""
