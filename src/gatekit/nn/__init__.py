"""Layers built from cells (:class:`gatekit.LSTM`), and what training a network needs:
initialisers, losses, optimisers."""
