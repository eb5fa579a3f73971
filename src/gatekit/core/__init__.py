"""The core: the gate interface, the built-in gates, the compiled time loop, the cell, the NumPy
reference equations and the plugin registry. Nothing here imports the floors above it."""
