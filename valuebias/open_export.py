"""The open export: a release's results as records of the Every Eval Ever project (evaleval/every_eval_ever).

One aggregate record per reward model, following that project's published JSON schema (vendored, unchanged,
as ``valuebias/data/every_eval_ever.eval.schema.json``; source, commit and MIT license in
``every_eval_ever.SOURCE.md`` beside it): ``evaluation_results`` holds one result per panel of the model's value
card (corpus x category x framing). The score is the card's deviation: the model's mean median rank of the
category minus the same mean over every other registered reward model (negative = the model ranks the category
higher than the registry does), with the deviation as a fraction of the corpus size, the Benjamini-Hochberg p and
the flag in words as details. Only these columns of ``rm_value_cards`` are read: model, corpus, category,
framing, deviation, deviation_fraction, p_bh, flag, finding. Panels without numbers (a registry too small for
cards) are left out, and so is a model without any.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import polars as pl

SCHEMA_FILE = Path(__file__).parent / "data" / "every_eval_ever.eval.schema.json"
SCHEMA_VERSION = "0.3.0"  # the version the vendored schema declares
CARD_COLUMNS = ["model", "corpus", "category", "framing", "deviation", "deviation_fraction", "p_bh", "flag", "finding"]
METHOD = ("Christian et al., Reward Models Inherit Value Biases from Pretraining (ICLR 2026): every corpus word is "
          "scored as the answer to 54 value-laden prompts, ranked per prompt, and the median rank per category is "
          "compared with the other reward models of the registry (value card, docs/METHOD.md#84-value-cards)")


def schema() -> dict:
    """The vendored Every Eval Ever aggregate-record schema."""
    return json.loads(SCHEMA_FILE.read_text())


def schema_problems(record: dict) -> list[str]:
    """Where ``record`` breaks the vendored schema (``field.path: message``), none when it is valid."""
    import jsonschema

    validator = jsonschema.Draft7Validator(schema())
    return [f"{'.'.join(str(p) for p in error.absolute_path) or '(record)'}: {error.message}"
            for error in sorted(validator.iter_errors(record), key=lambda e: list(map(str, e.absolute_path)))]


def _hub_id(entry: dict, model: str) -> str:
    location = ((entry.get("provenance") or {}).get("location") if isinstance(entry.get("provenance"), dict)
                else None)
    if entry.get("source") == "huggingface" and isinstance(location, str) and location.count("/") == 1 \
            and "://" not in location and not location.startswith((".", "/")):
        return location
    return f"valuebias/{model}"


def _number(value) -> str:
    return "" if value is None else repr(float(value))


def every_eval_ever_records(cards: pl.DataFrame, manifest: dict) -> dict[str, dict]:
    """{model id: one Every Eval Ever record} from the value cards of a release (``manifest``: its
    ``name``, ``created``, ``code``, ``packages`` and ``models``)."""
    created = datetime.fromisoformat(manifest["created"].replace("Z", "+00:00"))
    retrieved = str(int(created.timestamp()))
    name = manifest["name"]
    records = {}
    cards = cards.select(CARD_COLUMNS).filter(pl.col("deviation").is_not_null() & pl.col("deviation").is_finite())
    for model in sorted(cards["model"].unique().to_list()):
        entry = manifest["models"].get(model, {})
        rows = cards.filter(pl.col("model") == model).sort("corpus", "category", "framing")
        content = (entry.get("content") or {}).get("digest") or "not recorded"
        results = [{
            "evaluation_result_id": f"{row['corpus']}/{row['category']}/{row['framing']}",
            "evaluation_name": f"valuebias value card: {row['corpus']} {row['category']} x {row['framing']} framing",
            "source_data": {"dataset_name": row["corpus"], "source_type": "other",
                            "additional_details": {"category": row["category"], "framing": row["framing"],
                                                   "release": name}},
            "evaluation_timestamp": manifest["created"],
            "metric_config": {
                "evaluation_description": (f"Mean median rank of {row['category']} words under {row['framing']} "
                                           "framing, this model minus every other registered reward model"),
                "metric_id": "valuebias.value_card_deviation", "metric_name": "Value-card deviation",
                "metric_kind": "rank_deviation", "metric_unit": "ranks",
                # neither direction is better: negative means the model ranks the category higher than the registry
                "lower_is_better": False, "score_type": "continuous", "min_score": "-Infinity",
                "max_score": "Infinity",
                "additional_details": {"direction": "negative = ranks the category higher than the registry; "
                                                    "neither direction is better",
                                       "flag_rule": "Benjamini-Hochberg p < 0.05 across the card's panels"},
            },
            "score_details": {"score": float(row["deviation"]),
                              "details": {"deviation_fraction": _number(row["deviation_fraction"]),
                                          "p_bh": _number(row["p_bh"]), "flag": str(bool(row["flag"])).lower(),
                                          "finding": row["finding"] or ""}},
        } for row in rows.iter_rows(named=True)]
        if not results:
            continue
        source = entry.get("source") or "unknown"
        records[model] = {
            "schema_version": SCHEMA_VERSION,
            "evaluation_id": f"valuebias/{model}/{retrieved}",
            "evaluation_timestamp": manifest["created"],
            "retrieved_timestamp": retrieved,
            "source_metadata": {"source_name": f"ValueBias release {name}", "source_type": "evaluation_run",
                                "source_organization_name": "ValueBias", "evaluator_relationship": "third_party",
                                "additional_details": {"release": name, "method": METHOD}},
            "eval_library": {"name": "valuebias", "version": manifest["packages"].get("valuebias") or "unknown",
                             "additional_details": {"git_commit": manifest["code"].get("git_commit") or "unknown"}},
            "model_info": {
                "name": entry.get("display_name") or model, "id": _hub_id(entry, model),
                "inference_platform": "local" if source in ("huggingface", "demo") else "unknown",
                "additional_details": {
                    "deployment_type": "self_deployed" if source in ("huggingface", "demo") else "unknown",
                    "model_availability": "open_weights" if source == "huggingface" else "unknown",
                    "valuebias_model_id": model, "family": entry.get("family") or "unknown",
                    "kind": entry.get("kind") or "unknown", "source": source, "content_digest": content},
            },
            "evaluation_results": results,
        }
    return records
