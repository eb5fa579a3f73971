"""Fitting a cell with a readout: the training loop, its history and checkpoints."""
