"""Allows `python3 -m ductile_lib`."""
from ductile_lib.cli import main

raise SystemExit(main())
