"""The command line: user errors give one clear line and a non-zero exit, never a traceback."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from depthcut.cli import main


def run(*args):
    return subprocess.run([sys.executable, "-m", "depthcut", *args], capture_output=True, text=True, timeout=300)


def test_analyze_json_reports_reference_counts(capsys):
    assert main(["analyze", "resnet34", "--input-shape", "1,3,224,224", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["positions"] == 32 and summary["blocks"] == 62 and summary["candidates"] == 150
    assert len(summary["candidate_list"]) == 150


def test_analyze_text_for_a_factory(capsys):
    assert main(["analyze", "depthcut.zoo.resnet:resnet20", "--input-shape", "1,3,32,32"]) == 0
    assert "candidates" in capsys.readouterr().out


@pytest.mark.parametrize("args, words", [
    (["analyze", "no_such_model"], "unknown model"),
    (["analyze", "/tmp/definitely-missing.pt2"], "does not exist"),
    (["analyze", "depthcut.zoo.resnet:nope", "--input-shape", "1,3,32,32"], "no attribute"),
    (["compress", "--model", "resnet20", "--data", "/tmp/no-such-image-folder", "--out", "/tmp/x"],
     "no-such-image-folder"),
])
def test_user_errors_are_one_line(args, words):
    proc = run(*args)
    assert proc.returncode != 0
    assert words in proc.stderr
    assert "Traceback" not in proc.stderr


def test_not_an_export_program(tmp_path):
    bad = tmp_path / "model.pt2"
    bad.write_bytes(b"not a zip")
    proc = run("analyze", str(bad))
    assert proc.returncode == 2 and "torch.export" in proc.stderr and "Traceback" not in proc.stderr


def test_torch_export_program_is_analysed(tmp_path):
    import torch

    from depthcut.zoo.resnet import resnet20

    path = tmp_path / "r20.pt2"
    torch.export.save(torch.export.export(resnet20().eval(), (torch.randn(1, 3, 32, 32),)), str(path))
    proc = run("analyze", str(path), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["candidates"] > 0


def test_plugins_extend_the_command_line_and_a_broken_one_is_one_line(tmp_path, monkeypatch, capsys):
    """DEPTHCUT_PLUGINS imports modules that register backends, methods, sources: here a latency backend."""
    from depthcut.cli import load_plugins
    from depthcut.latency.backends import registered_backends

    (tmp_path / "my_backend.py").write_text(
        "from depthcut.latency.backends import register_backend\n"
        "from simulated_backend import SleepyBackend\n"
        "@register_backend('my-simulated')\n"
        "class Mine(SleepyBackend):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_plugins(" my_backend ,") == ["my_backend"] and "my-simulated" in registered_backends()
    monkeypatch.setenv("DEPTHCUT_PLUGINS", "no_such_plugin_module")
    assert main(["env"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "DEPTHCUT_PLUGINS: cannot import plugin module 'no_such_plugin_module'" in err[0]


def test_every_optional_extra_is_named_when_its_package_is_missing(capsys):
    """A command that needs a package of an extra says which extra, in one line, for every extra."""
    import argparse
    import tomllib
    from pathlib import Path

    from depthcut.command import EXTRAS, run_command

    extras = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())[
        "project"]["optional-dependencies"]
    assert set(extras) - {"dev"} <= set(EXTRAS.values())
    for module, extra in EXTRAS.items():
        def needs(args, module=module):
            raise ImportError(f"No module named {module!r}", name=module)
        assert run_command(argparse.Namespace(func=needs)) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"pip install 'depthcut[{extra}]'" in err
