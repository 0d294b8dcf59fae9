"""The README's Python examples run as written, each block on its own (a fresh process), and
print what their comments say."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_python_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs_alone(index):
    block = BLOCKS[index]
    done = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True,
                          timeout=600, cwd=README.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip(), "the example prints nothing"
    if "hook_z" in block:        # [batch, pos, head, d_head] of the tiny model
        shape = re.search(r"torch.Size\(\[(.*?)\]\)", done.stdout).group(1)
        batch, _, heads, _ = (int(v) for v in shape.split(","))
        assert batch == 1 and heads > 0
    if "patch_pairs" in block:   # [n_layers, n_heads, n_pairs] for the 4 pairs
        assert re.search(r"torch.Size\(\[\d+, \d+, 4\]\)", done.stdout), done.stdout
