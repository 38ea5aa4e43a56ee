"""`OUTPUT_DIR/logs/train.log`: what the training printed (mode lines, metrics, warnings, diagnostics), kept with
the run so that `grep "NSR \\[Step" runs/*/logs/train.log` works after the terminal is gone."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import time
from pathlib import Path

from .constants import LOG_FILE




class _Tee(io.TextIOBase):
    """A console stream that also appends to the log file. Progress-bar redraws (text with a carriage return) stay
    on the console only; a log file that cannot be written (full disk) is dropped, the console goes on."""

    def __init__(self, stream, log):
        self.stream, self.log = stream, log

    def write(self, text: str) -> int:
        written = self.stream.write(text)
        if self.log is not None and "\r" not in text:
            try:
                self.log.write(text)
                if "\n" in text:
                    self.log.flush()
            except (OSError, ValueError):
                self.log = None
        return written if written is not None else len(text)

    def flush(self):
        self.stream.flush()
        if self.log is not None:
            with contextlib.suppress(OSError, ValueError):
                self.log.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()

    @property
    def encoding(self):
        return getattr(self.stream, "encoding", "utf-8")


@contextlib.contextmanager
def console_log(output_dir: str | os.PathLike, enabled: bool = True):
    """Copy stdout, stderr and the transformers/TRL loggers into OUTPUT_DIR/logs/train.log (appended: a resumed run
    adds to it, under a header line) while the block runs."""
    if not enabled:
        yield None
        return
    path = Path(output_dir) / LOG_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        log = open(path, "a", encoding="utf-8", errors="backslashreplace", buffering=1)
    except OSError as error:
        print(f"Warning: cannot write {path} ({error.strerror or error}); the console is not logged.", file=sys.stderr)
        yield None
        return
    log.write(f"===== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(sys.argv)}\n")
    stdout, stderr = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Tee(stdout, log), _Tee(stderr, log)
    # transformers' and TRL's loggers hold the stderr of their set-up time: a handler of their own for the file.
    handler = logging.StreamHandler(log)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.WARNING)
    loggers = [logging.getLogger(name) for name in ("transformers", "trl", "accelerate")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield path
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
        sys.stdout, sys.stderr = stdout, stderr
        with contextlib.suppress(OSError, ValueError):
            log.close()
