"""report.html: self-contained, and every image, plot and video on it loads in a real browser (headless
Chromium, installed from Debian's packages by this test where missing)."""

import json
import re
import shutil
import subprocess
import tempfile

import pytest

from pipeline.scene import load_scene
from stages.evaluate.stage import evaluate_run, write_outputs
from stages.evaluate.svg_plots import line_plot, nice_ticks, trajectory_plot
from tests.evaluate.test_evaluate_stage import rendered_run, with_ground_truth

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--mute-audio", "--virtual-time-budget=15000"]

# Appended to a copy of the report: after load, records whether each <img> decoded, each <svg> has drawn content,
# and each <video> read its metadata, into <pre id="page4dgs-check">.
CHECK_SCRIPT = """<script>
window.addEventListener('load', async () => {
  const out = {images: [], svgs: [], videos: []};
  for (const img of document.images) out.images.push({alt: img.alt, ok: img.complete && img.naturalWidth > 0});
  for (const svg of document.querySelectorAll('svg')) {
    const box = svg.getBBox();
    out.svgs.push({title: svg.querySelector('title').textContent,
                   ok: box.width > 0 && box.height > 0 && svg.querySelectorAll('polyline, circle').length > 0});
  }
  const videos = [...document.querySelectorAll('video')];
  await Promise.all(videos.map(v => new Promise(done => {
    if (v.readyState >= 1 || v.error) return done();
    v.addEventListener('loadedmetadata', done); v.addEventListener('error', done); setTimeout(done, 8000);
  })));
  for (const v of videos) out.videos.push({src: v.getAttribute('src'), ok: v.readyState >= 1 && v.videoWidth > 0});
  const pre = document.createElement('pre'); pre.id = 'page4dgs-check'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def chromium() -> str:
    """Path of Debian's chromium, installed with apt-get where missing (the test machines run as root)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if not shutil.which("apt-get"):
        pytest.skip("chromium is missing and this machine has no apt-get to install it")
    env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
        if result.returncode != 0:
            pytest.fail(f"{' '.join(command)} failed: {result.stderr.strip()[-500:]}")
    found = shutil.which("chromium")
    assert found, "apt-get installed chromium but it is not on PATH"
    return found


def browser_check(report):
    """Open a copy of ``report`` (same folder, so relative video links resolve) and return the check's JSON."""
    checked = report.with_name("report-check.html")
    checked.write_text(report.read_text().replace("</body>", CHECK_SCRIPT + "</body>"))
    with tempfile.TemporaryDirectory() as profile:
        result = subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom",
                                 checked.as_uri()], capture_output=True, text=True, timeout=120)
    match = re.search(r'<pre id="page4dgs-check">(.*?)</pre>', result.stdout, re.S)
    assert match, f"the check did not run (exit {result.returncode}): {result.stderr[-800:]}"
    return json.loads(match.group(1).replace("&quot;", '"').replace("&amp;", "&"))


def test_report_loads_every_image_plot_and_video(fake_run, monkeypatch):
    config = rendered_run(fake_run, monkeypatch, with_video=True)
    config.evaluate.lpips = False                    # LPIPS has its own tests; keep this one quick
    scene = with_ground_truth(load_scene(config.scene), fake_run.run_dir)
    evaluation = evaluate_run(fake_run.run_dir, config, scene, "cpu")
    write_outputs(evaluation, fake_run.run_dir, fake_run.run_dir, config, scene)
    report = fake_run.run_dir / "report.html"
    html = report.read_text()

    # Self-contained: images are data URIs, nothing is fetched, videos are relative links that exist.
    assert not re.search(r"<(link|script)\b", html)
    assert all(src.startswith("data:image/") for src in re.findall(r'<img src="([^"]+)"', html))
    videos = re.findall(r'<video src="([^"]+)"', html)
    assert videos == ["videos/spiral-time.mp4", "videos/spiral-time_depth.mp4", "videos/spiral-time_dynamic.mp4"]
    assert all((fake_run.run_dir / v).is_file() for v in videos)

    result = browser_check(report)
    n_views, n_inputs = len(fake_run.test_names), len(fake_run.train_names)
    assert len(result["images"]) == 3 * n_views + n_inputs
    assert [i for i in result["images"] if not i["ok"]] == []
    titles = [s["title"] for s in result["svgs"]]
    assert titles == ["Camera centres: dataset vs estimate", "Training loss", "Training PSNR", "Number of Gaussians",
                      "Camera trajectory (dataset cameras; circle = first frame)"]
    assert [s for s in result["svgs"] if not s["ok"]] == []
    assert len(result["videos"]) == 3 and [v for v in result["videos"] if not v["ok"]] == []
    for text in ("PSNR (dB)", "mPSNR (covisible)", "ATE", "dynamic-mask IoU", "test_split", "r_000"):
        assert text in html


def test_plots_place_data_where_it_belongs():
    svg = line_plot([("a", [0, 10], [0, 1])], "t", "x", "y", width=460, height=260)
    points = re.search(r'points="([^"]+)"', svg).group(1).split()
    (x0, y0), (x1, y1) = (map(float, p.split(",")) for p in points)
    assert x0 == 56 and x1 == 448                       # plot box from the left margin to width - right margin
    assert y0 > y1                                      # larger values higher up
    assert nice_ticks(0, 1) == [0, 0.2, 0.4, 0.6, 0.8, 1.0] and nice_ticks(17.3, 28.9) == [18, 20, 22, 24, 26, 28]
    traj = trajectory_plot([("c", [[0, 0, 0], [1, 0, 0], [2, 0, 0.0]])], "t")
    assert traj.count("<polyline") == 1 and "<title>t</title>" in traj
