"""benchmarks/ab.py, the interleaved A/B timing a speed claim is judged by: the order of the runs, the worktree it
imports the base from, and the printed medians and ratio (with the launcher stubbed: no runs are timed here)."""

import json
import subprocess

import pytest

from benchmarks import ab


def test_runs_alternate_abba_and_the_ratio_is_head_over_base(monkeypatch, tmp_path, capsys):
    calls = []

    def fake_run(source, args):
        calls.append(source.name)
        return {"base": 10.0, "head": 4.0}[source.name] + len(calls) * 0.01

    monkeypatch.setattr(ab, "timed_run", fake_run)
    base, head = tmp_path / "base", tmp_path / "head"
    times = ab.interleave(base, head, ["generate", "x"], runs=3)
    assert calls == ["base", "head", "head", "base", "base", "head"]
    assert len(times["base"]) == len(times["head"]) == 3


def test_the_base_is_imported_from_a_worktree_of_that_commit_and_removed_after(monkeypatch, tmp_path, capsys):
    head = subprocess.run(["git", "-C", str(ab.ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("not a git checkout")
    seen = []

    def fake_run(source, args):
        seen.append((source, (source / "lodsgs" / "cli.py").is_file()))
        return 1.0

    monkeypatch.setattr(ab, "timed_run", fake_run)
    out = tmp_path / "ab.json"
    ab.main([head.stdout.strip(), "--runs", "1", "--json", str(out), "--", "info", "--system"])
    (base, had_code), (head_source, _) = seen
    assert had_code and not base.exists()  # the base's own code while it ran; its worktree gone after
    assert head_source == ab.ROOT
    result = json.loads(out.read_text())
    assert result["ratio"] == 1.0 and result["args"] == ["info", "--system"]
    assert "head / base = 1.00" in capsys.readouterr().out


def test_a_failed_run_is_one_line_naming_what_it_said(monkeypatch, tmp_path):
    """A usage error ends in the border of rich's box: the message names the line inside it instead."""
    said = "Usage: lodsgs image\n╭─ Error ─╮\n│ No such option: --quiet │\n╰─────────╯\n"
    monkeypatch.setattr(ab.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 2, "", said))
    with pytest.raises(SystemExit, match=r"failed \(exit 2\): No such option: --quiet$"):
        ab.timed_run(tmp_path, ["image", "x"])
