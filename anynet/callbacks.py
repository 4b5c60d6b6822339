"""The training loop's callbacks (anynet.training.Trainer calls them; none may change the
training): `Callback`, the hooks; `ConsoleReporter`, the one that prints (a progress bar per
epoch on a terminal, a line per epoch); `StopOnSignals`, which turns Ctrl-C and SIGTERM into a
stop at the next batch, with a checkpoint. anynet.training re-exports them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from anynet.progress import Progress
    from anynet.training import Trainer, TrainState


class Callback:
    """Hooks the loop calls; override the ones you need. None of them may change the training."""

    def on_train_begin(self, trainer: Trainer, state: TrainState) -> None: ...
    def on_epoch_begin(self, epoch: int, n_batches: int, first_batch: int) -> None: ...
    def on_batch_end(self, epoch: int, batch: int, loss: float) -> None: ...
    def on_epoch_end(self, epoch: int, metrics: dict) -> None: ...
    def on_checkpoint(self, path: Path, state: TrainState) -> None: ...


class ConsoleReporter(Callback):
    """Prints a progress bar per epoch (on a terminal) and one line per finished epoch; with
    `resumed_from` (a checkpoint's path), first the point the run resumes from. `quiet`: none
    of these."""

    def __init__(self, epochs: int, quiet: bool = False, resumed_from: str | Path | None = None):
        self.epochs, self.quiet, self.resumed_from = epochs, quiet, resumed_from
        self.bar: Progress | None = None
        self.running = 0.0

    def on_train_begin(self, trainer: Trainer, state: TrainState) -> None:
        if self.resumed_from is not None and not self.quiet:
            print(f"resuming from {self.resumed_from}: epoch {state.epoch + 1}, "
                  f"batch {state.batch}/{trainer.n_batches}")

    def on_epoch_begin(self, epoch: int, n_batches: int, first_batch: int) -> None:
        if self.quiet:
            return
        from anynet.progress import Progress

        self.bar = Progress(n_batches, f"epoch {epoch + 1}/{self.epochs}", unit="batch")
        self.bar.update(first_batch)
        self.running = 0.0

    def on_batch_end(self, epoch: int, batch: int, loss: float) -> None:
        if self.bar is None:
            return
        # an exponential moving average: a steady figure to watch, cheap to keep
        self.running = loss if self.running == 0.0 else 0.98 * self.running + 0.02 * loss
        self.bar.update(1)
        if batch % 50 == 0:
            self.bar.set_postfix(f"loss {self.running:.4f}")

    def on_epoch_end(self, epoch: int, m: dict) -> None:
        self.close()
        if self.quiet:
            return
        val = (f"val acc {100 * m['val_accuracy']:.2f}%" if m["val_accuracy"] is not None
               else f"train acc {100 * m['train_accuracy']:.2f}%")
        print(f"epoch {epoch + 1:>3}/{self.epochs}  train loss {m['train_loss']:.4f}  {val}  "
              f"lr {m['lr']:.3g}  {m['seconds']:.2f} s", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class StopOnSignals(Callback):
    """While its `with` block runs, SIGINT and SIGTERM ask the trainer to stop after the
    current batch, writing a checkpoint (`Trainer.request_stop`); a second one raises
    KeyboardInterrupt at once. `received` lists the signals that came. Keep the block open
    until the outputs are written: a signal then lets them complete."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self._trainer: Trainer | None = None
        self._previous: dict = {}

    def __enter__(self) -> StopOnSignals:
        import signal

        self._previous = {s: signal.signal(s, self._on_signal)
                          for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc: object) -> None:
        import signal

        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _on_signal(self, signum: int, frame: object) -> None:
        if self.received:  # a second Ctrl-C: stop now, without waiting for the batch
            raise KeyboardInterrupt
        self.received.append(signum)
        if self._trainer is not None:
            self._trainer.request_stop(self._name(signum))

    @staticmethod
    def _name(signum: int) -> str:
        import signal

        return signal.Signals(signum).name

    def on_train_begin(self, trainer: Trainer, state: TrainState) -> None:
        self._trainer = trainer
        if self.received:  # a signal that came before the loop began
            trainer.request_stop(self._name(self.received[0]))
