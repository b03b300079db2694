"""Plotly figure builders for the comparison page and the analysis reports."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .overlay import PatchGrid
from .palette import method_colour

__all__ = [
    "attention_heatmap",
    "budget_sweep_figure",
    "complexity_figure",
    "grid_attention_heatmap",
    "method_bars",
    "tau_schedule_figure",
]

_LAYOUT = dict(template="plotly_white", margin=dict(l=50, r=20, t=50, b=45), font=dict(size=13))


def _floats(values, name: str) -> list[float]:
    if hasattr(values, "tolist"):
        values = values.tolist()
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a sequence of numbers") from None


def attention_heatmap(
    attention, grid: tuple[int, int] | Sequence[PatchGrid], *, title: str = "[CLS] attention"
) -> go.Figure:
    """Heat map of the (N,) [CLS] attention over the (rows, cols) patch grid, row 0 at the top.

    Given an image's ``PatchGrid``s instead (an image read as several grids), one map per grid:
    ``grid_attention_heatmap``.
    """
    if not (isinstance(grid, tuple) and len(grid) == 2 and all(isinstance(v, int) for v in grid)):
        return grid_attention_heatmap(attention, grid, title=title)
    values = _floats(attention, "attention")
    rows, cols = grid
    if len(values) != rows * cols:
        raise ValueError(f"attention has {len(values)} values for a {rows}x{cols} grid")
    total = sum(values) or 1.0
    z = [[values[r * cols + c] / total for c in range(cols)] for r in range(rows)]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            colorscale="Viridis",
            colorbar=dict(title="share"),
            hovertemplate="row %{y}, col %{x}<br>share %{z:.4f}<extra></extra>",
        )
    )
    fig.update_yaxes(autorange="reversed", scaleanchor="x", constrain="domain")
    fig.update_layout(title=title, **_LAYOUT)
    return fig


def grid_attention_heatmap(attention, grids: Sequence[PatchGrid], *, title: str = "[CLS] attention") -> go.Figure:
    """Each grid's own attention, for an image the model reads as several patch grids.

    One heat map per grid, placed where the grid lies on the image (its ``boxes``), in one subplot
    per panel of ``overlay_grids`` (the base image beside the high-res crops). Every grid has its
    own signal, summing to about 1 over that grid, so a cell shows its patch's attention relative to
    its grid's mean ("× uniform": 1 is what every patch of the grid would get alike), one colour
    scale for all grids.

    Args:
        attention: (N,) the image's attention, grid after grid, raster order inside each.
        grids: one ``PatchGrid`` per grid, in that order.
    """
    values = _floats(attention, "attention")
    grids = list(grids)
    if not grids or not all(isinstance(g, PatchGrid) for g in grids):
        raise ValueError("grids must be a non-empty sequence of PatchGrid")
    n = sum(g.n_tokens for g in grids)
    if len(values) != n:
        raise ValueError(f"attention has {len(values)} values for {len(grids)} grids of {n} patches")
    panels = list(dict.fromkeys(g.panel for g in grids))
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=panels, horizontal_spacing=0.06)
    start = 0
    for g in grids:
        rows, cols = g.grid
        own = values[start : start + g.n_tokens]
        start += g.n_tokens
        mean = (sum(own) / len(own)) or 1.0
        x0, y0, x1, y1 = g.boxes[0]
        fig.add_trace(
            go.Heatmap(
                z=[[own[r * cols + c] / mean for c in range(cols)] for r in range(rows)],
                x0=(x0 + x1) / 2,
                dx=x1 - x0,
                y0=(y0 + y1) / 2,
                dy=y1 - y0,
                name=g.name,
                text=[[f"{g.name}, row {r}, col {c}" for c in range(cols)] for r in range(rows)],
                coloraxis="coloraxis",
                hovertemplate="%{text}<br>%{z:.2f} × uniform<extra></extra>",
            ),
            row=1,
            col=panels.index(g.panel) + 1,
        )
    for col in range(1, len(panels) + 1):
        fig.update_yaxes(
            autorange="reversed", scaleanchor="x" if col == 1 else f"x{col}", constrain="domain", row=1, col=col
        )
        fig.update_xaxes(constrain="domain", row=1, col=col)
    fig.update_layout(title=title, coloraxis=dict(colorscale="Viridis", colorbar=dict(title="× uniform")), **_LAYOUT)
    return fig


def budget_sweep_figure(sweeps: Mapping[str, Mapping[str, Sequence[float]]], *, n_tokens: int) -> go.Figure:
    """Kept-token erank and retained attention against the budget, one line per method.

    Args:
        sweeps: method -> {"budget": [...], "kept_erank": [...], "retained_attention": [...]}.
        n_tokens: N, for the x-axis range.
    """
    fig = make_subplots(rows=1, cols=2, subplot_titles=("kept-token erank", "retained [CLS] attention"))
    for method, sweep in sweeps.items():
        budgets = _floats(sweep["budget"], "budget")
        colour = method_colour(method)
        for col, key in ((1, "kept_erank"), (2, "retained_attention")):
            fig.add_trace(
                go.Scatter(
                    x=budgets,
                    y=_floats(sweep[key], key),
                    mode="lines+markers",
                    name=method,
                    legendgroup=method,
                    showlegend=col == 1,
                    line=dict(color=colour),
                ),
                row=1,
                col=col,
            )
    if n_tokens < 1:
        raise ValueError(f"n_tokens must be positive, got {n_tokens}")
    fig.update_xaxes(title="kept tokens K", type="log", autorange=True)
    fig.update_yaxes(title="erank", row=1, col=1)
    fig.update_yaxes(title="share", range=[0, 1.02], row=1, col=2)
    fig.update_layout(title="What each method keeps as the budget grows", **_LAYOUT)
    return fig


def method_bars(results: Mapping[str, Mapping[str, float]], metrics: Sequence[str]) -> go.Figure:
    """Grouped bars comparing methods on the current image, one subplot per metric.

    Args:
        results: method -> {metric: value}.
        metrics: metric names to show, in order (missing values are skipped).
    """
    if not metrics:
        raise ValueError("method_bars needs at least one metric")
    fig = make_subplots(rows=1, cols=len(metrics), subplot_titles=[m.replace("_", " ") for m in metrics])
    methods = list(results)
    for col, metric in enumerate(metrics, start=1):
        shown = [m for m in methods if results[m].get(metric) is not None]
        fig.add_trace(
            go.Bar(
                x=shown,
                y=[float(results[m][metric]) for m in shown],
                marker_color=[method_colour(m) for m in shown],
                showlegend=False,
                hovertemplate="%{x}: %{y:.3f}<extra></extra>",
            ),
            row=1,
            col=col,
        )
    fig.update_layout(title="Methods on this image", **_LAYOUT)
    return fig


def tau_schedule_figure(
    taus: Sequence[float], *, tau_max: float, label: str = "adaptive", image_erank: float | None = None
) -> go.Figure:
    """The adaptive rule's suppression radius τ of each pick against its pick number."""
    values = _floats(taus, "taus")
    fig = go.Figure(
        go.Scatter(
            x=list(range(1, len(values) + 1)),
            y=values,
            mode="lines+markers",
            name=label,
            line=dict(color=method_colour("adaptive")),
            hovertemplate="pick %{x}<br>τ = %{y:.3f}<extra></extra>",
        )
    )
    fig.add_hline(y=tau_max, line_dash="dot", annotation_text=f"τ_max = {tau_max:g}")
    title = "τ per pick"
    if image_erank is not None:
        title += f" (image erank {image_erank:.1f})"
    fig.update_layout(title=title, xaxis_title="pick", yaxis_title="τ (cosine distance)", **_LAYOUT)
    return fig


def complexity_figure(
    *, image_erank: float, entropy: float, erank_lo: float, erank_mean: float, erank_hi: float
) -> go.Figure:
    """This image's erank on the model's calibrated simple ↔ complex scale."""
    lo = min(erank_lo, image_erank) * 0.8
    hi = max(erank_hi, image_erank) * 1.2
    fig = go.Figure()
    fig.add_vrect(x0=lo, x1=erank_lo, fillcolor="#0072B2", opacity=0.12, line_width=0)
    fig.add_vrect(x0=erank_hi, x1=hi, fillcolor="#D55E00", opacity=0.12, line_width=0)
    for x, text in ((erank_lo, "10th pct"), (erank_mean, "mean"), (erank_hi, "90th pct")):
        fig.add_vline(x=x, line_dash="dot", annotation_text=text, annotation_position="top")
    fig.add_trace(
        go.Scatter(
            x=[image_erank],
            y=[0],
            mode="markers+text",
            marker=dict(size=16, color="#000000", symbol="diamond"),
            text=[f"this image: erank {image_erank:.1f}, entropy {entropy:.2f} nats"],
            textposition="middle right" if image_erank < (lo + hi) / 2 else "middle left",
            showlegend=False,
        )
    )
    fig.update_yaxes(visible=False, range=[-1, 1])
    fig.update_xaxes(title="image erank (simple ← → complex)", range=[lo, hi])
    fig.update_layout(height=220, **_LAYOUT)
    return fig
