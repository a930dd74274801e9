"""Tally: attribution-native AI infrastructure."""

__version__ = "0.1.0"
