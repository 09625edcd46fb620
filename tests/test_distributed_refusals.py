"""coconav/distributed.py in one process: the refusals are one-line ConfigErrors. The sharded paths
themselves run under torchrun in tests/recipes/test_distributed.py."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from accelerate.utils import DistributedType

from coconav.config import ModelConfig
from coconav.data.tokenizer import build_word_tokenizer
from coconav.distributed import check_engine, is_sharded, shard_lm
from coconav.errors import ConfigError
from coconav.model.build import build_latent_lm


def tiny_lm():
    cfg = ModelConfig(name_or_path="scratch-llama", hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)
    return build_latent_lm(cfg, build_word_tokenizer(["1", "2", "+", "="]))


def test_sharding_needs_several_processes():
    lm = tiny_lm()
    with pytest.raises(ConfigError, match="several processes"):
        shard_lm(lm)
    assert not is_sharded(lm)


@pytest.mark.parametrize(
    "kind, plugin, message",
    [
        (DistributedType.FSDP, None, "FSDP plugin is not supported"),
        (DistributedType.DEEPSPEED, SimpleNamespace(zero_stage=3), "ZeRO-3 is not supported"),
    ],
)
def test_engines_whose_checkpoints_are_not_gathered_are_refused(kind, plugin, message):
    accelerator = SimpleNamespace(distributed_type=kind, state=SimpleNamespace(deepspeed_plugin=plugin))
    with pytest.raises(ConfigError, match=message):
        check_engine(accelerator)


def test_data_parallel_and_zero_2_pass():
    check_engine(SimpleNamespace(distributed_type=DistributedType.MULTI_CPU, state=SimpleNamespace()))
    check_engine(
        SimpleNamespace(
            distributed_type=DistributedType.DEEPSPEED,
            state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(zero_stage=2)),
        )
    )
