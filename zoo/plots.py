"""Pictures for notebooks: a run's loss curves, a drafted token tree with its accepted path, and
the order in which a diffusion sampler unmasked an answer.

matplotlib is imported when a picture is drawn, not with the module, so zoo does not need it
(`pip install zoo[notebooks]` brings it).
"""

import json
import pathlib
from typing import Sequence

import numpy as np

from zoo.data.tokenizer import BYTE_VOCAB
from zoo.decode.trees import validate_parents

ACCEPTED_COLOUR = "tab:green"
DRAFTED_COLOUR = "lightgrey"


def _axes(ax):
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt.subplots()[1]


def token_label(token: int) -> str:
    """A byte token as a short printable label: \u2423 a space, \u21b5 a newline, \u00b7 a special
    token (BOS, EOS, PAD, MASK), an escape for other control bytes and for bytes >= 0x80 (a piece
    of a multibyte character has no glyph of its own)."""
    if token >= BYTE_VOCAB:
        return "\u00b7"
    if token >= 0x80:
        return f"\\x{token:02x}"
    return {" ": "\u2423", "\n": "\u21b5"}.get(chr(token), repr(chr(token))[1:-1])


def read_metrics(run_dir) -> list[dict]:
    """The records of a run's metrics.jsonl: train logs (`loss`, ...) and validations
    (`val_loss`, ...), each with its `step`."""
    path = pathlib.Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: {run_dir} is not a trained zoo run")
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def plot_losses(run_dir, ax=None):
    """Train and validation loss (nats per predicted token) by step of a training run; the
    axes."""
    ax = _axes(ax)
    records = read_metrics(run_dir)
    for key, label, style in (("loss", "train", "-"), ("val_loss", "validation", "o--")):
        points = [(r["step"], r[key]) for r in records if key in r]
        if points:
            ax.plot(*zip(*points), style, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats / token)")
    ax.set_title(pathlib.Path(run_dir).name)
    ax.legend()
    return ax


def tree_layout(parents) -> np.ndarray:
    """float[T, 2]: (depth, row) of every node of a [T] parents array. Leaves take consecutive
    rows in depth-first order (siblings in node order, the order verification tries them) and
    every other node sits at the mean row of its children, so no edges cross."""
    parents = validate_parents(parents)
    if parents.ndim != 1:
        raise ValueError(f"draw one tree: parents must be [T], got shape {parents.shape}")
    t = len(parents)
    children = [[] for _ in range(t)]
    for node in range(1, t):
        children[parents[node]].append(node)
    pos = np.zeros((t, 2))
    for node in range(1, t):  # topological order: a parent's depth is set before its child's
        pos[node, 0] = pos[parents[node], 0] + 1
    leaves = 0
    for node in _post_order(children):
        if children[node]:
            pos[node, 1] = np.mean(pos[children[node], 1])
        else:
            pos[node, 1], leaves = leaves, leaves + 1
    return pos


def _post_order(children) -> list[int]:
    """Nodes from the root (0) in depth-first post-order, children in node order."""
    order, stack = [], [(0, False)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
        else:
            stack.append((node, True))
            stack.extend((c, False) for c in reversed(children[node]))
    return order


def _check_path(parents: np.ndarray, accepted: Sequence[int]) -> None:
    for i, node in enumerate(accepted):
        want = -1 if i == 0 else accepted[i - 1]
        if not 0 <= node < len(parents) or parents[node] != want:
            raise ValueError(f"accepted {list(accepted)} is not a path from the root: node "
                             f"{node} at position {i} should be a child of {want}")


def draw_token_tree(labels: Sequence[str], parents, accepted: Sequence[int] = (), ax=None):
    """Draw a token tree, root at the left and one column per depth, each node boxed with its
    label; the nodes of `accepted` (a path from the root 0, e.g. `Verdict.path[b, :n]`) and the
    edges between them are highlighted. The axes."""
    parents = validate_parents(parents)
    accepted = [int(a) for a in accepted]
    if len(labels) != len(parents):
        raise ValueError(f"{len(labels)} labels for a tree of {len(parents)} nodes")
    pos = tree_layout(parents)
    _check_path(parents, accepted)
    on_path = set(accepted)
    ax = _axes(ax)
    for node in range(1, len(parents)):
        ends = pos[[parents[node], node]]
        hit = node in on_path
        ax.plot(ends[:, 0], ends[:, 1], color=ACCEPTED_COLOUR if hit else DRAFTED_COLOUR,
                linewidth=2.5 if hit else 1, zorder=1)
    for node, (x, y) in enumerate(pos):
        ax.text(x, y, labels[node], ha="center", va="center", family="monospace", zorder=2,
                bbox=dict(boxstyle="round", edgecolor="black",
                          facecolor=ACCEPTED_COLOUR if node in on_path else "white"))
    ax.set_xlim(-0.5, pos[:, 0].max() + 0.5)
    ax.set_ylim(pos[:, 1].max() + 0.5, -0.5)  # first sibling on top
    ax.set_xlabel("depth")
    ax.set_yticks([])
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    return ax


def draw_unmasking_order(labels: Sequence[str], unmasked_at, columns: int = 32, ax=None):
    """Draw an answer as a grid of `columns` tokens a line, each labelled with its token and
    coloured by the denoising step that unmasked it (`DiffusionGeneration.unmasked_at[b]`): the
    order a diffusion sampler filled the answer in. The axes."""
    unmasked_at = np.asarray(unmasked_at)
    if unmasked_at.ndim != 1 or len(labels) != len(unmasked_at):
        raise ValueError(f"{len(labels)} labels for unmasking steps of shape "
                         f"{unmasked_at.shape}; give one answer row")
    if columns < 1:
        raise ValueError(f"columns must be >= 1, got {columns}")
    n = len(labels)
    grid = np.full((-(-n // columns), columns), np.nan)
    grid.flat[:n] = unmasked_at
    ax = _axes(ax)
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis")
    late = (unmasked_at - unmasked_at.min()) > 0.6 * np.ptp(unmasked_at)  # bright cells
    for i, label in enumerate(labels):
        ax.text(i % columns, i // columns, label, ha="center", va="center", family="monospace",
                color="black" if late[i] else "white")
    ax.figure.colorbar(image, ax=ax, label="denoising step", shrink=0.8)
    ax.set_xticks([])
    ax.set_yticks([])
    return ax
