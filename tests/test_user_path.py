"""The real user's path (issue 33): a timm-shaped ImageNet model and a small image folder of their own classes.

The model is built locally (tests/cli_models.py: resnet18d's shape, 1000 classes), the folder generated here;
timing is simulated (tests/simulated_backend.py), so what is checked is behaviour, never the machine's speed.
"""
from __future__ import annotations

import json

import pytest

from depthcut.data.datasets import imagenet_synsets

from test_user_errors import assert_one_line_error, run_main

MODEL = "cli_models:resnet18d_shaped"


def image_folder(root, classes, per_class=40, size=24):
    """``classes`` sub-folders of solid-colour images (a class is a colour, so a head can learn it)."""
    from PIL import Image

    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (size, size), (60 * k % 256, 90 + i % 7, 200 - 40 * k % 200)).save(root / name / f"{i}.png")
    return root


def command(tmp_path, data, *extra, speedup="1.1"):
    return ["compress", "--model", MODEL, "--data", str(data), "--input-shape", "1,3,32,32", "--speedup", speedup,
            "--backend", "sleepy", "--importance", "none", "--recovery-epochs", "0.05", "--timing-rounds", "10",
            "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out"), "--quiet", *extra]


def no_importance_table(monkeypatch):
    import depthcut.importance.scorer

    def forbidden(*args, **kwargs):
        raise AssertionError("the importance table started before the input was judged")
    monkeypatch.setattr(depthcut.importance.scorer, "score_candidates", forbidden)


def test_a_1000_class_model_on_four_classes_is_refused_with_how(tmp_path, capsys, monkeypatch):
    no_importance_table(monkeypatch)
    data = image_folder(tmp_path / "images", ["boot", "coat", "dress", "shirt"])
    assert_one_line_error(*run_main(capsys, command(tmp_path, data)), "outputs 1000 scores per image but the "
                          "data set has 4 classes", "--adapt-head", "ImageNet synsets")


def test_adapt_head_trains_a_new_head_and_the_report_names_it(tmp_path, capsys):
    data = image_folder(tmp_path / "images", ["boot", "coat", "dress", "shirt"])
    code, err = run_main(capsys, command(tmp_path, data, "--adapt-head", "--adapt-epochs", "3"))
    assert code == 0, err
    r = json.loads((tmp_path / "out" / "report.json").read_text())
    head = r["classes"]["head"]
    assert r["classes"]["policy"] == "adapt" and head["module"] == "fc"
    assert (head["outputs_before"], head["outputs_after"]) == (1000, 4)
    assert r["accuracy_before"] > 50                      # colours: a linear probe separates them
    # the split sizes came from the data: 128 training images -> 64 to fine-tune, 25 to score
    assert (r["config"]["finetune_size"], r["config"]["score_size"]) == (64, 25)


def test_imagenet_synset_folders_are_scored_as_the_models_own_classes(tmp_path, capsys):
    wnids = imagenet_synsets()
    chosen = [wnids[7], wnids[21], wnids[400]]
    data = image_folder(tmp_path / "images", chosen)
    code, err = run_main(capsys, command(tmp_path, data))
    assert code == 0, err
    r = json.loads((tmp_path / "out" / "report.json").read_text())
    assert r["classes"] == {"policy": "synsets", "model_outputs": 1000, "imagenet_indices": [7, 21, 400]}


def test_a_target_beyond_reach_is_refused_before_the_importance_table(tmp_path, capsys, monkeypatch):
    """Amdahl: the deep stem, the pools and the head stay; the fastest plan the table allows is measured
    first, and a target beyond it is one line with the reachable maximum."""
    no_importance_table(monkeypatch)
    data = image_folder(tmp_path / "images", ["boot", "coat", "dress", "shirt"])
    code, err = run_main(capsys, command(tmp_path, data, "--adapt-head", "--adapt-epochs", "0.5", speedup="20"))
    assert_one_line_error(code, err, "x20.000 is out of reach for cli_models:resnet18d_shaped on sleepy",
                          "the fastest plan the latency table allows measures", "ask for at most x")


def test_a_folder_too_small_to_score_is_refused_and_explicit_sizes_are_checked(tmp_path, capsys, monkeypatch):
    no_importance_table(monkeypatch)
    small = image_folder(tmp_path / "small", ["a", "b"], per_class=10)
    assert_one_line_error(*run_main(capsys, command(tmp_path, small, "--adapt-head")), "too few to set 10 aside")
    data = image_folder(tmp_path / "images", ["a", "b"])
    assert_one_line_error(*run_main(capsys, command(tmp_path, data, "--adapt-head", "--finetune-size", "5000")),
                          "finetune_size=5000", "exceeds the 64 training images")


@pytest.mark.parametrize("contradictions, relandings", [(1, 1), (99, None)])
def test_a_confirmation_that_contradicts_its_probe_relands_or_stops(tmp_path, capsys, monkeypatch,
                                                                      contradictions, relandings):
    """The chosen plan is timed again on fresh sessions; a confirmation below the target re-lands with that
    timing standing for the plan, and a machine that keeps contradicting itself is one line."""
    import depthcut.compression as P
    from depthcut.latency.compare import SpeedupEstimate

    real, seen = P.probe_speed, []

    def probe_speed(run, candidate, decided, patience=1):
        estimate = real(run, candidate, decided, patience)
        if decided is None and len(seen) < contradictions:         # a confirmation: make it say "too slow"
            seen.append(estimate.ratio)
            r = 1.0
            return SpeedupEstimate(r, 0.98, 1.02, 10, 0, estimate.original_ms, estimate.original_ms,
                                   estimate.original_ms)
        return estimate
    monkeypatch.setattr(P, "probe_speed", probe_speed)
    data = image_folder(tmp_path / "images", ["a", "b"])
    code, err = run_main(capsys, command(tmp_path, data, "--adapt-head", "--adapt-epochs", "0.5"))
    if relandings is None:
        assert_one_line_error(code, err, "do not hold still enough to land on x1.100")
        return
    assert code == 0, err
    r = json.loads((tmp_path / "out" / "report.json").read_text())
    assert r["relandings"] == relandings and r["confirmation"]["low"] >= 1.1 * 0.999
