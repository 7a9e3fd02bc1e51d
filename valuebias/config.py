"""The registry configuration: one YAML file (``valuebias.yaml`` by default) describing what to audit.

Every key is documented in the README ("Configuration"). Loading is strict: an unknown key, a missing
required key or a value of the wrong kind is an ``InputError`` naming the file, the line and the key
path (for example ``valuebias.yaml: row 14, field 'models.demo-llama-1.huggingface.revison'``).
Relative paths in the file are resolved against the file's own folder.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from valuebias.errors import InputError
from valuebias.safe_yaml import NoAliasLoader

DEFAULT_CONFIG_NAME = "valuebias.yaml"
#: Model ids are partition keys, file names and Kubernetes label values: one pattern, checked here (and by
#: the ``model_registry`` data contract, whose regex must stay equal to it).
MODEL_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
#: A registry config larger than this is refused before it is parsed.
MAX_CONFIG_BYTES = 1 << 20
MODEL_KINDS = ("reward_model", "language_model")
LM_VARIANTS = ("instruction_tuned", "pretrained")
WORD_RULES = ("single_token", "full_sequence")
MODEL_SOURCES = ("huggingface", "published", "demo")
CORPUS_FORMATS = ("csv", "dic", "dicx")
CATEGORY_RULES = ("identity", "foundation")
WILDCARD_MODES = ("expand", "drop", "error")
SCORE_READERS = ("logits[0]", "score", "logits[:,0]")
DTYPES = ("auto", "float32", "bfloat16", "float16")
#: Where scoring partitions run: a Dagster Pipes subprocess on this machine (default), a Kubernetes pod
#: through Dagster Pipes, or inside the Dagster step itself (tests and debugging).
SCORING_LAUNCHERS = ("subprocess", "kubernetes", "in_process")


@dataclass(frozen=True)
class CorpusConfig:
    corpus_id: str
    uri: str
    format: str
    word_column: str | None = None
    category_column: str | None = None
    category_columns: tuple[str, ...] | None = None
    category_rule: str = "identity"
    categories: tuple[str, ...] | None = None
    wildcards: str = "expand"


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

    @property
    def fingerprint(self) -> str:
        """Content hash of everything that determines this model's scores (its whole entry)."""
        entry = {"kind": self.kind, "family": self.family, "source": self.source, "settings": self.settings}
        if self.variant is not None:  # absent for reward models, so their fingerprints are unchanged
            entry["variant"] = self.variant
        return hashlib.sha256(json.dumps(entry, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class AnalysisConfig:
    families: tuple[str, str] | None = None  # (family_a, family_b); default: the two families, alphabetical
    permutations: int = 10000
    seed: int = 0


@dataclass(frozen=True)
class ImplicitRewardsConfig:
    """The language-model tables: Table-1 size, Figure-3 words, and the rule that gives words a log-prob."""

    top_n: int = 15
    words: tuple[str, ...] = ("freedom", "love")
    word_rule: str = "single_token"  # or full_sequence (single-token words, plus multi-token words scored whole)


@dataclass(frozen=True)
class KubernetesScoringConfig:
    """The pod a scoring partition runs in when ``scoring.launcher`` is ``kubernetes``."""

    image: str
    namespace: str | None = None  # None: the namespace Dagster runs in (or "default")
    gpus: int = 1  # nvidia.com/gpu requested and limited
    memory: str | None = None  # e.g. "64Gi": requested and limited
    cpu: str | None = None  # e.g. "8": requested
    node_selector: tuple[tuple[str, str], ...] = ()
    tolerations: tuple[dict[str, Any], ...] = ()
    service_account: str | None = None
    secret_env: tuple[str, ...] = ()  # Kubernetes Secrets whose keys become environment variables
    image_pull_policy: str = "IfNotPresent"


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
    schedule_cron: str = "0 2 * * *"
    gpu_concurrency: int = 1
    pairs: tuple[tuple[str, str], ...] = ()  # (model_a, model_b) language-model pairs
    implicit_rewards: ImplicitRewardsConfig = field(default_factory=ImplicitRewardsConfig)
    scoring_launcher: str = "subprocess"
    kubernetes: KubernetesScoringConfig | None = None

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


# --------------------------------------------------------------------------------------------------
# YAML with line numbers: every mapping key remembers the line it was written on.


class _LineLoader(NoAliasLoader):
    """SafeLoader that records the line of every mapping key and rejects duplicate keys and aliases."""

    def __init__(self, stream, source: str):
        super().__init__(stream)
        self.source = source
        self.lines: dict[tuple[str, ...], int] = {}

    def construct_document(self, node):
        self._record(node, ())
        return super().construct_document(node)

    def _record(self, node, path: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key_node, value_node in node.value:
                key = str(key_node.value)
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise InputError("duplicate key", source=self.source, row=line,
                                     field=".".join(path + (key,)))
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


def _load_yaml_with_lines(text: str, source: str) -> tuple[Any, dict[tuple[str, ...], int]]:
    loader = _LineLoader(text, source)
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise InputError(f"not valid YAML: {exc}", source=source,
                         row=mark.line + 1 if mark else None) from exc
    finally:
        loader.dispose()
    return data, loader.lines


class _Reader:
    """Walks the parsed YAML and raises InputErrors that name the file, line and key path."""

    def __init__(self, source: str, lines: dict[tuple[str, ...], int]):
        self.source = source
        self.lines = lines

    def error(self, path: tuple[str, ...], message: str) -> InputError:
        row = None
        for depth in range(len(path), 0, -1):  # nearest enclosing key that has a line
            row = self.lines.get(path[:depth])
            if row is not None:
                break
        return InputError(message, source=self.source, row=row, field=_field_name(path))

    def mapping(self, value: Any, path: tuple[str, ...], known: tuple[str, ...] | None = None) -> dict:
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise self.error(path, f"expected a mapping, got {type(value).__name__}")
        if known is not None:
            for key in value:
                if key not in known:
                    raise self.error(path + (str(key),),
                                     f"unknown key '{key}' (known keys: {', '.join(known)})")
        return value

    def string(self, value: Any, path: tuple[str, ...], *, required: bool = True,
               choices: tuple[str, ...] | None = None) -> str | None:
        if value is None:
            if required:
                raise self.error(path, "required key is missing")
            return None
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise self.error(path, f"expected a string, got {type(value).__name__}")
        value = str(value)
        if choices is not None and value not in choices:
            raise self.error(path, f"'{value}' is not one of: {', '.join(choices)}")
        return value

    def integer(self, value: Any, path: tuple[str, ...], default: int, minimum: int = 1) -> int:
        if value is None:
            return default
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise self.error(path, f"expected an integer >= {minimum}, got {value!r}")
        return value

    def boolean(self, value: Any, path: tuple[str, ...], default: bool = False) -> bool:
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.error(path, f"expected true or false, got {value!r}")
        return value

    def string_list(self, value: Any, path: tuple[str, ...]) -> tuple[str, ...] | None:
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(path, "expected a list of strings")
        return tuple(value)


TOP_KEYS = ("state_dir", "storage", "prompts", "wordlist", "corpora", "models", "pairs", "analysis",
            "implicit_rewards", "scoring", "schedule", "concurrency")
CORPUS_KEYS = ("uri", "format", "word_column", "category_column", "category_columns", "category_rule",
               "categories", "wildcards")
MODEL_KEYS = ("kind", "family", "variant", "display_name", "vocabulary_sweep") + MODEL_SOURCES
SWEEP_PROMPTS = ("greatest_ever_one", "best_ever_one", "worst_ever_one")
HF_KEYS = ("path", "revision", "dtype", "score", "trust_remote_code", "allow_pickle")
IMPLICIT_KEYS = ("top_n", "words", "word_rule")
DEMO_KEYS = ("architecture", "preferred_category", "train_corpus", "seed", "hidden_size", "num_layers",
             "train_steps")


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
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"not UTF-8 text (byte {exc.start})", source=source) from None
    except OSError as exc:
        raise InputError(f"cannot read config file: {exc.strerror or exc}", source=source) from exc
    data, lines = _load_yaml_with_lines(text, source)
    r = _Reader(source, lines)
    top = r.mapping(data, (), TOP_KEYS)
    base = path.parent

    state_dir = Path(resolve_uri(r.string(top.get("state_dir"), ("state_dir",), required=False)
                                 or ".valuebias", base))
    storage = r.string(top.get("storage"), ("storage",), required=False)
    storage_uri = resolve_uri(storage, base) if storage else str(state_dir / "data")

    prompts = r.mapping(top.get("prompts"), ("prompts",), ("uri",))
    prompts_uri = resolve_uri(r.string(prompts.get("uri"), ("prompts", "uri")), base)

    wordlist = r.mapping(top.get("wordlist"), ("wordlist",), ("size",))
    wordlist_size = r.integer(wordlist.get("size"), ("wordlist", "size"), default=50000)

    scoring = r.mapping(top.get("scoring"), ("scoring",), ("batch_size", "threads", "launcher", "kubernetes"))
    batch_size = r.integer(scoring.get("batch_size"), ("scoring", "batch_size"), default=64)
    threads = r.integer(scoring.get("threads"), ("scoring", "threads"), default=0, minimum=0)
    launcher = r.string(scoring.get("launcher"), ("scoring", "launcher"), required=False,
                        choices=SCORING_LAUNCHERS) or "subprocess"
    kubernetes = _read_kubernetes(r, scoring.get("kubernetes"), required=launcher == "kubernetes")

    corpora_raw = r.mapping(top.get("corpora"), ("corpora",))
    if not corpora_raw:
        raise r.error(("corpora",), "at least one corpus is required")
    corpora = {str(cid): _read_corpus(r, str(cid), entry, base) for cid, entry in corpora_raw.items()}

    models_raw = r.mapping(top.get("models"), ("models",))
    if not models_raw:
        raise r.error(("models",), "at least one model is required")
    models = {str(mid): _read_model(r, str(mid), entry, base, corpora) for mid, entry in models_raw.items()}

    analysis = _read_analysis(r, top.get("analysis"))
    schedule = r.mapping(top.get("schedule"), ("schedule",), ("cron",))
    cron = r.string(schedule.get("cron"), ("schedule", "cron"), required=False) or "0 2 * * *"
    if len(cron.split()) != 5:
        raise r.error(("schedule", "cron"), f"'{cron}' is not a 5-field cron expression")
    concurrency = r.mapping(top.get("concurrency"), ("concurrency",), ("gpu",))
    gpu = r.integer(concurrency.get("gpu"), ("concurrency", "gpu"), default=1)
    pairs = _read_pairs(r, top.get("pairs"), models)
    implicit = _read_implicit_rewards(r, top.get("implicit_rewards"))
    return RegistryConfig(path=path, state_dir=state_dir, storage_uri=storage_uri, prompts_uri=prompts_uri,
                          wordlist_size=wordlist_size, scoring_batch_size=batch_size, scoring_threads=threads,
                          corpora=corpora,
                          models=models, analysis=analysis, schedule_cron=cron, gpu_concurrency=gpu,
                          pairs=pairs, implicit_rewards=implicit, scoring_launcher=launcher,
                          kubernetes=kubernetes)


KUBERNETES_KEYS = ("image", "namespace", "gpus", "memory", "cpu", "node_selector", "tolerations", "service_account",
                   "secret_env", "image_pull_policy")
TOLERATION_KEYS = ("key", "operator", "value", "effect", "tolerationSeconds")


def _read_kubernetes(r: _Reader, value: Any, *, required: bool) -> KubernetesScoringConfig | None:
    """``scoring.kubernetes``: required when ``scoring.launcher`` is ``kubernetes``."""
    p = ("scoring", "kubernetes")
    if value is None:
        if required:
            raise r.error(p, "required when scoring.launcher is kubernetes (at least: image)")
        return None
    e = r.mapping(value, p, KUBERNETES_KEYS)
    selector = r.mapping(e.get("node_selector"), p + ("node_selector",))
    tolerations = e.get("tolerations") or []
    if not isinstance(tolerations, list):
        raise r.error(p + ("tolerations",), "expected a list of tolerations")
    for index, toleration in enumerate(tolerations):
        r.mapping(toleration, p + ("tolerations", index), TOLERATION_KEYS)
    return KubernetesScoringConfig(
        image=r.string(e.get("image"), p + ("image",)),
        namespace=r.string(e.get("namespace"), p + ("namespace",), required=False),
        gpus=r.integer(e.get("gpus"), p + ("gpus",), default=1, minimum=0),
        memory=r.string(e.get("memory"), p + ("memory",), required=False),
        cpu=r.string(e.get("cpu"), p + ("cpu",), required=False),
        node_selector=tuple((str(k), r.string(v, p + ("node_selector", str(k)))) for k, v in selector.items()),
        tolerations=tuple(dict(t) for t in tolerations),
        service_account=r.string(e.get("service_account"), p + ("service_account",), required=False),
        secret_env=r.string_list(e.get("secret_env"), p + ("secret_env",)) or (),
        image_pull_policy=r.string(e.get("image_pull_policy"), p + ("image_pull_policy",), required=False,
                                   choices=("Always", "IfNotPresent", "Never")) or "IfNotPresent",
    )


def _read_corpus(r: _Reader, cid: str, entry: Any, base: Path) -> CorpusConfig:
    p = ("corpora", cid)
    e = r.mapping(entry, p, CORPUS_KEYS)
    return CorpusConfig(
        corpus_id=cid,
        uri=resolve_uri(r.string(e.get("uri"), p + ("uri",)), base),
        format=r.string(e.get("format"), p + ("format",), choices=CORPUS_FORMATS),
        word_column=r.string(e.get("word_column"), p + ("word_column",), required=False),
        category_column=r.string(e.get("category_column"), p + ("category_column",), required=False),
        category_columns=r.string_list(e.get("category_columns"), p + ("category_columns",)),
        category_rule=r.string(e.get("category_rule"), p + ("category_rule",), required=False,
                               choices=CATEGORY_RULES) or "identity",
        categories=r.string_list(e.get("categories"), p + ("categories",)),
        wildcards=r.string(e.get("wildcards"), p + ("wildcards",), required=False,
                           choices=WILDCARD_MODES) or "expand",
    )


def _read_model(r: _Reader, mid: str, entry: Any, base: Path, corpora: dict[str, CorpusConfig]) -> ModelConfig:
    p = ("models", mid)
    if not re.fullmatch(MODEL_ID_PATTERN, mid):
        raise r.error(p, f"model id {mid!r} does not match {MODEL_ID_PATTERN}: ASCII letters and digits, then "
                         "also '.', '_' or '-', at most 100 characters (it is a partition key and a file name)")
    e = r.mapping(entry, p, MODEL_KEYS)
    kind = r.string(e.get("kind"), p + ("kind",), choices=MODEL_KINDS)
    family = r.string(e.get("family"), p + ("family",))
    language_model = kind == "language_model"
    if language_model:
        variant = r.string(e.get("variant"), p + ("variant",), choices=LM_VARIANTS)
    elif "variant" in e:
        raise r.error(p + ("variant",), f"only language models have a variant; '{mid}' is a {kind}")
    else:
        variant = None
    sources = [s for s in MODEL_SOURCES if s in e]
    if len(sources) != 1:
        found = ", ".join(sources) if sources else "none"
        raise r.error(p, f"a model needs exactly one source ({', '.join(MODEL_SOURCES)}); found: {found}")
    source = sources[0]
    sp = p + (source,)
    if language_model and source == "published":
        raise r.error(sp, "language models have no published scores; use a huggingface or demo source")
    if source == "huggingface":
        h = r.mapping(e[source], sp, HF_KEYS)
        if language_model and "score" in h:
            raise r.error(sp + ("score",), "'score' is for reward models; a language model is read through "
                                           "its next-token distribution")
        path = r.string(h.get("path"), sp + ("path",))
        settings = {
            # a hub id (org/name) stays as written; a local path resolves against the config file
            "path": resolve_uri(path, base) if _looks_local(path, base) else path,
            "revision": r.string(h.get("revision"), sp + ("revision",), required=False),
            "dtype": r.string(h.get("dtype"), sp + ("dtype",), required=False, choices=DTYPES) or "auto",
            "trust_remote_code": r.boolean(h.get("trust_remote_code"), sp + ("trust_remote_code",)),
            "allow_pickle": r.boolean(h.get("allow_pickle"), sp + ("allow_pickle",)),
        }
        if not language_model:
            settings["score"] = r.string(h.get("score"), sp + ("score",), required=False,
                                         choices=SCORE_READERS) or "logits[0]"
    elif source == "published":
        pub = r.mapping(e[source], sp)
        if not pub:
            raise r.error(sp, "list at least one corpus id with the uri of its score file")
        settings = {}
        for cid, uri in pub.items():
            if cid not in corpora:
                raise r.error(sp + (str(cid),), f"unknown corpus '{cid}' (corpora: {', '.join(corpora)})")
            settings[str(cid)] = resolve_uri(r.string(uri, sp + (str(cid),)), base)
    else:
        d = r.mapping(e[source], sp, DEMO_KEYS)
        train_corpus = r.string(d.get("train_corpus"), sp + ("train_corpus",), required=False) \
            or next(iter(corpora))
        if train_corpus not in corpora:
            raise r.error(sp + ("train_corpus",), f"unknown corpus '{train_corpus}'")
        settings = {
            "architecture": r.string(d.get("architecture"), sp + ("architecture",), choices=("llama", "gemma")),
            "preferred_category": r.string(d.get("preferred_category"), sp + ("preferred_category",)),
            "train_corpus": train_corpus,
            "seed": r.integer(d.get("seed"), sp + ("seed",), default=0, minimum=0),
            "hidden_size": r.integer(d.get("hidden_size"), sp + ("hidden_size",), default=64),
            "num_layers": r.integer(d.get("num_layers"), sp + ("num_layers",), default=2),
            # a demo LM trains until converged (typically 50-110 full-batch steps), at most this many
            "train_steps": r.integer(d.get("train_steps"), sp + ("train_steps",),
                                     default=600 if language_model else 300),
        }
    return ModelConfig(model_id=mid, kind=kind, family=family, source=source, settings=settings,
                       display_name=r.string(e.get("display_name"), p + ("display_name",), required=False),
                       variant=variant, vocabulary_sweep=_read_sweep(r, p, e, kind))


def _read_sweep(r: _Reader, p: tuple[str, ...], entry: dict, kind: str) -> dict[str, Any] | None:
    """The optional full-vocabulary sweep of a reward model (FAccT predecessor, METHOD.md section 6)."""
    if "vocabulary_sweep" not in entry:
        return None
    sp = p + ("vocabulary_sweep",)
    if kind != "reward_model":
        raise r.error(sp, "only reward models have a vocabulary sweep")
    sweep = r.mapping(entry["vocabulary_sweep"], sp, ("prompts", "top_n"))
    return {"prompts": list(r.string_list(sweep.get("prompts"), sp + ("prompts",)) or SWEEP_PROMPTS),
            "top_n": r.integer(sweep.get("top_n"), sp + ("top_n",), default=20)}


def _looks_local(path: str, base: Path) -> bool:
    if path.startswith(("/", ".", "~")) or "://" in path:
        return True
    return (base / path).exists()


def _read_pairs(r: _Reader, value: Any, models: dict[str, ModelConfig]) -> tuple[tuple[str, str], ...]:
    """``pairs: [[model_a, model_b], ...]``: two different language models each, no pair listed twice."""
    p = ("pairs",)
    if value is None:
        return ()
    if not isinstance(value, list):
        raise r.error(p, "expected a list of [model_a, model_b] pairs")
    pairs, seen = [], {}
    for i, entry in enumerate(value):
        ip = p + (i,)
        if not isinstance(entry, list) or len(entry) != 2:
            raise r.error(ip, f"a pair is a list of two language-model ids, e.g. [llama-it, gemma-it]; got {entry!r}")
        for j, mid in enumerate(entry):
            mid = r.string(mid, ip + (j,))
            if mid not in models:
                raise r.error(ip + (j,), f"unknown model '{mid}' (models: {', '.join(models)})")
            if models[mid].kind != "language_model":
                raise r.error(ip + (j,), f"'{mid}' is a {models[mid].kind}; pairs compare language models")
        a, b = str(entry[0]), str(entry[1])
        if a == b:
            raise r.error(ip, f"a pair needs two different models; got '{a}' twice")
        key = frozenset((a, b))
        if key in seen:
            raise r.error(ip, f"the pair {a} / {b} is already listed (pairs[{seen[key]}]); swapping the models "
                              "only negates the MWLR")
        seen[key] = i
        pairs.append((a, b))
    return tuple(pairs)


def _read_implicit_rewards(r: _Reader, value: Any) -> ImplicitRewardsConfig:
    p = ("implicit_rewards",)
    v = r.mapping(value, p, IMPLICIT_KEYS)
    words = r.string_list(v.get("words"), p + ("words",))
    if words is not None:
        cleaned = [w.strip().lower() for w in words]
        if not cleaned or any(not w or " " in w for w in cleaned):
            raise r.error(p + ("words",), "give one or more single words, e.g. [freedom, love]")
        words = tuple(dict.fromkeys(cleaned))
    return ImplicitRewardsConfig(
        top_n=r.integer(v.get("top_n"), p + ("top_n",), default=15),
        words=words if words is not None else ImplicitRewardsConfig.words,
        word_rule=r.string(v.get("word_rule"), p + ("word_rule",), required=False, choices=WORD_RULES)
        or "single_token",
    )


def _read_analysis(r: _Reader, value: Any) -> AnalysisConfig:
    p = ("analysis",)
    a = r.mapping(value, p, ("families", "permutations", "seed"))
    families = r.string_list(a.get("families"), p + ("families",))
    if families is not None and (len(families) != 2 or families[0] == families[1]):
        raise r.error(p + ("families",), "give exactly two different families, e.g. [gemma, llama]")
    return AnalysisConfig(
        families=families,
        permutations=r.integer(a.get("permutations"), p + ("permutations",), default=10000),
        seed=r.integer(a.get("seed"), p + ("seed",), default=0, minimum=0),
    )
