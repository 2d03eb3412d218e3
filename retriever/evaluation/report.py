"""The eval report folder: report.json (every number), per_image.csv, report.html (plots, examples)."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np
import polars as pl

from retriever.evaluation.run import EvalResult
from retriever.files import atomic_write, safe_cell, write_bytes_atomic


def _thumb(path: str, size: int = 160) -> str:
    from retriever.images import load_image

    try:
        img = load_image(path)
    except Exception:  # a report must not fail on one unreadable thumbnail
        return ""
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _svg_histogram(values: list[float], width: int = 520, height: int = 220, bins: int = 20) -> str:
    counts, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    top = max(int(counts.max()), 1)
    pad, bw = 30, (width - 70) / bins
    bars = []
    for i, c in enumerate(counts):
        h = (height - 2 * pad) * c / top
        x, y = pad + i * bw, height - pad - h
        bars.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bw - 2:.1f}" height="{h:.1f}" fill="#4a7bd0">'
                    f"<title>{edges[i]:.2f}-{edges[i + 1]:.2f}: {c}</title></rect>")
    ticks = "".join(f'<text x="{pad + i * bw * 5:.1f}" y="{height - 10}" font-size="11">{edges[i * 5]:.2f}</text>'
                    for i in range(bins // 5 + 1) if i * 5 <= bins)
    return (f'<svg role="img" aria-label="histogram of per-image scores" width="{width}" height="{height}" '
            f'xmlns="http://www.w3.org/2000/svg"><text x="{pad}" y="16" font-size="12">images (max {top})</text>'
            f'{"".join(bars)}<line x1="{pad}" y1="{height - pad}" x2="{width - 10}" y2="{height - pad}" '
            f'stroke="#333"/>{ticks}</svg>')


def _svg_bars(items: list[tuple[str, float, float, float]], width: int = 520) -> str:
    row, label_w = 28, 150
    height = row * len(items) + 20
    scale = width - label_w - 70
    parts = []
    for i, (name, mean, lo, hi) in enumerate(items):
        y = 10 + i * row
        colour = "#999" if name.startswith("baseline") else "#2e8b57"
        parts.append(
            f'<text x="0" y="{y + 15}" font-size="12">{html.escape(name)}</text>'
            f'<rect x="{label_w}" y="{y + 3}" width="{max(mean, 0) * scale:.1f}" height="16" fill="{colour}"/>'
            f'<line x1="{label_w + max(lo, 0) * scale:.1f}" y1="{y + 11}" x2="{label_w + max(hi, 0) * scale:.1f}" '
            f'y2="{y + 11}" stroke="#000"/>'
            f'<text x="{label_w + max(hi, mean, 0) * scale + 6:.1f}" y="{y + 15}" font-size="12">{mean:.4f}</text>'
        )
    return (f'<svg role="img" aria-label="mean score per stage" width="{width}" height="{height}" '
            f'xmlns="http://www.w3.org/2000/svg">{"".join(parts)}</svg>')


def write_report(result: EvalResult, out: str | Path, examples: int = 3) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    numbers = {
        "profile": result.profile,
        "settings": result.settings,
        "stages": {k: v.as_dict() for k, v in result.stages.items()},
        "baselines": {k: v.as_dict() for k, v in result.baselines.items()},
        "median_timings_ms": result.timings_ms,
        "per_image": [{"image": r.image, "truth": r.truth, "prompt": r.prompt,
                       "retrieval_prompt": r.retrieval_prompt, "scores": r.scores} for r in result.rows],
    }
    write_bytes_atomic(out / "report.json", json.dumps(numbers, indent=2).encode())
    stage_names = sorted({k for r in result.rows for k in r.scores})
    per_image = pl.DataFrame({  # text cells that would run as a spreadsheet formula get a leading apostrophe
        **{col: [safe_cell(getattr(r, col)) for r in result.rows] for col in ("image", "truth", "prompt",
                                                                            "retrieval_prompt")},
        **{f"score_{k}": [r.scores.get(k) for r in result.rows] for k in stage_names},
    })
    with atomic_write(out / "per_image.csv") as tmp:
        per_image.write_csv(tmp)

    bars = [(k, v.mean, v.ci_low, v.ci_high) for k, v in result.stages.items()]
    bars += [(f"baseline: {k}", v.mean, v.ci_low, v.ci_high) for k, v in result.baselines.items()]
    ranked = sorted(result.rows, key=lambda r: -r.scores["final"])
    def example_rows(rows) -> str:
        return "".join(
            f'<tr><td><img src="{_thumb(r.image)}" alt="{html.escape(Path(r.image).name)}" width="120"></td>'
            f"<td>{r.scores['final']:.4f}</td><td>{html.escape(r.truth)}</td><td>{html.escape(r.prompt)}</td></tr>"
            for r in rows)
    head = "<tr><th>image</th><th>final</th><th>true prompt</th><th>predicted prompt</th></tr>"
    table = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{s.mean:.4f}</td><td>{s.ci_low:.4f} to {s.ci_high:.4f}</td><td>{s.n}</td></tr>"
        for name, s in [*result.stages.items(), *((f"baseline: {k}", v) for k, v in result.baselines.items())])
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>unprompt eval: {html.escape(result.profile)}</title>
<link rel="icon" href="data:,">
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}}h2{{margin-top:1.5em}}</style>
</head><body>
<h1>unprompt eval &mdash; profile <code>{html.escape(result.profile)}</code></h1>
<p>Metric: mean cosine between all-MiniLM-L6-v2 embeddings of predicted and true prompts
(Kaggle "Stable Diffusion &ndash; Image to Prompts"). {len(result.rows)} images, seed {result.settings["seed"]}.</p>
<h2>Per stage</h2>{_svg_bars(bars)}
<table><tr><th>stage</th><th>mean</th><th>95% CI</th><th>n</th></tr>{table}</table>
<h2>Final score per image</h2>{_svg_histogram([r.scores["final"] for r in result.rows])}
<h2>Best examples</h2><table>{head}{example_rows(ranked[:examples])}</table>
<h2>Worst examples</h2><table>{head}{example_rows(ranked[::-1][:examples])}</table>
</body></html>
"""
    write_bytes_atomic(out / "report.html", page.encode("utf-8"))
    return out
