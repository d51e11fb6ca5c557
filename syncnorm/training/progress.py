"""A plain-text progress display for training: a redrawn bar on a terminal, lines otherwise."""
from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress", "format_table"]


class Progress:
    """Shows epoch, step, loss and throughput.

    On a terminal one line is redrawn in place (carriage return), at most every `interval` seconds.
    When the output is not a terminal (a log file, a pipe, mpirun's forwarding) it prints a full line
    `every` steps and at the end of each epoch, so logs stay readable. `enabled=False` prints nothing
    (ranks other than 0).
    """

    def __init__(self, total_steps: int, epochs: int, enabled: bool = True, stream: TextIO | None = None,
                 tty: bool | None = None, interval: float = 0.2, every: int | None = None,
                 width: int = 24) -> None:
        self.total = max(1, int(total_steps))
        self.epochs = epochs
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stdout
        self.tty = bool(tty if tty is not None else getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval
        self.every = every if every is not None else max(1, self.total // 10)
        self.width = width
        self._last = 0.0
        self._open = False

    def _line(self, step: int, epoch: int, loss: float, rate: float) -> str:
        frac = min(1.0, step / self.total)
        filled = int(round(frac * self.width))
        bar = "#" * filled + "." * (self.width - filled)
        return (f"epoch {epoch + 1:>{len(str(self.epochs))}}/{self.epochs} [{bar}] "
                f"step {step:>{len(str(self.total))}}/{self.total} loss {loss:.4f} "
                f"{rate:8.0f} samples/s")

    def update(self, step: int, epoch: int, loss: float, rate: float, end_of_epoch: bool = False) -> None:
        """Report global `step` (1-based count of steps done) in `epoch` (0-based)."""
        if not self.enabled:
            return
        now = time.monotonic()
        if self.tty:
            if end_of_epoch or step >= self.total or now - self._last >= self.interval:
                self.stream.write("\r" + self._line(step, epoch, loss, rate))
                self._open = True
                if end_of_epoch:
                    self.stream.write("\n")
                    self._open = False
                self.stream.flush()
                self._last = now
        elif end_of_epoch or step % self.every == 0:
            self.stream.write(self._line(step, epoch, loss, rate) + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self.enabled and self._open:
            self.stream.write("\n")
            self.stream.flush()
            self._open = False


def format_table(rows: list[tuple[str, str]], title: str | None = None) -> str:
    """A two-column plain-text table."""
    w1 = max(len(a) for a, _ in rows)
    w2 = max(len(b) for _, b in rows)
    if title:
        w2 = max(w2, len(title) - w1 - 3)
    rule = "+-" + "-" * w1 + "-+-" + "-" * w2 + "-+"
    out = [rule]
    if title:
        out += ["| " + title.ljust(w1 + w2 + 3) + " |", rule]
    out += [f"| {a.ljust(w1)} | {b.rjust(w2)} |" for a, b in rows]
    out.append(rule)
    return "\n".join(out)
