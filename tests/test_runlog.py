"""The per-step run log (log.jsonl), its summary, progress previews and `lodsgs info` on a log."""

import json

import imageio.v2 as imageio
import pytest
from typer.testing import CliRunner

from lodsgs import api
from lodsgs.cli import app
from lodsgs.errors import Interrupted
from lodsgs.runlog import format_summary, read_records, summarize

runner = CliRunner()
PROMPT = "a red cube"
KEYS = {"step", "t", "t_max", "sds", "grad_norm", "prior_loss", "eps_gap", "alpha_shift", "alpha_cos", "lora_b_norm",
        "grown", "pruned", "refines", "gaussians", "lr", "seconds"}


def without_seconds(records):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


@pytest.fixture(scope="module")
def logged_run(tiny_config, tmp_path_factory):
    cfg = tiny_config("pixel", "run.log_every=2", "run.preview_every=3")
    return api.run(PROMPT, cfg, tmp_path_factory.mktemp("logged"), quiet=True).run_dir


def test_generate_writes_log_and_previews(logged_run):
    records = [json.loads(line) for line in (logged_run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4, 6]
    for r in records:
        assert set(r) == KEYS
        assert set(r["lr"]) == {"means", "scales", "quats", "opacities", "sh0", "shN", "prior"}
        assert isinstance(r["gaussians"], int) and r["gaussians"] > 0
        assert all(isinstance(r[k], float) for k in ("t", "t_max", "sds", "grad_norm", "prior_loss", "eps_gap",
                                                     "alpha_shift", "alpha_cos"))
        assert r["lora_b_norm"] is None  # the default method learns α, not LoRA
    assert records[-1]["gaussians"] == json.loads((logged_run / "metrics.json").read_text())["gaussians"]
    assert records[0]["lr"]["means"] > records[-1]["lr"]["means"]  # the means lr decays
    assert records[0]["t_max"] > records[-1]["t_max"]  # annealed after step 3
    assert 0 < records[0]["seconds"] < records[1]["seconds"] < records[2]["seconds"]
    pngs = sorted(p.name for p in (logged_run / "progress").iterdir())
    assert pngs == ["step_0003.png", "step_0006.png"]  # and no temporary files left over
    assert imageio.imread(logged_run / "progress" / "step_0006.png").shape == (32, 4 * 32, 3)


def test_overwrite_starts_a_fresh_log(tiny_config, tmp_path):
    cfg = tiny_config("pixel", "run.steps=2", "run.log_every=1", "run.preview_every=1")
    run = api.run(PROMPT, cfg, tmp_path, quiet=True).run_dir
    cfg.run.preview_every = 0
    api.run(PROMPT, cfg, tmp_path, quiet=True, overwrite=True)
    assert [r["step"] for r in read_records(run / "log.jsonl")] == [1, 2]
    assert not (run / "progress").exists()


def test_resume_continues_the_log_without_duplicates(tiny_config, tmp_path, sigint_at):
    cfg = tiny_config("pixel", "run.log_every=1", "run.checkpoint_every=3")
    full = read_records(api.run(PROMPT, cfg, tmp_path / "full", quiet=True).run_dir / "log.jsonl")
    sigint_at(4)
    with pytest.raises(Interrupted, match="interrupted at step 4"):
        api.run(PROMPT, cfg, tmp_path / "cut", quiet=True)
    cut = next((tmp_path / "cut").iterdir())
    assert [r["step"] for r in read_records(cut / "log.jsonl")] == [1, 2, 3, 4]
    info = runner.invoke(app, ["info", str(cut)])  # an unfinished run with a log is summarized too
    assert info.exit_code == 0, info.output
    assert "unfinished (resumable)" in info.output and "log: 4 records, steps 1..4" in info.output
    # As if killed after logging past the checkpoint: a stale step 5 and a half-written step 6.
    with open(cut / "log.jsonl", "a") as f:
        f.write(json.dumps({**full[4], "sds": -1.0}) + "\n" + '{"step": 6, "t": 1')
    api.run(PROMPT, cfg, tmp_path / "cut", quiet=True, resume=True)
    resumed = read_records(cut / "log.jsonl")
    steps = [r["step"] for r in resumed]
    assert steps == [r["step"] for r in full] == [1, 2, 3, 4, 5, 6]
    assert without_seconds(resumed) == without_seconds(full)  # the same run, record for record
    assert all(a["seconds"] < b["seconds"] for a, b in zip(resumed, resumed[1:]))


def test_summarize_skips_a_truncated_last_line(tmp_path):
    log = tmp_path / "log.jsonl"
    rows = [(10, 2000, 0.12, 980.0, 0.5, 2.5), (20, 1800, 0.08, 980.0, 0.4, 5.0),
            (30, 5200, 0.05, 300.0, 0.3, 7.5), (40, 4100, 0.03, 300.0, 0.2, 10.0)]
    lines = [json.dumps({"step": s, "gaussians": g, "sds": l, "t_max": tm, "prior_loss": p, "seconds": sec,
                         "grown": 35 * s, "pruned": 10 * s, "eps_gap": 0.5 - s / 100, "alpha_shift": s / 1000,
                         "alpha_cos": s / 100, "lora_b_norm": None}) for s, g, l, tm, p, sec in rows]
    log.write_text("\n".join(lines) + '\n{"step": 50, "gaussians": 99999, "sd')
    summary = summarize(log)
    assert summary == {
        "records": 4, "first_step": 10, "last_step": 40,
        "gaussians_start": 2000, "gaussians_min": 1800, "gaussians_max": 5200, "gaussians_end": 4100,
        "sds_start": 0.12, "sds_end": 0.03, "t_max_start": 980.0, "t_max_end": 300.0,
        "prior_loss_start": 0.5, "prior_loss_end": 0.2, "seconds_per_step": 0.25, "grown": 1400, "pruned": 400,
        "eps_gap_start": pytest.approx(0.4), "eps_gap_end": pytest.approx(0.1),  # means of the first / last quarter
        "alpha_shift_start": 0.01, "alpha_shift_end": 0.04, "alpha_cos_start": 0.1, "alpha_cos_end": 0.4,
        "lora_b_norm_start": None, "lora_b_norm_end": None,
    }
    assert format_summary(summary) == ("log: 4 records, steps 10..40; gaussians 2000 -> min 1800 / max 5200 -> 4100; "
                                       "densify grew 1400 / pruned 400; sds loss 0.12 -> 0.03; prior loss 0.5 -> 0.2; "
                                       "|ε_c − ε_u| 0.4 -> 0.1 (first / last quarter); α moved 0.04 of its norm, "
                                       "cosine to the caption 0.1 -> 0.4; t_max 980 -> 300; 0.25 s/step")
    log.write_text('{"step": 1')
    assert summarize(log) == {"records": 0} and format_summary(summarize(log)) == "log: empty"


def test_info_prints_metrics_and_the_log_summary(logged_run):
    result = runner.invoke(app, ["info", str(logged_run)])
    assert result.exit_code == 0, result.output
    assert '"steps": 6' in result.output  # metrics.json as before
    line = next(x for x in result.output.splitlines() if x.startswith("log: "))
    assert line.startswith("log: 3 records, steps 2..6; gaussians ") and "sds loss" in line and "s/step" in line


def test_plot_log_draws_each_run(tmp_path):
    pytest.importorskip("matplotlib")
    import numpy as np

    for name, gap in (("sds", lambda s: 0.3), ("lods", lambda s: 0.3 - s / 400)):
        run = tmp_path / name
        run.mkdir()
        (run / "log.jsonl").write_text("".join(json.dumps(
            {"step": s, "eps_gap": gap(s), "alpha_shift": None if name == "sds" else s / 1e4}) + "\n"
            for s in range(10, 110, 10)))
    out = tmp_path / "diag.png"
    result = runner.invoke(app, ["plot-log", f"SDS={tmp_path / 'sds'}", str(tmp_path / "lods"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    img = imageio.imread(out)
    assert img.shape[1] > 2 * img.shape[0] / 1.5  # two panels side by side
    assert (np.asarray(img)[..., :3].std(-1) > 30).mean() > 0.001  # coloured lines, not a blank canvas
    bad = runner.invoke(app, ["plot-log", str(tmp_path), "--out", str(out)])
    assert bad.exit_code == 2 and "no log.jsonl" in bad.output and "Traceback" not in bad.output
