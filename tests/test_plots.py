"""zoo.plots: tree layout, the drawn token tree and its highlighted path, loss curves, the
diffusion unmasking order."""

import json
import pathlib
import sys

import matplotlib
import numpy as np
import pytest

from zoo import plots

matplotlib.use("Agg")
import matplotlib.colors as mcolors  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parent.parent
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


# Benchmark charts (bench/charts.py): tiny results in the shapes the benchmarks save as JSON.
sys.path.insert(0, str(REPO))  # bench/ is not installed
from bench import charts, common  # noqa: E402


def _spec_row(drafter, tree, batch, temperature, speedup):
    return dict(drafter=drafter, tree=tree, batch=batch, temperature=temperature, tau=2.0,
                tokens_per_s=100 * speedup, ar_tokens_per_s=100.0, speedup=speedup, exact=None,
                ar_distinct_4grams=0.5)


RESULTS = {
    "speculative_code_x": {"target": {"name": "code_x"}, "results": [
        _spec_row("draft", "chain4", 1, 0.0, 1.5),
        _spec_row("draft", "auto: none (AR)", 1, 0.0, 0.9),
        _spec_row("draft", "chain4", 1, 0.8, 0.5),
        _spec_row("hydra", "chain4", 4, 0.0, 1.2)]},
    "extend_cost": {"rows": [{"model": m, "batch": 1, "seconds": {"1": 0.5, "4": 1.0, "16": 2.0}}
                             for m in ("transformer", "mamba2", "hybrid")]},
    "ssm_tree_scan": {"batch": 1, "heads": 2, "head_dim": 4, "state_dim": 4, "results": [
        dict(tree=shape, tree_nodes=t, ms_xla=t / 10, ms_naive=t / 5, ms_reference=t / 2)
        for shape in ("bushy", "chain") for t in (4, 16)]},
    "parallel": {"config": "configs/experiments/code_small.yaml", "results": {
        mesh: dict(params_mib=p, optimizer_mib=2 * p, temp_mib=10 * p, tokens_per_s=1000.0)
        for mesh, p in (("1 device", 8.0), ("fsdp=8", 1.0))}},
    "ar_decode": {"config": {"name": "decode_x"}, "new_tokens": 8,
                  "roofline_tokens_per_s_batch1": 300.0,
                  "results": [dict(batch=b, tokens_per_s=200.0 * b) for b in (1, 4)]},
    "ar_decode_bfloat16": {"config": {"name": "decode_x", "model": {"dtype": "bfloat16"}},
                           "new_tokens": 8, "roofline_tokens_per_s_batch1": 600.0,
                           "results": [dict(batch=b, tokens_per_s=300.0 * b) for b in (1, 4)]},
}


def _is_png(path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000


@pytest.mark.parametrize("name", sorted(RESULTS))
def test_every_benchmark_chart_draws_its_results_to_a_png(tmp_path, name):
    path = charts.draw(name, RESULTS[name], tmp_path)
    assert path == tmp_path / f"{name}.png" and _is_png(path)


def test_speedup_chart_has_a_panel_per_batch_and_temperature_and_marks_no_gain(tmp_path):
    fig = charts.speedup(RESULTS["speculative_code_x"], tmp_path / "s.png")
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["batch 1, greedy", "batch 4, greedy",
                                               "batch 1, temperature 0.8"]
    widths = [[bar.get_width() for bar in ax.patches] for ax in axes]
    assert widths == [[1.5, 0.9], [1.2], [0.5]]
    assert all(any(line.get_xdata()[0] == 1.0 for line in ax.lines) for ax in axes)
    assert [t.get_text() for t in axes[0].get_yticklabels()] == ["draft · chain4", "draft · auto",
                                                                 "hydra · chain4"]


def test_extend_cost_chart_plots_each_family_relative_to_its_one_node_step(tmp_path):
    fig = charts.extend_cost(RESULTS["extend_cost"], tmp_path / "e.png")
    relative = {line.get_label(): line.get_ydata().tolist() for line in fig.axes[1].lines}
    assert relative["mamba2"] == [1.0, 2.0, 4.0]
    assert relative["T full steps (no sharing)"] == [1, 4, 16]


def test_charts_script_redraws_every_chart_from_saved_results_and_runs(tmp_path):
    results, runs = tmp_path / "results", tmp_path / "runs"
    results.mkdir()
    for name, payload in {**RESULTS, "train_step": {"rows": []}}.items():
        (results / f"{name}.json").write_text(json.dumps(payload))
    (runs / "code_ref").mkdir(parents=True)
    (runs / "code_ref" / "metrics.jsonl").write_text('{"step": 1, "loss": 3.0}\n'
                                                     '{"step": 2, "val_loss": 2.5}\n')
    charts.main(["--results", str(results), "--runs", str(runs)])
    pngs = sorted(p.name for p in results.glob("*.png"))
    assert pngs == sorted([f"{name}.png" for name in RESULTS] + [charts.LOSS_CHART])
    assert all(_is_png(results / p) for p in pngs)


def test_writing_a_benchmark_result_draws_its_chart_beside_it(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    common.write_result("extend_cost", RESULTS["extend_cost"], "| table |")
    common.write_result("train_step", {"rows": []}, "| table |")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "extend_cost.json", "extend_cost.md", "extend_cost.png", "train_step.json",
        "train_step.md"]
    assert _is_png(tmp_path / "extend_cost.png")
