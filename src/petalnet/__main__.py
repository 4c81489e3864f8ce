"""``python -m petalnet`` runs the command line."""

from petalnet.cli import main

raise SystemExit(main())
