"""The viewer's HTTP API on a real server on 127.0.0.1: listing (a corrupt slide with its
error), 404 for unknown ids and traversal attempts, overlays (PNG alpha 0 where the heatmap
is NaN), region search, and the token required off loopback."""

from __future__ import annotations

import io
import json
import socket
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

from exaslide.viewer import ViewerError, serve_in_thread
from exaslide.viewer.server import bind_socket, check_host


def get(url: str, headers: dict | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_slides_listed_with_the_corrupt_one_and_its_error(viewer_server, viewer_data):
    status, body = get(f"{viewer_server}/api/slides")
    assert status == 200
    slides = {s["id"]: s for s in json.loads(body)}
    good = slides[viewer_data.served_id]
    assert (good["width"], good["height"], good["mpp"], good["error"]) == \
        (3001, 2011, [0.5, 0.5], None)
    assert good["dzi"] == f"/slides/{viewer_data.served_id}.dzi"
    assert slides["broken"]["error"] and "\n" not in slides["broken"]["error"]
    assert get(f"{viewer_server}/slides/broken.dzi")[0] == 404


@pytest.mark.parametrize("path", [
    "/slides/nope.dzi", "/slides/odd_slide_files/99/0_0.jpeg",
    "/slides/odd_slide_files/12/99_0.jpeg", "/slides/odd_slide_files/12/0_-1.jpeg",
    "/slides/odd_slide_files/x/0_0.jpeg", "/slides/odd%20slide.dzi",
    "/slides/../cohort/odd.tif", "/slides/%2e%2e/cohort/odd.tif",
    "/slides/%2e%2e%2fcohort%2fodd.tif", "/static/../app.py", "/static/%2e%2e/app.py",
    "/static/%2e%2e%2fapp.py", "/static//etc/passwd", "/static/%2fetc%2fpasswd",
    "/api/slides/nope/overlays", "/api/slides/odd_slide/overlays/heatmap-9.png",
    "/api/slides/odd_slide/overlays/..%2f..%2fheatmaps.png", "/api/hits/0/999999.jpeg",
    "/api/hits/7/0.jpeg", "/etc/passwd"])
def test_unknown_ids_and_traversal_are_404(viewer_server, path):
    status, body = get(viewer_server + path)
    assert status == 404, (path, body[:200])
    assert b"root:" not in body and b"import" not in body


def test_overlays_heatmap_png_is_transparent_where_nan(viewer_server, viewer_data):
    status, body = get(f"{viewer_server}/api/slides/{viewer_data.served_id}/overlays")
    assert status == 200
    listed = json.loads(body)
    overlays = {}
    for overlay in listed:
        overlays.setdefault(overlay["kind"], overlay)  # the first of each kind
    assert set(overlays) == {"heatmap", "mask", "annotations", "patches", "froc"}
    heatmaps = [o for o in listed if o["kind"] == "heatmap"]
    assert [h["colormap"] for h in heatmaps] == ["turbo", "viridis"]  # CNN, then MIL
    heat = overlays["heatmap"]
    rows, cols = viewer_data.heatmap.shape
    assert heat["bounds"] == [0, 0, cols * 128, rows * 128]
    assert (heat["vmin"], heat["vmax"], heat["colormap"]) == (0.0, 1.0, "turbo")
    status, png = get(viewer_server + heat["url"])
    image = np.asarray(Image.open(io.BytesIO(png)))
    assert status == 200 and image.shape == (rows, cols, 4)
    np.testing.assert_array_equal(image[..., 3] == 0, np.isnan(viewer_data.heatmap))
    assert get(viewer_server + heat["legend_url"])[0] == 200
    mask = overlays["mask"]
    mask_image = np.asarray(Image.open(io.BytesIO(get(viewer_server + mask["url"])[1])))
    assert mask_image[0, 0, 3] == 0 and mask_image[50, 60, 3] > 0  # background / tumour
    assert mask["bounds"][2] == pytest.approx(mask_image.shape[1] * 16)
    ann = json.loads(get(viewer_server + overlays["annotations"]["url"])[1])
    assert ann["type"] == "FeatureCollection" and ann["features"]
    assert all(f["properties"]["classification"]["name"] for f in ann["features"])
    patches = json.loads(get(viewer_server + overlays["patches"]["url"])[1])["features"]
    assert len(patches) == 16 and {"label", "prediction", "score"} <= set(
        patches[0]["properties"])
    assert patches[0]["geometry"]["coordinates"] == [128.0, 128.0]
    froc = json.loads(get(viewer_server + overlays["froc"]["url"])[1])["features"]
    assert sorted(f["properties"]["outcome"] for f in froc) == ["fp", "tp"]


def test_region_search_returns_hits_with_thumbnails(viewer_server, viewer_data):
    status, body = get(f"{viewer_server}/api/slides/{viewer_data.served_id}/search"
                       "?x=512&y=512&w=64&h=64&k=5")
    assert status == 200, body
    results = json.loads(body)["results"]
    assert len(results) == 5
    assert results[0]["score"] >= results[-1]["score"]
    assert {r["slide"] for r in results} <= {viewer_data.served_id, None}
    for r in results:
        assert r["slide"] == (viewer_data.served_id if r["slide_id"] == viewer_data.source_id
                              else None)
    status, jpeg = get(viewer_server + results[0]["thumbnail"])
    assert status == 200 and Image.open(io.BytesIO(jpeg)).size == (32, 32)
    assert get(f"{viewer_server}/api/slides/{viewer_data.served_id}/search?x=a")[0] == 400


def test_search_without_index_is_404(viewer_data):
    with serve_in_thread([viewer_data.slide_path]) as running:
        status, body = get(f"{running.url}api/slides/odd/search?x=0&y=0&w=64&h=64")
        assert status == 404 and "index" in json.loads(body)["error"]


def test_token_is_required_when_given(viewer_data):
    with pytest.raises(ViewerError, match="--token"):
        check_host("0.0.0.0", None)
    check_host("127.0.0.1", None)
    with serve_in_thread([viewer_data.slide_path], token="s3cret") as running:
        base = running.url.rstrip("/")
        assert get(f"{base}/api/slides")[0] == 401
        assert get(f"{base}/api/slides?token=wrong")[0] == 401
        assert get(f"{base}/api/slides?token=s3cret")[0] == 200
        assert get(f"{base}/api/slides", {"Authorization": "Bearer s3cret"})[0] == 200
        assert get(f"{base}/slides/odd_files/0/0_0.jpeg")[0] == 401


def test_port_in_use_and_bad_path_are_one_line_errors(viewer_data, tmp_path):
    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    try:
        with pytest.raises(ViewerError, match="in use"):
            bind_socket("127.0.0.1", port)
    finally:
        sock.close()
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ViewerError, match="not a slide"):
        serve_in_thread([tmp_path / "notes.txt"])
    with pytest.raises(ViewerError, match="no such file"):
        serve_in_thread([tmp_path / "missing"])


def test_no_endpoint_writes(viewer_server):
    request = urllib.request.Request(f"{viewer_server}/api/slides", data=b"{}",
                                     method="POST")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=10)
    assert info.value.code == 405
    assert socket  # the server only listens on 127.0.0.1 (the fixture's URL)
    assert viewer_server.startswith("http://127.0.0.1:")


def test_a_checkout_without_the_built_front_end_gets_a_page_naming_the_step(
        viewer_data, tmp_path, monkeypatch):
    """A source checkout whose `pip install -e .` never ran npm: `/` answers at once with
    a one-line page naming the missing file and the build step (never a blank page)."""
    from exaslide.viewer import app as viewer_app

    static = tmp_path / "static"
    static.mkdir()
    (static / "index.html").write_text("<html></html>")
    monkeypatch.setattr(viewer_app, "STATIC_DIR", static)
    with serve_in_thread([viewer_data.slide_path]) as running:
        status, body = get(running.url)
        assert status == 503
        text = body.decode()
        assert "static/vendor/openseadragon/openseadragon.min.js missing" in text
        assert "pip install -e ." in text and "npm" in text
        assert get(f"{running.url}api/slides")[0] == 200  # the API still serves


def test_search_without_the_retrieval_extra_is_501_naming_it(viewer_data, monkeypatch):
    """A viewer installed without exaslide[retrieval]: FAISS cannot be imported (a None
    in sys.modules makes `import faiss` fail as if it were not installed)."""
    import sys

    monkeypatch.setitem(sys.modules, "faiss", None)
    with serve_in_thread([viewer_data.root]) as running:
        base = running.url.rstrip("/")
        status, body = get(f"{base}/api/slides/{viewer_data.served_id}/search"
                           "?x=0&y=0&w=64&h=64")
        assert status == 501
        assert "pip install 'exaslide[retrieval]'" in json.loads(body)["error"]
        status, body = get(f"{base}/api/hits/0/0.jpeg")
        assert status == 501 and "exaslide[retrieval]" in json.loads(body)["error"]
