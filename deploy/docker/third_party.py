#!/usr/bin/env python3
"""``third_party.py PKG_DIR...``: the third-party requirements of Esper packages, one per line.

Image builds install these in a layer of their own before copying any source, so a code
change rebuilds only the (seconds-long) install of Esper's own packages. Esper packages
(``esper-*``) are left out: they are installed from their folders afterwards.
"""

import re
import sys
import tomllib
from pathlib import Path


def main(dirs: list[str]) -> int:
    seen: list[str] = []
    for d in dirs:
        project = tomllib.loads((Path(d) / "pyproject.toml").read_text())["project"]
        for requirement in project.get("dependencies", []):
            name = re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")
            if not name.startswith("esper-") and requirement not in seen:
                seen.append(requirement)
    print("\n".join(seen))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
