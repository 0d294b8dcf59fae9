"""Cost of the engine's self-check on the embedded model: plain, then once bridged (JSON lines)."""

import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from interp.engine import check_engine  # noqa: E402
from interp.models import load_model  # noqa: E402


def main(spec: str = "smollm2-135m") -> None:
    model = load_model(spec, device="cpu")
    for state in ("plain", "bridged"):
        if state == "bridged":
            model.bridge  # noqa: B018
        began = time.perf_counter()
        check_engine(model)
        print(json.dumps({"bench": "engine_check", "model": spec, "state": state,
                          "seconds": round(time.perf_counter() - began, 3)}))


if __name__ == "__main__":
    main()
