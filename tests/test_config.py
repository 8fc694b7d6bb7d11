"""Configuration: composition, typed schemas, value checks that name the key before any model loads."""

from __future__ import annotations

import time

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from selfinstruct.config import ConfigError, validate, to_plain
from tests.conftest import compose, run_cli


def test_default_config_is_the_paper_setup():
    cfg = compose([])
    validate(cfg)
    assert cfg.llm.backend == "llamacpp"  # the embedded model is the default, never the fake
    assert cfg.stages == ["instructions", "classify", "instances", "prepare", "analyze"]
    assert cfg.sampling.instructions.temperature == 0.7
    assert cfg.sampling.instructions.top_p == 0.5
    assert cfg.sampling.instructions.presence_penalty == 2.0
    assert cfg.sampling.instructions.max_tokens == 1024
    assert cfg.filters.rouge_threshold == 0.7
    assert cfg.prompt.num_human + cfg.prompt.num_machine == 8
    assert "go to" in cfg.filters.blacklist


@pytest.mark.parametrize("option", ["llamacpp", "openai", "openai_compatible", "fake"])
def test_every_llm_option_is_typed_by_its_own_backend_schema(option):
    import dataclasses

    from omegaconf import OmegaConf

    from selfinstruct.llm import backend_schema

    cfg = compose([f"llm={option}"])
    schema = backend_schema(option)
    assert OmegaConf.get_type(cfg.llm) is schema
    assert set(cfg.llm) == {f.name for f in dataclasses.fields(schema)}
    # the yaml's values are the backend's own defaults unless the yaml says why it differs
    assert cfg.llm.backend == option
    # another backend's key is not this one's: a wrong key fails when Hydra composes
    foreign = "latency_s" if option != "fake" else "model_path"
    with pytest.raises((ConfigCompositionException, ValidationError)):
        compose([f"llm={option}", f"llm.{foreign}=1"])


@pytest.mark.parametrize("override", ["+filters.rouge_treshold=0.5", "+llm.bogus=1", "+evaluate.bogus=1",
                                      "+sampling.instructions.temprature=0.5", "+bogus=1"])
def test_a_key_added_with_plus_to_a_typed_config_fails_naming_it(override):
    key = override.lstrip("+").split("=")[0]
    cfg = compose([override])  # Hydra lets `+` add keys even to typed nodes ...
    with pytest.raises(ConfigError, match=rf"`{key.replace('.', '[.]')}`: unknown key"):
        validate(cfg)  # ... so validate refuses them


def test_help_lists_the_real_options_and_no_test_only_keys():
    result = run_cli(["--help"], timeout=60)
    assert result.returncode == 0
    assert "llm: fake, llamacpp, openai, openai_compatible" in result.stdout
    assert "filters: alpaca, none, paper" in result.stdout or "filters: alpaca, default, none, paper" in result.stdout
    assert "_schema" not in result.stdout
    assert "latency_s" not in result.stdout and "fail_rate" not in result.stdout  # the fake's knobs


def test_misspelt_key_fails_at_compose_time():
    with pytest.raises((ConfigCompositionException, ValidationError)) as info:
        compose(["filters.rouge_treshold=0.5"])
    assert "rouge_treshold" in str(info.value) or "rouge_treshold" in str(info.value.__cause__)


def test_wrong_type_fails_at_compose_time():
    with pytest.raises((ConfigCompositionException, ValidationError)):
        compose(["num_instructions=many"])


@pytest.mark.parametrize("override, key", [
    ("filters.rouge_threshold=1.5", "filters.rouge_threshold"),
    ("filters.rouge_threshold=-0.1", "filters.rouge_threshold"),
    ("sampling.instructions.temperature=-1", "sampling.instructions.temperature"),
    ("sampling.classify.top_p=0", "sampling.classify.top_p"),
    ("num_instructions=-3", "num_instructions"),
    ("llm.concurrency=0", "llm.concurrency"),
    ("seeds.path=/nonexistent/seeds.jsonl", "seeds.path"),
    ("stages=[instructions,bogus]", "stages"),
])
def test_bad_values_name_the_key(override, key):
    cfg = compose([override])
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(cfg)


def test_openai_compatible_needs_base_url_and_model():
    with pytest.raises(ConfigError, match=r"llm\.base_url"):
        validate(compose(["llm=openai_compatible", "llm.model=x"]))
    with pytest.raises(ConfigError, match=r"llm\.model"):
        validate(compose(["llm=openai_compatible", "llm.base_url=http://127.0.0.1:9/v1"]))


def test_secrets_are_dropped_from_the_plain_config():
    cfg = compose(["llm=openai", "llm.api_key=sk-secret-123"])
    assert "sk-secret-123" not in str(to_plain(cfg))


def test_cli_rejects_bad_threshold_within_seconds_naming_the_key():
    started = time.time()
    result = run_cli(["filters.rouge_threshold=1.5"], timeout=60)
    assert result.returncode != 0
    assert "rouge_threshold" in result.stderr + result.stdout
    assert time.time() - started < 30  # fails before any model is loaded
