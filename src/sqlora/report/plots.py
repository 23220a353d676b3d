"""The pipeline's plots (dvc.yaml's ``plots``: training curves, EX/EM by hardness, prompt lengths) as SVG
files that any Markdown viewer shows. DVC's own page (``dvc plots show``) loads Vega from a CDN and is
blank offline; here DVC's Vega-Lite specs (``dvc plots show/diff --json``) are rendered by vl-convert,
which needs neither a browser nor a network."""

from __future__ import annotations

import os
import re
from pathlib import Path

from sqlora.errors import SqloraError
from sqlora.io import write_text
from sqlora.report.dvc import dvc_json


def plot_specs(revisions: list[str] | tuple[str, ...] = (), repo: str | os.PathLike = ".") -> dict[str, dict]:
    """{plot title: Vega-Lite spec}: the workspace's plots, or with ``revisions`` (commits, experiment
    names) each plot across them, as ``dvc plots diff`` draws them."""
    args = ("plots", "diff", *revisions) if revisions else ("plots", "show")
    data = dvc_json(*args, repo=repo).get("data", {})
    specs = {}
    for title, entries in data.items():
        vega = [e for e in entries if isinstance(e, dict) and e.get("type") == "vega" and isinstance(e.get("content"), dict)]
        if vega:
            specs[title] = vega[0]["content"]
    return specs


def slug(title: str) -> str:
    """A file name for a plot title: "EX and EM by hardness (%)" -> "ex-and-em-by-hardness"."""
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "plot"


def render_svg(spec: dict) -> str:
    import vl_convert

    try:
        return vl_convert.vegalite_to_svg(spec)
    except ValueError as exc:  # vl-convert's error for a spec it cannot compile
        raise SqloraError(f"plot {spec.get('title', '?')!r}: cannot render ({' '.join(str(exc).split())[:200]})") from None


def write_plots(specs: dict[str, dict], out_dir: str | os.PathLike) -> dict[str, Path]:
    """Each spec rendered to ``out_dir/<slug>.svg`` (each file written whole or not at all): {title: path}."""
    paths = {}
    for title, spec in specs.items():
        path = Path(out_dir) / f"{slug(title)}.svg"
        write_text(path, render_svg(spec))
        paths[title] = path
    return paths
