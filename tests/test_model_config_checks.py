"""The shared `ModelConfig` checks used by the models' `validate`: exact error messages."""
from __future__ import annotations

import dataclasses
import re

import pytest

from clsr.config import ConfigError
from clsr.models.dien import DIENConfig
from clsr.models.din import DINConfig
from clsr.models.slirec import SLiRecConfig
from clsr.models.surge import SURGEConfig

ACTS = "['elu', 'identity', 'relu', 'sigmoid', 'tanh']"


@pytest.mark.parametrize(
    "cfg, change, message",
    [
        (SURGEConfig(), {"pool_length": 0}, "model.x.pool_length: must be ≥ 1, got 0"),
        (SLiRecConfig(), {"hidden_size": 32}, "model.x.hidden_size: must equal item_dim + cate_dim = 40 "
         "(u = α u^l + (1−α) u^s mixes the LSTM space with the embedding space), got 32"),
        (SLiRecConfig(), {"att_layers": []}, "model.x.att_layers: need ≥ 1 positive hidden size, got []"),
        (DINConfig(), {"pred_layers": [4, 0]}, "model.x.pred_layers: sizes must be positive, got [4, 0]"),
        (DINConfig(), {"att_layers": []}, "model.x.att_layers: the attention scorer needs ≥ 1 hidden layer"),
        (DINConfig(), {"activation": "gelu"}, f"model.x.activation: activation 'gelu' is not one of {ACTS}"),
        (DIENConfig(), {"activation": "gelu"},
         f"model.x.activation: activation 'gelu' is not one of {ACTS} (or 'dice')"),
    ],
)
def test_shared_checks_messages(cfg, change, message):
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        dataclasses.replace(cfg, **change).validate("model.x")


def test_extra_activation_names_pass():
    DIENConfig(activation="dice").validate("model.x")
    with pytest.raises(ConfigError, match="activation"):
        SLiRecConfig(activation="dice").validate("model.x")
