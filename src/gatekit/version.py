"""gatekit's version, in one place: the package metadata, saved files and runs record it."""
__version__ = "0.1.0"
