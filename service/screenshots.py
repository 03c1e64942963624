"""Screenshots of the web page for the README, taken from a real server in a real headless Chromium.

    .venv/bin/python -m service.screenshots [--data-dir var] [--out docs/screenshots] [--port 0]

Starts `uvicorn service.app:app` on loopback over an existing, indexed data folder (the default
library in `var/` unless told otherwise; nothing there is rebuilt: the server starts with
SHAPESEARCH_INDEX_ON_START=false), makes synthetic photos of library shapes with the project's own
generator (`shape_library.synthetic`), drives the page with Selenium and writes one PNG per view
into --out. Then it rewrites the README's `<!-- screenshots -->` block (--no-readme: leave it).
In the data folder the server only adds what any use adds (its thumbnail cache); the batch job's
record goes to a scratch database and its uploaded images are removed afterwards.

Needs the system `chromium` and `chromedriver` and the `selenium` package; the server and the
browser are always stopped, also on errors and time-outs (--timeout bounds the whole run).
"""
from __future__ import annotations

import argparse
import base64
import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MAX_PNG_BYTES = 300_000
DESKTOP = (1280, 900)
PHONE = (390, 844)
SEARCH_SHAPE = "sedan"                         # the default-library car of the search photo
BATCH_SHAPES = ("hatchback", "pickup", "van")  # one photo of each in the batch job
CATEGORY = "car"                               # the category filter of the searches and the batch


class ScreenshotError(RuntimeError):
    """Something the screenshots need is missing or went wrong; the message says what."""


@dataclass
class Shot:
    name: str        # file stem under --out
    title: str       # the image's alt text
    caption: str     # the README's caption


SHOTS = [
    Shot("search", "Search", "Search: a synthetic photo of the default library's sedan, a box drawn around it, the category "
                   "filter on car; the top matches with each shape's silhouette overlaid at its predicted pose."),
    Shot("tags", "Tags", "Tags: the calibrated probability of each category for the same photo and box."),
    Shot("tags-none", "Tags: none of these", "Tags for an object of none of the categories (a shape made for the screenshot; the command "
                      "keeps the first of a few such photos that the tagger rejects, and it does not reject them all): "
                      "the \"none of these\" badge."),
    Shot("hierarchy", "Hierarchy", "Hierarchy: the hedged answer (the label set with its probability and specificity, at the "
                      "default trade-off) next to the learned label tree."),
    Shot("normals", "Normals", "Normals: the predicted surface normals of the whole photo."),
    Shot("viewpoint", "Viewpoint", "Viewpoint: azimuth, elevation and in-plane rotation predicted from the photo alone."),
    Shot("library", "Library", "Library: the shapes with their thumbnails and index status, and the form to add a mesh."),
    Shot("batch", "Batch", "Batch: a finished job of three car photos (category car), the best shape per image, "
                  "and the recent jobs."),
    Shot("phone", "Phone", "The search page at phone width (390 px)."),
]


# ---------------------------------------------------------------------------- time budget
class Budget:
    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds
        self.total = seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def cap(self, seconds: float) -> float:
        """`seconds`, or what is left of the budget when that is less; raises when nothing is left."""
        left = self.left()
        if left <= 0:
            raise ScreenshotError(f"the whole run took longer than --timeout {self.total:.0f} s")
        return min(seconds, left)


def log(msg: str) -> None:
    print(f"[screenshots] {msg}", flush=True)


# ---------------------------------------------------------------------------- inputs
def get_json(url: str, timeout: float):
    """GET a JSON answer (the standard library: httpx is a test dependency only)."""
    import json
    import urllib.request

    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - a loopback URL of our own server
        return json.loads(r.read())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_photos(data_dir: Path, folder: Path) -> dict:
    """Synthetic photos: of default-library shapes (one for the search, three for the batch) and of
    a few objects of no category (for "none of these").

    Returns {"search": (path, box), "batch": [paths], "unknown": [(path, box)]}; boxes in image pixels.
    """
    os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
    import numpy as np
    from PIL import Image

    from shape_library.library import ShapeLibrary
    from shape_library.synthetic import SyntheticConfig, generate

    library = ShapeLibrary(data_dir)
    by_name = {s.name: s.id for s in library.shapes()}
    missing = [n for n in (SEARCH_SHAPE, *BATCH_SHAPES) if n not in by_name]
    if missing:
        raise ScreenshotError(f"{data_dir} lacks the default-library shapes {missing}: point --data-dir at a data "
                              "folder with the default library (the server imports it on its first start)")
    # Clean enough to read in a screenshot: a front three-quarter view, one colour, no occluder,
    # clutter or degradation; of the first seeds, the first photo with the object near the middle.
    calm = dict(p_occlusion=0.0, p_truncate=0.0, p_clutter=0.0, p_lowres=0.0, p_blur=0.0, p_jpeg=0.0, p_noise=0.0,
                p_vignette=0.0, p_dirt=0.0, theta_std=3.0, theta_max=6.0, albedo_weights={"uniform": 1.0},
                azimuth_range=(290.0, 330.0), elevation_range=(10.0, 22.0), distance_range=(2.2, 2.4),
                background_weights={"gradient": 1.0})

    def centred(shape: str, width: int, height: int):
        cfg = SyntheticConfig(width=width, height=height, **calm)
        best, best_off = None, None
        for seed in range(64):
            (s,) = generate(library, [by_name[shape]], 1, seed=seed, config=cfg)
            if s.box is None:
                continue
            x0, y0, x1, y1 = s.box
            off = max(abs((x0 + x1) / 2 / width - 0.5), abs((y0 + y1) / 2 / height - 0.5))
            if best is None or off < best_off:
                best, best_off = s, off
            if off <= 0.08:
                break
        if best is None:
            raise ScreenshotError(f"no synthetic photo of {shape} shows the object")
        return best

    sample = centred(SEARCH_SHAPE, 800, 500)
    a, e, t, _ = sample.pose
    log(f"search photo: {SEARCH_SHAPE} (id {sample.shape_id}) at azimuth {a:.1f}°, elevation {e:.1f}°, theta {t:.1f}°")
    path = folder / "car-photo.png"
    Image.fromarray(sample.image).save(path)
    x0, y0, x1, y1 = sample.box
    mx, my = 0.08 * (x1 - x0) + 6, 0.08 * (y1 - y0) + 6
    h, w = sample.image.shape[:2]
    box = (max(0, round(x0 - mx)), max(0, round(y0 - my)), min(w, round(x1 + mx)), min(h, round(y1 + my)))

    batch = []  # the batch sends whole images (no box): objects in the middle of small photos
    for name in BATCH_SHAPES:
        p = folder / f"{name.replace('_', '-')}.png"
        Image.fromarray(centred(name, 320, 240).image).save(p)
        batch.append(p)

    # Objects of no tagger category (made here with trimesh, in a scratch library), for "none of these".
    import trimesh

    others = ShapeLibrary(folder / "others")
    mug = trimesh.util.concatenate([
        trimesh.creation.cylinder(radius=0.4, height=1.0, sections=48),
        trimesh.creation.torus(major_radius=0.25, minor_radius=0.06).apply_transform(
            trimesh.transformations.rotation_matrix(np.pi / 2, [1, 0, 0])).apply_translation([0.45, 0, 0])])
    unknown = []
    cfg = SyntheticConfig(width=800, height=500, **calm)
    for name, mesh in (("ball", trimesh.creation.icosphere(4)), ("mug", mug),
                       ("ring", trimesh.creation.torus(major_radius=0.6, minor_radius=0.2))):
        shape_id = others.add(mesh.export(file_type="ply"), name=name, category="misc", file_type="ply").shape.id
        for seed in range(4):
            (s,) = generate(others, [shape_id], 1, seed=seed, config=cfg)
            if s.box is None:
                continue
            p = folder / f"{name}-photo-{seed}.png"
            Image.fromarray(s.image).save(p)
            unknown.append((p, tuple(int(round(v)) for v in s.box)))
    return {"search": (path, box), "batch": batch, "unknown": unknown}


# ---------------------------------------------------------------------------- server
class Server:
    """`uvicorn service.app:app` on loopback over `data_dir`, with the jobs database in `scratch`."""

    def __init__(self, data_dir: Path, port: int, scratch: Path):
        self.data_dir = data_dir
        self.port = port or _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = scratch / "server.log"
        self.scratch = scratch
        self.proc: subprocess.Popen | None = None
        self._log = None

    def start(self, budget: Budget) -> None:
        import urllib.error

        env = {k: v for k, v in os.environ.items() if not k.startswith("SHAPESEARCH_") and k != "REDIS_URL"}
        env.update({
            "SHAPESEARCH_DATA_DIR": str(self.data_dir),
            "SHAPESEARCH_INDEX_ON_START": "false",     # the index and codes exist: build nothing
            "SHAPESEARCH_JOB_EXECUTOR": "thread",
            # The batch job's record goes to a scratch database, not into the data folder's job list.
            "SHAPESEARCH_JOBS_DB_URL": f"sqlite:///{self.scratch / 'jobs.sqlite'}",
            "SHAPESEARCH_RATE_LIMIT_PER_MINUTE": "0",
            "PYOPENGL_PLATFORM": os.environ.get("PYOPENGL_PLATFORM", "egl"),
        })
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - the server writes to it until stop()
        log(f"starting the server on {self.base} over {self.data_dir}")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "service.app:app", "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + budget.cap(180)
        health = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ScreenshotError(f"the server exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                health = get_json(f"{self.base}/healthz", timeout=5)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.5)
        if health is None:
            raise ScreenshotError(f"the server did not answer /healthz in time:\n{self.tail()}")
        if not health.get("shapes"):
            raise ScreenshotError(f"{self.data_dir} holds no shapes: start the service once (it imports and indexes "
                                  "the default library) or pass --data-dir")
        if health.get("indexed") != health.get("shapes"):
            raise ScreenshotError(f"only {health.get('indexed')} of {health.get('shapes')} shapes in {self.data_dir} are "
                                  "indexed: let the service finish indexing first (this command builds nothing)")
        log(f"server up: {health['shapes']} shapes, all indexed, device {health.get('device')}")

    def tail(self, n: int = 4000) -> str:
        if self._log is not None:
            self._log.flush()
        try:
            return self.log_path.read_bytes().decode(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None


# ---------------------------------------------------------------------------- browser
def find_browser(chromium: str | None, chromedriver: str | None) -> tuple[str, str]:
    """The chromium and chromedriver binaries, after checking that selenium imports."""
    chromium = chromium or shutil.which("chromium") or shutil.which("chromium-browser")
    chromedriver = chromedriver or shutil.which("chromedriver")
    if not chromium or not chromedriver:
        raise ScreenshotError("the screenshots need chromium and chromedriver on PATH "
                              "(apt-get install chromium chromium-driver), or --chromium/--chromedriver")
    try:
        import selenium  # noqa: F401
    except ImportError as exc:
        raise ScreenshotError(f"the screenshots need selenium ({exc}): .venv/bin/pip install selenium") from exc
    return chromium, chromedriver


def start_browser(profile: Path, chromium: str, chromedriver: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--hide-scrollbars", "--force-device-scale-factor=1", "--lang=en-US",
                f"--user-data-dir={profile}", f"--window-size={DESKTOP[0]},{DESKTOP[1]}"):
        opts.add_argument(arg)
    try:
        drv = webdriver.Chrome(service=Service(chromedriver), options=opts)
    except Exception as exc:  # noqa: BLE001 - any start failure is reported the same way
        raise ScreenshotError(f"could not start headless chromium ({chromium}, {chromedriver}): {exc}") from exc
    drv.set_page_load_timeout(60)
    return drv


class Page:
    """The page in one browser, with the waits and captures the shots need."""

    def __init__(self, driver, base: str, budget: Budget, out: Path):
        from selenium.common.exceptions import TimeoutException
        from selenium.webdriver.common.by import By

        self.d = driver
        self.base = base
        self.budget = budget
        self.out = out
        self.By = By
        self.Timeout = TimeoutException
        self.written: list[Path] = []
        self.loads = 0
        self.job_ids: list[str] = []   # jobs this run started (their inputs are removed afterwards)

    # -- basics ------------------------------------------------------------------------------
    def find(self, css: str):
        return self.d.find_element(self.By.CSS_SELECTOR, css)

    def finds(self, css: str):
        return self.d.find_elements(self.By.CSS_SELECTOR, css)

    def error_text(self) -> str:
        box = self.d.find_element(self.By.ID, "error")
        return box.text if box.is_displayed() else ""

    def wait(self, what: str, cond, timeout: float = 30):
        """Wait for cond(driver) to be truthy; an error box on the page or a time-out is a ScreenshotError."""
        from selenium.webdriver.support.ui import WebDriverWait

        def check(d):
            err = self.error_text()
            if err:
                raise ScreenshotError(f"the page shows an error while waiting for {what}: {err}")
            return cond(d)

        try:
            return WebDriverWait(self.d, self.budget.cap(timeout), poll_frequency=0.25).until(check)
        except self.Timeout:
            raise ScreenshotError(f"timed out after {timeout:.0f} s waiting for {what}") from None

    def open(self, section: str = "search") -> None:
        """A fresh load of the page (a new query string: a hash change alone would keep the old state)."""
        self.loads += 1
        self.d.get(f"{self.base}/?load={self.loads}#{section}")
        self.wait("the page to load its shape list",
                  lambda d: self.find("body").get_attribute("data-ready") in ("true", "error"))
        if self.find("body").get_attribute("data-ready") != "true":
            raise ScreenshotError(f"the page could not load: {self.error_text()}")

    def images_loaded(self, css: str, visible_only: bool = False) -> bool:
        return self.d.execute_script(
            "const imgs = [...document.querySelectorAll(arguments[0])].filter(i => !arguments[1] ||"
            "  i.getBoundingClientRect().top < window.innerHeight);"
            "return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0);", css, visible_only)

    # -- search photo ----------------------------------------------------------------------
    def load_photo(self, path: Path, box, size) -> None:
        from selenium.webdriver.common.action_chains import ActionChains

        self.find("#photo-input").send_keys(str(path))
        canvas = self.find("#photo-canvas")
        self.wait("the photo on the canvas", lambda d: canvas.is_displayed() and canvas.get_attribute("data-width") == str(size[0]))
        self.d.execute_script("arguments[0].scrollIntoView({block: 'center'})", canvas)
        rw, rh = self.d.execute_script("const r = arguments[0].getBoundingClientRect(); return [r.width, r.height];", canvas)
        sx, sy = rw / size[0], rh / size[1]

        def offset(x, y):  # image pixels -> offset from the canvas centre, CSS pixels, 1 px inside the edges
            return (round(min(max(x * sx - rw / 2, 1 - rw / 2), rw / 2 - 1)),
                    round(min(max(y * sy - rh / 2, 1 - rh / 2), rh / 2 - 1)))

        (ax, ay), (bx, by) = offset(box[0], box[1]), offset(box[2], box[3])
        actions = ActionChains(self.d, duration=40)
        actions.move_to_element_with_offset(canvas, ax, ay).click_and_hold()
        for k in range(1, 6):
            actions.move_to_element_with_offset(canvas, ax + (bx - ax) * k // 5, ay + (by - ay) * k // 5)
        actions.release().perform()
        drawn = canvas.get_attribute("data-box")
        if not drawn:
            raise ScreenshotError("drawing the box on the photo did not register")
        self.d.execute_script("window.scrollTo(0, 0)")

    def stale(self, element) -> bool:
        from selenium.common.exceptions import StaleElementReferenceException

        try:
            element.is_enabled()
            return False
        except StaleElementReferenceException:
            return True

    def select(self, css: str, value: str) -> None:
        from selenium.webdriver.support.ui import Select

        Select(self.find(css)).select_by_value(value)

    def search(self, top_k: int, timeout: float, category: str = "") -> None:
        self.select("#category-select", category)
        k = self.find("#top-k")
        k.clear()
        k.send_keys(str(top_k))
        old = self.finds("#results .match-card")
        self.find("#search-button").click()
        self.wait("the search results",
                  lambda d: (not old or self.stale(old[0])) and self.finds("#results .match-card"), timeout)
        for card in self.finds("#results .match-card"):  # the thumbnails load lazily: bring each into view
            self.d.execute_script("arguments[0].scrollIntoView({block: 'center'})", card)
        self.wait("the overlays and thumbnails",
                  lambda d: self.images_loaded("#results img.overlay") and self.images_loaded("#results img.thumb"))
        self.d.execute_script("window.scrollTo(0, 0)")

    VIEW_READY = {
        "tags": "#panel-tags ul.bars li, #panel-tags .none-of-these",
        "hierarchy": "#hierarchy-predictions ol.bundles li .chip",
        "normals": "#panel-normals img#normals-image",
        "viewpoint": "#viewpoint-azimuth",
        "rotation": "#panel-rotation table.matrix td",
    }

    def open_view(self, name: str, timeout: float) -> None:
        """Open the tab `name` under the photo and wait for its answer."""
        if "active" not in (self.find(f"#tab-{name}").get_attribute("class") or ""):
            self.find(f"#tab-{name}").click()
        panel = self.find(f"#panel-{name}")
        css = self.VIEW_READY[name]

        def ready(d):
            if not panel.is_displayed():
                return False
            if "not available on this server yet" in panel.text or self.finds(f"#panel-{name} .inline-error"):
                raise ScreenshotError(f"the {name} view shows no result: {panel.text[:300]}")
            if name == "normals":
                return self.images_loaded(css)
            if name == "hierarchy" and not self.finds("#hierarchy-list li"):
                return False
            return bool(self.finds(css))

        self.wait(f"the {name} view", ready, timeout)

    # -- capture ---------------------------------------------------------------------------
    def rect(self, css: str) -> dict:
        """The element's box in page coordinates (CSS pixels)."""
        return self.d.execute_script(
            "const r = document.querySelector(arguments[0]).getBoundingClientRect();"
            "return {x: r.left + window.scrollX, y: r.top + window.scrollY, w: r.width, h: r.height};", css)

    def capture(self, name: str, bottom_css: str | None = None, top: float = 0.0, pad: float = 16.0,
                max_height: float | None = None) -> Path:
        """Save the page from `top` down to the bottom of `bottom_css` (the viewport when None), full width."""
        self.d.execute_script("document.activeElement && document.activeElement.blur && document.activeElement.blur();")
        time.sleep(0.4)  # let transitions (progress bar, spinners going away) settle
        width = self.d.execute_script("return document.documentElement.clientWidth;")
        if bottom_css is None:
            self.d.execute_script("window.scrollTo(0, 0)")
            data = self.d.get_screenshot_as_png()
        else:
            r = self.rect(bottom_css)
            height = r["y"] + r["h"] + pad - top
            if max_height:
                height = min(height, max_height)
            self.d.execute_script("window.scrollTo(0, 0)")
            shot = self.d.execute_cdp_cmd("Page.captureScreenshot", {
                "format": "png", "captureBeyondViewport": True,
                "clip": {"x": 0, "y": top, "width": width, "height": height, "scale": 1}})
            data = base64.b64decode(shot["data"])
        path = self.out / f"{name}.png"
        size = save_png(data, path)
        self.written.append(path)
        log(f"wrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path} ({size // 1024} KB)")
        return path


def save_png(data: bytes, path: Path, limit: int = MAX_PNG_BYTES) -> int:
    """Write the screenshot, fewer colours and then smaller when it would exceed `limit` bytes."""
    from PIL import Image

    img = Image.open(io.BytesIO(data)).convert("RGB")

    def encode(im) -> bytes:
        buf = io.BytesIO()
        im.save(buf, "PNG", optimize=True)
        return buf.getvalue()

    out = encode(img)
    if len(out) > limit:
        out = encode(img.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE))
    scale = 1.0
    while len(out) > limit and scale > 0.4:
        scale *= 0.85
        small = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.LANCZOS)
        out = encode(small.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(out)
    return len(out)


# ---------------------------------------------------------------------------- the shots
def shoot(page: Page, photos: dict, search_timeout: float) -> None:
    from PIL import Image

    photo, box = photos["search"]
    size = Image.open(photo).size

    # (a) search with a drawn box: the photo, the filters and the top matches. The first search
    # loads the models; the second one shows a warm server's times.
    log("search page: photo, box, search (twice: the first one loads the models)")
    page.open("search")
    page.load_photo(photo, box, size)
    page.search(top_k=4, timeout=search_timeout, category=CATEGORY)
    page.search(top_k=4, timeout=search_timeout, category=CATEGORY)
    page.capture("search", "#results")

    # (b-e) the other views of the same photo and box, without the results in between.
    page.open("search")
    page.load_photo(photo, box, size)
    for name in ("tags", "hierarchy", "normals", "viewpoint"):
        log(f"{name} view")
        page.open_view(name, search_timeout)
        page.capture(name, "#views")

    # (b') "none of these": a photo of an object of no tagger category. The tagger decides, so try a
    # few such photos and keep the first it calls none; no shot (a warning) when it calls none of them.
    log("tags view of objects of no tagger category")
    for path, obox in photos["unknown"]:
        page.open("search")
        page.load_photo(path, obox, Image.open(path).size)
        page.open_view("tags", search_timeout)
        if page.finds("#panel-tags .none-of-these"):
            log(f"  {path.name}: none of these")
            page.capture("tags-none", "#views")
            break
        log(f"  {path.name}: the tagger sees a category, next photo")
    else:
        log("warning: the tagger named a category for every made-up object: no tags-none shot")

    # (f) the library with its thumbnails.
    log("library page")
    page.open("library")
    n = len(get_json(f"{page.base}/v1/shapes", timeout=30))
    page.wait("the shape cards", lambda d: len(page.finds("#shape-grid .shape-card")) == n)
    page.wait("the thumbnails", lambda d: page.images_loaded("#shape-grid img.thumbnail", visible_only=True), 60)
    page.capture("library")

    # (g) a small batch job, finished.
    log("batch page: three images")
    page.open("batch")
    page.find("#batch-input").send_keys("\n".join(str(p) for p in photos["batch"]))
    page.wait("the batch queue", lambda d: len(page.finds("#batch-queue li")) == len(photos["batch"]))
    page.select("#batch-category", CATEGORY)
    page.find("#batch-submit").click()
    page.wait("the new job's id", lambda d: page.find("#job-id").text.strip())
    job_id = page.find("#job-id").text.strip()
    page.job_ids.append(job_id)
    status = page.find("#job-status")
    page.wait("the batch job to finish", lambda d: status.text in ("done", "failed", "cancelled"), 3 * search_timeout)
    if status.text != "done":
        raise ScreenshotError(f"the batch job ended {status.text}: {page.find('#job-items').text[:300]}")
    page.wait("the recent-jobs list", lambda d: page.finds(f"#job-list tr[data-job-id='{job_id}']"))
    page.capture("batch", "#section-batch")

    # (h) the search page at phone width.
    log("search page at phone width")
    page.d.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": PHONE[0], "height": PHONE[1], "deviceScaleFactor": 1, "mobile": True})
    try:
        page.open("search")
        page.load_photo(photo, box, size)
        page.search(top_k=3, timeout=search_timeout, category=CATEGORY)
        page.capture("phone", "#results .match-card", max_height=2 * PHONE[1])
    finally:
        page.d.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def readme_block(out: Path, written: list[Path]) -> str:
    try:
        rel = out.resolve().relative_to(REPO)
    except ValueError:
        rel = out
    have = {p.stem for p in written}
    lines = ["Taken by `python -m service.screenshots` from a real server and headless Chromium over the generated "
             "default library; the photos are synthetic renderings (`shape_library.synthetic`).", ""]
    for shot in SHOTS:
        if shot.name in have:
            lines += [f"![{shot.title}]({rel.as_posix()}/{shot.name}.png)", f"*{shot.caption}*", ""]
    return "\n".join(lines).rstrip() + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m service.screenshots", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=REPO / "var", help="an indexed data folder with the default library")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots", help="where the PNGs go")
    p.add_argument("--port", type=int, default=0, help="loopback port of the server (0: a free one)")
    p.add_argument("--timeout", type=float, default=1200, help="bound on the whole run, seconds")
    p.add_argument("--search-timeout", type=float, default=240,
                   help="bound on one search or view (the first one loads the models)")
    p.add_argument("--chromium", help="the chromium binary (default: from PATH)")
    p.add_argument("--chromedriver", help="the chromedriver binary (default: from PATH)")
    p.add_argument("--no-readme", action="store_true", help="leave the README's screenshots block alone")
    args = p.parse_args(argv)

    budget = Budget(args.timeout)
    data_dir = args.data_dir.resolve()
    out = args.out.resolve()
    if not (data_dir / "catalog.sqlite").is_file():
        print(f"error: {data_dir} is not a shapesearch data folder (no catalog.sqlite)", file=sys.stderr)
        return 2
    jobs_dir = data_dir / "jobs"
    jobs_dir_existed = jobs_dir.is_dir()
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="shapesearch-screenshots-") as tmp:
        scratch = Path(tmp)
        (scratch / "photos").mkdir()
        (scratch / "profile").mkdir()
        server = Server(data_dir, args.port, scratch)
        driver = page = None
        try:
            chromium, chromedriver = find_browser(args.chromium, args.chromedriver)
            log("making synthetic photos of library shapes")
            try:
                photos = make_photos(data_dir, scratch / "photos")
            except ScreenshotError:
                raise
            except Exception as exc:  # noqa: BLE001 - rendering needs a working OpenGL (EGL or OSMesa)
                raise ScreenshotError(f"could not make the synthetic photos ({type(exc).__name__}: {exc}); "
                                      f"PYOPENGL_PLATFORM={os.environ.get('PYOPENGL_PLATFORM')}") from exc
            server.start(budget)
            driver = start_browser(scratch / "profile", chromium, chromedriver)
            page = Page(driver, server.base, budget, out)
            shoot(page, photos, args.search_timeout)
        except ScreenshotError as exc:
            print(f"error: {exc}", file=sys.stderr)
            if server.proc is not None:
                print(f"--- server log (tail) ---\n{server.tail(2000)}", file=sys.stderr)
            return 1
        finally:
            if driver is not None:
                try:
                    driver.quit()
                except Exception:  # noqa: BLE001 - the browser may already be gone
                    pass
            server.stop()
            _remove_job_inputs(jobs_dir, page.job_ids if page else [], jobs_dir_existed)
    for shot in SHOTS:  # a shot this run could not take must not linger from an earlier run
        stale = out / f"{shot.name}.png"
        if stale not in page.written and stale.is_file():
            stale.unlink()
    if args.no_readme:
        pass
    elif not out.is_relative_to(REPO):
        log(f"README.md left alone: {out} is outside the repository")
    else:
        from models.reports import replace_block

        replace_block("screenshots", readme_block(out, page.written))
        log("README.md screenshots block updated")
    log(f"done in {time.monotonic() - t0:.0f} s: {len(page.written)} screenshots in {out}")
    return 0


def _remove_job_inputs(jobs_dir: Path, job_ids: list[str], jobs_dir_existed: bool) -> None:
    """The server keeps a job's uploaded images under data_dir/jobs/<id>: drop those of this run's jobs
    (their records went to the scratch database)."""
    for job_id in job_ids:
        if job_id and "/" not in job_id and job_id not in (".", ".."):
            shutil.rmtree(jobs_dir / job_id, ignore_errors=True)
    if not jobs_dir_existed and jobs_dir.is_dir() and not any(jobs_dir.iterdir()):
        jobs_dir.rmdir()


if __name__ == "__main__":
    sys.exit(main())
