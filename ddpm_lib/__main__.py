"""python -m ddpm_lib: the command line (cli.py)."""
from .cli import main

raise SystemExit(main())
