"""Reports of an analysis: a markdown summary and an HTML page of plotly figures.

Tables follow the paper's (methods.md): kept erank per method (Table 1), CHAIR per method (Table 2),
the effect of the hybrid mix ratio (Table 3, when hybrid variants were run), attention vs diversity
by image complexity (Table 4), and hybrid vs hybrid-erank vs its inverse (Tables 5–6, when run);
beside them, every answer's agreement with the full model's, and how often the methods' captions
of one image differ. The methods that select from each question, inside the LLM (FastV, DART at
layer K) or before it from the question's CLIP text embedding (CDPruner), sit in every table beside
the others, with a note that they keep a set per question.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

import pruning
from scoring import normalize_words
from visualizers.palette import method_colour

from .config import AnalysisConfig, per_question
from .results import read_rows
from .scoring import aggregate

__all__ = ["summarise", "write_reports"]


def _fmt(value: Any, pct: bool = False) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{100 * value:.1f}" if pct else f"{value:.2f}"
    return str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def summarise(rows: Sequence[dict[str, Any]]) -> dict[tuple, dict[str, Any]]:
    """Aggregates per (label, budget), per (label, budget, complexity bin) and per (label, budget, level)."""
    groups: dict[tuple, list] = defaultdict(list)
    for r in rows:
        groups[("all", r["label"], r["budget"])].append(r)
        groups[("bin", r["label"], r["budget"], r["complexity_bin"])].append(r)
        if r.get("complexity"):
            groups[("level", r["label"], r["budget"], r["complexity"])].append(r)
    return {key: aggregate(group) for key, group in groups.items()}


def _score(agg: dict[str, Any]) -> float | None:
    """One accuracy-like number per group: POPE/existence accuracy, else 1 − CHAIR_s, else other tasks."""
    if agg["pope"]["accuracy"] is not None:
        return agg["pope"]["accuracy"]
    if agg["chair"]["chair_s"] is not None:
        return 1 - agg["chair"]["chair_s"]
    return agg["other_accuracy"]


def _task_table(stats: dict[tuple, dict[str, Any]], labels: Sequence[str], budgets: Sequence[Any], levels) -> list[str]:
    """Every task's own score per method, budget and built-in scene level (%, kept erank as is)."""
    tasks = sorted({t for a in stats.values() for t in a["task_accuracy"]})
    header = ["method", "K", "level", "kept erank", "existence", "recall", "CHAIR_i", "CHAIR_s", "attr CHAIR_i"]
    header += ["length vs full", "agreement", *tasks]
    rows = []
    for lab in labels:
        full_keys = sorted({k[2] for k in stats if k[0] == "level" and k[1] == "full"}, key=str)
        for b in full_keys if lab == "full" else budgets:
            for lv in levels:
                a = stats.get(("level", lab, b, lv))
                if a is None:
                    continue
                chair = a["chair"]
                rows.append(
                    [
                        lab,
                        "all" if lab == "full" else b,
                        lv,
                        _fmt(a["kept_erank"]),
                        _fmt(a["pope"]["accuracy"], True),
                        _fmt(chair["recall"], True),
                        _fmt(chair["chair_i"], True),
                        _fmt(chair["chair_s"], True),
                        _fmt(chair["attr_i"], True),
                        _fmt(chair["length_ratio"], True),
                        _fmt(a["agreement"], True),
                        *[_fmt(a["task_accuracy"].get(t), True) for t in tasks],
                    ]
                )
    return ["", "## Every task per built-in scene level (%)", "", _table(header, rows)]


def _disagreement(rows: Sequence[dict[str, Any]], labels: Sequence[str], budgets: Sequence[Any]) -> list[str]:
    """Per budget (and built-in level): the share of images on which at least two of the methods'
    captions differ (compared as ``scoring.normalize_words``)."""
    if len(labels) < 2:
        return []
    captions: dict[tuple, dict[str, str]] = defaultdict(dict)
    for r in rows:
        if r.get("task") == "caption" and r["label"] in labels:
            key = (r["budget"], r.get("complexity") or "all", r["item_id"])
            captions[key][r["label"]] = normalize_words(r["answer"])
    groups: dict[tuple, list[bool]] = defaultdict(list)
    for (budget, level, _), by_label in captions.items():
        if len(by_label) == len(labels):
            differ = len(set(by_label.values())) > 1
            groups[(budget, level)].append(differ)
            if level != "all":
                groups[(budget, "all")].append(differ)
    if not groups:
        return []
    levels = [*sorted({lv for _, lv in groups} - {"all"}), "all"]
    table = [
        [b, *[_fmt(sum(g) / len(g) if (g := groups.get((b, lv))) else None, True) for lv in levels]] for b in budgets
    ]
    return [
        "",
        f"## Methods disagree: images on which at least two of {', '.join(labels)} caption differently (%)",
        "",
        _table(["K", *levels], table),
    ]


def _per_question_note(config: AnalysisConfig) -> list[str]:
    """Which variants select from each question, where (inside the LLM from a decoder layer, or before it
    from the question's CLIP text embedding), and what their kept erank means."""
    asks = [m for m in config.methods if per_question(m.method)]
    if not asks:
        return []
    lines = [""]
    in_llm = [m for m in asks if pruning.get_method(m.method).stage == "in-llm"]
    if in_llm:
        layers = [(m.label, {**pruning.method_params(m.method), **m.params}["layer"]) for m in in_llm]
        lines.append("In-LLM methods: " + ", ".join(f"{lab} (from decoder layer {lay})" for lab, lay in layers) + ".")
    reading = [m.label for m in asks if m not in in_llm]
    if reading:
        where = "selects before the LLM, from the question's CLIP text embedding: layer 0"
        lines.append("Question-reading methods: " + ", ".join(f"{lab} ({where})" for lab in reading) + ".")
    return [
        *lines,
        "They choose their tokens from each question, so their kept set differs per question (their rows",
        "say `kept_per` = question): their kept erank is averaged over each image's questions first; the",
        "other methods keep one set per image.",
    ]


def write_reports(output: Path, config: AnalysisConfig) -> str:
    """Write ``summary.md`` and ``report.html`` from ``results.jsonl``; returns the markdown."""
    rows = read_rows(output / "results.jsonl")
    stats = summarise(rows)
    labels = ["full"] + [m.label for m in config.methods]
    budgets = list(config.budgets)
    n_items = len({r["item_id"] for r in rows})
    md = [
        f"# PruneLens analysis: {config.model}",
        "",
        f"{n_items} images, source `{config.source['kind']}`, budgets {budgets}, tasks {list(config.tasks)}.",
        "",
    ]

    def get(label: str, budget: Any, *rest: str) -> dict[str, Any] | None:
        if label == "full":
            matches = [
                v
                for k, v in stats.items()
                if k[0] == ("bin" if rest else "all") and k[1] == "full" and (not rest or k[3] == rest[0])
            ]
            return matches[0] if matches else None
        return stats.get(("bin", label, budget, *rest) if rest else ("all", label, budget))

    md += ["## Kept diversity (Table 1): mean kept-token erank", ""]
    full = get("full", None)
    if full is not None:
        md += [f"Mean image erank (all tokens): {_fmt(full['kept_erank'])}.", ""]
    md.append(
        _table(
            ["method", *[f"K={b}" for b in budgets]],
            [[lab, *[_fmt((get(lab, b) or {}).get("kept_erank")) for b in budgets]] for lab in labels[1:]],
        )
    )

    def per_budget(section: str, fields: Sequence[tuple[str, bool]]) -> list[list[Any]]:
        out = []
        for lab in labels:
            for b in [None] if lab == "full" else budgets:
                a = get(lab, b)
                if a is not None and a[section]["n"]:
                    out.append([lab, "all" if b is None else b, *[_fmt(a[section][f], pct) for f, pct in fields]])
        return out

    md += _per_question_note(config)
    md += [
        "",
        "## Hallucination (Table 2): CHAIR_s / CHAIR_i / recall (%), mean length",
        "",
        "Length vs full: total caption length over the full model's on the same images (%). On built-in",
        "scenes, attr CHAIR_i / attr CHAIR_s count mentions of present objects with a wrong colour or count",
        "(per mention / per caption), and any CHAIR_s the captions with a wrong object or attribute.",
        "",
    ]
    t2_fields = [("chair_s", True), ("chair_i", True), ("recall", True), ("length", False), ("length_ratio", True)]
    t2_fields += [("attr_i", True), ("attr_s", True), ("any_s", True)]
    rows_t2 = per_budget("chair", t2_fields)
    t2_header = ["method", "K", "CHAIR_s", "CHAIR_i", "recall", "length", "length vs full"]
    t2_header += ["attr CHAIR_i", "attr CHAIR_s", "any CHAIR_s"]
    md.append(_table(t2_header, rows_t2) if rows_t2 else "No caption task in this run.")
    md += ["", "## Agreement with the full model: identical answers / word overlap (%)", ""]
    md.append(
        _table(
            ["method", "K", "identical", "word overlap"],
            [
                [lab, b, _fmt(a["agreement"], True), _fmt(a["overlap"], True)]
                for lab in labels[1:]
                for b in budgets
                if (a := get(lab, b)) is not None
            ],
        )
    )
    md += _disagreement(rows, labels[1:], budgets)
    md += ["", "## POPE / existence: accuracy / F1 / yes-ratio (%)", ""]
    rows_pope = per_budget("pope", [("accuracy", True), ("f1", True), ("yes_ratio", True)])
    md.append(
        _table(["method", "K", "accuracy", "F1", "yes-ratio"], rows_pope)
        if rows_pope
        else "No yes/no task in this run."
    )
    bins = [b for b in ("simple", "intermediate", "complex") if any(k[0] == "bin" and k[3] == b for k in stats)]
    md += [
        "",
        "## By image complexity (Table 4): score per erank bin",
        "",
        "Score = yes/no accuracy when asked, else 1 − CHAIR_s, else the other tasks' accuracy (%).",
        "",
    ]
    md.append(
        _table(
            ["method", "K", *bins],
            [
                [lab, b, *[_fmt(_score(a) if (a := get(lab, b, bn)) else None, True) for bn in bins]]
                for lab in labels
                if lab != "full"
                for b in budgets
            ],
        )
    )
    levels = sorted({k[3] for k in stats if k[0] == "level"})
    if levels:
        md += ["", "Built-in scene levels:", ""]
        md.append(
            _table(
                ["method", "K", *levels],
                [
                    [
                        lab,
                        b,
                        *[
                            _fmt(_score(stats[("level", lab, b, lv)]) if ("level", lab, b, lv) in stats else None, True)
                            for lv in levels
                        ],
                    ]
                    for lab in labels
                    if lab != "full"
                    for b in budgets
                ],
            )
        )
    if levels:
        md += _task_table(stats, labels, budgets, levels)
    hybrids = [m for m in config.methods if m.method == "hybrid"]
    if len(hybrids) > 1:
        md += ["", "## Hybrid mix ratio R (Table 3)", ""]
        md.append(
            _table(
                ["variant", "R", "K", "kept erank", "CHAIR_s", "score"],
                [
                    [
                        m.label,
                        m.params.get("ratio", 0.5),
                        b,
                        _fmt(get(m.label, b)["kept_erank"]),
                        _fmt(get(m.label, b)["chair"]["chair_s"], True),
                        _fmt(_score(get(m.label, b)), True),
                    ]
                    for m in hybrids
                    for b in budgets
                ],
            )
        )
    mixes = [m for m in config.methods if m.method in ("hybrid", "hybrid-erank")]
    if any(m.method == "hybrid-erank" for m in mixes):
        md += ["", "## Fixed vs image-aware mix (Tables 5–6)", ""]
        md.append(
            _table(
                ["variant", "K", *bins],
                [
                    [m.label, b, *[_fmt(_score(a) if (a := get(m.label, b, bn)) else None, True) for bn in bins]]
                    for m in mixes
                    for b in budgets
                ],
            )
        )
    text = "\n".join(md) + "\n"
    (output / "summary.md").write_text(text)
    _write_html(output, config, stats, labels, budgets, bins, text)
    return text


def _write_html(
    output: Path,
    config: AnalysisConfig,
    stats: dict,
    labels: list[str],
    budgets: list[int],
    bins: list[str],
    markdown: str,
) -> None:
    figs = []
    erank = go.Figure()
    chair = go.Figure()
    for lab in labels[1:]:
        colour = method_colour(next(m.method for m in config.methods if m.label == lab))
        ys = [(stats.get(("all", lab, b)) or {}).get("kept_erank") for b in budgets]
        erank.add_trace(go.Scatter(x=budgets, y=ys, name=lab, mode="lines+markers", line=dict(color=colour)))
        cs = [(stats.get(("all", lab, b)) or {"chair": {}})["chair"].get("chair_s") for b in budgets]
        chair.add_trace(go.Bar(x=[str(b) for b in budgets], y=cs, name=lab, marker_color=colour))
    erank.update_layout(title="Kept-token erank per method (Table 1)", xaxis_title="K", yaxis_title="erank")
    chair.update_layout(title="CHAIR_s per method (Table 2)", xaxis_title="K", yaxis_title="CHAIR_s", barmode="group")
    figs += [erank, chair]
    for b in budgets:
        fig = go.Figure()
        for lab in labels[1:]:
            colour = method_colour(next(m.method for m in config.methods if m.label == lab))
            ys = [_score(stats[("bin", lab, b, bn)]) if ("bin", lab, b, bn) in stats else None for bn in bins]
            fig.add_trace(go.Bar(x=bins, y=ys, name=lab, marker_color=colour))
        fig.update_layout(title=f"Score by image complexity at K={b} (Table 4)", barmode="group", yaxis_title="score")
        figs.append(fig)
    parts = [fig.to_html(full_html=False, include_plotlyjs="inline" if i == 0 else False) for i, fig in enumerate(figs)]
    body = "\n".join(parts)
    escaped = markdown.replace("&", "&amp;").replace("<", "&lt;")
    html = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>PruneLens analysis</title></head><body>"
        f"<h1>PruneLens analysis</h1>{body}<h2>Tables</h2><pre>{escaped}</pre></body></html>"
    )
    (output / "report.html").write_text(html)
