"""Print pyproject.toml's dependencies (dev extra included) with every upper bound lifted.

Used by `make test-latest` to install the newest release of each dependency; torch is left out
(the Makefile chooses its build).
"""

import re
import tomllib
from pathlib import Path

project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
for requirement in project["dependencies"] + project["optional-dependencies"]["dev"]:
    name = re.match(r"[A-Za-z0-9_.\-\[\]]+", requirement).group(0)
    if name.lower() == "torch":
        continue
    lower = [c.strip() for c in requirement[len(name):].split(",") if c.strip().startswith(">=")]
    print(name + (lower[0] if lower else ""))
