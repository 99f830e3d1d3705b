"""The training loop: data, jitted steps, validation, metrics, checkpoints, resume, preemption.

`train(config)` is what `zoo-train` runs. Everything a resumed run needs (params, optimizer
state, step, data position) is in the checkpoint, so training N steps, stopping, and resuming for
N more gives the same losses as 2N uninterrupted steps. The checkpoint also records the schedule
settings (`train.steps`, learning rate, warmup, decay): resuming under other ones is refused
unless `allow_schedule_change` (`zoo-train --allow-schedule-change`).

The host never waits on the devices between log points: a thread assembles batches (as global
arrays) a few steps ahead, and each step's metrics stay on the devices until the next log,
validation or checkpoint step fetches the whole window and checks it step by step. A non-finite
loss then names the exact step that went bad; every checkpoint is saved after such a check, so
the last one is always from before it.

SIGTERM stops the run at a step every process agrees on, which all of them checkpoint before
exiting: in a multi-process run JAX's preemption sync manager (`jax.distributed`) catches the
signal on whichever process gets it and picks the next step all processes reach (within about a
second); a process that stopped on its own flag would leave the others waiting in a collective.

The state lives on the mesh of `config.mesh` (all devices of all processes), sharded by
`zoo.parallel.Layout`; `data.batch_size` is the global batch, of which each process reads only
its own rows. Process 0 writes the run's config, metrics (`metrics.jsonl` and TensorBoard,
`zoo.train.metrics`), progress bar and any profile (`zoo.train.profiling`); every process takes
part in checkpoint saves, which go wherever `train.run_dir` points (a shared disk or gs://).

The text is zoo's bytes or the Hugging Face tokenizer `data.tokenizer` names (`data_tokenizer`,
checked before any work); the run keeps its files (`zoo.runs.tokenizer_for_run` reads them) and
the checkpoint its hash, so a run never resumes on another tokenizer's stream.
"""

import dataclasses
import math
import signal
import time

import jax
import numpy as np
from etils import epath
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from zoo import config as config_lib
from zoo.checkpoint import Checkpointer
from zoo.data.hf_tokenizer import (BYTES, token_byte_lengths, tokenizer_at, tokenizer_identity,
                                   write_run_tokenizer)
from zoo.data.packing import BatchIterator, eval_batches, load_dataset
from zoo.data.prefetch import Prefetcher
from zoo.data.tokenizer import ByteTokenizer, Tokenizer
from zoo.models import build_model
from zoo.parallel import Layout, ShardingError
from zoo.train.metrics import MetricsWriter
from zoo.train.optimizer import learning_rate_schedule, make_optimizer, schedule_settings
from zoo.train.profiling import StepProfiler, check_steps
from zoo.train.steps import LMObjective, StepShardings, init_state, summarize_eval


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


class _Preemption:
    """SIGTERM -> `reached(step)` true at one step, the same on every process.

    With `jax.distributed` JAX's preemption sync manager owns SIGTERM (installing a Python
    handler would take it away) and needs `reached` asked at every step. A lone process turns
    SIGTERM into a flag."""

    def __enter__(self):
        self.raised = False
        self._synced = jax.distributed.is_initialized()
        if not self._synced:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        self.raised = True

    def reached(self, step: int) -> bool:
        if self._synced:
            return multihost_utils.reached_preemption_sync_point(step)
        return self.raised

    def __exit__(self, *exc):
        if not self._synced:
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


def data_tokenizer(config: config_lib.ExperimentConfig) -> Tokenizer:
    """The tokenizer of the run's text: `data.tokenizer`, or zoo's bytes when it is empty (and
    for video, whose ids are patches). Refused, naming the key, when its file is missing or its
    ids do not fit model.vocab_size."""
    dc, vocab = config.data, config.model.vocab_size
    if dc.is_video:
        return ByteTokenizer()
    try:
        tok = tokenizer_at(dc.tokenizer) if dc.tokenizer else ByteTokenizer()
    except FileNotFoundError as e:
        raise FileNotFoundError(f"data.tokenizer={dc.tokenizer!r}: {e}") from None
    if tok.vocab_size > vocab:
        what = f"data.tokenizer={dc.tokenizer!r}" if dc.tokenizer else "zoo's byte tokenizer"
        raise config_lib.ConfigError(
            f"{what} has {tok.vocab_size} token ids but model.vocab_size is {vocab}: raise "
            "model.vocab_size or choose a smaller tokenizer")
    return tok


def loss_pad_id(tok: Tokenizer) -> int | None:
    """The id left out of every loss: the tokenizer's PAD, unless it has none or its PAD is its
    BOS or EOS (which the packed stream holds and the model must learn)."""
    pad = tok.special_ids.get("pad")
    return None if pad in (None, tok.bos_id, tok.eos_id) else pad


def build_objective(config: config_lib.ExperimentConfig, layout: Layout | None = None,
                    tok: Tokenizer | None = None):
    """What `config` trains, on text tokenized by `tok` (default `data_tokenizer(config)`): the
    LM itself (its activations sharded over `layout`), or draft heads on a frozen target run
    (loaded here, so a missing target fails before any other work)."""
    obj, tok = config.objective, tok or data_tokenizer(config)
    if config.heads.kind != "none":
        from zoo.train.heads import HeadsObjective  # the heads import jax-heavy target code
        return HeadsObjective.from_config(config, tok)
    if obj.kind == "masked_diffusion" and tok.mask_id is None:
        raise config_lib.ConfigError(
            f"objective.kind=masked_diffusion masks tokens with the tokenizer's mask token, and "
            f"data.tokenizer={config.data.tokenizer!r} names none (mask_token in its "
            "tokenizer_config.json)")
    model = build_model(config.model, layout=layout)
    byte_lengths = token_byte_lengths(tok, config.model.vocab_size)
    if obj.kind == "masked_diffusion":
        from zoo.train.diffusion import DiffusionObjective
        return DiffusionObjective(model, byte_lengths, obj.block_size, obj.t_min,
                                  config.train.seed, loss_pad_id(tok), tok.mask_id)
    # next token, or next block
    return LMObjective(model, byte_lengths, obj.shift, loss_pad_id(tok))


def data_identity(config: config_lib.ExperimentConfig, tok: Tokenizer) -> dict:
    """The data settings saved beside the iterator position, which only means the same batches
    under the same settings (the same tokenizer, by `tokenizer_identity`, and the same target
    shift: 1 token, or one block)."""
    dc, shift = config.data, config.objective.shift
    return {"corpus": dc.corpus, "tokenizer": tokenizer_identity(tok), "seq_len": dc.seq_len,
            "batch_size": dc.batch_size, "seed": dc.seed, "shuffle": dc.shuffle,
            **({"shift": shift} if shift != 1 else {})}


# What a checkpoint written before a data setting was recorded had.
_UNRECORDED = {"tokenizer": BYTES}


def process_rows(global_batch: int) -> tuple[int, int]:
    """(first row, row count) of this process's share of a global batch."""
    count = jax.process_count()
    if global_batch % count:
        raise ShardingError(f"data.batch_size={global_batch} does not divide over "
                            f"{count} processes")
    rows = global_batch // count
    return jax.process_index() * rows, rows


def sharded_setup(config: config_lib.ExperimentConfig, objective, tx, layout: Layout):
    """(step shardings, a function making the initial state on the mesh). Fails before any
    allocation when a parameter or the batch does not divide over the mesh."""
    key = jax.random.key(config.train.seed)
    make = lambda: init_state(objective, tx, key)  # noqa: E731
    shardings = StepShardings.for_state(jax.eval_shape(make), objective.logical_axes(), tx,
                                        layout)
    batch_axes = shardings.batch.spec[0]
    if config.data.batch_size % layout.axis_size(batch_axes):
        raise ShardingError(f"data.batch_size={config.data.batch_size} does not divide over "
                            f"mesh axes {batch_axes} of size {layout.axis_size(batch_axes)}")
    return shardings, jax.jit(make, out_shardings=shardings.state)


def global_batch(batch: dict, sharding) -> dict:
    """One process's rows of a batch -> global arrays split over the batch axes."""
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def check_resumable(data_state: dict, config: config_lib.ExperimentConfig, tok: Tokenizer,
                    allow_schedule_change: bool = False) -> None:
    """Raise ResumeError, naming the key and both values, when a checkpoint's data settings
    (its tokenizer's identity among them; `tok` is the config's) or, unless allowed, its
    schedule settings differ from `config`'s. A checkpoint written before the schedule was
    recorded passes unchecked."""
    for key, value in data_identity(config, tok).items():
        saved = data_state.get(key, _UNRECORDED.get(key))
        if saved != value:
            raise ResumeError(f"cannot resume: the checkpoint's data.{key} is {saved!r} but the "
                              f"config says {value!r}")
    saved = data_state.get("schedule", {})
    for key, value in schedule_settings(config.train).items():
        if key in saved and saved[key] != value and not allow_schedule_change:
            raise ResumeError(
                f"cannot resume: the checkpoint was trained with train.{key}={saved[key]!r} but "
                f"the config says {value!r}, a different learning-rate schedule; pass "
                "--allow-schedule-change (train(..., allow_schedule_change=True)) to continue "
                "on the new one")


def train(config: config_lib.ExperimentConfig, *, resume: bool = False,
          stop_at: int | None = None, progress: bool = True,
          allow_schedule_change: bool = False,
          profile_steps: tuple[int, int] | None = None) -> TrainResult:
    """Train `config`; `stop_at` ends this run early (checkpointed) at that step, as a preemption
    would, so a later `resume=True` run can continue to `config.train.steps`.
    `allow_schedule_change` lets it resume under other schedule settings than the checkpoint's.
    `profile_steps` (A, B): trace steps A..B with `jax.profiler` (`zoo.train.profiling`)."""
    tc, dc = config.train, config.data
    check_steps(profile_steps, tc.steps)
    tok = data_tokenizer(config)
    layout = Layout.from_config(config.mesh)
    objective = build_objective(config, layout, tok)
    tx = make_optimizer(tc)
    schedule = learning_rate_schedule(tc)
    shardings, make_state = sharded_setup(config, objective, tx, layout)
    first_row, rows = process_rows(dc.batch_size)

    run_dir = epath.Path(tc.run_dir)
    checkpointer = Checkpointer(run_dir / "checkpoints", keep=tc.keep_checkpoints)
    resuming = checkpointer.latest_step() is not None
    if resuming and not resume:
        raise FileExistsError(f"{run_dir} already holds checkpoints (latest step "
                              f"{checkpointer.latest_step()}); pass --resume to continue it or "
                              "choose another train.run_dir")
    if resuming:  # before the run's config.yaml is replaced
        check_resumable(checkpointer.data_state(), config, tok, allow_schedule_change)
        stacked = config.heads.kind == "none" and checkpointer.params_stacked()
        if config.heads.kind == "none" and stacked != config.model.scan_layers:
            layout = {True: "scanned (stacked)", False: "per-layer"}
            raise ResumeError(
                f"cannot resume: the checkpoint's params are "
                f"{layout[stacked]} but model.scan_layers="
                f"{config.model.scan_layers} trains {layout[config.model.scan_layers]} params; "
                "resume with the checkpoint's model.scan_layers, or start a new run from it "
                "(zoo.runs.load_run reads either layout)")
    if jax.process_index() == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(config_lib.dumps(config))
        write_run_tokenizer(run_dir, tok)

    train_data, val_data = (load_dataset(dc.corpus, dc.data_dir, split, dc.seq_len,
                                         config.objective.shift, dc.is_video, tok)
                            for split in ("train", "validation"))
    batches = BatchIterator(train_data, rows, seed=dc.seed, shuffle=dc.shuffle,
                            process_index=jax.process_index(), process_count=jax.process_count())
    to_global = lambda batch: global_batch(batch, shardings.batch)  # noqa: E731
    val_batches = [to_global({k: v[first_row:first_row + rows] for k, v in batch.items()})
                   for batch in eval_batches(val_data, dc.batch_size, tc.eval_batches)]

    state = make_state()
    if resuming:
        state, data_state = checkpointer.restore(state)
        batches.set_state(data_state)
    saved_json = {**data_identity(config, tok), "schedule": schedule_settings(tc)}
    train_step = objective.make_train_step(tx, schedule, shardings)
    eval_step = objective.make_eval_step(shardings)

    start = int(state.step)
    end = tc.steps if stop_at is None else min(stop_at, tc.steps)
    tokens_per_step = dc.batch_size * dc.seq_len
    result = TrainResult(start, {}, [], False)
    bar = tqdm(total=tc.steps, initial=start, desc="train", dynamic_ncols=True,
               disable=not progress or jax.process_index() != 0)
    window_start, window_steps = time.perf_counter(), 0
    pending = []  # (step, metrics still on the devices) since the last fetch
    try:
        with (Prefetcher(batches, to_global) as feed, _Preemption() as preemption,
              MetricsWriter(run_dir, start if resuming else None) as log,
              StepProfiler(profile_steps, log.tensorboard_dir) as profiler):
            for step in range(start + 1, end + 1):
                profiler.before(step)
                state, metrics = train_step(state, next(feed))
                profiler.after(step, (state, metrics))
                pending.append((step, metrics))
                window_steps += 1
                bar.update(1)
                preempted = preemption.reached(step)
                logging = step % tc.log_every == 0 or step == end or preempted
                evaluating = step % tc.eval_every == 0 or step == tc.steps
                saving = step % tc.checkpoint_every == 0 or step == end or preempted
                if not (logging or evaluating or saving):
                    continue
                metrics = _fetch_finite(pending, result.losses, checkpointer)
                result.step = step
                if logging:
                    elapsed = time.perf_counter() - window_start
                    tok_s = window_steps * tokens_per_step / elapsed
                    loss = result.losses[step]
                    bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tok_s:,.0f}")
                    log.write({
                        "step": step, "loss": loss, "grad_norm": float(metrics["grad_norm"]),
                        "learning_rate": float(metrics["learning_rate"]),
                        "tokens_per_s": tok_s})
                if evaluating:
                    record = {"step": step, **evaluate(eval_step, state.params, val_batches,
                                                        objective.summarize)}
                    result.evals.append(record)
                    log.write(record)
                    bar.write(f"step {step}: " + format_metrics(record))
                if logging or evaluating:  # tokens/s counts training only
                    window_start, window_steps = time.perf_counter(), 0
                if saving:  # a checkpoint's steps are in the event files before it exists
                    log.flush()
                    checkpointer.save(step, state, {**feed.get_state(), **saved_json})
                if preempted:
                    bar.write(f"SIGTERM: saved checkpoint at step {step}; exiting")
                    result.interrupted = True
                    break
    finally:
        bar.close()
        checkpointer.wait()
        checkpointer.close()
    return result


def _fetch_finite(pending: list, losses: dict, checkpointer: Checkpointer) -> dict:
    """Bring the pending steps' metrics to the host (emptying `pending`), record their losses,
    and raise NonFiniteLossError at the first step whose loss or parameters are not finite.
    The last step's metrics."""
    for step, metrics in jax.device_get(pending):
        loss = float(metrics["loss"])
        if not (math.isfinite(loss) and metrics["params_finite"]):
            checkpointer.wait()
            raise NonFiniteLossError(
                f"non-finite {'loss' if not math.isfinite(loss) else 'parameters'} at step "
                f"{step} (loss={loss}); stopped. The last good checkpoint is step "
                f"{checkpointer.latest_step()} in {checkpointer.directory}")
        losses[step] = loss
    pending.clear()
    return metrics


def format_metrics(record: dict) -> str:
    return "  ".join(f"{k} {v:.4f}" for k, v in record.items() if k != "step")
