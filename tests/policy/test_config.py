"""The config: the shipped files load, default.toml is the dataclass defaults, bad input is refused by name."""

from pathlib import Path

import pytest

from cluster import config
from cluster.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_default_toml_spells_out_exactly_the_defaults():
    assert config.load(ROOT / "configs" / "default.toml") == config.FarmConfig()


def test_every_shipped_config_loads():
    for path in sorted((ROOT / "configs").glob("*.toml")):
        cfg = config.load(path)
        assert cfg.train.budget > 0, path


def test_gpu_config_is_the_real_budget():
    cfg = config.load(ROOT / "configs" / "gpu.toml")
    assert cfg.train.budget == 300.0
    assert cfg.workers.gpus_per_worker == 1.0


@pytest.mark.parametrize("text, words", [
    ("[judge]\nnoise_kk = 2\n", ["noise_kk", "unknown key", "noise_k"]),
    ("[jugde]\nnoise_k = 2\n", ["jugde", "unknown section"]),
    ("[train]\nbudget = \"long\"\n", ["train.budget", "number"]),
    ("[train]\nbudget = -5\n", ["train.budget", "> 0"]),
    ("[judge]\nconfirm = 1\n", ["judge.confirm", "true or false"]),
    ("[store]\nappendfsync = \"sometimes\"\n", ["store.appendfsync", "always"]),
    ("[run]\nfrozen = \"prepare.py\"\n", ["run.frozen", "list of strings"]),
    ("[run\n", ["not valid TOML"]),
])
def test_bad_config_is_refused_with_the_key_named(tmp_path, text, words):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        config.load(p)
    for w in words:
        assert w in str(e.value)
    assert str(p) in str(e.value)


def test_missing_config_file_says_where_the_shipped_ones_are(tmp_path):
    with pytest.raises(ConfigError, match="configs/"):
        config.load(tmp_path / "nope.toml")


def test_flags_override_and_are_checked():
    cfg = config.FarmConfig().with_overrides({"train.budget": 15, "workers.count": 2, "run.tag": None})
    assert cfg.train.budget == 15.0 and isinstance(cfg.train.budget, float)
    assert cfg.workers.count == 2
    assert cfg.run.tag == ""
    with pytest.raises(ConfigError, match="workers.count"):
        config.FarmConfig().with_overrides({"workers.count": -1})


def test_int_is_accepted_where_a_float_is_wanted(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[train]\nbudget = 30\n")
    assert config.load(p).train.budget == 30.0


def test_proposer_mix_takes_weights_of_known_kinds(tmp_path):
    p = tmp_path / "mix.toml"
    p.write_text("[proposer]\nmix = { llm = 0.7, mutate = 0.3 }\n")
    assert config.load(p).proposer.mix == {"llm": 0.7, "mutate": 0.3}
    p.write_text("[proposer]\nmix = { llama = 1.0 }\n")
    with pytest.raises(ConfigError, match="proposer.mix keys must be proposer kinds"):
        config.load(p)
