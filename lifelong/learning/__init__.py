"""The learning loop, following the sample store: what happens to a stored event after ingestion.

``watch`` predicts each stored batch (the champion and the online members), serves the
vote, scores the labels live and feeds the drift signals; ``online`` keeps the online
members level with the store's label events; ``remember`` keeps the rehearsal memory
level with them; ``trust`` holds relabels back until corroborated; ``update`` runs an
update round (new labels, replay, the gate, the registry); ``build`` makes the trainer
and the updater from settings.
"""
