"""After `mkdocs build`: every name of plexd.api.__all__ has its entry in the built API
reference, so a name added without a docstring cannot slip out of the docs."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import plexd.api


def main(site: Path) -> int:
    html = (site / "reference" / "index.html").read_text()
    anchors = set(re.findall(r'id="plexd\.api\.([A-Za-z_0-9]+)"', html))
    missing = [name for name in plexd.api.__all__ if name not in anchors]
    if missing:
        print(f"not in the API reference (no docstring?): {', '.join(missing)}", file=sys.stderr)
        return 1
    print(f"API reference: all {len(plexd.api.__all__)} names of plexd.api.__all__")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "site")))
