"""A run's images as the MLflow UI gets them: from a real `mlflow server`, decoded by headless Chromium, offline.

The UI shows an artifact, and each image of its chart view's image grid, with an
<img> on the server's `/get-artifact` route; a page here does the same and writes
what Chromium decoded into its DOM.
"""

from __future__ import annotations

import html
import json
import re
from urllib.parse import quote

import pytest
from browser import dump_dom
from PIL import Image

from moonvae.tracking import runs
from moonvae.tracking.experiment import run_training

pytestmark = pytest.mark.slow  # a server to start, then Chromium

PAGE = """<!doctype html>
<html><body>
<pre id="decoded">{}</pre>
<script>
  const decoded = {};
  for (const [name, source] of Object.entries(SOURCES)) {
    const image = new Image();
    image.onload = () => show(name, image.naturalWidth);
    image.onerror = () => show(name, "error");
    image.src = source;
    document.body.appendChild(image);
  }
  function show(name, width) {
    decoded[name] = width;
    document.getElementById("decoded").textContent = JSON.stringify(decoded);
  }
</script>
</body></html>
"""


def test_chromium_shows_a_runs_plot_and_grid_image_from_the_server(workdir, tracking_server, monkeypatch, small_config):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_server)
    client = runs.client()
    with runs.run(client, "ui") as run_id:
        run_training(small_config, client, run_id, log_model=False)
    thumbnail = next(a.path for a in client.list_artifacts(run_id, "images") if a.path.endswith("+compressed.webp"))
    paths = {"plot": "plots/reconstruction.png", "thumbnail": thumbnail}
    widths = {
        name: Image.open(client.download_artifacts(run_id, path, str(workdir))).width for name, path in paths.items()
    }
    sources = {
        name: f"{tracking_server}/get-artifact?path={quote(path, safe='')}&run_uuid={run_id}"
        for name, path in paths.items()
    }

    page = workdir / "page.html"
    page.write_text(PAGE.replace("SOURCES", json.dumps(sources)))
    dom, log = dump_dom(page)
    found = re.search(r'<pre id="decoded">(.*?)</pre>', dom, re.S)
    decoded = json.loads(html.unescape(found.group(1))) if found else {}
    # two images of different widths: decoding each at its own width shows each route served its own file
    assert widths["thumbnail"] < widths["plot"]
    assert decoded == widths, log[-3000:]  # every image decoded, at its full width
