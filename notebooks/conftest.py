# Notebooks run under pytest (nbmake) on the tiny random model; in Jupyter they default to the
# embedded SmolLM2 (see each notebook's parameter cell). Kernels inherit this environment.
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("INTERP_NOTEBOOK_MODEL", "tiny-random-llama")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
