"""Run one pipeline stage: `python -m soar.stage [papermill options] NOTEBOOK RECORD`.

dvc.yaml runs every notebook through this instead of calling papermill itself, for three things
papermill does not do:
- a run lock: the stage's outputs are written by one process at a time. After `kill -9` of
  `dvc repro` its stages keep running (their parent is gone, not them), and a second repro would
  write the same files beside them. So a stage holds an exclusive lock named after its record
  (results/.locks/) while it runs; a second run of the same stage stops at once and names the
  holder's PID. The lock is an flock: the kernel releases it when its holder dies, so a dead
  holder's lock is simply taken over.
- a readable record: tqdm writes each refresh of a bar as its own stream output ("\\r..."), so
  an executed notebook showed dozens of lines per bar. The record is rewritten as a terminal
  would show it: one line per bar, in its final state.
- one line to end on: a failing notebook prints a short summary and, last, one line naming the
  stage, the cell and the error (the whole traceback stays in the record).
Options other than the two paths are papermill's own (`papermill --help`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from soar import paths

LOCKS = paths.RESULTS / ".locks"
DEFAULTS = ["--cwd", ".", "--progress-bar", "--log-level", "WARNING"]  # overridable: later options win


class StageBusy(RuntimeError):
    pass


@contextlib.contextmanager
def run_lock(record: Path, root: Path = Path(".")) -> Iterator[Path]:
    """Hold the lock of the stage whose record is `record` for the duration of the block. Raises
    StageBusy naming the holder when a live process holds it."""
    lock = root / LOCKS / f"{Path(record).stem}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "an unknown process"
            raise StageBusy(f"{record} is being written by {holder}. Wait for it, or end it with "
                            f"`kill {holder.split()[1] if holder.startswith('PID ') else '<PID>'}` "
                            "(its notebook kernel stops with it), then run again.") from None
        f.seek(0)
        f.truncate()  # a dead holder's line, if any
        f.write(f"PID {os.getpid()} (since {time.strftime('%Y-%m-%d %H:%M:%S')})\n")
        f.flush()
        try:
            yield lock
        finally:
            f.seek(0)
            f.truncate()


def terminal_text(text: str) -> str:
    """`text` as a terminal shows it: on each line, what the last carriage return left (tqdm pads
    each refresh to the width of the one before, so the last one covers them all)."""
    return "\n".join(next((s for s in reversed(line.split("\r")) if s), "") for line in text.split("\n"))


def clean_streams(outputs: list[dict]) -> list[dict]:
    """Consecutive stream outputs of one name merged and shown as a terminal would (progress bars
    become one line each); other outputs unchanged."""
    out: list[dict] = []
    for o in outputs:
        if o.get("output_type") == "stream" and out and out[-1].get("output_type") == "stream" \
                and out[-1].get("name") == o.get("name"):
            out[-1] = dict(out[-1], text=_text(out[-1]) + _text(o))
        else:
            out.append(dict(o, text=_text(o)) if o.get("output_type") == "stream" else o)
    for o in out:
        if o.get("output_type") == "stream":
            o["text"] = terminal_text(o["text"])
    return [o for o in out if o.get("output_type") != "stream" or o["text"].strip()]


def _text(output: dict) -> str:
    text = output.get("text", "")
    return "".join(text) if isinstance(text, list) else text


def clean_record(record: Path) -> None:
    """Rewrite an executed notebook with clean stream outputs (atomically)."""
    import nbformat

    book = nbformat.read(record, as_version=4)
    for cell in book.cells:
        if cell.cell_type == "code":
            cell.outputs = [nbformat.from_dict(o) for o in clean_streams(cell.outputs)]
    tmp = record.with_name(record.name + ".tmp")
    nbformat.write(book, tmp)
    os.replace(tmp, record)


def _positional(args: list[str]) -> list[str]:
    """The NOTEBOOK and RECORD paths among papermill's arguments (those ending in .ipynb)."""
    return [a for a in args if a.endswith(".ipynb")]


def failure_line(stage: str, error: BaseException) -> str:
    """The one line a failed stage ends on."""
    from papermill.exceptions import PapermillExecutionError

    if isinstance(error, PapermillExecutionError):
        return f"soar: stage {stage} failed in cell [{error.exec_count}]: {error.ename}: {_one_line(error.evalue)}"
    return f"soar: stage {stage} failed: {type(error).__name__}: {_one_line(error)}"


def _one_line(message) -> str:
    return re.sub(r"\s+", " ", str(message)).strip()


# The kernel's own log, passed to it on its command line: at ERROR, it no longer prints ipykernel's
# "Kernel is running over TCP without encryption" warning at every stage. Harmless here: the
# kernel binds to 127.0.0.1 only and papermill signs every message with a per-kernel key.
KERNEL_ARGUMENTS = ["--log-level=ERROR"]


def main(argv: list[str]) -> int:
    import functools

    import papermill.cli
    from papermill.cli import papermill as papermill_cli

    # papermill's CLI has no option for the kernel's arguments; its execute_notebook passes extra
    # keyword arguments on to nbclient's NotebookClient (extra_arguments: the kernel's argv)
    papermill.cli.execute_notebook = functools.partial(papermill.cli.execute_notebook,
                                                       extra_arguments=KERNEL_ARGUMENTS)

    books = _positional(argv)
    if len(books) != 2:
        print("usage: python -m soar.stage [papermill options] NOTEBOOK.ipynb RECORD.ipynb", file=sys.stderr)
        return 2
    record = Path(books[1])
    stage = record.stem
    # `kill PID` (SIGTERM) must stop the kernel too: as Ctrl-C, papermill's cleanup shuts it down
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        with run_lock(record):
            try:
                papermill_cli.main(DEFAULTS + argv, standalone_mode=False)
            finally:
                if record.exists():
                    clean_record(record)
    except StageBusy as busy:
        print(f"soar: stage {stage} is already running: {busy}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"soar: stage {stage} interrupted; the record so far is in {record}", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001  (the traceback is in the record; here, one line)
        from papermill.exceptions import PapermillExecutionError

        if isinstance(error, PapermillExecutionError):
            print(f"the full traceback is in {record} (cell [{error.exec_count}])", file=sys.stderr)
        else:
            import traceback

            traceback.print_exc()
        print(failure_line(stage, error), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
