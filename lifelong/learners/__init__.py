"""Learners: the model-update contract, its Avalanche implementation, the online members and the gate."""
