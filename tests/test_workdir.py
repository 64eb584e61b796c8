"""The workdir outside its checkpoints (synthjax/workdir.py): logs cut back on resume, old config.json
files, the flat config keys it compares. Refusals of a wrong workdir are in tests/test_hostile_input.py."""
import json

import pytest
from helpers import runs

from synthjax import config as config_lib
from synthjax.errors import UserError
from synthjax.workdir import prepare_workdir, truncate_jsonl


def test_truncate_jsonl_keeps_complete_lines_up_to_the_checkpoint_step(tmp_path):
    """A run killed after its checkpoint at step 4 logged steps 6 and half of 8: the resumed run logs them again."""
    path = tmp_path / "metrics.jsonl"
    rows = "".join(json.dumps({"step": s, "loss": s / 10}) + "\n" for s in (2, 4, 6))
    path.write_text(rows + '{"step": 8, "lo')
    truncate_jsonl(str(path), 4)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [2, 4]
    truncate_jsonl(str(tmp_path / "absent.jsonl"), 4)  # a fresh workdir has no log yet
    assert not (tmp_path / "absent.jsonl").exists()


def test_an_old_workdir_with_a_retired_field_still_resumes(tmp_path, capsys):
    """A saved config.json may hold fields since deleted from the configs (nothing read them): they do not block a resume."""
    cfg = config_lib.load_config(runs.config_path("vae_mlp.py:smoke"))
    saved = config_lib.to_dict(cfg)
    saved["model"]["width"] = 0  # vae_mlp's unused field, as older workdirs saved it
    (tmp_path / "config.json").write_text(json.dumps(saved))
    prepare_workdir(str(tmp_path), cfg)
    assert "no longer config fields: model.width" in capsys.readouterr().out
    assert "width" not in json.loads((tmp_path / "config.json").read_text())["model"]


def test_a_workdir_saved_before_a_field_existed_resumes_with_its_value_named(tmp_path, capsys):
    """A field added to the code since the run began (here the DDPM's model.ema_warmup) is named in the log,
    not taken for a change of model; a real change of model is still refused."""
    cfg = config_lib.load_config(runs.config_path("ddpm.py:smoke"))
    saved = config_lib.to_dict(cfg)
    del saved["model"]["ema_warmup"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    prepare_workdir(str(tmp_path), cfg)
    assert "predates these config fields; continuing with model.ema_warmup=True" in capsys.readouterr().out
    saved["model"]["ch"] = 16  # the same old config.json, of a wider U-Net
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with pytest.raises(UserError, match=r"different model or data \(model.ch: 16 -> 8\)"):
        prepare_workdir(str(tmp_path), cfg)


def test_flat_dict_names_every_field_by_its_dotted_key():
    cfg = config_lib.load_config(runs.config_path("vae_mlp.py:smoke"))
    flat = config_lib.flat_dict(cfg)
    assert flat["opt.lr"] == cfg.opt.lr and flat["train.num_steps"] == cfg.train.num_steps
    assert not any(isinstance(v, dict) for v in flat.values())
