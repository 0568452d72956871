"""The few lines `canctr prepare` prints about a prepared directory (from its schema.json alone)."""

from __future__ import annotations

from canctr.data.schema import SPLITS, Schema

# optional schema.counts entries that format_summary shows when a pipeline records them
SUMMARY_NOTES = (
    "positive_threshold", "users_without_profile", "item_category_conflicts", "split_time", "bayes_auc"
)


def format_summary(schema: Schema) -> str:
    """A few lines for humans: sizes, samples, positive rate, OOV and skipped rows."""
    c = schema.counts
    lines = [
        f"{schema.dataset}  protocol={schema.protocol}  seed={schema.seed}  "
        f"longest train history {c.get('max_hist_len', {}).get('train', 0)}"
    ]
    parts = [
        f"users {c.get('users', 0):,}",
        f"items {c.get('items', 0):,}",
        f"categories {c.get('categories', 0):,}",
    ]
    if "events" in c:
        parts += [
            f"events {c['events']:,}",
            f"users with <2 events {c['users_lt2_events']:,}",
            f"timestamp ties {c['timestamp_ties']:,}",
        ]
    lines.append("  " + ", ".join(parts))
    for split in SPLITS:
        lines.append(
            f"  {split}: {schema.splits[split]:,} samples from {c['split_users'][split]:,} users, "
            f"positive rate {c['positive_rate'][split]:.3f}"
        )
    lines.append(
        "  vocab (incl. index 0): " + ", ".join(f"{k} {v:,}" for k, v in schema.vocab.items())
        + "".join(f", pairs {k} {v:,}" for k, v in schema.pairs.items())
    )
    window = c.get("outside_time_window")
    if window and window["rows"]:
        lines.append(
            f"  rows outside the time window [{window['window'][0]}, {window['window'][1]}): "
            f"{window['rows']:,} {window['action']} (timestamps {window['range'][0]}..{window['range'][1]})"
        )
    notes = [f"{k.replace('_', ' ')} {c[k]}" for k in SUMMARY_NOTES if c.get(k) is not None]
    if notes:
        lines.append("  " + ", ".join(notes))
    oov = c["oov"]["test"]
    lines.append("  test ids unseen in train (-> 0): " + ", ".join(f"{k} {v:,}" for k, v in oov.items()))
    if c.get("skipped_rows"):
        lines.append(
            "  skipped malformed rows: " + ", ".join(f"{p}: {n}" for p, n in c["skipped_rows"].items())
        )
    return "\n".join(lines)


__all__ = ["SUMMARY_NOTES", "format_summary"]
