"""zoo.plots: tree layout, the drawn token tree and its highlighted path, loss curves, the
diffusion unmasking order."""

import json

import matplotlib
import numpy as np
import pytest

from zoo import plots

matplotlib.use("Agg")
import matplotlib.colors as mcolors  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

PARENTS = [-1, 0, 0, 1, 1, 2]  # root -> (1 -> (3, 4), 2 -> 5)


def test_layout_puts_leaves_on_rows_in_depth_first_order_and_parents_between_children():
    pos = plots.tree_layout(PARENTS)
    np.testing.assert_array_equal(pos[:, 0], [0, 1, 1, 2, 2, 2])
    np.testing.assert_array_equal(pos[:, 1], [1.25, 0.5, 2, 0, 1, 2])


def test_layout_of_a_chain_is_one_row():
    np.testing.assert_array_equal(plots.tree_layout([-1, 0, 1, 2]), [[0, 0], [1, 0], [2, 0],
                                                                      [3, 0]])


def test_tree_is_drawn_with_labels_and_the_accepted_path_highlighted():
    labels = ["r", "a", "b", "c", "d", "e"]
    ax = plots.draw_token_tree(labels, PARENTS, accepted=[0, 1, 4])
    texts = {t.get_text(): t for t in ax.texts}
    assert sorted(texts) == sorted(labels)
    assert texts["d"].get_position() == (2, 1)
    green = mcolors.to_rgba(plots.ACCEPTED_COLOUR)
    lit = sorted(k for k, t in texts.items() if t.get_bbox_patch().get_facecolor() == green)
    assert lit == ["a", "d", "r"]
    edges = [(tuple(line.get_xydata()[1]), mcolors.to_rgba(line.get_color())) for line in ax.lines]
    assert len(edges) == 5
    assert sorted(end for end, colour in edges if colour == green) == [(1, 0.5), (2, 1)]
    plt.close("all")


@pytest.mark.parametrize("accepted, why", [([1, 3], "node 1 at position 0"),
                                           ([0, 1, 5], "node 5 at position 2"),
                                           ([0, 9], "node 9")])
def test_an_accepted_list_that_is_not_a_root_path_is_refused(accepted, why):
    with pytest.raises(ValueError, match=why):
        plots.draw_token_tree(list("rabcde"), PARENTS, accepted=accepted)


def test_labels_must_match_the_nodes():
    with pytest.raises(ValueError, match="5 labels for a tree of 6 nodes"):
        plots.draw_token_tree(list("rabcd"), PARENTS)


def test_losses_plot_train_and_validation_by_step(tmp_path):
    records = [{"step": 5, "loss": 3.0, "grad_norm": 1.0}, {"step": 10, "loss": 2.5},
               {"step": 10, "val_loss": 2.7, "val_bits_per_byte": 3.9}, {"step": 15, "loss": 2.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    ax = plots.plot_losses(tmp_path)
    lines = {line.get_label(): line.get_xydata().tolist() for line in ax.lines}
    assert lines == {"train": [[5, 3.0], [10, 2.5], [15, 2.0]], "validation": [[10, 2.7]]}
    plt.close("all")


def test_losses_of_a_folder_without_metrics_name_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a trained zoo run"):
        plots.plot_losses(tmp_path)


def test_unmasking_order_is_a_grid_of_tokens_coloured_by_step():
    steps = np.array([3, 1, 2, 2, 4])
    ax = plots.draw_unmasking_order(list("abcde"), steps, columns=2)
    grid = ax.images[0].get_array()
    np.testing.assert_array_equal(grid.filled(-1), [[3, 1], [2, 2], [4, -1]])
    assert grid.mask.tolist() == [[False, False], [False, False], [False, True]]
    assert {t.get_text(): t.get_position() for t in ax.texts} == {
        "a": (0, 0), "b": (1, 0), "c": (0, 1), "d": (1, 1), "e": (0, 2)}
    plt.close("all")


def test_unmasking_order_needs_one_step_per_label():
    with pytest.raises(ValueError, match="3 labels for unmasking steps of shape"):
        plots.draw_unmasking_order(list("abc"), np.array([[1, 2, 3]]))


def test_token_labels_are_short_and_printable():
    from zoo.data.tokenizer import EOS_ID, MASK_ID
    got = [plots.token_label(t) for t in [ord("a"), ord(" "), ord("\n"), 9, 0x15, 0xe2, EOS_ID,
                                          MASK_ID]]
    assert got == ["a", "\u2423", "\u21b5", "\\t", "\\x15", "\\xe2", "\u00b7", "\u00b7"]
