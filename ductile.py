#!/usr/bin/env python3
"""Ductile entry point: runs from a plain copy of the tree, no install needed."""
from ductile_lib.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
