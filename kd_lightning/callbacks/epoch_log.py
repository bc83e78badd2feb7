"""One console line per training epoch, for runs without a progress bar."""
from __future__ import annotations

import time
from typing import Optional

import pytorch_lightning as pl


class EpochLog(pl.Callback):
    """Prints `epoch 3/20  train/loss 1.2345  val/acc 0.4560  12.3 s` after each training epoch.

    The CLI shows Lightning's progress bar only when stdout is a terminal (redirected to a file, a bar is a stream of
    carriage returns) and `trainer.enable_progress_bar` is not false. Whenever there is no bar, these lines say how
    the run goes instead: `enable_progress_bar: false` means "no interactive bar", not "silent". With a bar, this
    prints nothing. Epochs count from 1 here (results.json and checkpoints count from 0); the seconds include
    validation. Global rank zero only.
    """

    def __init__(self) -> None:
        self._started = 0.0
        self._val_acc: Optional[float] = None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._started, self._val_acc = time.monotonic(), None

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Read here: with check_val_every_n_epoch > 1, callback_metrics still hold an earlier epoch's val/acc.
        if not trainer.sanity_checking and "val/acc" in trainer.callback_metrics:
            self._val_acc = float(trainer.callback_metrics["val/acc"])

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.progress_bar_callback is not None or not trainer.is_global_zero:
            return
        print(self.line(trainer), flush=True)

    def line(self, trainer: pl.Trainer) -> str:
        epoch = trainer.current_epoch + 1
        total = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
        parts = [f"epoch {epoch:>{len(str(total))}}/{total}" if total else f"epoch {epoch}"]
        loss = trainer.callback_metrics.get("train/loss")
        if loss is not None:
            parts.append(f"train/loss {float(loss):.4f}")
        if self._val_acc is not None:
            parts.append(f"val/acc {self._val_acc:.4f}")
        parts.append(f"{time.monotonic() - self._started:.1f} s")
        return "  ".join(parts)
