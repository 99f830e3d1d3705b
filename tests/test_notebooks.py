"""Every notebook in notebooks/ runs top to bottom and is committed clean.

Each notebook is executed with nbclient in a fresh kernel, in a temporary directory, on tiny
settings: a cell injected after its `parameters`-tagged cell (as papermill does) sets `DATA_DIR`
to the session's corpus folder and `WORK_DIR` to the temporary directory (where the notebook has
them) and the notebook's `TINY` values below, each of which its parameters cell must define.
Any error fails the test, and so does a notebook that draws no picture.

Committed notebooks carry no outputs or execution counts (`python tests/test_notebooks.py`
strips them), open with an "Open in Colab" badge, install zoo from `REPO_URL` in Colab, and have
their badge in the README.
"""

import ast
import pathlib
import sys

import nbformat
import pytest
from nbclient import NotebookClient

REPO = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
REPO_URL = "https://github.com/zoo-jax/zoo"
BADGE = ("[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
         "(https://colab.research.google.com/github/zoo-jax/zoo/blob/main/notebooks/{})")
CELL_TIMEOUT_S = 300

TINY = {  # notebook -> parameters that make it run in seconds
    "quickstart": dict(EXPERIMENT="tiny", OVERRIDES=["train.steps=10"], MAX_NEW_TOKENS=16),
    "export_to_pytorch": dict(EXPERIMENT="tiny", OVERRIDES=["train.steps=10"], MAX_NEW_TOKENS=16),
    "ssm_tree_scan": dict(TREE_NODES=12, HEADS=2, HEAD_DIM=8, STATE_DIM=8, GROUPS=1,
                          EXPERIMENTS=["tiny_mamba2"], SIZES=[1, 4], REPEATS=1),
    "speculative_decoding": dict(TARGET_EXPERIMENT="tiny", TARGET_OVERRIDES=["train.steps=10"],
                                 DRAFT_OVERRIDES=["train.steps=8"], DRAFTERS=["draft_tree"],
                                 PROMPT_BYTES=32, MAX_NEW_TOKENS=16, REPEATS=1),
    "next_block_video": dict(EXPERIMENT="tiny_sprites_nbp", OVERRIDES=["train.steps=10"], CLIPS=2,
                             GIVEN_FRAMES=2),
    "diffusion": dict(EXPERIMENT="tiny_diffusion", OVERRIDES=["train.steps=10"], MAX_NEW_TOKENS=16,
                      STEPS=8, BLOCK_SIZE=8, COLUMNS=16),
}


def _read(path: pathlib.Path):
    return nbformat.read(path, as_version=4)


def _parameters_index(nb) -> int:
    tagged = [i for i, cell in enumerate(nb.cells) if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1, f"want exactly one cell tagged 'parameters', found {len(tagged)}"
    return tagged[0]


def _parameter_names(cell) -> set[str]:
    """The names a parameters cell assigns (`A = 1`, `A, B = 1, 2`)."""
    return {node.id for statement in ast.parse(cell.source).body
            if isinstance(statement, ast.Assign)
            for target in statement.targets for node in ast.walk(target)
            if isinstance(node, ast.Name)}


def strip(nb) -> bool:
    """Clear outputs and execution counts in place; whether anything changed."""
    changed = False
    for cell in nb.cells:
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None):
            cell.outputs, cell.execution_count, changed = [], None, True
        if cell.metadata.pop("execution", None) is not None:
            changed = True
    return changed


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_on_tiny_settings(path, data_dir, tmp_path):
    if path.stem not in TINY:
        pytest.fail(f"give {path.name} tiny settings in TINY ({__file__})")
    nb = _read(path)
    index = _parameters_index(nb)
    names = _parameter_names(nb.cells[index])
    unknown = set(TINY[path.stem]) - names
    assert not unknown, f"TINY sets {sorted(unknown)}, which {path.name}'s parameters lack"
    folders = dict(DATA_DIR=data_dir, WORK_DIR=str(tmp_path / "work"))
    values = {**{k: v for k, v in folders.items() if k in names}, **TINY[path.stem]}
    injected = nbformat.v4.new_code_cell(
        "\n".join(f"{name} = {value!r}" for name, value in values.items()),
        metadata={"tags": ["injected-parameters"]})
    nb.cells.insert(index + 1, injected)
    NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    images = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs
              if "image/png" in o.get("data", {})]
    assert images, f"{path.name} drew no picture"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_clean_with_badge_install_and_parameters(path):
    nb = _read(path)
    assert not strip(nb), f"{path.name} holds outputs; strip it: python tests/test_notebooks.py"
    first = nb.cells[0]
    assert first.cell_type == "markdown" and BADGE.format(path.name) in first.source, \
        f"{path.name} must open with its Colab badge: {BADGE.format(path.name)}"
    install = nb.cells[1].source
    assert 'if "google.colab" in sys.modules:' in install and f"@ git+{REPO_URL}" in install, \
        f"{path.name}'s second cell must install zoo from {REPO_URL} in Colab only"
    assert nb.cells[_parameters_index(nb)].cell_type == "code"


def test_readme_lists_every_notebook():
    readme = (REPO / "README.md").read_text()
    assert NOTEBOOKS
    for path in NOTEBOOKS:
        assert BADGE.format(path.name) in readme, f"README has no badge for {path.name}"


if __name__ == "__main__":  # strip every notebook's outputs in place
    for path in NOTEBOOKS:
        nb = _read(path)
        if strip(nb):
            nbformat.write(nb, path)
            print(f"stripped {path.relative_to(REPO)}", file=sys.stderr)
