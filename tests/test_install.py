"""zoo installs beside Hugging Face's stack. Its Pallas package is imported as `zoo_kernels`,
never `kernels`: PyPI's `kernels` is Hugging Face's, and transformers imports it at start-up."""

import pathlib
import shutil
import subprocess
import sys
import sysconfig

REPO = pathlib.Path(__file__).resolve().parent.parent

# Runs zoo's tree attention (XLA path against the reference) after transformers' hub kernels.
USE_BOTH = """
import transformers.integrations.hub_kernels  # the module that failed when zoo shadowed `kernels`
import kernels
import jax
import numpy as np
import zoo_kernels
from zoo_kernels.tree_attention import tree_attention

print("kernels", kernels.__file__)
print("zoo_kernels", list(zoo_kernels.__path__)[0])
keys = jax.random.split(jax.random.key(0), 5)
q = jax.random.normal(keys[0], (2, 4, 4, 8))
k_cache, v_cache = (jax.random.normal(k, (2, 2, 16, 8)) for k in keys[1:3])
k_new, v_new = (jax.random.normal(k, (2, 4, 2, 8)) for k in keys[3:5])
args = (q, k_cache, v_cache, np.array([5, 16], np.int32), k_new, v_new,
        np.array([[-1, 0, 0, 1], [-1, 0, 1, 2]], np.int32))
np.testing.assert_allclose(tree_attention(*args, backend="xla"),
                           tree_attention(*args, backend="reference"), atol=1e-5)
print("tree attention ok")
"""


def _run(args, **kwargs) -> subprocess.CompletedProcess:
    out = subprocess.run(args, capture_output=True, text=True, timeout=600, **kwargs)
    assert out.returncode == 0, f"{args} failed:\n{out.stdout}\n{out.stderr}"
    return out


def _imported_from(stdout: str) -> dict[str, str]:
    return dict(line.split(" ", 1) for line in stdout.splitlines()
                if line.startswith(("kernels ", "zoo_kernels ")))


def test_transformers_and_zoo_kernels_in_one_process_from_the_checkout_root():
    """`python -c` in the checkout puts the checkout root first on sys.path, as `python script.py`
    or `python -m pytest` there does: the `kernels/` folder must not shadow Hugging Face's."""
    out = _run([sys.executable, "-c", USE_BOTH], cwd=REPO)
    where = _imported_from(out.stdout)
    assert pathlib.Path(where["kernels"]).parent.parent == pathlib.Path(
        sysconfig.get_paths()["purelib"]), where
    assert pathlib.Path(where["zoo_kernels"]) == REPO / "kernels"
    assert "tree attention ok" in out.stdout


def test_pip_check_is_clean():
    _run([sys.executable, "-m", "pip", "check"])


def test_a_non_editable_install_leaves_hugging_faces_kernels_importable(tmp_path):
    """`pip install .` (a built wheel, not the editable finder) into a fresh venv that sees this
    environment's packages (transformers, kernels, jax) writes `zoo_kernels`, nothing named
    `kernels`, and both packages work side by side."""
    source = tmp_path / "zoo"  # a copy: an in-tree build writes build/ and *.egg-info
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    source.mkdir()
    shutil.copy(REPO / "setup.py", source / "setup.py")
    for folder in ("zoo", "kernels", "launch", "configs"):
        shutil.copytree(REPO / folder, source / folder, ignore=ignore)
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    site = pathlib.Path(_run([str(python), "-c", "import sysconfig; "
                              "print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    # The venv reads this environment's site-packages after its own (a plain path: its .pth
    # files, among them zoo's editable finder, are not run).
    (site / "outer.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
          "--no-deps", "--no-build-isolation", str(source)])
    installed = {p.name for p in site.iterdir()}
    assert {"zoo", "zoo_kernels", "launch"} <= installed and "kernels" not in installed, installed
    out = _run([str(python), "-c", USE_BOTH], cwd=tmp_path)
    where = _imported_from(out.stdout)
    assert pathlib.Path(where["kernels"]).parent.parent == pathlib.Path(
        sysconfig.get_paths()["purelib"]), where
    assert pathlib.Path(where["zoo_kernels"]) == site / "zoo_kernels"
