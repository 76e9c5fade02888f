"""`lodsgs eval`: generation per caption and method, scored against the shapes world's ground truth."""

import json

import pytest
import torch
from typer.testing import CliRunner

from lodsgs.cli import app
from lodsgs.eval import EvalViews, score
from lodsgs.prior.shapes import world


def test_score_is_perfect_for_the_truth_at_any_yaw():
    truth = world.build_object("a green cone")
    s = score(truth, truth, EvalViews(n=4, size=32, yaw_steps=4), world.BACKGROUND)
    assert s["iou"] == 1.0 and s["color_error"] < 1e-6 and s["psnr"] > 60 and s["yaw"] == 0.0
    turned = world.build_object("a red sphere left of a blue cube")
    turned.params["means"].data = turned.means @ torch.tensor([[0.0, 0, 1], [0, 1, 0], [-1, 0, 0]]).T  # 90° yaw
    s = score(turned, world.build_object("a red sphere left of a blue cube"), EvalViews(n=4, size=32, yaw_steps=4),
              world.BACKGROUND)
    assert s["yaw"] in (90.0, 270.0) and s["iou"] > 0.9  # the yaw search finds the turn


@pytest.mark.slow
def test_eval_command_writes_table_and_json_and_resumes(tmp_path):
    args = ["eval", "--caption", "a red cube", "--variant", "init=", "--variant", "sds=guidance.method=sds",
            "--steps", "3", "--out", str(tmp_path)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "eval.json").read_text())
    assert [(r["variant"], r["caption"], r["steps"]) for r in data["rows"]] == [("init", "a red cube", 0),
                                                                                 ("sds", "a red cube", 3)]
    assert set(data["summary"]) == {"init", "sds"} and "| sds | 1 |" in (tmp_path / "eval.md").read_text()
    metrics = next((tmp_path / "sds").glob("*/metrics.json"))
    stamp = metrics.stat().st_mtime_ns
    assert CliRunner().invoke(app, args).exit_code == 0
    assert metrics.stat().st_mtime_ns == stamp  # finished runs are scored again, not regenerated


def test_eval_refuses_captions_outside_the_world(tmp_path):
    result = CliRunner().invoke(app, ["eval", "--caption", "a corgi", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "not shapes-world captions" in result.output
