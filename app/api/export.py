"""Write the schema SDL: `python -m app.api.export > schema.graphql` (`make schema`)."""

from __future__ import annotations

import sys

from app.api.schema import schema


def sdl() -> str:
    return str(schema).rstrip() + "\n"


if __name__ == "__main__":
    sys.stdout.write(sdl())
