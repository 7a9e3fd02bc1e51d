"""What every asset reads and its code version, as ``valuebias.assets.versions`` derives them, rendered as plain
data for a registry that has every kind of model (demo, hub and published reward models, one swept; demo and hub
language models; a pair; a removed partition). ``tests/data/declared_inputs.json`` holds this rendering as the
code before the one-declaration-per-table change wrote it (``python tests/declared_inputs.py OUT.json``):
an input or code version that changes makes every stored partition stale, so the test compares against it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

MODELS = (
    "  rm-demo:\n    kind: reward_model\n    family: llama\n    demo: {architecture: llama, preferred_category: Agency}\n"
    "    vocabulary_sweep: {prompts: [best_ever_one], top_n: 5}\n"
    "  rm-hub:\n    kind: reward_model\n    family: gemma\n    huggingface: {path: org/rm}\n"
    "  rm-pub:\n    kind: reward_model\n    family: qwen\n    published: {small: pub.csv}\n"
    "  lm-it:\n    kind: language_model\n    variant: instruction_tuned\n    family: llama\n"
    "    huggingface: {path: org/lm-it}\n"
    "  lm-pt:\n    kind: language_model\n    variant: pretrained\n    family: gemma\n"
    "    demo: {architecture: gemma, preferred_category: Communion}\n"
    "  lm-x:\n    kind: language_model\n    variant: pretrained\n    family: gemma\n"
    "    demo: {architecture: gemma, preferred_category: Agency, seed: 3}\n")
PARTITIONS = [None, "rm-demo", "rm-hub", "rm-pub", "lm-it", "lm-pt", "lm-x", "lm-it__vs__lm-pt", "gone"]


def declared_inputs(root: Path) -> dict:
    """{"code_versions": {asset: version}, "inputs": {asset: {"deps": [...], "partitions": {p: {"versions": [...],
    "upstream": [...]}}}}}: each input's version is named after what it reads (``v(asset[partition])``), and a
    model's fingerprint after the model (it holds absolute paths)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from registry_fixtures import write_small_registry

    import valuebias.assets.versions as v
    from valuebias.config import load_config

    config_path = write_small_registry(root, models=MODELS, extra="pairs:\n  - [lm-it, lm-pt]\n")
    (root / "pub.csv").write_text("response,best_ever_one\nlove,1\n")
    config = load_config(config_path)
    fingerprints = {m.fingerprint: f"fingerprint({m.model_id})" for m in config.models.values()}

    class NamedReading(v.Reading):
        def version(self, asset, partition=None):
            return f"v({asset}[{partition}])"

    inputs = {}
    for asset, specs in v.INPUTS.items():
        deps = [[d.asset_key.to_user_string(), type(d.partition_mapping).__name__ if d.partition_mapping else None]
                for d in v.reads(asset)]
        per_partition = {}
        for partition in PARTITIONS:
            reading = NamedReading(None, config, partition, None)
            try:
                versions: dict = {}
                for spec in specs:
                    versions.update(spec.versions(reading))
                found = [[key, fingerprints.get(value, value)] for key, value in versions.items()]
            except Exception as exc:  # noqa: BLE001 (an input that cannot be read for this partition: recorded)
                found = f"error {type(exc).__name__}"
            try:
                upstream = [list(key) for key in v.upstream_partitions(config, asset, partition)]
            except Exception as exc:  # noqa: BLE001
                upstream = f"error {type(exc).__name__}"
            per_partition[str(partition)] = {"versions": found, "upstream": upstream}
        inputs[asset] = {"deps": deps, "partitions": per_partition}
    return {"code_versions": dict(v.CODE_VERSIONS), "inputs": inputs}


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        found = declared_inputs(Path(tmp))
        lines = [f"  {json.dumps(asset)}: {json.dumps(entry)}" for asset, entry in found["inputs"].items()]
        Path(sys.argv[1]).write_text('{"code_versions": ' + json.dumps(found["code_versions"]) + ',\n "inputs": {\n'
                                     + ",\n".join(lines) + "\n}}\n")
