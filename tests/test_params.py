"""params.yaml as typed configuration: every file the repository ships loads, and every misspelling anywhere
is an error that names it (clsr.params)."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from clsr.config import ConfigError, load_params, to_dict
from clsr.params import AblationsConfig, DisentanglementConfig, PipelineConfig, check
from clsr.pipeline import TINY_PARAMS, Context, find_root

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(ROOT.glob("params*.yaml"))


def test_every_shipped_params_file_loads():
    assert SHIPPED, "no params*.yaml found at the project root"
    for path in SHIPPED:
        params = load_params(path)
        assert set(params) == {"pipeline", "datasets", "train", "models", "ablations", "disentanglement",
                               "sweep"}, path


def test_tiny_params_are_valid():
    check(copy.deepcopy(TINY_PARAMS), "tiny")


def _base() -> dict:
    with open(ROOT / "params.yaml") as f:
        return yaml.safe_load(f)


@pytest.mark.parametrize("edit, culprit", [
    (lambda p: p.__setitem__("trian", p.pop("train")), "'trian'"),
    (lambda p: p.__setitem__("model", p.pop("models")), "'model'"),
    (lambda p: p["models"].__setitem__("clrs", {}), "'clrs'"),
    (lambda p: p["models"]["clsr"].__setitem__("contrastiv", "bpr"), "contrastiv"),
    (lambda p: p["train"].__setitem__("epoch", 3), "epoch"),
    (lambda p: p["pipeline"].__setitem__("dataset", ["ml100k"]), "dataset"),
    (lambda p: p["pipeline"].__setitem__("models", ["clsr", "slirek"]), "slirek"),
    (lambda p: p["pipeline"].__setitem__("datasets", ["ml100k", "ml1m"]), "ml1m"),
    (lambda p: p["ablations"].__setitem__("kk", [1]), "kk"),
    (lambda p: p["ablations"].__setitem__("contrastive", ["triplet", "hinge"]), "hinge"),
    (lambda p: p["disentanglement"].__setitem__("recnt_k", 5), "recnt_k"),
    (lambda p: p["disentanglement"].__setitem__("models", ["clsr", "clsr_nocontrast"]), "clsr_nocontrast"),
    (lambda p: p["datasets"]["ml100k"].__setitem__("sourc", {}), "sourc"),
    (lambda p: p["datasets"]["ml100k"]["protocol"].__setitem__("splitt", "per_user"), "splitt"),
    (lambda p: p["datasets"]["ml100k"]["source"].__setitem__("name", "ml10k"), "ml10k"),
    (lambda p: p["train"].__setitem__("lr", "fast"), "lr"),
])
def test_a_misspelling_anywhere_names_itself(edit, culprit):
    params = _base()
    edit(params)
    with pytest.raises(ConfigError) as err:
        check(params)
    assert culprit in str(err.value), str(err.value)
    assert "\n" not in str(err.value)


def test_near_misses_are_suggested():
    params = _base()
    params["trian"] = params.pop("train")
    with pytest.raises(ConfigError, match=r"did you mean 'train'"):
        check(params)


def test_defaults_come_from_the_classes():
    """A section left out is filled from its class; params.yaml only restates values."""
    params = check({})
    assert params["ablations"] == to_dict(AblationsConfig())
    assert params["disentanglement"] == to_dict(DisentanglementConfig())
    assert params["pipeline"] == to_dict(PipelineConfig())
    assert set(params["datasets"]) == {"ml100k", "synthetic"}
    assert params["datasets"]["ml100k"]["protocol"]["max_len"] == 50  # ProtocolConfig's default


def test_malformed_or_unreadable_files(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("train:\n  epochs: [1, 2\n")
    with pytest.raises(ConfigError, match=r"params.yaml: malformed YAML at line \d+"):
        load_params(bad)
    bad.write_bytes(b"train:\n  device: \xff\xfe\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_params(bad)
    with pytest.raises(ConfigError, match="is a directory"):
        load_params(tmp_path)
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "missing.yaml")
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_params(bad)


def test_paths_are_shown_relative_to_the_project_root(tmp_path):
    root = find_root()
    ctx = Context(root=root, params={}, tiny=False, work=root)
    assert ctx.shown(root / "runs" / "ml100k" / "clsr" / "abc") == "runs/ml100k/clsr/abc"
    assert ctx.shown(tmp_path / "elsewhere") == str(tmp_path / "elsewhere")  # outside the project: as it is
