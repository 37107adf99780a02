"""Learners: the model-update contract and its Avalanche implementation (issue 4)."""
