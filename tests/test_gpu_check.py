"""`make gpu-check`'s CPU side: it imports and answers --help without a GPU; the CUDA checks say skipped, resume
runs and is exact, and both reports are written."""

import json

import pytest
import torch

from benchmarks import gpu_check


@pytest.mark.slow
def test_gpu_check_runs_its_cpu_parts_and_writes_reports(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: run `make gpu-check` itself")
    report = gpu_check.main(["--out", str(tmp_path), "--skip-sd"])
    checks = report["checks"]
    assert "skipped" in checks["render: gsplat CUDA vs CPU rasterizer"]
    assert "skipped" in checks["fused kernel vs PyTorch reference"]
    resume = checks["generate -> SIGINT -> --resume"]
    assert resume["device"] == "cpu" and resume["equal"] is True, resume
    assert json.loads((tmp_path / "gpu-check.json").read_text())["checks"]["generate -> SIGINT -> --resume"]["equal"]
    assert "## generate -> SIGINT -> --resume" in (tmp_path / "gpu-check.md").read_text()


def test_gpu_check_imports_and_helps_on_the_cpu(capsys):
    with pytest.raises(SystemExit) as e:
        gpu_check.main(["--help"])
    assert e.value.code == 0
    assert "--skip-sd" in capsys.readouterr().out
    if not torch.cuda.is_available():
        cpu = torch.device("cpu")
        for check in (gpu_check.fallback_check, gpu_check.cap_memory_check, gpu_check.shap_e_check):
            assert "skipped" in check(cpu), check.__name__
