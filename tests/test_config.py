"""Config: defaults from the papers, YAML + overrides, unknown keys with suggestions."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import pytest
import yaml

from specialize.config import QUERY_TYPES, Config, GenerateConfig, LLMConfig, config_field, field_default, load_config, parse_assignment, write_resolved
from specialize.errors import SpecializeError
from specialize.stages.generate.cleaning import clean_query, copies_passage
from specialize.stages.generate.prompts import build_messages, load_prompt_types
from specialize.stages.prepare import prepare
from specialize.teachers import KINDS, MODEL_KINDS


def test_defaults_follow_the_papers_or_our_measurements():
    cfg = Config()
    # The teacher temperature (papers: 0.3) and the query side are ours by measurement (benchmarks/results/query_side.md).
    assert (cfg.train.teacher_temperature, cfg.train.student_temperature, cfg.train.mode) == (0.05, 0.05, "query")
    assert (cfg.train.infonce_weight, cfg.train.infonce_temperature, cfg.train.false_negative_ratio) == (0.1, 0.01, 0.6)
    assert cfg.label.list_size == 20 and cfg.label.dev_fraction == 0.1 and cfg.label.seed == 42
    assert cfg.mine.rrf_k == 60 and cfg.mine.roundtrip_depth == 20
    assert cfg.generate.temperature == 0.8 and cfg.generate.max_new_tokens == 50
    assert cfg.prepare.max_passages == 100_000 and cfg.prepare.max_chars == 2048


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("workdir: w\nprepare:\n  max_passages: 50\n  seed: 1\n")
    cfg = load_config(path, {"prepare.seed": 9, "prepare.max_chars": None, "train.epochs": 3})
    assert cfg.prepare.max_passages == 50 and cfg.prepare.seed == 9  # flag beats file
    assert cfg.prepare.max_chars == 2048  # None means "flag not given"
    assert cfg.train.epochs == 3 and str(cfg.workdir) == "w"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("prepare:\n  max_pasages: 5\n", "unknown key 'prepare.max_pasages' (did you mean 'max_passages'?)"),
        ("trian:\n  epochs: 1\n", "unknown key 'trian' (did you mean 'train'?)"),
        ("prefixes:\n  e5:\n    querry: 'q: '\n", "unknown key 'prefixes.e5.querry' (did you mean 'query'?)"),
        ("prepare:\n  max_passages: many\n", "prepare.max_passages: Input should be a valid integer"),
        ("evaluate:\n  backend: gpu\n", "evaluate.backend: Input should be"),
        ("prepare: [1\n", "c.yaml:2: not valid YAML"),
        ("- a\n- b\n", "expected a mapping"),
    ],
)
def test_bad_config_is_one_clear_line(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(SpecializeError) as info:
        load_config(path)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert str(info.value).startswith(str(path))


def test_missing_config_file(tmp_path):
    with pytest.raises(SpecializeError, match="config file not found"):
        load_config(tmp_path / "none.yaml")


def test_set_assignments_parse_yaml_values():
    assert load_config(None, dict([parse_assignment("train.learning_rate=3e-5")])).train.learning_rate == 3e-5
    assert parse_assignment("train.epochs=2") == ("train.epochs", 2)
    assert parse_assignment("mine.retrievers=[bm25, bundled:mpnet]") == ("mine.retrievers", ["bm25", "bundled:mpnet"])
    with pytest.raises(SpecializeError, match="expected key.path=value"):
        parse_assignment("train.epochs")
    with pytest.raises(SpecializeError, match="unknown key 'train.epoch'"):
        load_config(None, dict([parse_assignment("train.epoch=2")]))


def test_resolved_config_has_every_default(tmp_path):
    cfg = load_config(None, {"workdir": str(tmp_path / "w"), "train.epochs": 2})
    written = yaml.safe_load(write_resolved(cfg).read_text())
    assert written["train"]["epochs"] == 2
    assert written["label"]["drop_below_percentile"] == 25.0
    assert load_config(tmp_path / "w" / "config.yaml") == cfg  # the resolved file reloads to the same config


def test_a_dotted_key_names_its_field_and_default():
    assert config_field("generate.llm.backend") is LLMConfig.model_fields["backend"]
    assert field_default("prepare.max_passages") == 100_000 and field_default("workdir") == Config().workdir
    assert field_default("mine.retrievers") == Config().mine.retrievers
    assert field_default("mine.retrievers") is not field_default("mine.retrievers")  # a factory's value is fresh each time
    with pytest.raises(KeyError):
        config_field("prepare.corpus.path")


def test_the_query_types_are_the_bundled_prompt_files():
    assert set(QUERY_TYPES) == set(load_prompt_types()) and len(QUERY_TYPES) == len(set(QUERY_TYPES))
    assert GenerateConfig().types == list(QUERY_TYPES)


def test_the_teacher_help_names_every_teacher():
    description = config_field("label.teacher").description
    assert description is not None
    for kind in KINDS:
        assert (f"{kind}:<model>" if kind in MODEL_KINDS else kind) in description


@pytest.mark.parametrize(
    ("function", "section"),
    [(prepare, "prepare"), (clean_query, "generate"), (copies_passage, "generate"), (build_messages, "generate")],
)
def test_the_api_defaults_are_the_config_fields(function: Callable[..., object], section: str):
    fields = type(getattr(Config(), section)).model_fields
    defaults = {name: param.default for name, param in inspect.signature(function).parameters.items()
                if name in fields and param.default is not inspect.Parameter.empty}
    assert defaults, "no default of the function is a config field"
    for name, default in defaults.items():
        expected = field_default(f"{section}.{name}")
        assert (list(default) if isinstance(expected, list) else default) == expected, name
