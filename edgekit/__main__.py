from __future__ import annotations

from edgekit.cli import main

main()
