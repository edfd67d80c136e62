"""``report.html``: one self-contained page a person reads after a run.

Everything but the videos is inside the file: images are base64 JPEG data URIs, plots are inline SVG drawn by
:mod:`stages.evaluate.svg_plots`. Videos are linked relatively (``videos/NAME.mp4``), so the page works where the
run folder is. Sections: metrics with their protocol, geometry metrics, renders beside ground truth with error
maps, input frames, training curves, camera trajectories, videos, timing.
"""

from __future__ import annotations

import base64
import io
from datetime import datetime, timezone
from html import escape
from pathlib import Path

import numpy as np

from stages.evaluate.svg_plots import line_plot, trajectory_plot

ERROR_MAP_MAX = 0.25   # mean absolute RGB error shown at full scale in the error maps

STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px auto; max-width: 1180px; color: #222; padding: 0 16px; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 18px; margin-top: 32px; border-bottom: 1px solid #ddd; }
.meta { color: #666; font-size: 13px; } nav a { margin-right: 12px; font-size: 14px; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; vertical-align: top; }
th { background: #f4f4f4; } td.key, th.key { text-align: left; } td.text { text-align: left; max-width: 760px; }
.views figure, .inputs figure { display: inline-block; margin: 4px; text-align: center; font-size: 12px; }
.views img, .inputs img { display: block; image-rendering: auto; }
.row { display: flex; gap: 6px; align-items: flex-start; flex-wrap: wrap; }
.label { color: #666; font-size: 11px; }
.plots { display: flex; gap: 16px; flex-wrap: wrap; } video { max-width: 380px; display: block; }
.videos figure { display: inline-block; margin: 6px; font-size: 12px; }
"""


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) < 1e4 else f"{value:.4g}"
    return escape(str(value))


def image_data_uri(image: np.ndarray, max_size: int, quality: int = 88) -> str:
    """(H, W, 3) float in [0, 1] or uint8 -> ``data:image/jpeg;base64,...`` with the longer side <= max_size."""
    from PIL import Image

    if image.dtype != np.uint8:
        image = np.clip(np.round(np.asarray(image, np.float64) * 255), 0, 255).astype(np.uint8)
    pil = Image.fromarray(np.ascontiguousarray(image[..., :3]))
    scale = min(1.0, max_size / max(pil.size))
    if scale < 1.0:
        pil = pil.resize((max(1, round(pil.width * scale)), max(1, round(pil.height * scale))),
                         Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    pil.save(buffer, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def error_map(render: np.ndarray, ground_truth: np.ndarray) -> np.ndarray:
    """Mean absolute RGB error per pixel, coloured from 0 (dark) to ERROR_MAP_MAX (bright)."""
    from stages.render.video import colormap

    return colormap(np.abs(render - ground_truth).mean(axis=-1) / ERROR_MAP_MAX)


def _img(uri: str, alt: str) -> str:
    return f'<img src="{uri}" alt="{escape(alt)}">'


def _table(header: list[str], rows: list[list[str]], key_columns: int = 1) -> str:
    head = "".join(f'<th class="key">{h}</th>' if i < key_columns else f"<th>{h}</th>" for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(f'<td class="key">{c}</td>' if i < key_columns else f"<td>{c}</td>"
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _protocol_table(protocol: dict) -> str:
    rows = []
    for key, value in protocol.items():
        if isinstance(value, dict):
            for sub, text in value.items():
                rows.append(f'<tr><td class="key">{escape(key)}.{escape(sub)}</td><td class="text">{escape(str(text))}'
                            f"</td></tr>")
        else:
            rows.append(f'<tr><td class="key">{escape(key)}</td><td class="text">{escape(str(value))}</td></tr>')
    return "<table>" + "".join(rows) + "</table>"


def _metrics_section(metrics: dict) -> str:
    headline = [["PSNR (dB)", _fmt(metrics.get("psnr"), 3)], ["SSIM (3DGS)", _fmt(metrics.get("ssim"))],
                ["LPIPS alex", _fmt(metrics.get("lpips_alex"))], ["LPIPS vgg", _fmt(metrics.get("lpips_vgg"))]]
    extra = metrics.get("extra", {})
    headline += [["SSIM (valid region)", _fmt(extra.get("ssim_valid"))],
                 ["LPIPS vgg, 3DGS convention ([0, 1] inputs)", _fmt(extra.get("lpips_vgg_3dgs"))]]
    masked = metrics.get("masked")
    if masked:
        headline += [["mPSNR (covisible)", _fmt(masked.get("mpsnr"), 3)], ["mSSIM", _fmt(masked.get("mssim"))],
                     ["mLPIPS alex", _fmt(masked.get("mlpips_alex"))]]
    per_view = [[escape(v["name"]), _fmt(v["psnr"], 3), _fmt(v["ssim"]), _fmt(v["lpips_alex"]), _fmt(v["lpips_vgg"])]
                for v in metrics.get("per_view", [])]
    parts = ['<section id="metrics"><h2>Novel-view metrics</h2>',
             _table(["metric", "mean over test views"], headline)]
    if per_view:
        parts.append("<details><summary>per view</summary>"
                     + _table(["view", "PSNR", "SSIM", "LPIPS alex", "LPIPS vgg"], per_view) + "</details>")
    else:
        parts.append("<p>No test views: image metrics are not defined for this run.</p>")
    parts += ["<h3>Protocol</h3>", _protocol_table(metrics.get("protocol", {})), "</section>"]
    return "".join(parts)


def _geometry_section(metrics: dict, trajectories: dict) -> str:
    geometry = metrics.get("geometry")
    if not geometry:
        return ('<section id="geometry"><h2>Geometry metrics</h2><p>The scene has no ground-truth cameras, depth or '
                'dynamic masks to compare with.</p></section>')
    names = {"ate": "ATE", "rpe_trans": "RPE translation", "rpe_rot_deg": "RPE rotation (deg)",
             "depth_abs_rel": "depth Abs Rel", "depth_delta_1.25": "depth δ < 1.25", "mask_iou": "dynamic-mask IoU"}
    rows = [[names.get(k, escape(k)), _fmt(v)] for k, v in geometry.items()]
    parts = ['<section id="geometry"><h2>Geometry metrics</h2>', _table(["metric", "value"], rows)]
    if trajectories:
        parts.append('<div class="plots">' + trajectory_plot(list(trajectories.items()),
                                                             "Camera centres: dataset vs estimate") + "</div>")
    return "".join(parts) + "</section>"


def _views_section(evaluation, max_size: int) -> str:
    if not evaluation.views:
        return ""
    parts = ['<section id="views"><h2>Test views</h2><p>Ground truth, render, and mean absolute error '
             f"(dark = 0, bright ≥ {ERROR_MAP_MAX}).</p><div class=\"views\">"]
    for view in evaluation.views:
        m = view.metrics
        caption = f"{escape(view.name)}: PSNR {_fmt(m['psnr'], 2)} dB, SSIM {_fmt(m['ssim'], 3)}"
        if m.get("lpips_alex") is not None:
            caption += f", LPIPS {_fmt(m['lpips_alex'], 3)}"
        images = [(image_data_uri(view.ground_truth, max_size), "ground truth"),
                  (image_data_uri(view.render, max_size), "render"),
                  (image_data_uri(error_map(view.render, view.ground_truth), max_size), "|error|")]
        parts.append('<figure><div class="row">'
                     + "".join(f'<div>{_img(u, f"{view.name} {label}")}<span class="label">{label}</span></div>'
                               for u, label in images)
                     + f"</div><figcaption>{caption}</figcaption></figure>")
    return "".join(parts) + "</div></section>"


def _inputs_section(scene, count: int, max_size: int) -> str:
    from stages.evaluate.stage import evenly_spaced

    frames = evenly_spaced(scene.train_frames, count)
    if not frames:
        return ""
    figures = [f'<figure>{_img(image_data_uri(scene.rgb(f), max(max_size // 2, 64)), f.name)}'
               f"<figcaption>{escape(f.name)}, t = {f.time:.3f}</figcaption></figure>" for f in frames]
    return ('<section id="inputs"><h2>Input frames</h2>'
            f"<p>{len(scene.train_frames)} training frames, {len(scene.test_frames)} test frames; "
            f"{len(frames)} shown.</p><div class=\"inputs\">" + "".join(figures) + "</div></section>")


def _training_section(run_dir: Path) -> str:
    from stages.evaluate.stage import read_training_log

    log = read_training_log(run_dir)
    if "step" not in log:
        return '<section id="training"><h2>Training</h2><p>No optimize/log.csv.</p></section>'
    steps = log["step"]
    plots = []
    loss_terms = [k for k in ("loss", "l1", "ssim", "depth", "motion", "scale") if k in log]
    if loss_terms:
        plots.append(line_plot([(k, steps, log[k]) for k in loss_terms], "Training loss", "step", "value (log)",
                               log_y=True))
    if "psnr" in log:
        plots.append(line_plot([("train PSNR", steps, log["psnr"])], "Training PSNR", "step", "dB"))
    if "gaussians" in log:
        plots.append(line_plot([("Gaussians", steps, log["gaussians"])], "Number of Gaussians", "step", "count"))
    return '<section id="training"><h2>Training</h2><div class="plots">' + "".join(plots) + "</div></section>"


def _cameras_section(run_dir: Path) -> str:
    from stages.initialize.geometry_io import read_cameras

    path = run_dir / "geometry" / "cameras.json"
    if not path.is_file():
        return ""
    cameras, source = read_cameras(path)
    ordered = sorted(cameras, key=lambda c: (c.time, c.index))
    centres = lambda cams: np.stack([-c.world_to_camera[:3, :3].T @ c.world_to_camera[:3, 3] for c in cams])
    test = [c for c in ordered if c.split != "train"]
    plot = trajectory_plot([("cameras in time order", centres(ordered))],
                           f"Camera trajectory ({source} cameras; circle = first frame)",
                           markers=[("test views", centres(test))] if test else ())
    return f'<section id="cameras"><h2>Cameras</h2><div class="plots">{plot}</div></section>'


def _videos_section(run_dir: Path) -> str:
    videos = sorted((run_dir / "videos").glob("*.mp4")) if (run_dir / "videos").is_dir() else []
    if not videos:
        return '<section id="videos"><h2>Videos</h2><p>No videos were rendered.</p></section>'
    figures = []
    for path in videos:
        rel = f"videos/{path.name}"
        figures.append(f'<figure><video src="{escape(rel)}" controls muted loop preload="metadata"></video>'
                       f'<figcaption><a href="{escape(rel)}">{escape(path.name)}</a></figcaption></figure>')
    return ('<section id="videos"><h2>Videos</h2><p>Files in the run folder\'s videos/ (render more with '
            '<code>page4dgs render RUN --path {input,spiral,bullet,sweep,spiral-time}</code>).</p>'
            '<div class="videos">' + "".join(figures) + "</div></section>")


def _timing_section(metrics: dict) -> str:
    timing = metrics.get("timing", {})
    rows = [[escape(k.removesuffix("_s")), _fmt(v, 1)] for k, v in timing.items()]
    return ('<section id="timing"><h2>Timing</h2>' + _table(["stage", "seconds"], rows)
            + f"<p class=\"meta\">device: {escape(str(metrics.get('device')))}</p></section>")


def build_report(evaluation, run_dir: Path, config, scene) -> str:
    """The whole page as a string."""
    from pipeline import __version__

    cfg = config.evaluate
    metrics = evaluation.metrics
    title = f"page4dgs report: {scene.name}"
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    sections = [
        _metrics_section(metrics),
        _geometry_section(metrics, evaluation.trajectories),
        _views_section(evaluation, cfg.report_image_size),
        _inputs_section(scene, cfg.report_inputs, cfg.report_image_size),
        _training_section(run_dir),
        _cameras_section(run_dir),
        _videos_section(run_dir),
        _timing_section(metrics),
    ]
    nav = "".join(f'<a href="#{anchor}">{label}</a>' for anchor, label in (
        ("metrics", "metrics"), ("geometry", "geometry"), ("views", "test views"), ("inputs", "inputs"),
        ("training", "training"), ("cameras", "cameras"), ("videos", "videos"), ("timing", "timing")))
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f"<style>{STYLE}</style></head><body><h1>{escape(title)}</h1>"
            f'<p class="meta">scene {escape(str(scene.source))} ({escape(scene.format)}), preset '
            f"{escape(str(config.preset))}, page4dgs {escape(__version__)}, {when}</p><nav>{nav}</nav>"
            + "".join(sections) + "</body></html>\n")
