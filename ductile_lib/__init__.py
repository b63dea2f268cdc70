"""Ductile: a personal integration gateway (Python edition)."""

__version__ = "0.1.0"
