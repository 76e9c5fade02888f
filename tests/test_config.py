"""Config: presets load, overrides are typed, unknown keys and bad values are errors that name them."""

import subprocess
import sys

import pytest
import yaml

from lodsgs.config import load_config, presets, save_config, to_dict
from lodsgs.errors import LodsgsError


def test_every_preset_loads():
    names = presets()
    assert {"lods_embedding", "lods_lora", "sds", "fast"} <= set(names)
    methods = {name: load_config(name).guidance.method for name in names}
    assert methods["lods_embedding"] == "lods-embedding"
    assert methods["lods_lora"] == "lods-lora"
    assert methods["sds"] == "sds"


def test_reading_a_config_imports_no_torch():
    """The config's dataclasses live in config.py and prior names resolve in the torch-free prior/hub.py, so
    reading a config, the shapes prior's own profile included, loads no torch, diffusers or gsplat."""
    heavy = ("torch", "diffusers", "gsplat", "transformers")
    code = ("import lodsgs.config, sys; "
            "lodsgs.config.load_config('fast', ['prior.model=shapes', 'run.steps=3']); "
            f"loaded = sorted({{m.split('.')[0] for m in sys.modules}} & {set(heavy)!r}); "
            "assert not loaded, loaded")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_default_is_lods_embedding_with_paper_settings():
    cfg = load_config()
    assert cfg.guidance.method == "lods-embedding"
    assert cfg.guidance.guidance_scale == 1000
    assert cfg.run.batch == 8 and cfg.run.steps == 2500
    assert cfg.init.sh_degree == 0


def test_overrides_are_typed():
    cfg = load_config("sds", ["run.steps=12", "guidance.guidance_scale=7.5", "camera.radius=[2, 3]",
                              "render.background=[1, 1, 1]", "prior.model=shapes"])
    assert cfg.run.steps == 12 and isinstance(cfg.run.steps, int)
    assert cfg.guidance.guidance_scale == 7.5
    assert cfg.camera.radius == (2.0, 3.0)
    assert cfg.render.background == (1.0, 1.0, 1.0)
    assert cfg.prior.model == "shapes"


@pytest.mark.parametrize("override, fragment", [
    ("run.stepz=3", "unknown config key 'run.stepz'"),
    ("nosection.x=1", "unknown config key 'nosection'"),
    ("run.steps=many", "expected an integer"),
    ("guidance.method=dds", "edits an image"),
    ("camera.radius=[1, 2, 3]", "expected 2 values"),
    ("run.device=tpu", "one of 'auto', 'cpu', 'cuda'"),
    ("run.steps", "section.key=value"),
    ("run=3", "is a section"),
])
def test_bad_overrides_name_the_key(override, fragment):
    with pytest.raises(LodsgsError, match=None) as err:
        load_config(None, [override])
    assert fragment in str(err.value)


def test_unknown_preset_and_bad_file(tmp_path):
    with pytest.raises(LodsgsError, match="unknown preset 'nope'; available presets: "):
        load_config("nope")
    with pytest.raises(LodsgsError, match="not found"):
        load_config(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: {steps: 3\n")
    with pytest.raises(LodsgsError, match="not valid YAML"):
        load_config(str(bad))
    typo = tmp_path / "typo.yaml"
    typo.write_text("run: {seeed: 3}\n")
    with pytest.raises(LodsgsError, match="unknown config key 'run.seeed'"):
        load_config(str(typo))


def test_saved_config_round_trips(tmp_path):
    cfg = load_config("lods_lora", ["run.seed=7", "camera.width=32"])
    save_config(cfg, tmp_path / "config.yaml")
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["run"]["seed"] == 7
    again = load_config(str(tmp_path / "config.yaml"))
    assert to_dict(again) == to_dict(cfg)


def test_a_text_runs_hash_ignores_image_settings_and_an_image_runs_does_not():
    from lodsgs.config import config_hash
    text = config_hash(load_config(None, []))
    assert config_hash(load_config(None, ["image.recenter=false", "image.elevation=20"])) == text
    image = config_hash(load_config(None, ["image.path=ref.png"]))
    assert image != text and config_hash(load_config(None, ["image.path=ref.png", "image.elevation=20"])) != image


def test_a_float_without_a_dot_is_a_number_on_the_command_line_and_in_yaml(tmp_path):
    assert load_config(None, ["guidance.lora_lr=5e-7"]).guidance.lora_lr == 5e-7  # YAML 1.1 reads it as a string
    (tmp_path / "c.yaml").write_text("guidance:\n  embedding_lr: 1e-3\n")
    assert load_config(str(tmp_path / "c.yaml"), []).guidance.embedding_lr == 1e-3
    with pytest.raises(LodsgsError, match="expected a number"):
        load_config(None, ["guidance.lora_lr=fast"])


def test_a_reference_counts_by_its_content_not_its_path(tmp_path):
    from lodsgs.config import config_hash
    from lodsgs.preflight import run_name
    a, b = tmp_path / "a.png", tmp_path / "moved" / "b.png"
    b.parent.mkdir()
    a.write_bytes(b"one picture")
    b.write_bytes(b"one picture")
    cfg_a, cfg_b = (load_config(None, [f"image.path={p}"]) for p in (a, b))
    assert config_hash(cfg_a) == config_hash(cfg_b) and run_name("a cube", 0, str(a)) == run_name("a cube", 0, str(b))
    b.write_bytes(b"another picture")  # replaced at the same path: a finished run of the old one must not count
    assert config_hash(load_config(None, [f"image.path={b}"])) != config_hash(cfg_a)
    assert run_name("a cube", 0, str(b)) != run_name("a cube", 0, str(a))


def test_a_runs_saved_config_loads_back_as_it_ran(tmp_path):
    cfg = load_config(None, ["prior.model=shapes", "init.kind=ball",
                             "camera.width=48", "guidance.guidance_scale=100"])
    assert cfg.camera.width == 48 and cfg.guidance.guidance_scale == 100  # over the shapes profile
    save_config(cfg, tmp_path / "config.yaml")
    assert to_dict(load_config(str(tmp_path / "config.yaml"))) == to_dict(cfg)
    (tmp_path / "mine.yaml").write_text("prior:\n  model: shapes\ncamera:\n  width: 48\n")  # a user's file: profile on
    mine = load_config(str(tmp_path / "mine.yaml"))
    assert mine.camera.width == 48  # what the user wrote wins over the prior's profile ...
    assert mine.run.steps == load_config(None, ["prior.model=shapes"]).run.steps == 200  # ... which fills the rest
    assert load_config(str(tmp_path / "mine.yaml"), ["camera.width=40"]).camera.width == 40  # and --set beats both
