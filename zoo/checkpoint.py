"""Checkpoints of a training run: orbax CheckpointManager with async, atomic saves.

A checkpoint holds the train state (step, params, optimizer state) and the data iterator's
position (JSON), so a resumed run continues the same batches and the same loss curve. Orbax writes
each step to a temporary directory and renames it when complete: a crash or SIGTERM mid-save never
leaves a half-written checkpoint as the latest.
"""

from typing import Any

import orbax.checkpoint as ocp
from etils import epath

from zoo.models.stacking import LAYERS


class Checkpointer:
    def __init__(self, directory: str | epath.PathLike, keep: int = 3, async_save: bool = True):
        self.directory = epath.Path(directory)
        if "://" not in str(directory):  # local: absolute, as orbax wants
            self.directory = self.directory.absolute()
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep,
                                                 enable_async_checkpointing=async_save),
            item_names=("state", "data"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def _step(self, step: int | None) -> int:
        """`step`, or the latest when None; FileNotFoundError when there is none."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint found in {self.directory}")
        return step

    def save(self, step: int, state: Any, data_state: dict) -> None:
        """Start saving (returns before the write finishes when async)."""
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)), force=True)

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict]:
        """Restore (state, data_state) at `step` (default latest) onto `abstract_state`'s
        structure, shapes, dtypes and shardings."""
        step = self._step(step)
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
        return restored["state"], restored["data"]

    def data_state(self, step: int | None = None) -> dict:
        """Only the JSON beside the state at `step` (default latest): enough to check that a
        resume can continue before any array is allocated."""
        step = self._step(step)
        return self.manager.restore(step, args=ocp.args.Composite(
            data=ocp.args.JsonRestore()))["data"]

    def params_stacked(self, step: int | None = None) -> bool:
        """Whether the params saved at `step` (default latest) are in the scanned layout
        (`zoo.models.stacking`: block params stacked under "layers"), read from the tree's
        metadata only."""
        path = ocp.step.find_step_path(self.directory, ocp.step.standard_name_format(),
                                       step=self._step(step))
        handler = ocp.PyTreeCheckpointHandler()
        try:
            return LAYERS in handler.metadata(path / "state")["params"]
        finally:
            handler.close()

    def restore_params(self, abstract_params: Any, step: int | None = None) -> Any:
        """Only the parameters of the train state at `step` (default latest), onto
        `abstract_params`' structure, shapes, dtypes and shardings: what generation and export
        need, without reading (or allocating) the optimizer's moments, twice the params again."""
        step = self._step(step)
        item = {"params": abstract_params}
        restored = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
            item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
            partial_restore=True)))
        return restored["state"]["params"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
