"""Progress display of `crossfuse.train.fit`: a tqdm bar per epoch and one line per finished epoch."""

from __future__ import annotations

import sys
from typing import Any


class EpochProgress:
    """tqdm bar over one epoch's steps (rank 0, ``config.progress``), with the loss as postfix."""

    def __init__(self, enabled: bool, epochs: int) -> None:
        self.enabled, self.epochs, self.bar = enabled, epochs, None

    def start(self, epoch: int, total: int, done: int) -> None:
        if self.enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=total, initial=done, desc=f"epoch {epoch + 1}/{self.epochs}", leave=False, file=sys.stderr
            )

    def step(self, loss: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            self.bar.update()

    def end(self, record: dict[str, Any]) -> None:
        if self.bar is None:
            return
        self.bar.refresh()  # show the epoch's last loss even when the steps were faster than tqdm's interval
        self.close()
        shown = {k: v for k, v in record.items() if k in ("train_loss",) or k.startswith("val_")}
        shown.pop("val_score", None)
        text = "  ".join(f"{k} {v:.4f}" for k, v in shown.items())
        print(f"epoch {record['epoch']}/{self.epochs}  {text}", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
