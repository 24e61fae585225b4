"""The hooks fluxrs calls: what each receives, when it runs, and what it may do.

Implement any of them as a function or method marked ``@fx.hookimpl``, taking only the
arguments it needs (pluggy passes them by name):

    import fluxrs as fx

    class PrintLoss:
        @fx.hookimpl
        def on_batch_end(self, step, loss):
            if step % 100 == 0:
                print(step, loss)

    fx.train_(loss, model, data, opt, callbacks=[PrintLoss()])

Every training hook receives `run` (a `fluxrs.plugins.Run`): the model, the optimiser state,
the step and epoch counters, the current epoch's `logs`, and ``run.stop_training``.

Training events, in the order they happen:

    on_train_begin
      on_epoch_begin                       (with fx.epochs(n), or train_(..., epoch=k))
        on_batch_begin → loss, gradient, update → on_batch_end      (each batch)
        on_nonfinite_loss                  (instead of the update, when the loss is NaN/inf)
      on_epoch_end
      on_checkpoint                        (whenever a checkpoint was written)
    on_train_end                           (always, also after an error)

Return values of training hooks are ignored. To act on training, call ``fx.stop()`` (end
training once every plugin has seen the current event), ``fx.skip()`` (skip the current
batch or epoch, where the hook's documentation says so), or set ``run.stop_training = True``.

Registration hooks (``register_layers`` and friends) take no arguments and return a dict
from names to objects, which `fx.plugins.layer(name)` and friends look up.
"""

from __future__ import annotations

from typing import Any

import pluggy

from fluxrs._registry import KINDS

hookspec = pluggy.HookspecMarker("fluxrs")
hookimpl = pluggy.HookimplMarker("fluxrs")


# ---------------------------------------------------------------- the training loop

@hookspec
def on_train_begin(run: Any) -> None:
    """Training starts: once per ``fx.epochs(n)`` loop, or once per `train_` call made
    outside such a loop. ``run.model``, ``run.params`` and ``run.opt`` are set when the run
    comes from a `train_` call; in an `fx.epochs` loop they are set when its first `train_`
    call starts (so read them in later hooks). A plugin that joins a run late (passed in
    ``callbacks=`` to a `train_` inside `fx.epochs`) gets this call when it joins.

    ``fx.stop()`` (or ``fx.skip()``) here: nothing is trained; ``on_train_end`` still runs.
    """


@hookspec
def on_train_end(run: Any, error: BaseException | None) -> None:
    """Training ended: normally or by ``fx.stop()`` (`error` None), or by an exception
    (`error` is it, and it propagates once every plugin has had this call; errors raised here
    are then logged, not raised, so they do not hide it). Close files and flush here.
    """


@hookspec
def on_epoch_begin(run: Any, epoch: int) -> None:
    """Epoch `epoch` (counting from 1) starts. Called by ``fx.epochs(n)`` before each
    iteration and by ``train_(..., epoch=k)`` outside such a loop. ``run.logs`` is empty.

    ``fx.skip()`` here skips the epoch: `fx.epochs` does not yield it (`train_(epoch=k)`
    trains nothing), and it gets no ``on_epoch_end``. ``fx.stop()`` ends training.
    """


@hookspec
def on_epoch_end(run: Any, epoch: int, logs: dict) -> None:
    """Epoch `epoch` ended (also when stopped part-way by ``fx.stop()``). `logs` (also
    ``run.logs``) holds ``loss``, the mean training loss of the epoch's batches, ``batches``,
    their number, ``time``, the epoch's seconds, and whatever ``fx.plugins.log(...)`` and
    earlier hooks added (a validation loss, say). Hooks may add entries: a tryfirst hook
    computing a metric is seen by the monitors and loggers after it. After this call
    ``run.history`` gets a copy of `logs`.

    ``fx.stop()`` here ends training after this epoch (every plugin still sees this call).
    """


@hookspec
def on_batch_begin(run: Any, step: int, epoch: int | None, batch: Any, index: int) -> None:
    """Before the loss of one batch is computed. `batch` is the datapoint as the data gave
    it, `index` its position in this `train_` call (from 0), `step` the number this update
    will have in the run (from 1), `epoch` the current epoch or None.

    ``fx.skip()`` here skips the batch (no loss, no update, no ``on_batch_end``);
    ``fx.stop()`` ends training before it.
    """


@hookspec
def on_batch_end(run: Any, step: int, epoch: int | None, loss: float, batch: Any, index: int) -> None:
    """After the update of one batch was applied: `loss` is its loss (a float, computed
    before the update), `step` the number of updates in this run so far (from 1). A hook
    that raises here leaves the step applied whole; the error names the plugin.

    ``fx.stop()`` ends training after this batch (skipping ``cb``); ``fx.skip()`` does
    nothing more (the update is done).
    """


@hookspec
def on_nonfinite_loss(run: Any, step: int, epoch: int | None, loss: float, batch: Any, index: int,
                      error: BaseException) -> None:
    """The loss of a batch is NaN or infinite; nothing was updated with it. By default
    training then raises `error` (a `fx.NonFiniteLossError`). ``fx.skip()`` here skips the
    batch and goes on; ``fx.stop()`` ends training cleanly (as `TerminateOnNaN` does).
    """


@hookspec
def on_checkpoint(run: Any, path: str, kind: str, epoch: int | None, step: int, metric: float | None) -> None:
    """A checkpoint was written to `path` (atomically) by `ModelCheckpoint` or another
    plugin calling ``run.call("on_checkpoint", ...)``. `kind` is ``"best"`` or ``"last"``
    (or the writer's own word), `metric` the monitored value it was saved for, if any.
    """


# ---------------------------------------------------------------- registering components by name

@hookspec
def register_layers() -> dict[str, Any]:
    """Layers this plugin provides, by name: ``{"MyConv": MyConv}``. Looked up by
    ``fx.plugins.layer("MyConv")``, so a config can say ``"layer": "MyConv"``."""


@hookspec
def register_losses() -> dict[str, Any]:
    """Loss functions by name (``fx.plugins.loss(name)``)."""


@hookspec
def register_rules() -> dict[str, Any]:
    """Optimisation rules (`fx.optimise.Rule` subclasses) by name (``fx.plugins.rule(name)``)."""


@hookspec
def register_callbacks() -> dict[str, Any]:
    """Callback (plugin) classes by name (``fx.plugins.callback(name)``), e.g. a logger a
    config names: ``fx.plugins.callback("TensorBoardLogger")(logdir="runs")``."""


#: The hooks `train_` calls per batch or per run; when no plugin implements any of them,
#: `train_` runs its plain loop, without looking for hooks again.
TRAINING_HOOKS = ("on_train_begin", "on_train_end", "on_epoch_begin", "on_epoch_end", "on_batch_begin",
                  "on_batch_end", "on_nonfinite_loss")
#: The registration hook of each kind of named object: ``"layers"`` → ``register_layers``, ...
REGISTRATION_HOOKS = {kind: f"register_{kind}" for kind in KINDS}
