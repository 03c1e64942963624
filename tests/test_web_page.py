"""The web page in a real headless Chromium against a real server process on loopback.

One server (a two-shape library, no default library, small renderings) and one browser for
the whole module; the tests run in file order and share them.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None)
CHROMEDRIVER = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").is_file() else None)
if CHROMIUM is None or CHROMEDRIVER is None:
    pytest.skip("the web page test needs chromium and chromedriver (apt-get install chromium chromium-driver)",
                allow_module_level=True)
pytest.importorskip("selenium", reason="the web page test needs selenium (pip install selenium)")

from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

REPO = Path(__file__).resolve().parents[1]
NOT_AVAILABLE_TEXT = "not available on this server yet"
IMAGE_W, IMAGE_H = 1200, 900
# The box the test draws on the photo, in original image pixels.
DRAG_FROM, DRAG_TO = (380, 120), (820, 860)

pytestmark = pytest.mark.timeout(600)


# ---------------------------------------------------------------------------- fixtures
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _photo_png(path: Path, size=(IMAGE_W, IMAGE_H), box=(470, 200, 730, 800), grey=128) -> Path:
    """A grey upright box-like object on white (the shape of the library's tall box, seen from the front)."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    draw.rectangle(box, fill=(grey, grey, grey))
    x0, y0, x1, _ = box
    draw.polygon([(x0, y0), (x0 + 40, y0 - 30), (x1 + 40, y0 - 30), (x1, y0)], fill=(grey + 40,) * 3)
    img.save(path)
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`uvicorn service.app:app` on loopback with a two-shape library; yields its base URL once indexed."""
    import trimesh

    tmp = tmp_path_factory.mktemp("web")
    lib = tmp / "lib"
    (lib / "misc").mkdir(parents=True)
    (lib / "car").mkdir(parents=True)
    trimesh.creation.box(extents=[0.6, 0.4, 1.6]).export(lib / "misc" / "box.ply")
    trimesh.creation.cylinder(radius=0.35, height=1.2, sections=32).export(lib / "car" / "cyl.ply")

    env = {k: v for k, v in os.environ.items() if not k.startswith("SHAPESEARCH_")}
    env.update({
        "SHAPESEARCH_DATA_DIR": str(tmp / "var"),
        "SHAPESEARCH_LIBRARY": str(lib),
        "SHAPESEARCH_DEFAULT_LIBRARY": "false",  # only the two shapes above: indexing takes seconds
        "SHAPESEARCH_RENDER_SIZE": "64",
        "PYOPENGL_PLATFORM": "egl",
    })
    port = _free_port()
    log_path = tmp / "server.log"
    log = open(log_path, "wb")  # noqa: SIM115 - the server writes to it until teardown
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "service.app:app", "--host", "127.0.0.1", "--port", str(port)],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"

    def tail() -> str:
        log.flush()
        return log_path.read_bytes().decode(errors="replace")[-4000:]

    try:
        deadline = time.time() + 300
        state = None
        while time.time() < deadline:
            assert proc.poll() is None, f"server exited with {proc.returncode}:\n{tail()}"
            try:
                r = httpx.get(f"{base}/healthz", timeout=5)
                if r.status_code == 200:
                    state = r.json().get("index", {})
                    if state.get("state") == "ready":
                        break
                    assert state.get("state") != "failed", f"index build failed: {state}\n{tail()}"
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail(f"server not ready after 300 s (index: {state}):\n{tail()}")
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    profile = tmp_path_factory.mktemp("chromium-profile")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", f"--user-data-dir={profile}", "--window-size=1280,1000"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    drv.set_page_load_timeout(60)
    try:
        yield drv
    finally:
        drv.quit()


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("uploads")
    out = {"photo": _photo_png(d / "photo.png")}
    for i, grey in enumerate((90, 140, 180)):
        out[f"batch{i}"] = _photo_png(d / f"batch-{i}.png", size=(320, 240), box=(120 + 10 * i, 40, 200, 220), grey=grey)
    bad = d / "not-an-image.png"
    bad.write_bytes(b"this is plain text, not a PNG\n" * 10)
    out["bad"] = bad
    return out


# ---------------------------------------------------------------------------- helpers
def wait(driver, timeout=30):
    return WebDriverWait(driver, timeout, poll_frequency=0.2)


def console_errors(driver, ignore_http_errors=False) -> list[str]:
    """SEVERE browser log entries since the last call; optionally without failed-HTTP-status noise."""
    out = []
    for entry in driver.get_log("browser"):
        if entry.get("level") != "SEVERE":
            continue
        msg = entry.get("message", "")
        if ignore_http_errors and "Failed to load resource: the server responded with a status of" in msg:
            continue
        out.append(msg)
    return out


def open_page(driver, base, section="search"):
    driver.get(f"{base}/#{section}")
    wait(driver).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") in ("true", "error"))
    assert driver.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true", error_text(driver)


def error_text(driver) -> str:
    box = driver.find_element(By.ID, "error")
    return box.text if box.is_displayed() else ""


def load_photo(driver, path: Path):
    driver.find_element(By.ID, "photo-input").send_keys(str(path))


SHOT_DIR = REPO / "var" / "test-screenshots"


def shot(driver, name: str) -> None:
    """Save what the browser shows, for a person to look at (var/test-screenshots/, not committed)."""
    SHOT_DIR.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SHOT_DIR / f"{name}.png"))


def api_shapes(base) -> list[dict]:
    r = httpx.get(f"{base}/v1/shapes", timeout=10)
    r.raise_for_status()
    return r.json()


SPY = """
if (!window.__requests) {
  window.__requests = [];
  const original = window.fetch;
  window.fetch = function (input, init) {
    init = init || {};
    const rec = {url: String(input), method: init.method || 'GET', headers: Object.assign({}, init.headers || {}), fields: {}};
    if (init.body instanceof FormData) {
      for (const [k, v] of init.body.entries()) (rec.fields[k] = rec.fields[k] || []).push(typeof v === 'string' ? v : 'file:' + v.name);
    }
    window.__requests.push(rec);
    return original.apply(this, arguments);
  };
}
"""


def spy_requests(driver) -> None:
    """Record every fetch() of the page from now on (URL, method, headers, multipart fields)."""
    driver.execute_script(SPY)


def requests_to(driver, path: str, method: str = "POST") -> list[dict]:
    return [r for r in driver.execute_script("return window.__requests || [];")
            if r["method"] == method and r["url"].split("?")[0].endswith(path)]


def fetched(driver, fragment: str) -> list[str]:
    """URLs of the page's network requests (resource timing) containing fragment."""
    return driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name).filter(n => n.includes(arguments[0]));", fragment)


# ---------------------------------------------------------------------------- tests
def test_page_loads_without_console_errors(server, driver):
    driver.get(f"{server}/")
    console_errors(driver)  # drop anything from before this page
    driver.get(f"{server}/")
    wait(driver).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true")
    time.sleep(0.5)
    errors = console_errors(driver)
    assert not errors, f"console errors on load: {errors}"
    assert driver.title == "shapesearch"
    options = [o.get_attribute("value") for o in driver.find_elements(By.CSS_SELECTOR, "#category-select option")]
    assert sorted(o for o in options if o) == sorted({s["category"] for s in api_shapes(server)}) == ["car", "misc"]
    for el_id in ("photo-input", "photo-canvas", "search-button", "error", "nav-search", "nav-library", "nav-batch",
                  "results", "shape-grid", "batch-input", "batch-submit", "job-status", "job-progress", "job-items"):
        assert driver.find_elements(By.ID, el_id), f"#{el_id} missing"
    assert driver.find_element(By.ID, "search-button").get_attribute("disabled") is not None  # no photo yet
    for static in ("/static/app.js", "/static/style.css"):
        assert httpx.get(server + static, timeout=10).status_code == 200


def test_search_with_a_drawn_box(server, driver, files):
    open_page(driver, server)
    load_photo(driver, files["photo"])
    canvas = driver.find_element(By.ID, "photo-canvas")
    wait(driver).until(lambda d: canvas.is_displayed() and canvas.get_attribute("data-width") == str(IMAGE_W))
    assert canvas.get_attribute("data-height") == str(IMAGE_H)
    rect = driver.execute_script("const r = arguments[0].getBoundingClientRect(); return [r.width, r.height];", canvas)
    # The canvas is shown smaller than the photo: the page must convert to image pixels.
    assert rect[0] < IMAGE_W - 50, rect
    sx, sy = rect[0] / IMAGE_W, rect[1] / IMAGE_H

    def offset(p):  # image pixels -> offset from the canvas centre, CSS pixels
        return round(p[0] * sx - rect[0] / 2), round(p[1] * sy - rect[1] / 2)

    (ax, ay), (bx, by) = offset(DRAG_FROM), offset(DRAG_TO)
    actions = ActionChains(driver, duration=50)
    actions.move_to_element_with_offset(canvas, ax, ay).click_and_hold()
    for k in range(1, 6):
        actions.move_to_element_with_offset(canvas, ax + (bx - ax) * k // 5, ay + (by - ay) * k // 5)
    actions.release().perform()

    box = [int(v) for v in canvas.get_attribute("data-box").split(",")]
    tol = 2 + 1.5 / sx
    expected = [*DRAG_FROM, *DRAG_TO]
    assert all(abs(b - e) <= tol for b, e in zip(box, expected)), (box, expected)
    assert "Box" in driver.find_element(By.ID, "box-info").text

    driver.find_element(By.ID, "top-k").clear()
    driver.find_element(By.ID, "top-k").send_keys("3")
    spy_requests(driver)
    driver.find_element(By.ID, "search-button").click()
    try:
        wait(driver, 90).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#results .match-card") or error_text(d))
    except TimeoutException:
        pytest.fail("no results after 90 s")
    assert not error_text(driver), f"search failed: {error_text(driver)}"

    # The request carried the drawn box in original image pixels, inside the image.
    sent = [int(v) for v in canvas.get_attribute("data-bbox").split(",")]
    assert sent == box
    (req,) = requests_to(driver, "/v1/search")
    assert req["fields"]["bbox"] == [",".join(map(str, box))]
    assert req["fields"]["image"] == ["file:photo.png"] and req["fields"]["top_k"] == ["3"]
    assert req["fields"]["overlay"] == ["true"] and "category" not in req["fields"] and "tag_filter" not in req["fields"]
    assert 0 <= sent[0] < sent[2] <= IMAGE_W and 0 <= sent[1] < sent[3] <= IMAGE_H

    names = {s["name"] for s in api_shapes(server)}
    cards = driver.find_elements(By.CSS_SELECTOR, "#results .match-card")
    assert 1 <= len(cards) <= 3
    for card in cards:
        assert card.find_element(By.CSS_SELECTOR, ".match-name").text in names
        overlay = card.find_element(By.CSS_SELECTOR, "img.overlay")
        assert overlay.get_attribute("src").startswith("data:image/png;base64,")
        thumb = card.find_element(By.CSS_SELECTOR, "img.thumb")
        assert thumb.get_attribute("src").endswith(f"/v1/shapes/{card.get_attribute('data-shape-id')}/thumbnail.png")
        for cls in ("azimuth", "elevation", "theta"):
            text = card.find_element(By.CSS_SELECTOR, f"dd.{cls}").text
            assert text.endswith("°") and len(text.rstrip("°").split(".")[-1]) == 1, text  # one decimal
        assert card.find_element(By.CSS_SELECTOR, ".score-value").text.endswith("°")
    assert "ms" in driver.find_element(By.ID, "timing-total").text
    assert not driver.find_element(By.ID, "search-button").get_attribute("disabled")
    driver.execute_script("document.getElementById('results-summary').scrollIntoView()")
    shot(driver, "search")
    assert not console_errors(driver, ignore_http_errors=True)

    # The tagger filter box adds tag_filter to the next search.
    driver.find_element(By.ID, "tag-filter").click()
    driver.find_element(By.ID, "search-button").click()
    wait(driver, 90).until(lambda d: len(requests_to(d, "/v1/search")) == 2 and d.find_elements(By.CSS_SELECTOR, "#results .match-card"))
    assert requests_to(driver, "/v1/search")[1]["fields"]["tag_filter"] == ["true"]
    assert "null" not in driver.find_element(By.ID, "results-summary").text
    driver.find_element(By.ID, "tag-filter").click()

    # Choosing the same file again starts over (the input must not keep its value, or no change fires).
    assert driver.find_element(By.ID, "photo-input").get_attribute("value") == ""
    load_photo(driver, files["photo"])
    wait(driver, 10).until(lambda d: canvas.get_attribute("data-box") == "" and not d.find_elements(By.CSS_SELECTOR, "#results .match-card"))


def test_upload_error_shows_the_server_detail(server, driver, files):
    expected = httpx.post(f"{server}/v1/search", files={"image": ("x.png", files["bad"].read_bytes(), "image/png")},
                          timeout=30)
    assert expected.status_code in (400, 413, 415, 422), expected.text
    detail = expected.json()["detail"]

    open_page(driver, server)
    assert not driver.find_element(By.ID, "error").is_displayed()
    load_photo(driver, files["bad"])
    button = driver.find_element(By.ID, "search-button")
    wait(driver, 10).until(lambda d: button.is_enabled())
    button.click()
    wait(driver, 30).until(lambda d: error_text(d))
    assert detail in error_text(driver)
    assert not driver.find_elements(By.CSS_SELECTOR, "#results .match-card")
    assert not console_errors(driver, ignore_http_errors=True)


def test_other_views_load_on_demand_and_say_when_unavailable(server, driver, files):
    photo = files["photo"].read_bytes()
    probes = {
        "viewpoint": lambda: httpx.post(f"{server}/v1/viewpoint", files={"image": ("p.png", photo, "image/png")}, timeout=60),
        "normals": lambda: httpx.post(f"{server}/v1/normals", files={"image": ("p.png", photo, "image/png")},
                                      data={"format": "png"}, timeout=60),
        "rotation": lambda: httpx.post(f"{server}/v1/rotation", files={"image": ("p.png", photo, "image/png")}, timeout=60),
        "tags": lambda: httpx.post(f"{server}/v1/tags", files={"image": ("p.png", photo, "image/png")}, timeout=60),
        "hierarchy": lambda: httpx.get(f"{server}/v1/hierarchy", timeout=60),
    }
    open_page(driver, server)
    load_photo(driver, files["photo"])
    wait(driver).until(lambda d: d.find_element(By.ID, "views").is_displayed())
    time.sleep(0.3)
    for name in probes:  # nothing is requested before its tab is opened
        assert not fetched(driver, f"/v1/{name}"), name

    for name, probe in probes.items():
        status = probe().status_code
        driver.find_element(By.ID, f"tab-{name}").click()
        panel = driver.find_element(By.ID, f"panel-{name}")
        assert panel.is_displayed()
        if status in (404, 501, 503):
            wait(driver).until(lambda d, panel=panel: NOT_AVAILABLE_TEXT in panel.text)
            assert not error_text(driver), f"{name}: unavailable endpoint shown as an error: {error_text(driver)}"
        else:  # implemented: it renders something, and no error
            assert status == 200, f"{name}: probe answered {status}"
            wait(driver, 60).until(lambda d, panel=panel: panel.text.strip() and "Loading" not in panel.text
                                   or panel.find_elements(By.CSS_SELECTOR, "img#normals-image"))
            assert not error_text(driver), f"{name}: {error_text(driver)}"
            assert NOT_AVAILABLE_TEXT not in panel.text
            if name == "tags":  # one bar per label of the answer
                n = len(probe().json()["tags"])
                wait(driver).until(lambda d, panel=panel: len(panel.find_elements(By.CSS_SELECTOR, "ul.bars li")) == n)
            if name == "hierarchy":  # the tree and the hedged answer
                wait(driver, 60).until(lambda d, panel=panel: panel.find_elements(By.CSS_SELECTOR, "#hierarchy-list li")
                                       and panel.find_elements(By.CSS_SELECTOR, "ol.bundles li .chip"))
        assert fetched(driver, f"/v1/{name}"), f"{name}: opening the tab requested nothing"
    assert not console_errors(driver, ignore_http_errors=True)


def test_library_lists_shapes_with_thumbnails(server, driver):
    open_page(driver, server)
    driver.find_element(By.ID, "nav-library").click()
    shapes = api_shapes(server)
    wait(driver).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#shape-grid .shape-card")) == len(shapes))
    assert driver.find_element(By.ID, "section-library").is_displayed()
    assert not driver.find_element(By.ID, "section-search").is_displayed()
    cards = driver.find_elements(By.CSS_SELECTOR, "#shape-grid .shape-card")
    assert sorted(c.find_element(By.CSS_SELECTOR, ".shape-name").text for c in cards) == sorted(s["name"] for s in shapes)
    for card in cards:
        sid = card.get_attribute("data-shape-id")
        shape = next(s for s in shapes if str(s["id"]) == sid)
        assert card.find_element(By.CSS_SELECTOR, ".badge").text == shape["index_status"] == "indexed"
        assert card.find_element(By.CSS_SELECTOR, ".shape-category").text == shape["category"]
        assert f"{shape['faces']} faces" in card.text.replace(",", "")
        assert card.find_element(By.CSS_SELECTOR, ".remove-shape").is_displayed()

    def thumbs_loaded(d):
        return d.execute_script(
            "const imgs = [...document.querySelectorAll('#shape-grid .shape-card img.thumbnail')];"
            "return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0);")

    try:
        wait(driver, 30).until(thumbs_loaded)
    except TimeoutException:
        r = httpx.get(f"{server}/v1/shapes/{shapes[0]['id']}/thumbnail.png", timeout=30)
        pytest.fail(f"thumbnails did not load (GET thumbnail.png -> {r.status_code} {r.headers.get('content-type')})")

    # The category filter narrows the grid.
    driver.find_element(By.CSS_SELECTOR, "#library-category option[value='car']").click()
    cards = driver.find_elements(By.CSS_SELECTOR, "#shape-grid .shape-card")
    assert [c.find_element(By.CSS_SELECTOR, ".shape-category").text for c in cards] == ["car"]
    shot(driver, "library")
    assert not console_errors(driver, ignore_http_errors=True)


def test_batch_job_progress_and_results(server, driver, files):
    open_page(driver, server)
    driver.find_element(By.ID, "nav-batch").click()
    assert driver.find_element(By.ID, "section-batch").is_displayed()
    submit = driver.find_element(By.ID, "batch-submit")
    assert not submit.is_enabled()
    paths = [files[f"batch{i}"] for i in range(3)]
    driver.find_element(By.ID, "batch-input").send_keys("\n".join(str(p) for p in paths))
    wait(driver, 10).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#batch-queue li")) == 3)
    driver.find_element(By.ID, "batch-tag-filter").click()
    spy_requests(driver)
    submit.click()

    status = driver.find_element(By.ID, "job-status")
    try:
        wait(driver, 120).until(lambda d: status.text in ("done", "failed", "cancelled") or error_text(d))
    except TimeoutException:
        pytest.fail(f"job still {status.text!r} after 120 s")
    assert not error_text(driver), f"batch failed: {error_text(driver)}"
    assert status.text == "done"

    job_id = driver.find_element(By.ID, "job-id").text
    assert job_id
    (req,) = requests_to(driver, "/v1/jobs")
    assert sorted(req["fields"]["image"]) == sorted(f"file:{p.name}" for p in paths)
    assert req["fields"]["kind"] == ["search"] and req["fields"]["top_k"] == ["5"] and req["fields"]["tag_filter"] == ["true"]
    assert httpx.get(f"{server}/v1/jobs/{job_id}", timeout=30).json()["params"]["tag_filter"] is True
    polls = requests_to(driver, f"/v1/jobs/{job_id}", "GET")
    assert polls and all(r["url"].endswith("?limit=200") for r in polls)     # not every result of a big job each second
    rows = driver.find_elements(By.CSS_SELECTOR, "#job-items tr")
    assert len(rows) == 3
    names = {s["name"] for s in api_shapes(server)}
    assert sorted(r.find_element(By.CSS_SELECTOR, ".item-name").text for r in rows) == sorted(p.name for p in paths)
    for row in rows:
        assert "done" in row.text
        best = row.find_element(By.CSS_SELECTOR, ".item-best").text
        assert best.split(" (")[0] in names, best
        assert "°" in row.find_elements(By.TAG_NAME, "td")[-1].text
    assert driver.find_element(By.ID, "job-progress").get_attribute("data-fraction") == "1"

    href_json = driver.find_element(By.ID, "job-download-json").get_attribute("href")
    href_csv = driver.find_element(By.ID, "job-download-csv").get_attribute("href")
    assert href_json == f"{server}/v1/jobs/{job_id}/results.json"
    assert href_csv == f"{server}/v1/jobs/{job_id}/results.csv"
    r = httpx.get(href_json, timeout=30)
    assert r.status_code == 200
    json.loads(r.text)
    r = httpx.get(href_csv, timeout=30)
    assert r.status_code == 200 and r.text.strip()

    # The recent-jobs list shows the job, and clicking it watches it.
    row = wait(driver, 15).until(EC.presence_of_element_located((By.CSS_SELECTOR, f"#job-list tr[data-job-id='{job_id}']")))
    assert "done" in row.text
    row.click()
    wait(driver, 10).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#job-items tr")) == 3 and status.text == "done")
    shot(driver, "batch")
    assert not console_errors(driver, ignore_http_errors=True)


DROP_JS = """
const [target, kind, files] = arguments;
const dt = new DataTransfer();
for (const [name, b64] of files) {
  const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
  dt.items.add(new File([bytes], name, {type: 'image/png'}));
}
if (kind === 'drop') {
  const el = document.querySelector(target);
  for (const type of ['dragenter', 'dragover', 'drop']) {
    el.dispatchEvent(new DragEvent(type, {bubbles: true, cancelable: true, dataTransfer: dt}));
  }
} else {
  document.dispatchEvent(new ClipboardEvent('paste', {bubbles: true, cancelable: true, clipboardData: dt}));
}
"""


def test_photo_by_drop_and_paste_and_batch_by_drop(server, driver, files):
    import base64

    def payload(*keys):
        return [[files[k].name, base64.b64encode(files[k].read_bytes()).decode()] for k in keys]

    open_page(driver, server)
    canvas = driver.find_element(By.ID, "photo-canvas")
    driver.execute_script(DROP_JS, "#drop-zone", "drop", payload("batch0"))
    wait(driver, 10).until(lambda d: canvas.is_displayed() and canvas.get_attribute("data-width") == "320")
    assert "batch-0.png" in driver.find_element(By.ID, "photo-info").text
    assert driver.find_element(By.ID, "search-button").is_enabled()

    driver.execute_script(DROP_JS, None, "paste", payload("photo"))
    wait(driver, 10).until(lambda d: canvas.get_attribute("data-width") == str(IMAGE_W))
    assert canvas.get_attribute("data-box") == ""  # a new photo starts without a box

    driver.find_element(By.ID, "nav-batch").click()
    driver.execute_script(DROP_JS, "#batch-drop", "drop", payload("batch1", "batch2"))
    wait(driver, 10).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#batch-queue li")) == 2)
    assert driver.find_element(By.ID, "batch-submit").is_enabled()
    driver.find_element(By.ID, "batch-clear").click()
    assert not driver.find_elements(By.CSS_SELECTOR, "#batch-queue li")
    assert not driver.find_element(By.ID, "batch-submit").is_enabled()
    assert not console_errors(driver, ignore_http_errors=True)


def test_a_search_while_a_shape_is_not_indexed_says_it_is_partial(server, driver, files, tmp_path):
    """A shape in the catalog without views (as while the index builds): the page shows the API's notice."""
    import trimesh

    from shape_library.library import ShapeLibrary

    open_page(driver, server)
    load_photo(driver, files["photo"])
    wait(driver, 10).until(lambda d: d.find_element(By.ID, "search-button").is_enabled())
    driver.find_element(By.ID, "search-button").click()
    wait(driver, 90).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#results .match-card"))
    assert not driver.find_elements(By.ID, "search-notice")            # everything indexed: no notice

    data_dir = Path(httpx.get(f"{server}/healthz", timeout=10).json()["index"]["folder"]).parent
    mesh = tmp_path / "late.ply"
    trimesh.creation.icosphere(1).export(mesh)
    late = ShapeLibrary(data_dir).add(mesh, name="late", category="misc").shape.id
    try:
        n = len(api_shapes(server))
        driver.find_element(By.ID, "search-button").click()
        notice = wait(driver, 90).until(lambda d: d.find_elements(By.ID, "search-notice"))[0]
        assert notice.is_displayed() and f"only {n - 1} of the {n} shapes asked for are searchable" in notice.text
        assert "still being indexed" in notice.text
    finally:
        ShapeLibrary(data_dir).remove(late)


def test_remove_a_shape_sends_the_api_key(server, driver):
    """Last: it changes the library. The key typed in the header is kept and sent on writes."""
    open_page(driver, server, "library")
    key = driver.find_element(By.ID, "api-key")
    key.clear()
    key.send_keys("test-key-123")
    open_page(driver, server, "library")  # kept across reloads (localStorage)
    assert driver.find_element(By.ID, "api-key").get_attribute("value") == "test-key-123"

    victim = next(s for s in api_shapes(server) if s["name"] == "cyl")
    card_css = f"#shape-grid .shape-card[data-shape-id='{victim['id']}']"
    card = wait(driver).until(EC.presence_of_element_located((By.CSS_SELECTOR, card_css)))
    spy_requests(driver)
    driver.execute_script("window.confirm = () => false;")
    card.find_element(By.CSS_SELECTOR, ".remove-shape").click()
    assert not requests_to(driver, f"/v1/shapes/{victim['id']}", "DELETE")  # declined: nothing sent
    driver.execute_script("window.confirm = () => true;")
    card.find_element(By.CSS_SELECTOR, ".remove-shape").click()
    wait(driver).until(lambda d: not d.find_elements(By.CSS_SELECTOR, card_css) or error_text(d))
    (req,) = requests_to(driver, f"/v1/shapes/{victim['id']}", "DELETE")
    assert req["headers"].get("X-API-Key") == "test-key-123"
    assert not error_text(driver), error_text(driver)
    assert victim["id"] not in {s["id"] for s in api_shapes(server)}
    assert not console_errors(driver, ignore_http_errors=True)
