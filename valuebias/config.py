"""The registry configuration: one YAML file (``valuebias.yaml`` by default) describing what to audit.

The file's shape is declared once, as typed pydantic models (``ConfigFile`` and the blocks below it):
keys, types, choices, bounds and defaults. Every key is documented in the README ("Configuration").
Loading is strict: an unknown key, a missing required key or a value of the wrong kind is an
``InputError`` naming the file, the line and the key path (for example
``valuebias.yaml: row 14, field 'models.demo-llama-1.huggingface.revison'``). Rules that relate one key
to another (a language model needs a variant, a pair names two registered language models, ...) are
checked after the types, with the same kind of error. Relative paths in the file are resolved against
the file's own folder. The validated file becomes a ``RegistryConfig``, the object the rest of the
product reads.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError, field_validator,
                      model_validator)

from valuebias.errors import InputError
from valuebias.model_content import COMMIT
from valuebias.safe_yaml import NoAliasLoader, yaml_problem
from valuebias.text_input import line_of

DEFAULT_CONFIG_NAME = "valuebias.yaml"
#: Model and corpus ids are partition keys, file names and Kubernetes label values: one pattern, checked
#: here (and by the ``model_registry`` data contract, whose regex must stay equal to it).
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
ID_RULE = "ASCII letters and digits, then also '.', '_' or '-', at most 100 characters"
#: A registry config larger than this is refused before it is parsed.
MAX_CONFIG_BYTES = 1 << 20
MODEL_KINDS = ("reward_model", "language_model")
LM_VARIANTS = ("instruction_tuned", "pretrained")
WORD_RULES = ("single_token", "full_sequence")
CORPUS_FORMATS = ("csv", "dic", "dicx")
CATEGORY_RULES = ("identity", "foundation")
WILDCARD_MODES = ("expand", "drop", "error")
SCORE_READERS = ("logits[0]", "score", "logits[:,0]")
DTYPES = ("auto", "float32", "bfloat16", "float16")
#: ``huggingface.attn_implementation``: the attention kernels transformers can be asked for by name.
ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")
#: Where scoring partitions run: a Dagster Pipes subprocess on this machine (default), a Kubernetes pod
#: through Dagster Pipes, or inside the Dagster step itself (tests and debugging).
SCORING_LAUNCHERS = ("subprocess", "kubernetes", "in_process")
#: How a word listed in several categories is ranked: k rank slots (the paper) or one (docs/METHOD.md#32-ranks).
CATEGORY_OVERLAPS = ("rank_slot_per_category", "one_rank_slot")
#: ``analysis.published_coverage``: a published score file must score every corpus word (``complete``), or may
#: miss some (``partial``: ranks are then computed on the words every compared reward model has).
PUBLISHED_COVERAGES = ("complete", "partial")
#: The partition-free key of the pooled Figure-2 analysis (``analysis.pool_language_models``).
POOLED = "pooled"
#: What a demo reward model is trained to prefer (``valuebias.demo_models.reward_models``).
DEMO_PREFERENCES = ("category", "frequent_words", "nothing")
SWEEP_PROMPTS = ("greatest_ever_one", "best_ever_one", "worst_ever_one")
#: Demo models train this many steps unless the entry says otherwise (a demo LM stops once converged,
#: typically after 50-110 full-batch steps).
DEMO_TRAIN_STEPS = {"reward_model": 300, "language_model": 600}

Id = Annotated[str, Field(pattern=ID_PATTERN)]
Count = Annotated[StrictInt, Field(ge=1)]
Natural = Annotated[StrictInt, Field(ge=0)]


# --------------------------------------------------------------------------------------------------
# The file, as typed models. Text fields also take YAML numbers (a revision such as 1234 is read as an
# int by YAML); integers and booleans are strict (no "5" for 5, no "yes please" for true).


class _Block(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)
    #: A key written with an empty value (``pairs:``) takes its default, as if it were left out.
    empty_means_default: ClassVar[bool] = True

    @model_validator(mode="before")
    @classmethod
    def _drop_empty_values(cls, data: Any) -> Any:
        if not cls.empty_means_default or not isinstance(data, dict):
            return data
        return {key: value for key, value in data.items()
                if not (value is None and key in cls.model_fields and not cls.model_fields[key].is_required())}


class PromptsBlock(_Block):
    uri: str


class WordlistBlock(_Block):
    size: Count = 50000


class Toleration(_Block):
    key: str | None = None
    operator: str | None = None
    value: str | None = None
    effect: str | None = None
    tolerationSeconds: StrictInt | None = None  # noqa: N815 (the PodSpec's own spelling)


class KubernetesScoringConfig(_Block):
    """The pod a scoring partition runs in when ``scoring.launcher`` is ``kubernetes``."""

    image: str
    namespace: str | None = None  # None: the namespace Dagster runs in (or "default")
    gpus: Natural = 1  # nvidia.com/gpu requested and limited
    memory: str | None = None  # e.g. "64Gi": requested and limited
    cpu: str | None = None  # e.g. "8": requested
    node_selector: dict[str, str] = {}
    tolerations: tuple[Toleration, ...] = ()
    service_account: str | None = None
    secret_env: tuple[str, ...] = ()  # Kubernetes Secrets whose keys become environment variables
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"


class ScoringBlock(_Block):
    batch_size: Count = 64
    threads: Natural = 0  # CPU threads for torch; 0 = torch's default
    launcher: Literal[SCORING_LAUNCHERS] = "subprocess"
    kubernetes: KubernetesScoringConfig | None = None


class CorpusBlock(_Block):
    uri: str
    format: Literal[CORPUS_FORMATS]
    word_column: str | None = None
    category_column: str | None = None
    category_columns: tuple[str, ...] | None = None
    category_rule: Literal[CATEGORY_RULES] = "identity"
    categories: tuple[str, ...] | None = None
    wildcards: Literal[WILDCARD_MODES] = "expand"


class HuggingFaceBlock(_Block):
    path: str
    revision: str | None = None
    dtype: Literal[DTYPES] = "auto"
    score: Literal[SCORE_READERS] | None = None  # reward models only; default logits[0]
    trust_remote_code: StrictBool = False
    allow_pickle: StrictBool = False
    clean_up_tokenization_spaces: StrictBool | None = None  # when decoding vocabulary strings; None: the tokenizer's
    gguf_file: str | None = None  # a .gguf file in `path` to load (weights and tokenizer) instead of safetensors
    attn_implementation: Literal[ATTN_IMPLEMENTATIONS] | None = None  # None: eager for Gemma-2, else transformers'


class DemoBlock(_Block):
    architecture: Literal["llama", "gemma"]
    preferred_category: str | None = None  # required when prefers is category
    prefers: Literal[DEMO_PREFERENCES] = "category"  # reward models: category, frequent_words or nothing
    train_corpus: str | None = None  # default: the first corpus
    seed: Natural = 0
    hidden_size: Count = 64
    num_layers: Count = 2
    train_steps: Count | None = None  # default: DEMO_TRAIN_STEPS of the model's kind


class SweepBlock(_Block):
    prompts: tuple[str, ...] | None = None  # default (or empty): SWEEP_PROMPTS
    top_n: Count = 20


class ModelBlock(_Block):
    empty_means_default = False  # ``huggingface:`` with nothing under it is an error naming that key
    kind: Literal[MODEL_KINDS]
    family: str
    variant: Literal[LM_VARIANTS] | None = None
    display_name: str | None = None
    vocabulary_sweep: SweepBlock | None = None
    huggingface: HuggingFaceBlock | None = None
    published: dict[str, str] | None = None
    demo: DemoBlock | None = None


class AnalysisConfig(_Block):
    """How the statistics are run (docs/METHOD.md#3-reward-model-scores-figure-1,
    #4-language-model-log-probabilities-figure-2, #8-the-registrys-own-analyses). The defaults are the paper's
    choices."""

    families: tuple[str, ...] | None = None  # the families compared (>= 2); default: every RM family, alphabetical
    comparisons: tuple[tuple[str, str], ...] | None = None  # family pairs tested per panel; default: every pair
    permutations: Count = 10000
    seed: Natural = 0
    # also run Figure 1 on ranks residualised on word frequency (docs/METHOD.md#83-frequency-control)
    frequency_control: StrictBool = True
    category_overlap: Literal[CATEGORY_OVERLAPS] = "rank_slot_per_category"  # the paper's: a word in k
    # categories is ranked k times (tied with itself); one_rank_slot ranks each word once
    pool_language_models: StrictBool = False  # also Figure 2 over every registered LM together (pair "pooled")
    published_coverage: Literal[PUBLISHED_COVERAGES] = "complete"  # partial: published files may miss words

    @field_validator("families", mode="before")
    @classmethod
    def _two_or_more(cls, value: Any) -> Any:
        if value is not None and (not isinstance(value, list) or len(value) < 2 or len(set(map(str, value))) < len(value)):
            raise ValueError("give two or more different families, e.g. [gemma, llama] or [gemma, llama, qwen]")
        return value

    @field_validator("comparisons", mode="before")
    @classmethod
    def _pairs_of_families(cls, value: Any) -> Any:
        if value is not None and (not isinstance(value, list) or not value or any(
                not isinstance(pair, list) or len(pair) != 2 or pair[0] == pair[1] for pair in value)):
            raise ValueError("give a list of [family_a, family_b] pairs of two different families, "
                             "e.g. [[gemma, llama], [gemma, qwen]]")
        return value


class ImplicitRewardsConfig(_Block):
    """The language-model tables: Table-1 size, Figure-3 words, and the rule that gives words a log-prob."""

    top_n: Count = 15
    words: tuple[str, ...] = ("freedom", "love")
    word_rule: Literal[WORD_RULES] = "single_token"  # or full_sequence (also multi-token words, scored whole)

    @field_validator("words")
    @classmethod
    def _single_words(cls, words: tuple[str, ...]) -> tuple[str, ...]:
        cleaned = [w.strip().lower() for w in words]
        if not cleaned or any(not w or " " in w for w in cleaned):
            raise ValueError("give one or more single words, e.g. [freedom, love]")
        return tuple(dict.fromkeys(cleaned))


class ScheduleBlock(_Block):
    cron: str = "0 2 * * *"

    @field_validator("cron")
    @classmethod
    def _five_fields(cls, cron: str) -> str:
        if len(cron.split()) != 5:
            raise ValueError(f"'{cron}' is not a 5-field cron expression (e.g. '0 2 * * *': every day at 02:00)")
        return cron


class ConcurrencyBlock(_Block):
    gpu: Count | None = None  # None: 1 on a machine with a GPU, else as many as the CPU cores allow


#: How long a duration key may read: a number and a unit (s, m, h or d), e.g. ``90s``, ``30m``, ``24h``, ``7d``.
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
ALERT_CHANNELS = ("file", "webhook")
#: What the statistics do while a model's last scoring run failed (``failed_models``).
FAILED_MODEL_POLICIES = ("wait", "exclude")


class AlertChannel(_Block):
    type: Literal[ALERT_CHANNELS]
    path: str | None = None  # file: default <state_dir>/alerts.jsonl
    url_env: str | None = None  # webhook: the name of the environment variable holding the URL (never the URL)
    attempts: Count = 3  # webhook: tries per delivery (1 s, then 2 s, ... apart)

    @model_validator(mode="after")
    def _fields_of_type(self) -> "AlertChannel":
        if self.type == "webhook" and not self.url_env:
            raise ValueError("a webhook channel needs url_env: the name of the environment variable holding its URL "
                             "(e.g. url_env: VALUEBIAS_ALERT_WEBHOOK)")
        if self.type == "webhook" and self.url_env.startswith(("http://", "https://")):
            raise ValueError("url_env is the name of an environment variable, not the URL itself (keep secrets "
                             "out of the config)")
        if self.type == "file" and self.url_env:
            raise ValueError("url_env is for webhook channels; a file channel takes path")
        return self


class AlertsBlock(_Block):
    stale_after: str = "24h"  # a partition stale or missing for longer than this is alerted
    channels: tuple[AlertChannel, ...] = (AlertChannel(type="file"),)

    @field_validator("stale_after")
    @classmethod
    def _duration(cls, value: str) -> str:
        text = str(value).strip()
        if not (len(text) >= 2 and text[:-1].isdigit() and text[-1] in DURATION_UNITS and int(text[:-1]) > 0):
            raise ValueError(f"'{value}' is not a duration: a whole number and a unit (s, m, h or d), e.g. 24h")
        return text

    @property
    def stale_after_seconds(self) -> int:
        return int(self.stale_after[:-1]) * DURATION_UNITS[self.stale_after[-1]]


class ConfigFile(_Block):
    """Everything a registry config file may say."""

    state_dir: str = ".valuebias"
    storage: str | None = None  # default: <state_dir>/data
    prompts: PromptsBlock
    wordlist: WordlistBlock = WordlistBlock()
    corpora: dict[Id, CorpusBlock] = Field(min_length=1)
    models: dict[Id, ModelBlock] = Field(min_length=1)
    pairs: tuple[tuple[str, ...], ...] = ()  # [model_a, model_b] language-model pairs
    analysis: AnalysisConfig = AnalysisConfig()
    implicit_rewards: ImplicitRewardsConfig = ImplicitRewardsConfig()
    scoring: ScoringBlock = ScoringBlock()
    schedule: ScheduleBlock = ScheduleBlock()
    concurrency: ConcurrencyBlock = ConcurrencyBlock()
    alerts: AlertsBlock = AlertsBlock()
    failed_models: Literal[FAILED_MODEL_POLICIES] = "wait"


# --------------------------------------------------------------------------------------------------
# What the rest of the product reads.


class CorpusConfig(CorpusBlock):
    """One corpus, as read by ingestion: its block with its id and the uri resolved."""

    corpus_id: Id


@dataclass(frozen=True)
class ModelConfig:
    """One registered model. ``source`` names which of the three source blocks is set."""

    model_id: str
    kind: str
    family: str
    source: str
    settings: dict[str, Any]  # the source block: huggingface fields, published {corpus: uri}, or demo recipe
    display_name: str | None = None
    variant: str | None = None  # language models only: instruction_tuned or pretrained
    vocabulary_sweep: dict[str, Any] | None = None  # reward models only: {prompts, top_n}

    def to_entry(self) -> dict[str, Any]:
        """The entry as plain JSON data (what a scoring worker receives); :meth:`from_entry` reads it back."""
        return dataclasses.asdict(self)

    @classmethod
    def from_entry(cls, entry: dict[str, Any]) -> "ModelConfig":
        return cls(**entry)

    @property
    def fingerprint(self) -> str:
        """Content hash of everything that determines this model's scores (its whole entry)."""
        entry = {"kind": self.kind, "family": self.family, "source": self.source, "settings": self.settings}
        if self.variant is not None:  # absent for reward models, so their fingerprints are unchanged
            entry["variant"] = self.variant
        return hashlib.sha256(json.dumps(entry, sort_keys=True).encode()).hexdigest()[:16]


def pair_id(model_a: str, model_b: str) -> str:
    """The partition key of a language-model pair."""
    return f"{model_a}__vs__{model_b}"


@dataclass(frozen=True)
class RegistryConfig:
    path: Path
    state_dir: Path
    storage_uri: str
    prompts_uri: str
    wordlist_size: int
    scoring_batch_size: int
    scoring_threads: int  # CPU threads for torch; 0 = torch's default
    corpora: dict[str, CorpusConfig]
    models: dict[str, ModelConfig]
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    schedule_cron: str = ScheduleBlock().cron
    gpu_concurrency: int | None = ConcurrencyBlock().gpu  # None: see valuebias.orchestration.cli.scoring_slots
    pairs: tuple[tuple[str, str], ...] = ()  # (model_a, model_b) language-model pairs
    implicit_rewards: ImplicitRewardsConfig = field(default_factory=ImplicitRewardsConfig)
    scoring_launcher: str = ScoringBlock().launcher
    kubernetes: KubernetesScoringConfig | None = None
    alerts: AlertsBlock = field(default_factory=AlertsBlock)
    failed_models: str = "wait"  # FAILED_MODEL_POLICIES

    @property
    def alerts_file(self) -> Path:
        """The default ``file`` alert channel: ``<state_dir>/alerts.jsonl``."""
        return Path(self.state_dir) / "alerts.jsonl"

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    @property
    def digest_cache_path(self) -> Path:
        """The cached digests of local model files (``valuebias.model_content.DigestCache``)."""
        return Path(self.state_dir) / "content_digests.json"

    def reward_models(self) -> list[ModelConfig]:
        return [m for m in self.models.values() if m.kind == "reward_model"]

    def language_models(self) -> list[ModelConfig]:
        return [m for m in self.models.values() if m.kind == "language_model"]

    def pair_models(self) -> dict[str, tuple[str, str]]:
        """{pair id: (model_a, model_b)} in config order."""
        return {pair_id(a, b): (a, b) for a, b in self.pairs}

    def figure2_groups(self) -> dict[str, list[str]]:
        """The language models of each Figure-2 analysis: {pair id: [model_a, model_b]} for every pair, then
        {"pooled": every LM} when ``analysis.pool_language_models`` is on."""
        groups = {pair: [a, b] for pair, (a, b) in self.pair_models().items()}
        if self.analysis.pool_language_models:
            groups[POOLED] = [m.model_id for m in self.language_models()]
        return groups

    def compared_families(self) -> tuple[str, ...]:
        """``analysis.families``, or every reward-model family of the registry, alphabetical."""
        return self.analysis.families or tuple(sorted({m.family for m in self.reward_models()}))

    def family_comparisons(self) -> tuple[tuple[str, str], ...]:
        """``analysis.comparisons``, or every pair of the compared families (in their order)."""
        if self.analysis.comparisons:
            return self.analysis.comparisons
        families = self.compared_families()
        return tuple((a, b) for i, a in enumerate(families) for b in families[i + 1:])


# --------------------------------------------------------------------------------------------------
# YAML with line numbers: every mapping key and list item remembers the line it was written on.


class _LineLoader(NoAliasLoader):
    """SafeLoader that records the line of every mapping key and rejects duplicate keys and aliases."""

    def __init__(self, stream, source: str):
        super().__init__(stream)
        self.source = source
        self.lines: dict[tuple, int] = {}

    def construct_document(self, node):
        self._record(node, ())
        return super().construct_document(node)

    def _record(self, node, path: tuple) -> None:
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key_node, value_node in node.value:
                key = str(key_node.value)
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise InputError("duplicate key", source=self.source, row=line,
                                     field=_field_name(path + (key,)))
                seen.add(key)
                self.lines[path + (key,)] = line
                self._record(value_node, path + (key,))
        elif isinstance(node, yaml.SequenceNode):  # list items are recorded under their index
            for index, item in enumerate(node.value):
                self.lines[path + (index,)] = item.start_mark.line + 1
                self._record(item, path + (index,))


def _field_name(path: tuple) -> str | None:
    """``('pairs', 1, 0)`` -> ``pairs[1][0]``; ``('models', 'm1', 'kind')`` -> ``models.m1.kind``."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or None


def _load_yaml_with_lines(text: str, source: str) -> tuple[Any, dict[tuple, int]]:
    loader = _LineLoader(text, source)
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as exc:
        message, row = yaml_problem(exc)
        raise InputError(message, source=source, row=row) from exc
    finally:
        loader.dispose()
    return data, loader.lines


class _Located:
    """Turns a key path of the file into an InputError naming the file, the line and the key."""

    def __init__(self, source: str, lines: dict[tuple, int]):
        self.source = source
        self.lines = lines

    def error(self, path: tuple, message: str) -> InputError:
        row = None
        for depth in range(len(path), 0, -1):  # nearest enclosing key that has a line
            row = self.lines.get(path[:depth])
            if row is not None:
                break
        return InputError(message, source=self.source, row=row, field=_field_name(path))

    def from_validation(self, err: ValidationError) -> InputError:
        """The first problem in file order, in the file's own words; the count of the others."""
        problems = []
        for problem in err.errors():
            path = tuple(part for part in problem["loc"] if part != "[key]")
            problems.append((self.error(path, _explain(problem, path)), path))
        problems.sort(key=lambda p: (p[0].row is None, p[0].row or 0))
        first, path = problems[0]
        if len(problems) > 1:
            more = len(problems) - 1
            first = self.error(path, f"{first.message} (and {more} more problem{'s' if more > 1 else ''} "
                                     "in this file)")
        return first


def _explain(problem: dict, path: tuple) -> str:
    """One pydantic error as a sentence about the YAML the user wrote."""
    kind, value, ctx = problem["type"], problem.get("input"), problem.get("ctx") or {}
    if kind == "missing":
        return "required key is missing"
    if kind == "extra_forbidden":
        return f"unknown key '{path[-1]}' (known keys: {', '.join(_declared_at(path[:-1]).model_fields)})"
    if kind == "literal_error":
        return f"'{value}' is not one of: {', '.join(typing.get_args(_declared_at(path)))}"
    if kind == "string_pattern_mismatch" and ctx.get("pattern") == ID_PATTERN:
        return (f"id {value!r} does not match {ID_PATTERN}: {ID_RULE} (it is a partition key and a file "
                "name)")
    if kind == "greater_than_equal":
        return f"expected an integer >= {ctx['ge']}, got {_shown(value)}"
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {_shown(value)}"
    if kind == "too_short" and isinstance(value, dict):
        return "give at least one entry"
    if kind == "value_error":
        return str(ctx.get("error", problem["msg"]))
    return problem["msg"]


#: pydantic's error type -> what the key expects, in YAML's words.
_EXPECTED = {"int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
             "bool_type": "true or false", "bool_parsing": "true or false", "string_type": "text",
             "model_type": "a mapping (key: value)", "model_attributes_type": "a mapping (key: value)",
             "dict_type": "a mapping (key: value)", "list_type": "a list", "tuple_type": "a list"}


def _shown(value: Any) -> str:
    """A value as the user wrote it in YAML."""
    if value is None:
        return "nothing (an empty value)"
    if isinstance(value, bool):
        return "true" if value else "false"
    return {dict: "a mapping", list: "a list"}.get(type(value), repr(value))


def _declared_at(path: tuple) -> Any:
    """The type ``ConfigFile`` declares at ``path``: a block's model class (its keys) or a Literal (its choices)."""
    node: Any = ConfigFile
    for part in path:
        if isinstance(node, type) and issubclass(node, BaseModel):
            node = node.model_fields[part].annotation
        else:  # a dict or tuple annotation: step into its values
            node = typing.get_args(node)[-1]
        while typing.get_origin(node) in (typing.Union, types.UnionType, Annotated):  # X | None, Annotated
            node = next(arg for arg in typing.get_args(node) if arg is not type(None))
    return node


# --------------------------------------------------------------------------------------------------
# Loading: read, parse, validate the types, then the rules between keys.


def resolve_uri(uri: str, base_dir: Path) -> str:
    """Relative local paths are relative to the config file; URIs with a scheme are left alone."""
    if "://" in uri:
        return uri
    path = Path(uri).expanduser()
    return str(path if path.is_absolute() else (base_dir / path).resolve())


def load_config(path: str | Path) -> RegistryConfig:
    path = Path(path).expanduser().resolve()
    source = str(path)
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise InputError(f"the config file is {size} bytes; a registry config is at most "
                             f"{MAX_CONFIG_BYTES} bytes", source=source)
        data = path.read_bytes()
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"not UTF-8 text (byte {exc.start})", source=source, row=line_of(data, exc.start)) from None
    except OSError as exc:
        raise InputError(f"cannot read config file: {exc.strerror or exc}", source=source) from exc
    data, lines = _load_yaml_with_lines(text, source)
    at = _Located(source, lines)
    if data is None:
        raise InputError("the config file is empty; see README.md ('Configuration') for the keys", source=source)
    if not isinstance(data, dict):
        raise at.error((), f"expected a mapping of keys (prompts, corpora, models, ...), got {_shown(data)}")
    try:
        file = ConfigFile.model_validate(data)
    except ValidationError as err:
        raise at.from_validation(err) from None
    return _registry(file, path, at)


def _registry(file: ConfigFile, path: Path, at: _Located) -> RegistryConfig:
    base = path.parent
    state_dir = Path(resolve_uri(file.state_dir, base))
    scoring = file.scoring
    if scoring.launcher == "kubernetes" and scoring.kubernetes is None:
        raise at.error(("scoring", "kubernetes"), "required when scoring.launcher is kubernetes (at least: image)")
    corpora = {cid: CorpusConfig(corpus_id=cid, **(block.model_dump() | {"uri": resolve_uri(block.uri, base)}))
               for cid, block in file.corpora.items()}
    models = {mid: _model(at, mid, block, base, corpora) for mid, block in file.models.items()}
    _check_families(at, file.analysis, models)
    return RegistryConfig(
        path=path, state_dir=state_dir,
        storage_uri=resolve_uri(file.storage, base) if file.storage else str(state_dir / "data"),
        prompts_uri=resolve_uri(file.prompts.uri, base), wordlist_size=file.wordlist.size,
        scoring_batch_size=scoring.batch_size, scoring_threads=scoring.threads, corpora=corpora, models=models,
        analysis=file.analysis, schedule_cron=file.schedule.cron, gpu_concurrency=file.concurrency.gpu,
        pairs=_pairs(at, file.pairs, models), implicit_rewards=file.implicit_rewards,
        scoring_launcher=scoring.launcher, kubernetes=scoring.kubernetes,
        alerts=file.alerts.model_copy(update={"channels": tuple(
            c.model_copy(update={"path": resolve_uri(c.path, base)}) if c.path else c for c in file.alerts.channels)}),
        failed_models=file.failed_models)


def _model(at: _Located, mid: str, e: ModelBlock, base: Path, corpora: dict[str, CorpusConfig]) -> ModelConfig:
    """The rules between a model's keys (its kind decides which are allowed), and its settings."""
    p = ("models", mid)
    language_model = e.kind == "language_model"
    if language_model and e.variant is None:
        raise at.error(p + ("variant",), "required key is missing (instruction_tuned or pretrained)")
    if not language_model and "variant" in e.model_fields_set:
        raise at.error(p + ("variant",), f"only language models have a variant; '{mid}' is a {e.kind}")
    sources = [s for s in MODEL_SOURCES if s in e.model_fields_set]
    if len(sources) != 1:
        found = ", ".join(sources) if sources else "none"
        raise at.error(p, f"a model needs exactly one source ({', '.join(MODEL_SOURCES)}); found: {found}")
    source = sources[0]
    sp = p + (source,)
    block = getattr(e, source)
    if block is None:
        raise at.error(sp, "expected a mapping (key: value), got nothing (an empty value)")
    settings = SOURCE_RULES[source](at, sp, block, kind=e.kind, base=base, corpora=corpora)
    return ModelConfig(model_id=mid, kind=e.kind, family=e.family, source=source, settings=settings,
                       display_name=e.display_name, variant=e.variant, vocabulary_sweep=_sweep(at, p, e))


# --------------------------------------------------------------------------------------------------
# Each model source's config rules: its block (checked against the model's kind) -> the entry's settings.
# The rest of what a source does lives in its module of ``valuebias.model_sources``.


def _huggingface_settings(at: _Located, sp: tuple, block: HuggingFaceBlock, *, kind: str, base: Path,
                          corpora: dict[str, CorpusConfig]) -> dict[str, Any]:
    if kind == "language_model" and block.score is not None:
        raise at.error(sp + ("score",), "'score' is for reward models; a language model is read through "
                                        "its next-token distribution")
    # unset options stay out of the settings, so a model's fingerprint changes only when one is set
    settings = block.model_dump(exclude={"score", *({"clean_up_tokenization_spaces"}
                                                  if block.clean_up_tokenization_spaces is None else ())})
    if block.gguf_file is None:
        settings.pop("gguf_file")
    if block.attn_implementation is None:
        settings.pop("attn_implementation")
    if block.trust_remote_code and not _looks_local(block.path, base) and not COMMIT.match(block.revision or ""):
        raise at.error(sp + ("revision",), remote_code_pin_message(block.path, block.revision))
    # a hub id (org/name) stays as written; a local path resolves against the config file
    settings["path"] = resolve_uri(block.path, base) if _looks_local(block.path, base) else block.path
    if kind == "reward_model":
        settings["score"] = block.score or "logits[0]"
    return settings


def _published_settings(at: _Located, sp: tuple, block: dict[str, str], *, kind: str, base: Path,
                        corpora: dict[str, CorpusConfig]) -> dict[str, Any]:
    if kind == "language_model":
        raise at.error(sp, "language models have no published scores; use a huggingface or demo source")
    if not block:
        raise at.error(sp, "list at least one corpus id with the uri of its score file")
    for cid in block:
        if cid not in corpora:
            raise at.error(sp + (cid,), f"unknown corpus '{cid}' (corpora: {', '.join(corpora)})")
    return {cid: resolve_uri(uri, base) for cid, uri in block.items()}


def _demo_settings(at: _Located, sp: tuple, block: DemoBlock, *, kind: str, base: Path,
                   corpora: dict[str, CorpusConfig]) -> dict[str, Any]:
    language_model = kind == "language_model"
    train_corpus = block.train_corpus or next(iter(corpora))
    if train_corpus not in corpora:
        raise at.error(sp + ("train_corpus",), f"unknown corpus '{train_corpus}' (corpora: {', '.join(corpora)})")
    if block.prefers == "category" and block.preferred_category is None:
        raise at.error(sp + ("preferred_category",), "required key is missing (a category of "
                                                     f"'{train_corpus}'), unless prefers is frequent_words or nothing")
    if block.prefers != "category" and (language_model or block.preferred_category is not None):
        raise at.error(sp + ("prefers",), "only demo reward models prefer frequent_words or nothing, and then "
                                          "without a preferred_category" if not language_model else
                       "demo language models prefer a category (prefers: category)")
    settings = block.model_dump(exclude={"prefers"} if block.prefers == "category" else {"preferred_category"})
    return settings | {"train_corpus": train_corpus, "train_steps": block.train_steps or DEMO_TRAIN_STEPS[kind]}


#: source name (a key of a model entry) -> its rules. ``valuebias.model_sources`` has one module per name.
SOURCE_RULES = {"huggingface": _huggingface_settings, "published": _published_settings, "demo": _demo_settings}
MODEL_SOURCES = tuple(SOURCE_RULES)


def _sweep(at: _Located, p: tuple, e: ModelBlock) -> dict[str, Any] | None:
    """The optional full-vocabulary sweep of a reward model (FAccT predecessor, docs/METHOD.md#6-vocabulary-sweep)."""
    if "vocabulary_sweep" not in e.model_fields_set:
        return None
    if e.kind != "reward_model":
        raise at.error(p + ("vocabulary_sweep",), "only reward models have a vocabulary sweep")
    sweep = e.vocabulary_sweep or SweepBlock()
    return {"prompts": list(sweep.prompts or SWEEP_PROMPTS), "top_n": sweep.top_n}


def _check_families(at: _Located, analysis: AnalysisConfig, models: dict[str, ModelConfig]) -> None:
    """``analysis.families`` names reward-model families of this registry; ``comparisons`` names those families."""
    registered = sorted({m.family for m in models.values() if m.kind == "reward_model"})
    for i, family in enumerate(analysis.families or ()):
        if family not in registered:
            raise at.error(("analysis", "families", i), f"no reward model has family '{family}' (families: "
                                                        f"{', '.join(registered) or 'none'})")
    allowed = analysis.families or registered
    seen: dict[frozenset, int] = {}
    for i, pair in enumerate(analysis.comparisons or ()):
        for j, family in enumerate(pair):
            if family not in allowed:
                raise at.error(("analysis", "comparisons", i, j),
                               f"'{family}' is not a compared family (analysis.families: {', '.join(allowed)})")
        if frozenset(pair) in seen:
            raise at.error(("analysis", "comparisons", i), f"{pair[0]} / {pair[1]} is already listed "
                                                           f"(comparisons[{seen[frozenset(pair)]}])")
        seen[frozenset(pair)] = i


def remote_code_pin_message(repo_id: str, revision: str | None) -> str:
    """Why a hub model with ``trust_remote_code`` needs ``revision`` pinned to a commit, and how to get one."""
    got = "it is not set" if revision is None else f"got {revision!r}"
    return (f"trust_remote_code runs the code of the hub repository {repo_id}: pin `revision` to the full "
            f"40-character commit sha whose code you reviewed ({got}); the latest one is printed by "
            f"`python -c \"from huggingface_hub import HfApi; print(HfApi().model_info('{repo_id}').sha)\"`")


def _looks_local(path: str, base: Path) -> bool:
    if path.startswith(("/", ".", "~")) or "://" in path:
        return True
    return (base / path).exists()


def _pairs(at: _Located, pairs: tuple[tuple[str, ...], ...], models: dict[str, ModelConfig]
           ) -> tuple[tuple[str, str], ...]:
    """``pairs: [[model_a, model_b], ...]``: two different language models each, no pair listed twice."""
    result, seen = [], {}
    for i, entry in enumerate(pairs):
        ip = ("pairs", i)
        if len(entry) != 2:
            raise at.error(ip, "a pair is a list of two language-model ids, e.g. [llama-it, gemma-it]; "
                               f"got {list(entry)!r}")
        for j, mid in enumerate(entry):
            if mid not in models:
                raise at.error(ip + (j,), f"unknown model '{mid}' (models: {', '.join(models)})")
            if models[mid].kind != "language_model":
                raise at.error(ip + (j,), f"'{mid}' is a {models[mid].kind}; pairs compare language models")
        a, b = entry
        if a == b:
            raise at.error(ip, f"a pair needs two different models; got '{a}' twice")
        key = frozenset((a, b))
        if key in seen:
            raise at.error(ip, f"the pair {a} / {b} is already listed (pairs[{seen[key]}]); swapping the models "
                               "only negates the MWLR")
        seen[key] = i
        result.append((a, b))
    return tuple(result)
