"""Registry releases: an immutable, citable, verifiable copy of the registry's results in its own storage.

A release ``NAME`` lives under ``releases/NAME/`` in the state's storage (a local folder or S3, through
:class:`~valuebias.object_store.ObjectStore`), written only when every partition of the registry is fresh
(``valuebias.orchestration.plan.registry_states``, the computation ``valuebias status`` shows), no partition's latest
materialization attempt failed and no blocking check's latest result failed:

- every stored table under its own storage key (``tables/*.parquet``, ``rm_word_scores/<model>.parquet``, ...),
  plus a CSV of each headline table (:data:`HEADLINE_TABLES`) beside its parquet file;
- the reports with their plots (``reports/``) and the value cards (``cards/<model>.md`` / ``.png``);
- the config as loaded (``config/<file name>``: its bytes; ``config/config.json``: the resolved settings);
- the open export (``export/every_eval_ever/<model>.json``, ``valuebias.open_export``);
- ``README.md``: the headline results with their plots;
- ``manifest.json``, written last: name, time, code version (git commit when available, and every asset's code
  version), package versions, per model its content identity and provenance, per table (partition) its data
  version, run and row count, and the SHA-256 and size of every other file of the release.

A release whose folder holds anything is never written again (an existing name is refused). ``verify`` rehashes
every file against the manifest and names each difference.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import re
import subprocess
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from pathlib import Path

import polars as pl

from valuebias.object_store import ObjectStore
from valuebias.config import RegistryConfig
from valuebias.errors import InputError

RELEASES = "releases"
MANIFEST = "manifest.json"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
#: Tables that also get a CSV copy in a release (the paper's tables and the tests people cite).
HEADLINE_TABLES = ("rm_family_tests", "rm_mixed_model", "rm_interaction_test", "lm_posthoc", "mwlr_tokens")
#: Packages whose versions a manifest records (read from installed metadata; nothing is imported).
PACKAGES = ("valuebias", "dagster", "polars", "pyarrow", "numpy", "pandas", "scipy", "statsmodels", "torch",
            "transformers", "tokenizers", "safetensors", "great-expectations", "s3fs", "fsspec", "wordfreq",
            "matplotlib", "jsonschema")
#: The scoring asset whose recorded ``content`` and ``provenance`` identify a model of each kind.
IDENTITY_ASSET = {"reward_model": "rm_word_scores", "language_model": "lm_next_token_logprobs"}
PROJECT_ROOT = Path(__file__).resolve().parents[1]


class ReleaseError(Exception):
    """A release cannot be written or read; the message is one line naming what is wrong."""


def release_prefix(name: str) -> str:
    return f"{RELEASES}/{name}/"


def release_uri(store: ObjectStore, name: str) -> str:
    """The full URI of release ``name``'s folder."""
    return store.full_uri(f"{RELEASES}/{name}")


def check_name(name: str) -> str:
    if not NAME_PATTERN.match(name or ""):
        raise InputError(f"'{name}' is not a release name: use letters, digits, '.', '_' and '-' (at most 100, "
                         "starting with a letter or digit), e.g. 2026-12-10", source="valuebias release", field="--name")
    return name


def default_name(now: datetime) -> str:
    """The UTC date, e.g. ``2026-12-10``."""
    return now.strftime("%Y-%m-%d")


# -------------------------------------------------------------------- what blocks a release
def release_blockers(instance, config: RegistryConfig, states, asset_graph) -> list[str]:
    """Why the registry cannot be released now, one entry per partition (``asset[partition] state: reason``):
    every partition that ``valuebias status`` shows as missing, stale or error (``states``:
    ``valuebias.orchestration.plan.registry_states``), whose latest materialization attempt failed after its last success,
    or whose blocking check's latest result is a failure (``asset_graph``: Dagster's, for the checks)."""
    import dagster as dg

    from valuebias.assets.versions import latest_record

    blockers = []
    for state in states:
        label = f"{state.asset}[{state.partition}]" if state.partition else state.asset
        if state.state != "fresh":
            blockers.append(f"{label} {state.state}" + (f" ({state.reason})" if state.reason else ""))
            continue
        # the latest run planned to materialize it after its last materialization, and that run failed
        planned = instance.get_latest_planned_materialization_info(dg.AssetKey(state.asset), state.partition)
        success = latest_record(instance, state.asset, state.partition)
        if planned is not None and (success is None or planned.storage_id > success.storage_id):
            run = instance.get_run_by_id(planned.run_id)
            if run is not None and run.is_finished and not run.is_success:
                blockers.append(f"{label} failed (run {planned.run_id})")
    return blockers + failed_blocking_checks(instance, asset_graph, {s.asset for s in states})


def failed_blocking_checks(instance, asset_graph, assets: set[str]) -> list[str]:
    """``<asset> check <name> failed (run ...)`` for every blocking check of ``assets`` whose latest execution
    did not pass."""
    import dagster as dg

    check_keys = [check for asset in sorted(assets) for check in asset_graph.get(dg.AssetKey(asset)).check_keys
                  if asset_graph.get_check_spec(check).blocking]
    latest = instance.event_log_storage.get_latest_asset_check_execution_by_key(check_keys)
    problems = []
    for check_key, record in sorted(latest.items(), key=lambda item: (item[0].asset_key.to_user_string(),
                                                                       item[0].name)):
        name = f"{check_key.asset_key.to_user_string()} check {check_key.name}"
        if record.status.value == "FAILED":
            problems.append(f"{name} failed" + (f" (run {record.run_id})" if record.run_id else ""))
        elif record.status.value == "PLANNED":  # planned by a run that ended without evaluating it
            run = instance.get_run_by_id(record.run_id) if record.run_id else None
            if run is not None and run.is_finished and not run.is_success:
                problems.append(f"{name} did not complete (run {record.run_id} failed)")
    return problems


# -------------------------------------------------------------------- what a release holds
def code_version() -> dict:
    """The git commit of the code (and whether the work tree had uncommitted changes), when available."""
    try:
        commit = subprocess.run(["git", "-C", str(PROJECT_ROOT), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(PROJECT_ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None}
    if commit.returncode != 0:
        return {"git_commit": None}
    return {"git_commit": commit.stdout.strip(), "git_uncommitted_changes": bool(dirty.stdout.strip())}


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def config_as_loaded(config: RegistryConfig) -> dict:
    """The resolved registry config (paths made absolute, defaults filled in) as JSON-able data."""
    def plain(value):
        if hasattr(value, "model_dump"):
            return value.model_dump(mode="json")
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, Path):
            return str(value)
        return value

    return plain(config)


def model_entries(instance, config: RegistryConfig) -> dict[str, dict]:
    """Per registered model: kind, family, source, its entry's fingerprint, and the content identity and
    provenance its latest scoring run recorded."""
    from valuebias.assets.versions import latest_record

    models = {}
    for model in config.models.values():
        record = latest_record(instance, IDENTITY_ASSET[model.kind], model.model_id)
        meta = {k: v.value for k, v in record.asset_materialization.metadata.items()} if record else {}
        models[model.model_id] = {
            "kind": model.kind, "family": model.family, "variant": model.variant, "source": model.source,
            "display_name": model.display_name, "entry_fingerprint": model.fingerprint,
            "content": meta.get("content"), "provenance": meta.get("provenance"),
        }
    return models


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _ReleaseWriter:
    """Writes the files of one release and remembers their hashes."""

    def __init__(self, store: ObjectStore, name: str):
        self.store, self.prefix, self.files = store, release_prefix(name), {}

    def put(self, relative: str, data: bytes) -> None:
        self.store.write_bytes(self.prefix + relative, data)
        self.files[relative] = {"sha256": sha256(data), "bytes": len(data)}


def create_release(config: RegistryConfig, instance, states, asset_graph, *, name: str | None = None,
                   now: datetime | None = None) -> dict:
    """Writes release ``name`` (default: today's UTC date) of the registry in ``states`` (every partition, as
    ``valuebias.orchestration.plan.registry_states`` found them). Raises :class:`ReleaseError` naming the partitions when
    anything is missing, stale, errored or failed, or a blocking check failed, and when the name exists.
    Returns the manifest, with ``manifest_sha256``."""
    from valuebias.assets.tables import output_keys
    from valuebias.assets.versions import CODE_VERSIONS

    now = now or datetime.now(timezone.utc)
    name = check_name(name or default_name(now))
    store = ObjectStore(config.storage_uri)
    if store.exists(release_prefix(name) + MANIFEST):
        raise ReleaseError(f"release '{name}' already exists at {release_uri(store, name)}: a release is "
                           "never overwritten; choose another --name")
    blockers = release_blockers(instance, config, states, asset_graph)
    if blockers:
        raise ReleaseError(f"cannot release: {len(blockers)} problem(s): " + "; ".join(blockers)
                           + ". Run `valuebias run` (see `valuebias status`), then release.")
    for key in store.list(release_prefix(name)):  # an interrupted earlier attempt (no manifest): never cited
        store.delete(key)
    writer = _ReleaseWriter(store, name)
    tables = []
    copied: set[str] = set()
    for state in states:
        keys = output_keys(state.asset, state.partition)
        for key in keys:
            writer.put(key, store.read_bytes(key))
            copied.add(key)
        rows = state.metadata.get("dagster/row_count")
        tables.append({"asset": state.asset, "partition": state.partition, "data_version": state.data_version,
                       "code_version": CODE_VERSIONS.get(state.asset), "run_id": state.run_id,
                       "rows": int(rows) if rows is not None else None, "files": keys})
    for key in store.list("reports/"):  # the reports' plots
        if key not in copied:
            writer.put(key, store.read_bytes(key))
            copied.add(key)
    headline = {}
    for entry in tables:
        if entry["asset"] in HEADLINE_TABLES and entry["files"]:
            df = pl.read_parquet(io.BytesIO(store.read_bytes(entry["files"][0])))
            csv_key = entry["files"][0].removesuffix(".parquet") + ".csv"
            writer.put(csv_key, df.write_csv().encode())
            entry["files"].append(csv_key)
            headline[entry["asset"]] = df
    writer.put(f"config/{config.path.name}", config.path.read_bytes())
    writer.put("config/config.json", (json.dumps(config_as_loaded(config), indent=2, sort_keys=True) + "\n").encode())
    models = model_entries(instance, config)
    manifest = {
        "name": name, "created": now.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "storage": release_uri(store, name),
        "code": code_version() | {"asset_code_versions": dict(CODE_VERSIONS)},
        "packages": package_versions(), "models": models, "tables": tables,
    }
    _write_export(writer, store, manifest)
    writer.put("README.md", release_readme(manifest, headline, sorted(copied)).encode())
    manifest["files"] = dict(sorted(writer.files.items()))
    data = (json.dumps(manifest, indent=2, sort_keys=False, default=str) + "\n").encode()
    store.write_bytes(release_prefix(name) + MANIFEST, data)  # last: a release without it is incomplete
    return manifest | {"manifest_sha256": sha256(data)}


def _write_export(writer: _ReleaseWriter, store: ObjectStore, manifest: dict) -> None:
    from valuebias.open_export import SCHEMA_FILE, every_eval_ever_records, schema_problems

    cards = [pl.read_parquet(io.BytesIO(store.read_bytes(key))) for entry in manifest["tables"]
             if entry["asset"] == "rm_value_cards" for key in entry["files"][:1]]
    if not cards:
        return
    records = every_eval_ever_records(pl.concat(cards, how="diagonal_relaxed"), manifest)
    for model, record in records.items():
        problems = schema_problems(record)
        if problems:  # a record the schema rejects is never published
            raise ReleaseError(f"the open export of '{model}' breaks {SCHEMA_FILE.name}: {problems[0]}"
                               + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
        writer.put(f"export/every_eval_ever/{model}.json", (json.dumps(record, indent=2) + "\n").encode())


def release_readme(manifest: dict, headline: dict[str, pl.DataFrame], files: list[str]) -> str:
    """The release's README: how to cite and verify it, then its headline results with their plots."""
    from valuebias.report import markdown_table

    name, code = manifest["name"], manifest["code"]
    lines = [f"# ValueBias release {name}", "",
             f"Created {manifest['created']} from code {code.get('git_commit') or 'without a git commit'}"
             + (" (with uncommitted changes)" if code.get("git_uncommitted_changes") else "") + ".",
             f"Cite as: *ValueBias release {name}* (manifest.json lists the SHA-256 of every file of this release).",
             f"Check it byte for byte: `valuebias release verify {name}`.", "",
             "## Models", ""]
    for model, entry in manifest["models"].items():
        content = (entry.get("content") or {}).get("digest") or "not recorded"
        lines.append(f"- `{model}`: {entry['kind']}, family {entry['family']}, content {content}")
    lines.append("")
    tests = headline.get("rm_family_tests")
    if tests is not None:
        significant = tests.filter(pl.col("p_bonferroni") < 0.05)
        lines += ["## Family differences (rm_family_tests)", "",
                  f"{significant.height} of {tests.filter(pl.col('category').is_not_null()).height} panels differ "
                  "between families after Bonferroni correction (p < 0.05):", ""]
        if significant.height:
            lines += [markdown_table(significant.select("corpus", "ranks", "category", "framing", "family_a",
                                                        "family_b", "mean_a", "mean_b", "t", "p_bonferroni")), ""]
    if "rm_interaction_test" in headline:
        lines += ["## Family x category x framing (rm_interaction_test)", "",
                  markdown_table(headline["rm_interaction_test"]), ""]
    if "lm_posthoc" in headline:
        lines += ["## Language-model pairs (lm_posthoc)", "", markdown_table(headline["lm_posthoc"]), ""]
    if "mwlr_tokens" in headline:
        tokens = headline["mwlr_tokens"]
        lines += ["## Implicit rewards, Table 1 (mwlr_tokens; first 30 of "
                  f"{tokens.height} rows, all in tables/mwlr_tokens.csv)", "", markdown_table(tokens.head(30)), ""]
    plots = [key for key in files if key.startswith("reports/") and key.endswith(".png")]
    if plots:
        lines += ["## Plots", ""] + [f"![{Path(key).stem}]({key})" for key in plots] + [""]
    cards = [key for key in files if key.startswith("cards/") and key.endswith(".md")]
    if cards:
        lines += ["## Value cards", ""] + [f"- [{Path(key).stem}]({key})" for key in cards] + [""]
    lines += ["## Files", "", "`tables/`: every table as parquet, the headline tables also as CSV; "
              "`rm_word_scores/` etc.: each model's partition; `config/`: the config as loaded; "
              "`export/every_eval_ever/`: the open export; `manifest.json`: versions and hashes.", ""]
    return "\n".join(lines)


# -------------------------------------------------------------------- reading releases
def read_manifest(store: ObjectStore, name: str) -> dict:
    key = release_prefix(check_name(name)) + MANIFEST
    try:
        return json.loads(store.read_bytes(key))
    except FileNotFoundError:
        known = ", ".join(m["name"] for m in list_releases(store)) or "none"
        raise ReleaseError(f"no release '{name}' at {release_uri(store, name)} (no {MANIFEST}); "
                           f"releases: {known}") from None


def list_releases(store: ObjectStore) -> list[dict]:
    """Every complete release (one with a manifest), oldest first: name, created, models, files, manifest hash."""
    found = []
    for key in store.list(f"{RELEASES}/"):
        parts = key.split("/")
        if len(parts) == 3 and parts[2] == MANIFEST:
            data = store.read_bytes(key)
            manifest = json.loads(data)
            found.append({"name": manifest["name"], "created": manifest["created"],
                          "models": len(manifest["models"]), "files": len(manifest["files"]),
                          "git_commit": manifest["code"].get("git_commit"), "manifest_sha256": sha256(data)})
    return sorted(found, key=lambda r: (r["created"], r["name"]))


def verify_release(store: ObjectStore, name: str) -> list[str]:
    """Every difference between release ``name``'s files and its manifest (empty: it verifies): a file changed
    (its SHA-256 differs), missing, or not listed in the manifest."""
    manifest = read_manifest(store, name)
    prefix = release_prefix(name)
    problems = []
    for relative, expected in manifest["files"].items():
        try:
            data = store.read_bytes(prefix + relative)
        except FileNotFoundError:
            problems.append(f"missing: {store.full_uri(prefix + relative)}")
            continue
        if sha256(data) != expected["sha256"]:
            problems.append(f"changed: {store.full_uri(prefix + relative)} (SHA-256 {sha256(data)[:16]}..., "
                            f"the manifest says {expected['sha256'][:16]}...)")
    for key in store.list(prefix):
        relative = key[len(prefix):]
        if relative != MANIFEST and relative not in manifest["files"]:
            problems.append(f"not in the manifest: {store.full_uri(key)}")
    return problems


# -------------------------------------------------------------------- the two sides of a diff
def release_side(store: ObjectStore, name: str):
    """Release ``name`` as one side of ``valuebias diff``."""
    from valuebias.release_diff import Side

    manifest = read_manifest(store, name)
    prefix = release_prefix(name)

    def table(relative: str) -> pl.DataFrame:
        return pl.read_parquet(io.BytesIO(store.read_bytes(prefix + relative)))

    from valuebias.assets.tables import TABLE_KEYS

    files = manifest["files"]
    tests = table(TABLE_KEYS["rm_family_tests"]) if TABLE_KEYS["rm_family_tests"] in files else None
    cards = [table(key) for key in files if key.startswith("rm_value_cards/") and key.endswith(".parquet")]
    return Side(name, {m: (e.get("content") or {}).get("digest") for m, e in manifest["models"].items()},
                tests, pl.concat(cards, how="diagonal_relaxed") if cards else None)


def current_side(instance, config: RegistryConfig):
    """The registry as it is stored now (the latest recorded content identity of each model) as a side of
    ``valuebias diff``."""
    from valuebias.assets.tables import TABLE_KEYS, rm_value_cards_key
    from valuebias.release_diff import Side

    store = ObjectStore(config.storage_uri)
    key = TABLE_KEYS["rm_family_tests"]
    tests = store.read_parquet(key) if store.exists(key) else None
    cards = [store.read_parquet(rm_value_cards_key(m.model_id)) for m in config.reward_models()
             if store.exists(rm_value_cards_key(m.model_id))]
    models = {m: (e.get("content") or {}).get("digest") for m, e in model_entries(instance, config).items()}
    return Side("current state", models, tests, pl.concat(cards, how="diagonal_relaxed") if cards else None)


def release_materialization(context, registry_config: RegistryConfig, name: str | None):
    """What the on-demand asset ``registry_release`` (``valuebias.assets.release``) does: writes release ``name``
    (default: today's UTC date) from the state of every partition (refused, naming the partitions, while anything
    is missing, stale or failed) and returns its materialization, with the diff against the previous release."""
    import dagster as dg

    from valuebias.assets.versions import ContentCheck
    from valuebias.orchestration.plan import RegistryGraph, registry_states
    from valuebias.release_diff import diff_markdown

    store = ObjectStore(registry_config.storage_uri)
    previous = list_releases(store)
    asset_graph = context.repository_def.asset_graph
    states = registry_states(RegistryGraph(asset_graph), context.instance, registry_config,
                             ContentCheck(registry_config))
    try:
        manifest = create_release(registry_config, context.instance, states, asset_graph, name=name)
    except ReleaseError as exc:
        raise dg.Failure(str(exc)) from None
    if previous:
        diff = diff_markdown(release_side(store, previous[-1]["name"]), release_side(store, manifest["name"]))
    else:
        diff = f"# ValueBias release {manifest['name']}\n\nThe first release: nothing to compare with.\n"
    return dg.MaterializeResult(
        metadata={"release": manifest["name"], "uri": dg.MetadataValue.path(manifest["storage"]),
                  "manifest_sha256": manifest["manifest_sha256"], "files": len(manifest["files"]),
                  "models": len(manifest["models"]), "git_commit": manifest["code"].get("git_commit") or "none",
                  "previous_release": previous[-1]["name"] if previous else "none",
                  "diff": dg.MetadataValue.md(diff)},
        data_version=dg.DataVersion(manifest["manifest_sha256"][:16]))
