"""The leakage audit as Markdown (``audit.md``): counts, label conflicts and the cross-split groups."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from hdkd.data.dedup import method_text

_MD_TABLE_ROWS = 500


def _short(path: str, root: Optional[Path]) -> str:
    if root is not None:
        try:
            return str(Path(path).relative_to(root))
        except ValueError:
            pass
    return path


def markdown_report(result: Any, root: Optional[Path] = None) -> str:
    s = result.summary()
    lines = [
        "# Leakage audit",
        "",
        f"Data: {result.data}",
        "",
        f"Method: {method_text(result.threshold)}.",
        "",
        "Images per split: " + ", ".join(f"{k} {v}" for k, v in s["splits"].items()) + f" (total {s['images']})",
        "",
        "## Summary",
        "",
        "| | exact duplicates | near duplicates |",
        "|---|---|---|",
    ]
    near = s.get("near")

    def row(label: str, key: str) -> None:
        lines.append(f"| {label} | {s['exact'][key]} | {near[key] if near else 'not computed'} |")

    row("groups", "groups")
    row("images in groups", "images")
    row("groups within one split", "within_split_groups")
    row("groups across splits", "cross_split_groups")
    for pair in s["exact"]["groups_by_split_pair"]:
        lines.append(
            f"| groups across {pair} | {s['exact']['groups_by_split_pair'][pair]} | "
            f"{near['groups_by_split_pair'][pair] if near else 'not computed'} |"
        )
    row("groups touching test and train/val", "groups_touching_test_and_train_val")
    row("label conflicts (one image, several classes)", "label_conflicts")
    lines += [
        "",
        f"Test images with an exact or near duplicate in train/val (removed by "
        f"`data.drop_duplicates=test`): {s['test_images_with_train_val_duplicate']}.",
        f"Train/val images with an exact or near duplicate in test (removed by "
        f"`data.drop_duplicates=train`): {s['train_val_images_with_test_duplicate']}.",
        "",
    ]

    cross = [g for g in result.exact + result.near if g.cross_split]
    lines += ["## Groups across splits", ""]
    if not cross:
        lines += ["None.", ""]
    else:
        lines += ["| kind | splits | classes | label conflict | members (split: path) |", "|---|---|---|---|---|"]
        for group in cross[:_MD_TABLE_ROWS]:
            kind = group.kind if group.kind == "exact" else f"near (<= {group.max_distance})"
            members = "<br>".join(f"{m.split}: {_short(m.path, root)}" for m in group.members)
            lines.append(
                f"| {kind} | {', '.join(group.splits)} | {', '.join(group.classes)} | "
                f"{'yes' if group.label_conflict else 'no'} | {members} |"
            )
        if len(cross) > _MD_TABLE_ROWS:
            lines += ["", f"... and {len(cross) - _MD_TABLE_ROWS} more groups: see audit.json."]
        lines.append("")
    conflicts = [g for g in result.exact + result.near if g.label_conflict and not g.cross_split]
    if conflicts:
        lines += ["## Label conflicts within a split", "", "| kind | split | classes | members |", "|---|---|---|---|"]
        for group in conflicts[:_MD_TABLE_ROWS]:
            members = "<br>".join(_short(m.path, root) for m in group.members)
            lines.append(f"| {group.kind} | {', '.join(group.splits)} | {', '.join(group.classes)} | {members} |")
        lines.append("")
    lines.append("Every group, with all its members, is in audit.json.")
    return "\n".join(lines) + "\n"
