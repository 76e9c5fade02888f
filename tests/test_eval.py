"""`lodsgs eval`: generation per caption and method, scored against the shapes world's ground truth."""

import json

import pytest
import torch
from typer.testing import CliRunner

from lodsgs.cli import app
from lodsgs.eval import EvalResult, EvalViews, score, score_caption
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


def test_r_precision_tells_shapes_and_colours_apart():
    views = EvalViews(n=4, size=32, yaw_steps=4)
    s = score_caption(world.build_object("a red cube"), "a red cube", views, world.BACKGROUND)
    assert (s["shape_r1"], s["color_r1"], s["shape_rank"], s["color_rank"]) == (1.0, 1.0, 1, 1)
    assert s == {**score(world.build_object("a red cube"), world.build_object("a red cube"), views, world.BACKGROUND),
                 **{k: s[k] for k in ("shape_r1", "color_r1", "shape_rank", "color_rank", "purity",
                                      "saturation_excess")}, "mode": "a red cube"}
    sphere = score_caption(world.build_object("a red sphere"), "a red cube", views, world.BACKGROUND)
    assert sphere["shape_r1"] == 0.0 and sphere["shape_rank"] > 1
    blue = score_caption(world.build_object("a blue cube"), "a red cube", views, world.BACKGROUND)
    assert blue["color_r1"] == 0.0 and blue["color_rank"] > 1
    scene = score_caption(world.build_object("a red cube on a blue cylinder"), "a red cube on a blue cylinder", views,
                          world.BACKGROUND)
    assert scene["shape_r1"] is scene["color_r1"] is scene["shape_rank"] is None and scene["psnr"] > 60


def test_underspecified_captions_score_against_the_nearest_mode():
    views = EvalViews(n=4, size=32, yaw_steps=4)
    green = world.build_object("a green cube")
    own = score_caption(green, "a green cube", views, world.BACKGROUND)
    s = score_caption(green, "a cube", views, world.BACKGROUND)
    assert s["mode"] == "a green cube" and s["psnr"] == own["psnr"] and s["iou"] == own["iou"] == 1.0
    assert s["shape_r1"] == 1.0 and s["color_r1"] is None  # "a cube" names the shape, not the colour
    red = score_caption(green, "a red shape", views, world.BACKGROUND)
    assert red["mode"].startswith("a red ") and red["psnr"] < own["psnr"] - 5  # green is none of the red modes
    assert red["shape_r1"] is None and red["color_r1"] == 0.0


def test_purity_and_saturation_excess_on_constructed_objects():
    views = EvalViews(n=4, size=32, yaw_steps=4)
    truth = world.build_object("a red cube")
    s = score_caption(truth, "a red cube", views, world.BACKGROUND)
    assert s["purity"] > 0.9 and abs(s["saturation_excess"]) < 1e-6  # the truth is pure, and exactly as saturated
    mixed = world.build_object("a red cube")
    half = mixed.means[:, 0] > 0  # the +x half turned blue: a two-colour object
    mixed.params["sh0"].data[half] = world.build_object("a blue cube").params["sh0"][:1].expand(int(half.sum()), -1, -1)
    m = score_caption(mixed, "a red cube", views, world.BACKGROUND)
    assert m["purity"] < 0.75, m["purity"]
    muddy = world.build_object("a red cube")  # the colour pulled halfway to grey: a washed-out average
    muddy.params["sh0"].data *= 0.5
    assert score_caption(muddy, "a red cube", views, world.BACKGROUND)["saturation_excess"] < -0.1
    vivid = world.build_object("a red cube")  # pushed away from grey: over-saturated
    vivid.params["sh0"].data *= 1.6
    assert score_caption(vivid, "a red cube", views, world.BACKGROUND)["saturation_excess"] > 0.05
    scene = score_caption(world.build_object("a red cube on a blue cylinder"), "a red cube on a blue cylinder",
                          views, world.BACKGROUND)
    assert scene["purity"] is scene["saturation_excess"] is None  # two colours by design


def test_summary_over_seeds_averages_r_precision_over_single_objects_only():
    def row(seed, caption, psnr, iou, shape_r1=None, color_r1=None):
        return {"variant": "m", "caption": caption, "seed": seed, "psnr": psnr, "iou": iou, "color_error": 0.1,
                "shape_r1": shape_r1, "color_r1": color_r1, "seconds": 2.0}
    scene = "a red cube on a blue cylinder"
    rows = [row(0, "a red cube", 10, 0.5, 1.0, 1.0), row(0, scene, 20, 0.7),
            row(1, "a red cube", 14, 0.7, 0.0, 1.0), row(1, scene, 24, 0.9)]
    m = EvalResult(rows).summary()["m"]
    assert (m["n"], m["r1_n"], m["seeds"], m["shape_r1"], m["color_r1"]) == (4, 2, 2, 0.5, 1.0)
    assert m["psnr"] == pytest.approx(17) and m["iou"] == pytest.approx(0.7)
    assert m["psnr_sd"] == pytest.approx(8**0.5) and m["iou_sd"] == pytest.approx(0.02**0.5)  # of 15, 19 and .6, .8
    assert m["shape_r1_sd"] == pytest.approx(0.5**0.5) and m["color_r1_sd"] == 0.0
    table = EvalResult(rows).markdown()
    assert "| m | 4 | 17.00 ± 2.83 | 0.700 ± 0.141 | 0.100 | 0.50 ± 0.71 | 1.00 ± 0.00 | – | – | 2 |" in table
    assert f"| {scene} | 22.0 dB / 0.80 |" in table and "mean of 2 seeds" in table
    one = EvalResult(rows[:2]).summary()["m"]
    assert "psnr_sd" not in one and (one["shape_r1"], one["r1_n"]) == (1.0, 1)
    assert "±" not in EvalResult(rows[:2]).markdown().split("\n\n")[0]


@pytest.mark.slow
def test_eval_command_writes_table_and_json_and_resumes(tmp_path, monkeypatch):
    args = ["eval", "--caption", "a red cube", "--variant", "init=",
            "--variant", "sds=guidance.method=sds,init.color=[0.5,0.5,0.5]", "--steps", "3",
            "--seeds", "0,1", "--out", str(tmp_path)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "eval.json").read_text())
    assert [(r["variant"], r["seed"], r["steps"]) for r in data["rows"]] == [("init", 0, 0), ("sds", 0, 3),
                                                                             ("init", 1, 0), ("sds", 1, 3)]
    assert all(r["shape_r1"] in (0.0, 1.0) and r["color_r1"] in (0.0, 1.0) for r in data["rows"])
    assert set(data["summary"]) == {"init", "sds"} and "psnr_sd" in data["summary"]["sds"]
    assert "| sds | 2 |" in (tmp_path / "eval.md").read_text()
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "sds").glob("*/metrics.json")}
    assert len(stamps) == 2  # one run folder per seed
    first, calls = data["rows"], []
    monkeypatch.setattr("lodsgs.eval.score_caption", lambda *a: calls.append(a) or first[0])
    assert CliRunner().invoke(app, args).exit_code == 0
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # finished runs are reused, not regenerated
    assert json.loads((tmp_path / "eval.json").read_text())["rows"][1] == first[1]  # and so are their scores:
    assert len(calls) == 2  # only the two inits (no run folder) were scored again
    ply = next((tmp_path / "sds").glob("*/splats.ply"))
    ply.write_bytes(ply.read_bytes())  # the splats changed: the kept score no longer counts
    assert CliRunner().invoke(app, args).exit_code == 0 and len(calls) == 5


def test_eval_refuses_captions_outside_the_world(tmp_path):
    result = CliRunner().invoke(app, ["eval", "--caption", "a corgi", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "not shapes-world captions" in result.output


def test_eval_refuses_bad_seeds_in_one_line(tmp_path):
    result = CliRunner().invoke(app, ["eval", "--seeds", "a,b", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "--seeds" in result.output and len(result.output.strip().splitlines()) == 1


@pytest.mark.slow
def test_eval_reruns_changed_settings_and_resumes_interrupted_runs(tmp_path, sigint_at):
    from lodsgs.preflight import run_name

    def run(*extra):
        return CliRunner().invoke(app, ["eval", "--caption", "a red cube", "--out", str(tmp_path), *extra])

    sds = "sds=guidance.method=sds"
    assert run("--variant", sds, "--steps", "2").exit_code == 0
    metrics = tmp_path / "sds" / run_name("a red cube", 0) / "metrics.json"
    changed = run("--variant", sds, "--steps", "3")  # other --steps: generated again, not reused
    assert "settings changed" in changed.output and json.loads(metrics.read_text())["steps"] == 3
    redefined = run("--variant", "sds=guidance.method=sds,guidance.guidance_scale=50", "--steps", "3")
    assert "settings changed" in redefined.output  # same variant name, other definition
    sigint_at(2)
    cut = run("--variant", "lods=guidance.method=lods-embedding", "--steps", "4")
    assert cut.exit_code == 130 and "rerun the same command" in cut.output
    resumed = run("--variant", "lods=guidance.method=lods-embedding", "--steps", "4")
    assert resumed.exit_code == 0 and "resuming its checkpoint" in resumed.output
    log = (tmp_path / "lods" / run_name("a red cube", 0) / "log.jsonl").read_text().splitlines()
    assert json.loads(log[-1])["step"] == 4
