"""Progress on a terminal is a bar; anywhere else (a log file, CI) a few plain lines per stage (issue 28)."""
import io

from depthcut import progress as P


class Terminal(io.StringIO):
    def isatty(self):
        return True


def run_table(monkeypatch, stream, total=448):
    monkeypatch.setenv("DEPTHCUT_PROGRESS", "1")
    monkeypatch.setattr(P.sys, "stderr", stream)
    bar = P.progress(total=total, desc="importance", unit="entry")
    for i in range(total):
        bar.update(1)
        bar.set_postfix_str(f"entry {i}")
    bar.close()
    return bar


def test_a_log_file_gets_a_few_lines_not_every_refresh(monkeypatch):
    log = io.StringIO()
    bar = run_table(monkeypatch, log)
    assert isinstance(bar, P.LineProgress)
    text = log.getvalue()
    lines = text.splitlines()
    assert "\r" not in text and len(lines) == 1 + P.LineProgress.MARKS      # start, 25/50/75 %, done
    assert lines[0].startswith("[depthcut] importance: 0/448 entry (0%), started")
    assert "112/448 entry (25%)" in lines[1] and "left" in lines[1] and "entry 110" in lines[1]   # the postfix as last set
    assert "448/448" in lines[-1] and "done in" in lines[-1]
    # iterating prints the same few lines and closes itself; nothing to do prints nothing
    log.truncate(0)
    log.seek(0)
    assert list(P.progress(range(10), desc="latency")) == list(range(10))
    assert len(log.getvalue().splitlines()) == 5
    log.truncate(0)
    log.seek(0)
    P.progress(total=0, desc="importance").close()
    assert log.getvalue() == ""


def test_a_terminal_gets_a_bar_and_disabled_progress_says_nothing(monkeypatch):
    bar = run_table(monkeypatch, Terminal(), total=3)
    assert not isinstance(bar, P.LineProgress)
    log = io.StringIO()
    monkeypatch.setattr(P.sys, "stderr", log)
    monkeypatch.setenv("DEPTHCUT_PROGRESS", "0")
    for _ in P.progress(range(5), desc="quiet"):
        pass
    assert log.getvalue() == ""
