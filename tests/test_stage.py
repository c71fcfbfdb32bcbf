"""soar.stage: the run lock, clean records and the one-line failure, with real papermill kernels."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from soar import stage

BODY = """import time
from tqdm import tqdm
for _ in tqdm(range(20), desc='work'):
    time.sleep(sleep / 20)
print('done', fail)
if fail:
    raise ValueError('bad input\\nsecond line')"""


@pytest.fixture
def project(tmp_path) -> Path:
    book = nbformat.v4.new_notebook()
    book.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                     "language_info": {"name": "python"}}
    book.cells = [nbformat.v4.new_code_cell("sleep = 0.0\nfail = False", metadata={"tags": ["parameters"]}),
                  nbformat.v4.new_code_cell(BODY)]
    nbformat.write(book, tmp_path / "book.ipynb")
    return tmp_path


def run(project: Path, *params: str, wait: bool = True):
    """The stage as dvc.yaml runs it; waited for, its stderr in .err."""
    cmd = [sys.executable, "-m", "soar.stage", "book.ipynb", "record.ipynb", *params]
    proc = subprocess.Popen(cmd, cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(stage.__file__).parents[1])})
    if wait:
        _, proc.err = proc.communicate(timeout=120)
    return proc


def test_terminal_text_keeps_what_the_last_carriage_return_left():
    assert stage.terminal_text("\rbar 0%\rbar 50%\rbar 100%\nnext\r") == "bar 100%\nnext"


def test_clean_streams_merges_a_bar_into_one_line():
    outputs = [{"output_type": "stream", "name": "stderr", "text": "\rwork:   0%"},
               {"output_type": "stream", "name": "stderr", "text": ["\rwork:  50%", "\rwork: 100%"]},
               {"output_type": "stream", "name": "stderr", "text": "\n"},
               {"output_type": "execute_result", "data": {"text/plain": "1"}, "metadata": {}, "execution_count": 1},
               {"output_type": "stream", "name": "stdout", "text": "a\n"}]
    clean = stage.clean_streams(outputs)
    assert [o["output_type"] for o in clean] == ["stream", "execute_result", "stream"]
    assert clean[0]["text"] == "work: 100%\n"


def test_a_stage_runs_and_its_record_has_one_line_per_bar(project):
    proc = run(project)
    assert proc.returncode == 0, proc.err
    book = nbformat.read(project / "record.ipynb", as_version=4)
    streams = [o for o in book.cells[-1].outputs if o.output_type == "stream"]
    bars = [line for o in streams for line in o.text.splitlines() if "work" in line]
    assert len(bars) == 1 and "20/20" in bars[0]
    assert "without encryption" not in proc.err  # ipykernel's loopback-TCP warning (KERNEL_ARGUMENTS)


def test_a_failing_stage_ends_on_one_line(project):
    proc = run(project, "-p", "fail", "True")
    assert proc.returncode == 1
    last = proc.err.strip().splitlines()[-1]
    assert last.startswith("soar: stage record failed in cell [") and "ValueError: bad input second line" in last
    assert "Traceback" not in proc.err  # it is in the record
    assert "ValueError" in (project / "record.ipynb").read_text()


def test_a_second_run_stops_while_the_first_is_alive_and_takes_over_a_dead_lock(project):
    first = run(project, "-p", "sleep", "60", wait=False)
    lock = project / stage.LOCKS / "record.lock"
    for _ in range(200):  # until the first holds the lock
        if lock.exists() and lock.read_text().startswith("PID"):
            break
        time.sleep(0.1)
    try:
        second = run(project)
        assert second.returncode == 1
        last = second.err.strip().splitlines()[-1]
        assert f"PID {first.pid}" in last and f"kill {first.pid}" in last
    finally:
        first.send_signal(signal.SIGKILL)  # dies holding the lock: the kernel drops it
        first.wait()
    third = run(project)
    assert third.returncode == 0, third.err
    assert lock.read_text() == ""  # released after the run
