import dataclasses

import pytest
import yaml

from fedcifar.config import PRESETS, Config, ConfigError, build_config, config_from_dict, parse_overrides


def test_defaults_are_the_papers_setting():
    cfg = build_config("paper")
    assert (cfg.num_clients, cfg.alpha, cfg.clients_per_round, cfg.local_epochs) == (64, 0.4, 16, 2)
    assert (cfg.lr, cfg.batch_size, cfg.rounds, cfg.strategy, cfg.norm) == (1e-3, 64, 100, "fedavg", "batch")


def test_sources_apply_in_order_preset_file_set(tmp_path):
    file = tmp_path / "c.yaml"
    file.write_text("rounds: 7\nalpha: 0.1\n")
    cfg = build_config("smoke", file, parse_overrides(["alpha=0.9", "augment=false"]))
    assert cfg.rounds == 7 and cfg.alpha == 0.9 and cfg.augment is False
    assert cfg.clients_per_round == PRESETS["smoke"]["clients_per_round"]
    assert config_from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["alpha=0"], "alpha must be > 0"),
        (["alpha=-1"], "alpha must be > 0"),
        (["clients_per_round=65"], r"clients_per_round \(65\) must be <= num_clients \(64\)"),
        (["colour=red"], "unknown config key 'colour'"),
        (["rounds=ten"], "'ten' is not an integer"),
        (["lr=fast"], "'fast' is not a number"),
        (["lr=inf"], "lr must be a finite number, got inf"),
        (["server_lr=inf"], "server_lr must be a finite number"),
        (["alpha=inf"], "alpha must be a finite number"),
        (["disco_b=nan"], "disco_b must be a finite number, got nan"),
        (["norm=layer"], "norm='layer' is not one of"),
        (["strategy=fedmagic"], "strategy='fedmagic' is not one of"),
        (["augment=maybe"], "not a boolean"),
        (["rounds"], "key=value"),
    ],
)
def test_bad_values_raise_one_line_errors(overrides, message):
    with pytest.raises(ConfigError, match=message) as info:
        build_config("paper", None, parse_overrides(overrides))
    assert "\n" not in str(info.value)


def test_unknown_preset_and_bad_file(tmp_path):
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        build_config("huge")
    with pytest.raises(ConfigError, match="not found"):
        build_config("paper", tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        build_config("paper", bad)


def test_config_is_frozen():
    with pytest.raises(AttributeError):
        Config().rounds = 3  # type: ignore[misc]


def test_the_configs_strategy_and_selector_names_are_the_registrys():
    import typing

    from fedcifar.config import Config
    from fedcifar.strategy.registry import SELECTORS, STRATEGIES

    hints = typing.get_type_hints(Config)
    assert list(typing.get_args(hints["strategy"])) == list(STRATEGIES)
    assert list(typing.get_args(hints["client_selection"])) == list(SELECTORS)


def test_a_config_built_directly_is_validated_too():
    from fedcifar.config import Config

    with pytest.raises(ConfigError, match="strategy='nope' is not one of"):
        Config(strategy="nope")
    with pytest.raises(ConfigError, match="min_fit_clients must be in"):
        Config(min_fit_clients=17)


@pytest.mark.parametrize("selection", ["size_weighted", "power_of_choice"])
def test_size_sampled_selection_refuses_size_weighting_again(selection):
    with pytest.raises(ConfigError, match=f"client_selection={selection} already samples clients by size"):
        build_config("paper", None, {"client_selection": selection})
    cfg = build_config("paper", None, {"client_selection": selection, "client_weighting": "uniform"})
    assert cfg.client_weighting == "uniform"


def test_keys_the_run_does_not_read_are_named():
    from fedcifar.config import unused_keys

    assert unused_keys(build_config("paper", None, {"proximal_mu": 0.1})) == ["proximal_mu=0.1"]
    assert unused_keys(build_config("paper", None, {"strategy": "fedprox", "proximal_mu": 0.1})) == []
    cfg = build_config("paper", None, {"strategy": "fedadam", "server_momentum": 0.7, "disco_a": 1.0, "tau": 0.2})
    assert unused_keys(cfg) == ["server_momentum=0.7", "disco_a=1.0"]
    assert unused_keys(build_config("paper")) == []


@pytest.mark.parametrize("strategy", ["fedavgm", "fedadam", "fedyogi", "fedadagrad", "scaffold"])
def test_config_yaml_names_the_default_a_zero_server_lr_or_tau_stands_for(tmp_path, strategy):
    from fedcifar.config import STRATEGY_DEFAULTS, save_yaml
    from fedcifar.strategy.registry import build_strategy

    cfg = build_config("paper", None, {"strategy": strategy})
    built = build_strategy(cfg)
    save_yaml(cfg, tmp_path / "config.yaml")
    text = (tmp_path / "config.yaml").read_text()
    for key in ("server_lr", "tau"):
        if strategy not in STRATEGY_DEFAULTS[key]:
            assert f"{key}: 0.0\n" in text
            continue
        value = STRATEGY_DEFAULTS[key][strategy]
        assert f"{key}: 0.0  # 0 = {strategy}'s default: {value:g}\n" in text
        assert getattr(built, key) == value  # what the strategy runs with is what the file says
    assert config_from_dict(yaml.safe_load(text)) == cfg  # the comment changes nothing on reload
    explicit = cfg.replace(server_lr=0.3)
    save_yaml(explicit, tmp_path / "explicit.yaml")
    assert "server_lr: 0.3\n" in (tmp_path / "explicit.yaml").read_text()
    assert build_strategy(explicit).server_lr == 0.3


def test_paper_cpu_plus_keeps_the_papers_federation_and_changes_only_the_algorithm():
    base, plus = build_config("paper-cpu"), build_config("paper-cpu-plus")
    changed = {f.name for f in dataclasses.fields(Config) if getattr(base, f.name) != getattr(plus, f.name)}
    assert changed == {"strategy", "server_lr"}  # server_momentum: 0.5 is the default too
    assert (plus.strategy, plus.server_lr, plus.server_momentum) == ("fedavgm", 1.0, 0.5)
    assert plus.val_size == 0 and plus.rounds == 100 and plus.num_clients == 64  # all 50,000 images


def test_fedavgm_momentum_default_is_the_tuned_one():
    assert build_config("paper", None, {"strategy": "fedavgm"}).server_momentum == 0.5
