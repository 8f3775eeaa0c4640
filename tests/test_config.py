"""Typed configuration: casting of YAML quirks, unknown keys, choices, dotted overrides, --set parsing."""
from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from clsr.config import ConfigError, config_hash, from_dict, load_params, section, with_overrides
from clsr.runs import parse_overrides


@dataclass
class Inner:
    k: int = 3
    form: Literal["triplet", "bpr"] = "triplet"
    weight: float = 0.1


@dataclass
class Outer:
    lr: float = 1e-3
    epochs: int = 10
    flag: bool = False
    name: str = "x"
    sizes: list[int] = field(default_factory=lambda: [100, 64])
    maybe: Optional[float] = None
    inner: Inner = field(default_factory=Inner)

    def validate(self, where):
        if self.epochs < 1:
            raise ConfigError(f"{where}.epochs: must be >= 1")


def test_defaults_and_casts():
    c = from_dict(Outer, {"lr": "1e-4", "epochs": 5.0, "flag": "true", "sizes": ["80", 40.0], "maybe": "0.5",
                          "name": 7, "inner": {"weight": "2e-2", "k": "4"}})
    assert c.lr == 1e-4 and isinstance(c.lr, float)
    assert c.epochs == 5 and isinstance(c.epochs, int)
    assert c.flag is True
    assert c.sizes == [80, 40]
    assert c.maybe == 0.5
    assert c.name == "7"
    assert c.inner == Inner(k=4, form="triplet", weight=0.02)
    assert from_dict(Outer, None) == Outer()
    assert from_dict(Outer, {"lr": 1}).lr == 1.0 and isinstance(from_dict(Outer, {"lr": 1}).lr, float)
    assert from_dict(Outer, {"maybe": None}).maybe is None


def test_unknown_key_names_allowed_ones():
    with pytest.raises(ConfigError) as e:
        from_dict(Outer, {"lrr": 0.1}, "train")
    msg = str(e.value)
    assert "lrr" in msg and "train" in msg
    for k in ("lr", "epochs", "flag", "name", "sizes", "maybe", "inner"):
        assert k in msg
    with pytest.raises(ConfigError, match=r"train\.inner.*'kk'.*allowed.*'form'"):
        from_dict(Outer, {"inner": {"kk": 1}}, "train")


@pytest.mark.parametrize(
    "data,key",
    [
        ({"inner": {"form": "hinge"}}, "inner.form"),
        ({"epochs": 2.5}, "epochs"),
        ({"epochs": "many"}, "epochs"),
        ({"epochs": True}, "epochs"),
        ({"lr": "fast"}, "lr"),
        ({"flag": "perhaps"}, "flag"),
        ({"sizes": 5}, "sizes"),
        ({"sizes": [1, "x"]}, "sizes"),
        ({"maybe": "abc"}, "maybe"),
        ({"name": [1]}, "name"),
    ],
)
def test_bad_values_name_the_key(data, key):
    with pytest.raises(ConfigError) as e:
        from_dict(Outer, data, "cfg")
    assert f"cfg.{key}" in str(e.value)


def test_literal_error_lists_choices():
    with pytest.raises(ConfigError) as e:
        from_dict(Inner, {"form": "hinge"}, "model")
    assert "model.form" in str(e.value) and "triplet" in str(e.value) and "bpr" in str(e.value)


def test_validate_is_called():
    with pytest.raises(ConfigError, match="cfg.epochs"):
        from_dict(Outer, {"epochs": 0}, "cfg")


def test_not_a_mapping():
    with pytest.raises(ConfigError, match="mapping"):
        from_dict(Outer, [1, 2], "cfg")


def test_with_overrides_dotted_keys():
    base = from_dict(Outer, {"epochs": 4})
    new = with_overrides(base, {"inner.form": "bpr", "inner.weight": "0.5", "lr": "2e-3"})
    assert new.inner.form == "bpr" and new.inner.weight == 0.5 and new.lr == 2e-3 and new.epochs == 4
    assert base.inner.form == "triplet" and base.lr == 1e-3  # the original is untouched
    with pytest.raises(ConfigError, match="inner.nope"):
        with_overrides(base, {"inner.nope": 1})
    with pytest.raises(ConfigError, match="nope.k"):
        with_overrides(base, {"nope.k": 1})
    with pytest.raises(ConfigError, match="inner.form"):
        with_overrides(base, {"inner.form": "hinge"})


def test_parse_overrides_spellings():
    got = parse_overrides(["model.contrastive=bpr", "train.epochs=3", "a.b=0.1", "flag=true", " k = x=y", "lr=1e-4"])
    assert got["model.contrastive"] == "bpr"
    assert got["train.epochs"] == 3 and isinstance(got["train.epochs"], int)
    assert got["a.b"] == 0.1
    assert got["flag"] is True
    assert got["k"] == "x=y"  # only the first '=' splits
    # YAML 1.1 reads 1e-4 as a string; from_dict casts it where a float is expected
    assert with_overrides(Outer(), {"lr": got["lr"]}).lr == 1e-4
    assert parse_overrides(None) == {}
    # the notebooks' comma-separated string and the CLI's list are the same syntax
    assert parse_overrides("model.contrastive=bpr, train.epochs=3") == parse_overrides(
        ["model.contrastive=bpr", "train.epochs=3"])
    assert parse_overrides("train.ks=[1, 5],model.k=2") == {"train.ks": [1, 5], "model.k": 2}
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["novalue"])


def test_section_and_params(tmp_path):
    params = {"datasets": {"ml100k": {"source": {"name": "ml100k"}}}}
    assert section(params, "datasets", "ml100k", "source") == {"name": "ml100k"}
    with pytest.raises(ConfigError, match=r"datasets.kuai.*present: \['ml100k'\]"):
        section(params, "datasets", "kuai")
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_params(tmp_path / "nope.yaml")
    p = tmp_path / "p.yaml"
    p.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_params(p)
    p.write_text("train:\n  lr: 1e-4\n")
    assert load_params(p)["train"]["lr"] == 1e-4  # the YAML 1.1 quirk ("1e-4" is a string) is absorbed


def test_config_hash_stable_and_sensitive():
    a, b = Outer(), Outer()
    assert config_hash(a) == config_hash(b)
    assert config_hash(a) != config_hash(with_overrides(a, {"inner.k": 5}))
    assert len(config_hash(a)) == 12
