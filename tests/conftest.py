import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def tiny():
    from interp.models import load_model

    return load_model("tiny-random-llama", device="cpu")


@pytest.fixture(scope="session")
def smol():
    """The embedded SmolLM2 (real weights); never bridged, so .hf stays a plain HF model."""
    from interp.models import load_model

    return load_model("smollm2-135m", device="cpu")

