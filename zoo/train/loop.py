"""The training loop: data, jitted steps, validation, metrics, checkpoints, resume, SIGTERM.

`train(config)` is what `zoo-train` runs. Everything a resumed run needs (params, optimizer
state, step, data position) is in the checkpoint, so training N steps, stopping, and resuming for
N more gives the same losses as 2N uninterrupted steps.
"""

import dataclasses
import json
import math
import pathlib
import signal
import time

import jax
import numpy as np
from tqdm.auto import tqdm

from zoo import config as config_lib
from zoo.checkpoint import Checkpointer
from zoo.data.packing import BatchIterator, PackedDataset, eval_batches, load_token_stream
from zoo.models import build_model
from zoo.models.heads import build_heads
from zoo.train.optimizer import learning_rate_schedule, make_optimizer
from zoo.train.steps import LMObjective, init_state, summarize_eval


class NonFiniteLossError(RuntimeError):
    """Training produced a non-finite loss or non-finite parameters."""


class ResumeError(RuntimeError):
    """A checkpoint cannot continue under the given config."""


@dataclasses.dataclass
class TrainResult:
    step: int  # steps completed
    losses: dict[int, float]  # train loss by step (1-based: after step k)
    evals: list[dict]
    interrupted: bool  # stopped by SIGTERM (checkpoint saved)


class _SigtermFlag:
    """Turns SIGTERM into a flag the loop checks after each step (then saves and exits)."""

    def __init__(self):
        self.raised = False

    def __enter__(self):
        self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        self.raised = True

    def __exit__(self, *exc):
        signal.signal(signal.SIGTERM, self._previous)


def evaluate(eval_step, params, batches, summarize=summarize_eval) -> dict:
    """Sum the eval step's outputs (scalars or arrays, in float64) over `batches`, then
    `summarize` the totals into metrics."""
    totals = None
    for batch in batches:
        out = jax.tree.map(lambda x: np.asarray(x, np.float64),
                           jax.device_get(eval_step(params, batch)))
        totals = out if totals is None else jax.tree.map(np.add, totals, out)
    return summarize(totals)


def build_objective(config: config_lib.ExperimentConfig):
    """What `config` trains: the LM itself, or draft heads on a frozen target run (loaded here,
    so a missing target fails before any other work)."""
    if config.heads.kind == "none":
        return LMObjective(build_model(config.model))
    from zoo.train.heads import HeadsObjective  # it loads runs with load_run below
    return HeadsObjective.from_config(config)


def _append_jsonl(path: pathlib.Path, record: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def train(config: config_lib.ExperimentConfig, *, resume: bool = False,
          stop_at: int | None = None, progress: bool = True) -> TrainResult:
    """Train `config`; `stop_at` ends this run early (checkpointed) at that step, as a preemption
    would, so a later `resume=True` run can continue to `config.train.steps`."""
    tc, dc = config.train, config.data
    objective = build_objective(config)
    run_dir = pathlib.Path(tc.run_dir)
    checkpointer = Checkpointer(run_dir / "checkpoints", keep=tc.keep_checkpoints)
    if checkpointer.latest_step() is not None and not resume:
        raise FileExistsError(f"{run_dir} already holds checkpoints (latest step "
                              f"{checkpointer.latest_step()}); pass --resume to continue it or "
                              "choose another train.run_dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    config_lib.save(config, run_dir / "config.yaml")
    metrics_path = run_dir / "metrics.jsonl"

    train_data = PackedDataset(load_token_stream(dc.corpus, dc.data_dir, "train"), dc.seq_len)
    val_data = PackedDataset(load_token_stream(dc.corpus, dc.data_dir, "validation"), dc.seq_len)
    batches = BatchIterator(train_data, dc.batch_size, seed=dc.seed, shuffle=dc.shuffle)
    val_batches = eval_batches(val_data, dc.batch_size, tc.eval_batches)

    tx = make_optimizer(tc)
    schedule = learning_rate_schedule(tc)
    state = init_state(objective, tx, jax.random.key(tc.seed))
    # The iterator position only means the same batches under the same data settings.
    data_identity = {"corpus": dc.corpus, "seq_len": dc.seq_len, "batch_size": dc.batch_size,
                     "seed": dc.seed, "shuffle": dc.shuffle}
    if resume and checkpointer.latest_step() is not None:
        state, data_state = checkpointer.restore(state)
        for key, value in data_identity.items():
            if data_state.get(key) != value:
                raise ResumeError(f"cannot resume: the checkpoint's data.{key} is "
                                 f"{data_state.get(key)!r} but the config says {value!r}")
        batches.set_state(data_state)
    train_step, eval_step = objective.make_train_step(tx, schedule), objective.make_eval_step()

    start = int(state.step)
    end = tc.steps if stop_at is None else min(stop_at, tc.steps)
    tokens_per_step = dc.batch_size * dc.seq_len
    result = TrainResult(start, {}, [], False)
    bar = tqdm(total=tc.steps, initial=start, disable=not progress, desc="train",
               dynamic_ncols=True)
    window_start, window_steps = time.perf_counter(), 0
    try:
        with _SigtermFlag() as sigterm:
            for step in range(start + 1, end + 1):
                state, metrics = train_step(state, next(batches))
                metrics = jax.device_get(metrics)
                loss = float(metrics["loss"])
                if not (math.isfinite(loss) and metrics["params_finite"]):
                    checkpointer.wait()
                    raise NonFiniteLossError(
                        f"non-finite {'loss' if not math.isfinite(loss) else 'parameters'} at "
                        f"step {step} (loss={loss}); stopped. The last good checkpoint is step "
                        f"{checkpointer.latest_step()} in {checkpointer.directory}")
                result.losses[step] = loss
                result.step = step
                window_steps += 1
                bar.update(1)
                if step % tc.log_every == 0 or step == end:
                    elapsed = time.perf_counter() - window_start
                    tok_s = window_steps * tokens_per_step / elapsed
                    bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tok_s:,.0f}")
                    _append_jsonl(metrics_path, {
                        "step": step, "loss": loss, "grad_norm": float(metrics["grad_norm"]),
                        "learning_rate": float(metrics["learning_rate"]),
                        "tokens_per_s": tok_s})
                    window_start, window_steps = time.perf_counter(), 0
                if step % tc.eval_every == 0 or step == tc.steps:
                    record = {"step": step, **evaluate(eval_step, state.params, val_batches,
                                                        objective.summarize)}
                    result.evals.append(record)
                    _append_jsonl(metrics_path, record)
                    bar.write(f"step {step}: " + format_metrics(record))
                    window_start = time.perf_counter()  # tokens/s counts training only
                if step % tc.checkpoint_every == 0 or step == end or sigterm.raised:
                    checkpointer.save(step, state, {**batches.get_state(), **data_identity})
                if sigterm.raised:
                    bar.write(f"SIGTERM: saved checkpoint at step {step}; exiting")
                    result.interrupted = True
                    break
    finally:
        bar.close()
        checkpointer.wait()
        checkpointer.close()
    return result


def format_metrics(record: dict) -> str:
    return "  ".join(f"{k} {v:.4f}" for k, v in record.items() if k != "step")


def load_run(run_dir: str | pathlib.Path, step: int | None = None):
    """(config, params) of a training run directory, from its latest (or given) checkpoint.
    For a draft-heads run the params are the heads' (its target is `config.heads.target_run`)."""
    run_dir = pathlib.Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir} is not a zoo run directory (no config.yaml)")
    config = config_lib.load(run_dir / "config.yaml")
    trained = (build_model(config.model) if config.heads.kind == "none"
               else build_heads(config.heads, config.model))
    tx = make_optimizer(config.train)
    abstract = jax.eval_shape(lambda: init_state(trained, tx, jax.random.key(0)))
    checkpointer = Checkpointer(run_dir / "checkpoints", async_save=False)
    try:
        state, _ = checkpointer.restore(abstract, step)
    finally:
        checkpointer.close()
    return config, state.params
