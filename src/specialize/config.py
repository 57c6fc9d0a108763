"""Configuration: one pydantic model per stage, loaded from YAML and overridden by CLI flags.

Defaults follow arXiv 2502.19712 and 2505.19274 (see docs/design.md). Unknown keys are errors that
name the key and suggest the closest valid one.
"""

from __future__ import annotations

import difflib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.fields import FieldInfo

from specialize.artifacts import write_text
from specialize.errors import SpecializeError
from specialize.workdir import Workdir

BUNDLED_PROMPTS = Path(__file__).parent / "stages" / "generate" / "prompts"
"""The bundled prompt files, one per query type (``<type>.yaml``), read by the generate stage."""
QUERY_TYPES = tuple(sorted(path.stem for path in BUNDLED_PROMPTS.glob("*.yaml")))
"""The bundled query types, the default mixture: one per prompt file."""
Backend = Literal["auto", "torch", "torch-int8"]


class StrictModel(BaseModel):
    """A config section that refuses unknown keys."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class PrefixConfig(StrictModel):
    query: str = ""
    passage: str = ""


class PrepareConfig(StrictModel):
    """Load, validate, deduplicate and sample the corpus."""

    corpus: str | None = Field(
        None, description="Corpus: a BEIR folder, JSONL/JSON, CSV/TSV or Parquet records, a saved HF dataset, a document file or "
        "folder (PDF, Word, HTML, Markdown, text), demo:<name> or beir:<name>.",
    )
    id_field: str | None = Field(None, description="Field holding the document id.")
    title_field: str | None = Field(None, description="Field holding the title.")
    text_field: str | None = Field(None, description="Field holding the text.")
    skip_bad: bool = Field(False, description="Skip and count bad records instead of stopping at the first.")
    min_chars: int = Field(10, ge=0)
    dedup: bool = True
    max_passages: int = Field(100_000, ge=1, description="Source passages sampled for query generation.")
    max_chars: int = Field(2048, ge=1, description="Source passage text is cut at this many characters.")
    exclude_qrels: list[str] = Field(default_factory=list, description="Extra qrels whose relevant docs are never sampled.")
    seed: int = Field(42, description="Sampling seed.")
    chunk: bool | None = Field(
        None, description="Cut documents into passages of the student's tokens. None: on, except for a BEIR folder (passages "
        "already, judged whole by its qrels); document files are always cut, records only when too long to read whole.",
    )
    chunk_tokens: int = Field(200, ge=16, description="Passage size aimed at, in tokens.")
    chunk_max_tokens: int = Field(256, ge=16, description="No passage longer: title and special tokens included (the student's max_seq_length).")
    chunk_overlap: int = Field(32, ge=0, description="Tokens a passage may share with the one before it.")
    chunk_tokenizer: str | None = Field(None, description="The model whose tokenizer counts the tokens; None: train.student.")

    @model_validator(mode="after")
    def _chunk_sizes(self) -> PrepareConfig:
        if self.chunk_tokens > self.chunk_max_tokens:
            raise ValueError(f"chunk_tokens {self.chunk_tokens} is above chunk_max_tokens {self.chunk_max_tokens}")
        if self.chunk_overlap >= self.chunk_tokens:
            raise ValueError(f"chunk_overlap {self.chunk_overlap} must be below chunk_tokens {self.chunk_tokens}")
        return self


class LLMConfig(StrictModel):
    """How an instruct LLM runs (query generation, the LLM judge)."""

    backend: Literal["auto", "llama_cpp", "transformers", "vllm", "openai"] = Field(
        "auto", description="auto (llama_cpp for a GGUF or bundled model, vllm on a GPU when installed, else transformers), "
        "llama_cpp, transformers, vllm or openai.",
    )
    chat_template: str | None = Field(
        None, description="A Jinja chat template (text, or a path to a file) for a model that has none; None: the model's own."
    )
    context_tokens: int = Field(4096, ge=256, description="Context window (llama.cpp n_ctx, vLLM max_model_len).")
    batch_size: int = Field(8, ge=1, description="Prompts per forward pass (transformers; llama.cpp: replies decoded side by side) or per engine call (vLLM).")
    threads: int | None = Field(None, ge=1, description="llama.cpp CPU threads; None: all cores.")
    flash_attention: bool = Field(True, description="llama.cpp: flash attention (reads prompts ~14% faster on a CPU).")
    requantize: Literal["iq4_nl", "q4_0", "q8_0"] | None = Field(
        None, description="llama.cpp: requantize the GGUF once to this type (cached by the file's sha256) and run that; iq4_nl "
        "made generation 1.4x faster than Q4_K_M on a CPU, but cost qwen-0.5b 5 points of yield; None: the file as it is.",
    )
    tensor_parallel_size: int = Field(1, ge=1, description="vLLM: GPUs one model is split over.")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="vLLM: share of GPU memory it may take.")
    base_url: str | None = Field(None, description="openai: the server's base URL, e.g. http://localhost:8000/v1.")
    api_key_env: str = Field("OPENAI_API_KEY", description="openai: the environment variable that holds the API key.")
    max_concurrency: int = Field(8, ge=1, description="openai: requests in flight at once.")
    timeout: float = Field(60.0, gt=0, description="openai: seconds before a request is abandoned (and retried).")
    max_retries: int = Field(5, ge=0, description="openai: retries, with exponential backoff, on 429, 5xx, timeouts.")


class GenerateConfig(StrictModel):
    """Synthetic query generation: ``queries_per_passage`` queries per sampled passage, of a type drawn from a mixture; or the
    user's own queries."""

    queries: str | None = Field(
        None, description="Your own queries instead of generation: a .jsonl, .csv/.tsv (id and text fields, optional type) "
        "or .txt (one per line) file; no LLM is loaded and the queries have no source passage.",
    )
    model: str = Field("bundled:qwen-0.5b", description="Instruct LLM: GGUF path, HF id, bundled:<alias>, or a served model name.")
    llm: LLMConfig = Field(default_factory=LLMConfig)
    types: list[str] = Field(default_factory=lambda: list(QUERY_TYPES), min_length=1, description="Query types in the mixture.")
    type_weights: dict[str, float] | None = Field(None, description="Relative weight per type; None: uniform.")
    prompts: list[str] = Field(default_factory=list, description="Extra prompt-type YAML files or folders (new types, extra examples).")
    few_shot: int = Field(3, ge=0, description="Examples drawn from the bank per prompt.")
    few_shot_group: int = Field(
        32, ge=1, description="Consecutive passages (in passages.jsonl order) whose prompts of one type show the same drawn "
        "examples, so that they share everything before the passage and llama.cpp or vLLM reads it once; 1: a draw per passage.",
    )
    queries_per_passage: int = Field(
        2, ge=1, description="Replies sampled from each passage's prompt (GPL samples 3), each with its own seed; the passage is "
        "read once for all of them (llama.cpp, vLLM). A reply that repeats an earlier one of its passage is sampled again. "
        "2 (with 3 retries) writes 1.57x the queries/s of 1 on a CPU, retries counted, at the same yield (benchmarks/results/prompts.md, attempt 8); "
        "1 spreads the queries over twice the passages.",
    )
    temperature: float = Field(0.8, ge=0)
    max_new_tokens: int = Field(50, ge=1)
    passage_tokens: int = Field(
        256, ge=16, description="The passage is cut to this many tokens (of the LLM) in the prompt; a prompt file's passage_tokens "
        "overrides it for its type (the bundled claim type reads 384: an abstract's findings come at its end).",
    )
    min_chars: int = Field(5, ge=1, description="Shorter queries are dropped (replies such as yes, N/A or none rather than searches).")
    max_chars: int = Field(300, ge=1, description="Longer queries are dropped.")
    max_copied_words: int = Field(10, ge=2, description="Drop a query that copies this many consecutive words of its passage.")
    max_copied_prompt_words: int = Field(
        6, ge=2, description="Drop a query that copies this many consecutive words of its prompt: the instructions or the examples shown.",
    )
    retries: int = Field(
        3, ge=0, description="Sample a prompt again, with a new seed, while its reply would be dropped for itself "
        "(empty, too short or long, copying the passage, the prompt or an example); on llama.cpp a retry costs only its new tokens.",
    )
    block: int = Field(
        8, ge=1, description="Prompts of one type per backend call (llama.cpp decodes up to llm.batch_size of them side by side), "
        "a passage's queries always in one call; a kill loses at most one block.",
    )
    seed: int = 42


class MineConfig(StrictModel):
    """Candidate mining with fused retrievers and the round-trip filter."""

    retrievers: list[str] = Field(
        default_factory=lambda: ["bm25", "bundled:minilm"], min_length=1,
        description="bm25, or a dense model (HF id, path, bundled:<alias>); their lists are fused by RRF.",
    )
    top_k: int = Field(30, ge=1, description="Fused candidates written per query (for labeling).")
    depth: int = Field(100, ge=1, description="Hits taken from each retriever before fusion.")
    rrf_k: int = Field(60, ge=0, description="Reciprocal rank fusion: score = sum of 1 / (rrf_k + rank).")
    roundtrip_depth: int = Field(20, ge=1, description="Keep a query only if its source is this high in a retriever.")
    roundtrip: Literal["any", "all"] = Field("any", description="any: in one retriever's top; all: in every one's.")
    index: Literal["flat", "hnsw", "ivf"] = Field("flat", description="flat: exact search; hnsw/ivf: approximate, for large corpora.")
    backend: Backend = "auto"
    batch_size: int = Field(64, ge=1, description="Encoding batch size of dense retrievers.")

    @model_validator(mode="after")
    def _consistent(self) -> MineConfig:
        """Each retriever once; depth covers both top_k and the round-trip depth."""
        if len(set(self.retrievers)) < len(self.retrievers):
            raise ValueError(f"retrievers: each may appear once, got {self.retrievers}")
        if self.depth < max(self.top_k, self.roundtrip_depth):
            raise ValueError(f"depth ({self.depth}) must be at least top_k ({self.top_k}) and roundtrip_depth ({self.roundtrip_depth})")
        return self


class LabelConfig(StrictModel):
    """Teacher scoring, filtering, normalization and the train/dev split."""

    teacher: str | list[str] = Field(
        "auto",
        description="auto: chosen by measurement among the student and label.candidates, fusions included (teacher.json); or "
        "bm25, bi-encoder:<model>, cross-encoder:<model>, monot5:<model>, rankt5:<model>, llm-judge:<model>, "
        "ensemble:<member>=<weight>,... (a list = an ensemble of equal weights).",
    )
    candidates: list[str] = Field(
        ["bm25", "bi-encoder:bundled:mpnet"],
        description="auto: the teachers tried besides the student, alone and fused (add a cross-encoder:<model> or llm-judge:<model> here).",
    )
    selection_queries: int = Field(
        200, ge=4, description="auto: queries the choice is made on (judged dev/train queries when the corpus has them, else synthetic), "
        "half to choose, half to measure the margin.",
    )
    selection_max_overlap: float = Field(
        0.5, ge=0, le=1, description="auto: a synthetic query counts in the choice only when at most this share of its BM25 terms is in its "
        "source passage (generated queries copy their source; human queries share about a quarter of their terms with what they find).",
    )
    fusion_step: float = Field(0.1, gt=0, le=1, description="auto: the grid step of the fusion weights tried.")
    fit_tolerance: float = Field(
        1.0, ge=0, description="auto: fusions within this many standard errors of the best fit count as tied, and the tie goes to the "
        "simplest (fewest members, then weights nearest equal; 0: the best fit, whatever its margin).",
    )
    max_teacher_hours: float = Field(
        0.25, gt=0, description="auto: skip a candidate whose measured cost for the selection and the labeling would exceed this.",
    )
    headroom_margin: float = Field(
        0.0, description="auto: train only when the chosen teacher's lower confidence bound over the student exceeds this (nDCG@10 points).",
    )
    headroom_confidence: float = Field(0.9, gt=0, lt=1, description="auto: the confidence level of that interval.")
    batch_size: int = Field(32, ge=1, description="Pairs per model call (cross-encoder) / texts per encode (bi-encoder).")
    backend: Backend = Field("auto", description="Bi-encoder teacher backend.")
    ensemble_normalization: Literal["minmax", "percentile"] = Field(
        "minmax", description="How ensemble members' scores are put on one scale per query: min-max (measured best) or percentile ranks."
    )
    llm: LLMConfig = Field(default_factory=LLMConfig, description="How an llm-judge teacher runs.")
    audit: Literal["auto", "always", "never"] = Field(
        "auto", description="Teacher vs student audit: auto runs it when the corpus source has qrels (audit.json)."
    )
    audit_queries: int = Field(100, ge=1, description="Queries per audit (synthetic, and judged when there are qrels).")
    query_block: int = Field(16, ge=1, description="Queries scored per batched teacher call; a kill loses at most one block.")
    list_size: int = Field(20, ge=1, description="Passages kept per query (the teacher's top).")
    min_list_size: int = Field(20, ge=1, description="Drop a query with fewer candidates than this.")
    require_source_first: bool = Field(True, description="Drop a query unless the teacher ranks its source passage first.")
    low_percentile: float = Field(1.0, ge=0, le=100, description="Normalization floor: this percentile of all raw scores maps to 0.")
    high_percentile: float = Field(99.0, ge=0, le=100, description="Normalization ceiling: this percentile of all raw scores maps to 1.")
    drop_below_percentile: float = Field(25.0, ge=0, le=100, description="Drop queries whose top normalized score is under this percentile of the top scores.")
    dev_fraction: float = Field(
        0.1, ge=0, lt=1, description="Share of queries held out in dev.jsonl (the publish gate's queries), drawn before the filters "
        "from the kept queries and every query with a source passage and a full list; 0: none.",
    )
    dev_min_queries: int = Field(
        50, ge=0, description="Hold out at least this many queries (when dev_fraction > 0), but never more than half of those eligible.",
    )
    seed: int = 42

    @model_validator(mode="after")
    def _ordered(self) -> LabelConfig:
        if self.low_percentile >= self.high_percentile:
            raise ValueError(f"low_percentile ({self.low_percentile}) must be below high_percentile ({self.high_percentile})")
        if abs(round(1 / self.fusion_step) * self.fusion_step - 1) > 1e-9:
            raise ValueError(f"fusion_step ({self.fusion_step}) must divide 1 (e.g. 0.1, 0.25, 0.5)")
        return self


class TrainConfig(StrictModel):
    """Student fine-tuning: listwise KL distillation + masked InfoNCE (or a baseline loss)."""

    student: str = Field("bundled:minilm", description="The model to specialize: HF id, path or bundled:<alias>.")
    mode: Literal["full", "query"] = Field(
        "query", description="query (measured default): train only the query encoder against the base model's cached corpus embeddings "
        "(no passage is encoded in training, every document vector stays valid); full: fine-tune the whole student (the corpus is embedded again).",
    )
    adapter: Literal["none", "linear"] = Field(
        "none", description="query mode: none trains the whole query encoder; linear freezes it too and learns only a residual "
        "linear map on its embedding (d x d + d weights, zero at the start, so step 0 is the base).",
    )
    corpus_negatives: bool = Field(
        True, description="query mode: the contrastive term takes every corpus passage as a negative (their vectors are cached); false: the batch's passages.",
    )
    loss: Literal["listwise", "infonce", "marginmse"] = Field(
        "listwise", description="listwise: KL + 0.1 x masked InfoNCE (the papers'); infonce and marginmse: baselines."
    )
    teacher_temperature: float = Field(
        0.05, gt=0, description="Softmax temperature of the teacher's [0, 1] scores (measured: 0.05; the papers' 0.3, set for "
        "cross-encoder logits, flattens them).",
    )
    student_temperature: float = Field(
        0.05, gt=0, description="Softmax temperature of the student's cosines (also the infonce baseline's temperature)."
    )
    infonce_weight: float = Field(0.1, ge=0, description="listwise: weight of the InfoNCE term.")
    infonce_temperature: float = Field(0.01, gt=0, description="listwise: temperature of the InfoNCE term.")
    false_negative_ratio: float | None = Field(
        0.6, ge=0, le=1,
        description="Mask a query's own passages scoring above this share of its top score out of the InfoNCE negatives "
        "(listwise and infonce); None: mask none.",
    )
    passages_per_query: int = Field(20, ge=2, description="The teacher's top passages per query trained on.")
    types: list[str] | None = Field(None, min_length=1, description="Train only on the queries of these types (the ablation); None: every type.")
    max_queries: int | None = Field(None, ge=1, description="Train on a seeded sample of this many training queries; None: all of them.")
    learning_rate: float | None = Field(None, gt=0, description="None: chosen by the student's parameter count, doubled for the query side (see README).")
    weight_decay: float = Field(0.01, ge=0)
    warmup_epochs: float = Field(0.5, ge=0, description="Linear warmup over this many epochs, then linear decay to 0.")
    max_grad_norm: float = Field(1.0, gt=0)
    epochs: float | None = Field(None, gt=0, description="Training epochs; None: 1 for a full fine-tune, 3 for the query side.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps (overrides epochs).")
    batch_size: int = Field(32, ge=1, description="Queries per optimizer step on each device (each with passages_per_query passages).")
    mini_batch_size: int | None = Field(
        None, ge=1, description="Gradient caching: texts embedded per forward pass when smaller than batch_size; None: no caching."
    )
    query_max_length: int = Field(64, ge=1, description="Query tokens kept (capped by the model's own limit).")
    passage_max_length: int = Field(
        512, ge=1, description="full mode: passage tokens kept (capped by the model's own limit); query mode uses the base's cached embeddings.",
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description="auto: bf16 on a GPU that supports it, else fp32.")
    eval_steps: float = Field(0.1, gt=0, description="Dev loss and a checkpoint every this many steps (< 1: this share of the run).")
    logging_steps: float = Field(0.01, gt=0, description="Training loss logged every this many steps (< 1: this share of the run).")
    early_stopping_patience: int | None = Field(2, ge=1, description="Stop after this many dev evaluations without a lower loss; None: never.")
    gate_min_queries: int = Field(30, ge=1, description="The publish gate cannot tell below this many held-out queries, and keeps the base.")
    gate_margin: float = Field(0.0, description="Publish only when the CI's lower bound on the held-out nDCG@10 gain (points) is above this.")
    gate_confidence: float = Field(0.95, gt=0, lt=1, description="Confidence level of the gate's paired bootstrap interval.")
    keep_worse: bool = Field(False, description="Publish the trained model whatever the publish gate says.")
    force_train: bool = Field(
        False, description="Train even when the teacher selection found no teacher that beats the student (else the base is kept untrained).",
    )
    resume: bool = Field(False, description="Continue from the last checkpoint of an interrupted run with the same config and data.")
    output: str = Field("models/student", description="Where the model is published, relative to the work directory.")
    report_to: str | list[str] = Field("all", description="Trainer loggers: all (every installed one: TensorBoard, W&B...), none, or a list.")
    seed: int = 42

    @model_validator(mode="after")
    def _adapter_on_the_query_side(self) -> TrainConfig:
        if self.adapter != "none" and self.mode != "query":
            raise ValueError(f"adapter {self.adapter!r} trains on the query side only; set train.mode: query (or adapter: none)")
        return self


class EvaluateConfig(StrictModel):
    """Retrieval evaluation on BEIR-format test sets."""

    models: list[str] = Field(
        default_factory=list, description="Models to compare (HF id, path or bundled:<alias>); empty: the student before and after training.",
    )
    datasets: list[str] = Field(
        default_factory=list, description="BEIR test sets (folder, demo:<name> or beir:<name>); empty: the corpus source, when it has qrels for the split.",
    )
    split: str = Field("test", description="Qrels split to evaluate on.")
    backend: Backend = Field("auto", description="auto (the fastest CPU backend measured to lose < 0.3 nDCG@10), torch or torch-int8.")
    batch_size: int = Field(64, ge=1, description="Encoding batch size.")
    max_seq_length: int | None = Field(None, description="None: the model's own limit.")
    top_k: int = Field(100, ge=10, description="Depth of the retrieved lists (Recall@100 needs 100).")
    ignore_identical_ids: bool = Field(True, description="Drop a retrieved doc whose id equals the query id (BEIR/MTEB).")


class Config(StrictModel):
    """The whole run: a work directory and one section per stage."""

    workdir: Path = Field(Path("specialize-work"), description="Work directory: every stage's files and the resolved config.yaml.")
    prefixes: dict[str, PrefixConfig] = Field(
        default_factory=dict, description="Per-model query/passage prefixes, overriding the built-in table."
    )
    prepare: PrepareConfig = Field(default_factory=PrepareConfig)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    mine: MineConfig = Field(default_factory=MineConfig)
    label: LabelConfig = Field(default_factory=LabelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)


def config_field(key: str) -> FieldInfo:
    """The field a dotted config key names: ``prepare.max_passages`` is PrepareConfig's ``max_passages``."""
    section: type[BaseModel] = Config
    *parents, name = key.split(".")
    for part in parents:
        annotation = section.model_fields[part].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            raise KeyError(f"{key}: {part!r} is not a config section")
        section = annotation
    return section.model_fields[name]


def field_default(key: str) -> Any:
    """The default of a dotted config key: the one place a default is written, for the config, the CLI and the API."""
    return config_field(key).get_default(call_default_factory=True)


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> Config:
    """Read a YAML config (or start from defaults), apply dotted-key overrides, and validate.

    ``overrides`` maps dotted keys such as ``"prepare.max_passages"`` to values; a value of
    None means "not given" and is ignored, so CLI options can be passed through as they are.
    """
    source = str(path) if path is not None else "config"
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise SpecializeError(f"{path}: config file not found")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f":{mark.line + 1}" if mark is not None else ""
            raise SpecializeError(f"{path}{line}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
        except UnicodeDecodeError:
            raise SpecializeError(f"{path}: not valid UTF-8") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise SpecializeError(f"{path}: expected a mapping of sections at the top level")
        data = loaded or {}
    return build_config(data, overrides, source)


def build_config(data: dict[str, Any], overrides: Mapping[str, Any] | None = None, source: str = "config") -> Config:
    """Validate config ``data`` after applying dotted-key ``overrides`` (None values are ignored)."""
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(data, dotted, value)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise SpecializeError(f"{source}: {_describe(exc)}") from None


def parse_assignment(text: str) -> tuple[str, Any]:
    """Split a ``--set key.path=value`` argument; the value is parsed as YAML (numbers, lists...)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise SpecializeError(f"--set {text!r}: expected key.path=value")
    try:
        return key.strip(), yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        where = f" (column {exc.problem_mark.column + 1} of the value)" if getattr(exc, "problem_mark", None) else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise SpecializeError(f"--set {text!r}: the value is not valid YAML: {problem}{where}") from None


def write_resolved(config: Config) -> Path:
    """Write the resolved config, every default filled in, to ``<workdir>/config.yaml``."""
    path = Workdir(config.workdir).config
    text = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
    write_text(path, text)
    return path


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    *parents, leaf = dotted.split(".")
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise SpecializeError(f"config: cannot set {dotted!r}: {part!r} is not a section")
        node = child
    node[leaf] = value


def _describe(exc: ValidationError) -> str:
    """One line for the first validation error, with a suggestion for an unknown key."""
    error = exc.errors()[0]
    location = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        valid = _valid_keys(error["loc"][:-1])
        key = str(error["loc"][-1])
        close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
        hint = f" (did you mean {close[0]!r}?)" if close else f" (valid keys: {', '.join(valid)})"
        return f"unknown key {location!r}{hint}"
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"{location}: {error['msg']}{more}"


def _valid_keys(parent: tuple[Any, ...]) -> list[str]:
    """Field names of the config section at ``parent`` (a location from a validation error)."""
    node: Any = Config
    for part in parent:
        if isinstance(node, type) and issubclass(node, BaseModel):
            field = node.model_fields.get(str(part))
            node = field.annotation if field is not None else None
        else:  # a mapping such as prefixes: the part is a key, step to the value type
            node = typing.get_args(node)[-1] if typing.get_args(node) else None
    if isinstance(node, type) and issubclass(node, BaseModel):
        return list(node.model_fields)
    return []
