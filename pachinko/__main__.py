"""``python -m pachinko``: the same as the ``pachinko`` command."""

from __future__ import annotations

from .cli import main

if __name__ == "__main__":
    main(prog_name="pachinko")
