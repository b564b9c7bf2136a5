"""Navistore: a replicated HTTP key/value store for configuration data, on Twisted."""

__version__ = "0.1.0.dev0"
