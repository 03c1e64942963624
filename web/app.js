/* shapesearch web page: plain JavaScript, no build step, no external resources. */
(function () {
  "use strict";

  // ------------------------------------------------------------------ helpers
  const $ = (sel, root) => (root || document).querySelector(sel);
  const $$ = (sel, root) => Array.from((root || document).querySelectorAll(sel));

  /** Create an element; text is set with textContent (never innerHTML: names come from users). */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k === "dataset") Object.assign(node.dataset, v);
      else if (k.startsWith("on") && typeof v === "function") node.addEventListener(k.slice(2), v);
      else if (k in node && typeof v !== "string") node[k] = v;
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  const fmt1 = (v) => (typeof v === "number" && isFinite(v) ? v.toFixed(1) : "–");
  const fmtPct = (p) => (typeof p === "number" && isFinite(p) ? (100 * p).toFixed(1) + "%" : "–");

  function fmtBytes(n) {
    if (n < 1024) return n + " B";
    if (n < 1024 * 1024) return (n / 1024).toFixed(1) + " KB";
    return (n / 1024 / 1024).toFixed(1) + " MB";
  }

  function fmtTime(v) {
    if (v === null || v === undefined || v === "") return "–";
    const d = typeof v === "number" ? new Date(v < 1e12 ? v * 1000 : v) : new Date(v);
    return isNaN(d.getTime()) ? String(v) : d.toLocaleString();
  }

  function spinner() {
    return $("#spinner-template").content.firstElementChild.cloneNode(true);
  }

  // ------------------------------------------------------------------ API
  const API_KEY_STORAGE = "shapesearch.apiKey";
  const NOT_AVAILABLE = new Set([404, 501, 503]);

  function apiKey() {
    return ($("#api-key").value || "").trim();
  }

  /** Human-readable text of an error body ({"detail": "..."} or FastAPI's list form). */
  function detailText(body, status, statusText) {
    if (body && typeof body === "object" && "detail" in body) {
      const d = body.detail;
      if (typeof d === "string") return d;
      if (Array.isArray(d)) {
        return d.map((e) => (e && e.msg ? [(e.loc || []).filter((x) => x !== "body").join("."), e.msg].filter(Boolean).join(": ") : JSON.stringify(e))).join("; ");
      }
      return JSON.stringify(d);
    }
    if (typeof body === "string" && body.trim()) return body.trim().slice(0, 500);
    return `HTTP ${status}${statusText ? " " + statusText : ""}`;
  }

  class ApiError extends Error {
    constructor(status, detail, body) {
      super(detail);
      this.status = status;
      this.detail = detail;
      this.body = body;
    }
  }

  /**
   * fetch() wrapper. Returns the parsed JSON (or a Blob with opts.blob). Throws ApiError with the
   * server's `detail` on 4xx/5xx, and ApiError(0, ...) when the server cannot be reached.
   */
  async function api(method, path, opts) {
    opts = opts || {};
    const headers = Object.assign({ Accept: opts.blob ? "*/*" : "application/json" }, opts.headers || {});
    if (opts.write && apiKey()) headers["X-API-Key"] = apiKey();
    let resp;
    try {
      resp = await fetch(path, { method, headers, body: opts.body, signal: opts.signal });
    } catch (err) {
      if (err && err.name === "AbortError") throw err;
      throw new ApiError(0, "Cannot reach the server (" + (err && err.message ? err.message : "network error") + ").");
    }
    if (!resp.ok) {
      let body = null;
      const text = await resp.text().catch(() => "");
      try { body = JSON.parse(text); } catch (_) { body = text; }
      throw new ApiError(resp.status, detailText(body, resp.status, resp.statusText), body);
    }
    if (opts.blob) return resp.blob();
    if (resp.status === 204) return null;
    const text = await resp.text();
    if (!text) return null;
    try { return JSON.parse(text); } catch (_) { return text; }
  }

  // ------------------------------------------------------------------ error box
  function showError(message, context) {
    const box = $("#error");
    $("#error-text").textContent = (context ? context + ": " : "") + message;
    box.hidden = false;
    box.scrollIntoView({ block: "nearest", behavior: "smooth" });
  }

  function clearError() {
    $("#error").hidden = true;
    $("#error-text").textContent = "";
  }

  function errorMessage(err) {
    if (err instanceof ApiError) {
      if (err.status === 401 || err.status === 403) {
        return err.detail + " (an API key may be required: enter it in the header)";
      }
      return err.detail;
    }
    return (err && err.message) || String(err);
  }

  // ------------------------------------------------------------------ navigation
  const sectionLoaders = {};

  function showSection(name) {
    for (const s of $$(".section")) s.hidden = s.dataset.section !== name;
    for (const b of $$(".nav-link")) {
      const on = b.dataset.section === name;
      b.classList.toggle("active", on);
      b.setAttribute("aria-selected", on ? "true" : "false");
    }
    document.body.dataset.section = name;
    if (location.hash !== "#" + name) history.replaceState(null, "", "#" + name);
    if (sectionLoaders[name]) sectionLoaders[name]();
  }

  // ------------------------------------------------------------------ shapes (shared)
  const shapesState = { list: [], byId: new Map(), loaded: false };

  async function loadShapes() {
    const list = await api("GET", "/v1/shapes");
    shapesState.list = Array.isArray(list) ? list : [];
    shapesState.byId = new Map(shapesState.list.map((s) => [s.id, s]));
    shapesState.loaded = true;
    fillCategorySelects();
    return shapesState.list;
  }

  function categories() {
    return Array.from(new Set(shapesState.list.map((s) => s.category))).sort((a, b) => a.localeCompare(b));
  }

  function fillCategorySelects() {
    const cats = categories();
    for (const id of ["#category-select", "#library-category", "#batch-category"]) {
      const sel = $(id);
      const keep = sel.value;
      sel.replaceChildren(el("option", { value: "", text: "All categories" }), ...cats.map((c) => el("option", { value: c, text: c })));
      sel.value = cats.includes(keep) ? keep : "";
    }
    $("#category-list").replaceChildren(...cats.map((c) => el("option", { value: c })));
    $("#shape-id-list").replaceChildren(...shapesState.list.map((s) => el("option", { value: String(s.id), text: `${s.name} (${s.category})` })));
  }

  const thumbnailUrl = (id) => `/v1/shapes/${encodeURIComponent(id)}/thumbnail.png`;

  // ================================================================== SEARCH
  const photo = {
    file: null,        // the File/Blob sent to the server
    image: null,       // HTMLImageElement when the browser could decode it
    width: 0,          // original pixels
    height: 0,
    box: null,         // [x0, y0, x1, y1] in original pixels, or null
    version: 0,        // bumps whenever the photo or the box changes (invalidates the views)
    objectUrl: null,
  };
  const drag = { active: false, start: null, prevBox: null, pointerId: null };
  let searchController = null;

  const canvas = () => $("#photo-canvas");

  function setPhoto(file) {
    if (!file) return;
    clearError();
    if (photo.objectUrl) URL.revokeObjectURL(photo.objectUrl);
    photo.file = file;
    photo.image = null;
    photo.width = photo.height = 0;
    photo.box = null;
    photo.version++;
    photo.objectUrl = URL.createObjectURL(file);
    resetResults();
    resetViews();
    $("#photo-info").textContent = `${file.name || "pasted image"} · ${fmtBytes(file.size)} · loading…`;
    $("#search-button").disabled = false;
    $("#change-photo").hidden = false;
    $("#views").hidden = false;
    updateBoxInfo();

    const img = new Image();
    const version = photo.version;
    img.onload = () => {
      if (version !== photo.version) return;
      photo.image = img;
      photo.width = img.naturalWidth;
      photo.height = img.naturalHeight;
      $("#photo-info").textContent = `${file.name || "pasted image"} · ${photo.width}×${photo.height} px · ${fmtBytes(file.size)}`;
      const c = canvas();
      const scale = Math.min(1, 1600 / Math.max(photo.width, photo.height));
      c.width = Math.max(1, Math.round(photo.width * scale));
      c.height = Math.max(1, Math.round(photo.height * scale));
      c.dataset.width = String(photo.width);
      c.dataset.height = String(photo.height);
      c.hidden = false;
      $("#drop-hint").hidden = true;
      drawPhoto();
    };
    img.onerror = () => {
      if (version !== photo.version) return;
      canvas().hidden = true;
      $("#drop-hint").hidden = false;
      $("#photo-info").textContent = `${file.name || "pasted image"} · ${fmtBytes(file.size)} · the browser cannot show this file; the server will check it`;
    };
    img.src = photo.objectUrl;
  }

  function drawPhoto() {
    const c = canvas();
    if (!photo.image) return;
    const ctx = c.getContext("2d");
    ctx.clearRect(0, 0, c.width, c.height);
    ctx.drawImage(photo.image, 0, 0, c.width, c.height);
    const box = photo.box;
    if (!box) return;
    const sx = c.width / photo.width;
    const sy = c.height / photo.height;
    const [x0, y0, x1, y1] = [box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy];
    ctx.save();
    ctx.fillStyle = "rgba(15, 23, 42, 0.45)";
    ctx.beginPath();
    ctx.rect(0, 0, c.width, c.height);
    ctx.rect(x0, y0, x1 - x0, y1 - y0);
    ctx.fill("evenodd");
    const lw = Math.max(2, Math.round(c.width / 400));
    ctx.lineWidth = lw;
    ctx.strokeStyle = "#f59e0b";
    ctx.setLineDash([]);
    ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
    ctx.fillStyle = "#f59e0b";
    const h = lw * 3;
    for (const [px, py] of [[x0, y0], [x1, y0], [x0, y1], [x1, y1]]) ctx.fillRect(px - h / 2, py - h / 2, h, h);
    ctx.restore();
  }

  /** Canvas event position -> original image pixels (clamped to the image). */
  function eventToImage(e) {
    const rect = canvas().getBoundingClientRect();
    const fx = rect.width > 0 ? (e.clientX - rect.left) / rect.width : 0;
    const fy = rect.height > 0 ? (e.clientY - rect.top) / rect.height : 0;
    return [
      Math.min(photo.width, Math.max(0, fx * photo.width)),
      Math.min(photo.height, Math.max(0, fy * photo.height)),
    ];
  }

  function boxFrom(a, b) {
    const x0 = Math.floor(Math.min(a[0], b[0]));
    const y0 = Math.floor(Math.min(a[1], b[1]));
    const x1 = Math.ceil(Math.max(a[0], b[0]));
    const y1 = Math.ceil(Math.max(a[1], b[1]));
    return [Math.max(0, x0), Math.max(0, y0), Math.min(photo.width, x1), Math.min(photo.height, y1)];
  }

  const boxString = (b) => (b ? b.map((v) => String(Math.round(v))).join(",") : "");

  function updateBoxInfo() {
    const b = photo.box;
    $("#box-info").textContent = b ? `Box ${b[0]},${b[1]} → ${b[2]},${b[3]} (${b[2] - b[0]}×${b[3] - b[1]} px)` : (photo.image ? "Whole photo" : "");
    $("#clear-box").disabled = !b;
    canvas().dataset.box = boxString(b);
  }

  function onPointerDown(e) {
    if (!photo.image || e.button !== 0) return;
    e.preventDefault();
    drag.active = true;
    drag.pointerId = e.pointerId;
    drag.start = eventToImage(e);
    drag.prevBox = photo.box;
    try { canvas().setPointerCapture(e.pointerId); } catch (_) { /* synthetic events */ }
  }

  function onPointerMove(e) {
    if (!drag.active) return;
    photo.box = boxFrom(drag.start, eventToImage(e));
    drawPhoto();
    updateBoxInfo();
  }

  function onPointerUp(e) {
    if (!drag.active) return;
    drag.active = false;
    try { canvas().releasePointerCapture(drag.pointerId); } catch (_) { /* already released */ }
    const box = boxFrom(drag.start, eventToImage(e));
    const minSide = Math.max(4, 0.01 * Math.min(photo.width, photo.height));
    if (box[2] - box[0] < minSide || box[3] - box[1] < minSide) {
      photo.box = drag.prevBox; // a click or a tiny drag keeps the previous box
    } else {
      photo.box = box;
      photo.version++;
      invalidateViews();
    }
    drawPhoto();
    updateBoxInfo();
  }

  function clearBox() {
    if (!photo.box) return;
    photo.box = null;
    photo.version++;
    drawPhoto();
    updateBoxInfo();
    invalidateViews();
  }

  function resetResults() {
    $("#results").replaceChildren();
    $("#results-summary").hidden = true;
    $("#no-match").hidden = true;
    $("#search-status").replaceChildren();
  }

  function photoForm() {
    const fd = new FormData();
    fd.append("image", photo.file, photo.file.name || "photo.png");
    return fd;
  }

  async function runSearch(e) {
    if (e) e.preventDefault();
    if (!photo.file) return;
    clearError();
    const topK = parseInt($("#top-k").value, 10);
    if (!(topK >= 1 && topK <= 100)) {
      showError("Top k must be a whole number between 1 and 100.");
      return;
    }
    const ids = $("#shape-ids").value.split(/[\s,]+/).filter(Boolean);
    if (ids.some((v) => !/^\d+$/.test(v))) {
      showError("Shape ids must be whole numbers separated by commas.");
      return;
    }
    const fd = photoForm();
    const bbox = boxString(photo.box);
    if (bbox) fd.append("bbox", bbox);
    const category = $("#category-select").value;
    if (category) fd.append("category", category);
    else if ($("#tag-filter").checked) fd.append("tag_filter", "true");
    if (ids.length) fd.append("shape_ids", ids.join(","));
    fd.append("top_k", String(topK));
    fd.append("overlay", "true");
    canvas().dataset.bbox = bbox; // what was sent, in original image pixels

    if (searchController) searchController.abort();
    const controller = new AbortController();
    searchController = controller;
    resetResults();
    const btn = $("#search-button");
    btn.disabled = true;
    btn.classList.add("busy");
    document.body.classList.add("searching");
    $("#search-status").replaceChildren(spinner(), " Searching…");
    const t0 = performance.now();
    try {
      const data = await api("POST", "/v1/search", { body: fd, signal: controller.signal });
      if (controller !== searchController) return;
      renderResults(data, performance.now() - t0);
      $("#search-status").textContent = "";
    } catch (err) {
      if (err && err.name === "AbortError") return;
      $("#search-status").textContent = "Search failed.";
      showError(errorMessage(err), "Search failed");
    } finally {
      if (controller === searchController) {
        searchController = null;
        btn.disabled = !photo.file;
        btn.classList.remove("busy");
        document.body.classList.remove("searching");
      }
    }
  }

  function renderResults(data, elapsed) {
    const matches = (data && data.matches) || [];
    const summary = $("#results-summary");
    const total = data && data.timing_ms && typeof data.timing_ms.total === "number" ? data.timing_ms.total : null;
    summary.replaceChildren(...[
      el("strong", { text: `${matches.length} match${matches.length === 1 ? "" : "es"}` }),
      el("span", { class: "muted", id: "timing-total", text: ` · server time ${total === null ? "–" : total.toFixed(0) + " ms"}` }),
      typeof data.candidates === "number" ? el("span", { class: "muted", text: ` · ${data.candidates.toLocaleString()} candidate views` }) : null,
      el("span", { class: "muted", text: ` · round trip ${elapsed.toFixed(0)} ms` }),
      Array.isArray(data.tag_filter) ? el("span", { class: "muted", id: "tag-filter-used", text: ` · searched: ${data.tag_filter.join(", ")}` }) : null,
      data.notice ? el("div", { class: "notice", id: "search-notice", role: "status", text: data.notice }) : null,
    ].filter(Boolean));
    summary.hidden = false;
    $("#no-match").hidden = !data.no_match;
    document.body.dataset.noMatch = data.no_match ? "true" : "false";
    const grid = $("#results");
    if (!matches.length) {
      grid.replaceChildren(el("p", { class: "muted empty", text: "No shapes to compare with (is the library indexed?)." }));
      return;
    }
    grid.replaceChildren(...matches.map((m, i) => matchCard(m, i, i === 0 ? data.overlay_png : null)));
  }

  function matchCard(m, rank, fallbackOverlay) {
    const overlay = m.overlay_png || fallbackOverlay;
    const shape = shapesState.byId.get(m.shape_id);
    return el("article", { class: "card match-card" + (rank === 0 ? " best" : ""), dataset: { shapeId: String(m.shape_id), rank: String(rank) } },
      el("div", { class: "overlay-wrap" },
        overlay
          ? el("img", { class: "overlay", src: overlay, alt: `overlay of ${m.name} on the photo` })
          : el("div", { class: "overlay placeholder muted", text: "no overlay" }),
        el("span", { class: "rank", text: rank === 0 ? "best" : `#${rank + 1}` }),
      ),
      el("div", { class: "card-body" },
        el("div", { class: "card-title" },
          el("img", { class: "thumb", src: thumbnailUrl(m.shape_id), alt: "", loading: "lazy", width: 48, height: 48 }),
          el("div", {},
            el("div", { class: "match-name", text: m.name }),
            el("div", { class: "muted small" },
              el("span", { class: "match-category", text: m.category }),
              ` · id ${m.shape_id}`,
              shape && shape.subtype ? ` · ${shape.subtype}` : ""),
          ),
        ),
        el("dl", { class: "pose" },
          el("dt", { text: "azimuth" }), el("dd", { class: "azimuth", text: fmt1(m.azimuth) + "°" }),
          el("dt", { text: "elevation" }), el("dd", { class: "elevation", text: fmt1(m.elevation) + "°" }),
          el("dt", { text: "theta" }), el("dd", { class: "theta", text: fmt1(m.theta) + "°" }),
        ),
        el("div", { class: "score", title: "predicted geodesic error to the photo's pose (smaller is better)" +
            (m.prior_deg != null ? `: weighted mean of the matcher's ${fmt1(m.matcher_score)}° and the viewpoint prior's ${fmt1(m.prior_deg)}°` +
              (m.prior_weight != null ? ` (prior weight ${fmt1(m.prior_weight)})` : "") : "") },
          "predicted error ", el("strong", { class: "score-value", text: fmt1(m.score) + "°" })),
      ),
    );
  }

  // ------------------------------------------------------------------ other views (tabs)
  const views = { active: null, cache: {}, hierarchyTree: null };

  function resetViews() {
    views.cache = {};
    views.hierarchyTree = null;
    for (const p of $$(".tab-panel .view-body")) p.replaceChildren();
    if (views.active) loadView(views.active);
  }

  function invalidateViews() {
    views.cache = {};
    if (views.active) loadView(views.active);
  }

  function openView(name) {
    views.active = views.active === name ? null : name;
    for (const t of $$(".tab")) {
      const on = t.dataset.view === views.active;
      t.classList.toggle("active", on);
      t.setAttribute("aria-selected", on ? "true" : "false");
    }
    for (const p of $$(".tab-panel")) p.hidden = p.dataset.view !== views.active;
    if (views.active) loadView(views.active);
  }

  function notAvailable() {
    return el("div", { class: "not-available", text: "This view is not available on this server yet." });
  }

  function loadingNode(text) {
    return el("div", { class: "status-line" }, spinner(), " " + (text || "Loading…"));
  }

  /** Run one view request; 404/501/503 -> "not available", other errors -> error box. */
  async function viewRequest(target, fn, render) {
    target.replaceChildren(loadingNode());
    try {
      const data = await fn();
      render(data);
    } catch (err) {
      if (err instanceof ApiError && NOT_AVAILABLE.has(err.status)) {
        target.replaceChildren(notAvailable());
      } else {
        target.replaceChildren(el("div", { class: "inline-error", text: errorMessage(err) }));
        showError(errorMessage(err), "View failed");
      }
    }
  }

  function loadView(name) {
    if (!photo.file) return;
    const key = `${name}:${photo.version}:${$("#category-select").value}`;
    if (views.cache[name] === key) return;
    views.cache[name] = key;
    const version = photo.version;
    const body = $(`#panel-${name} .view-body`);
    const stale = () => version !== photo.version;
    const fd = () => {
      const f = photoForm();
      if (photo.box) f.append("bbox", boxString(photo.box));
      return f;
    };
    if (name === "viewpoint") {
      viewRequest(body, () => {
        const f = fd();
        const cat = $("#category-select").value;
        if (cat) f.append("category", cat);
        return api("POST", "/v1/viewpoint", { body: f });
      }, (d) => { if (!stale()) body.replaceChildren(renderViewpoint(d)); });
    } else if (name === "normals") {
      viewRequest(body, () => {
        const f = photoForm();
        f.append("format", "png");
        return api("POST", "/v1/normals", { body: f, blob: true });
      }, (blob) => {
        if (stale()) return;
        const url = URL.createObjectURL(blob);
        body.replaceChildren(el("figure", { class: "normals" },
          el("img", { id: "normals-image", src: url, alt: "predicted surface normals" }),
          el("figcaption", { class: "muted small", text: "Predicted surface normals (camera frame, colour-coded)." })));
      });
    } else if (name === "rotation") {
      viewRequest(body, () => api("POST", "/v1/rotation", { body: fd() }), (d) => { if (!stale()) body.replaceChildren(renderRotation(d)); });
    } else if (name === "tags") {
      viewRequest(body, () => api("POST", "/v1/tags", { body: fd() }), (d) => { if (!stale()) body.replaceChildren(renderTags(d)); });
    } else if (name === "hierarchy") {
      loadHierarchy();
    }
  }

  function renderViewpoint(d) {
    const az = Number(d.azimuth), elv = Number(d.elevation), th = Number(d.theta);
    const size = 120, r = 50, c = size / 2;
    const rad = ((az - 90) * Math.PI) / 180;
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", `0 0 ${size} ${size}`);
    svg.setAttribute("class", "dial");
    const mk = (tag, attrs) => {
      const n = document.createElementNS(ns, tag);
      for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
      svg.appendChild(n);
      return n;
    };
    mk("circle", { cx: c, cy: c, r, class: "dial-ring" });
    if (isFinite(az)) mk("line", { x1: c, y1: c, x2: c + r * Math.cos(rad), y2: c + r * Math.sin(rad), class: "dial-hand" });
    mk("circle", { cx: c, cy: c, r: 3, class: "dial-hub" });
    return el("div", { class: "viewpoint" }, svg,
      el("dl", { class: "pose big" },
        el("dt", { text: "azimuth" }), el("dd", { id: "viewpoint-azimuth", text: fmt1(az) + "°" }),
        el("dt", { text: "elevation" }), el("dd", { id: "viewpoint-elevation", text: fmt1(elv) + "°" }),
        el("dt", { text: "theta" }), el("dd", { id: "viewpoint-theta", text: fmt1(th) + "°" })));
  }

  function renderRotation(d) {
    const q = Array.isArray(d.quaternion) ? d.quaternion : [];
    const m = Array.isArray(d.matrix) ? d.matrix : [];
    const num = (v) => (typeof v === "number" ? v.toFixed(3) : "–");
    return el("div", { class: "rotation" },
      el("div", {},
        el("h3", { text: "Quaternion (w, x, y, z)" }),
        el("div", { class: "mono quaternion", text: q.map(num).join(", ") || "–" })),
      el("div", {},
        el("h3", { text: "Rotation matrix" }),
        el("table", { class: "matrix mono" },
          el("tbody", {}, m.map((row) => el("tr", {}, (Array.isArray(row) ? row : []).map((v) => el("td", { text: num(v) }))))))));
  }

  function renderTags(d) {
    const tags = (d && Array.isArray(d.tags) ? d.tags : []).slice().sort((a, b) => (b.probability || 0) - (a.probability || 0));
    return el("div", { class: "tags" },
      d && d.none ? el("div", { class: "none-of-these", id: "tags-none", text: "None of these: the photo matches none of the known tags." }) : null,
      tags.length ? el("ul", { class: "bars" }, tags.map((t) => el("li", {},
        el("span", { class: "bar-label", text: t.label }),
        el("span", { class: "bar-track" }, el("span", { class: "bar-fill", style: `width:${Math.max(0, Math.min(100, 100 * (t.probability || 0))).toFixed(1)}%` })),
        el("span", { class: "bar-value", text: fmtPct(t.probability) })))) : el("p", { class: "muted", text: "No tags." }));
  }

  // Hierarchy: the tree once, the predictions per photo / trade-off / predictor.
  function treeNode(label, children, depth) {
    if (!children || !children.length) return el("li", { class: "leaf", text: label });
    const det = el("details", { open: depth < 2 }, el("summary", { text: label }), el("ul", {}, children));
    return el("li", {}, det);
  }

  /** Accepts {name|label, children}, {label: subtree} maps, arrays of nodes and leaves as strings. */
  function renderTree(node, depth) {
    if (node === null || node === undefined) return [];
    if (typeof node !== "object") return [el("li", { class: "leaf", text: String(node) })];
    if (Array.isArray(node)) return node.flatMap((n) => renderTree(n, depth));
    const label = node.name ?? node.label ?? node.id ?? node.title;
    if (label !== undefined) {
      const kids = node.children ?? node.subclasses ?? node.nodes ?? [];
      return [treeNode(String(label), renderTree(kids, depth + 1), depth)];
    }
    return Object.entries(node).map(([k, v]) => treeNode(k, renderTree(v, depth + 1), depth));
  }

  async function loadHierarchy() {
    const treeBox = $("#hierarchy-tree");
    const predBox = $("#hierarchy-predictions");
    if (!views.hierarchyTree) {
      views.hierarchyTree = "loading";
      treeBox.replaceChildren(loadingNode());
      try {
        const tree = await api("GET", "/v1/hierarchy");
        const root = tree && typeof tree === "object" && !Array.isArray(tree) && "tree" in tree ? tree.tree : tree;
        views.hierarchyTree = tree;
        treeBox.replaceChildren(el("ul", { class: "tree", id: "hierarchy-list" }, renderTree(root, 0)));
      } catch (err) {
        views.hierarchyTree = null;
        if (err instanceof ApiError && NOT_AVAILABLE.has(err.status)) {
          treeBox.replaceChildren(notAvailable());
          predBox.replaceChildren(notAvailable());
          views.cache.hierarchy = `hierarchy:${photo.version}:${$("#category-select").value}`;
          return;
        }
        treeBox.replaceChildren(el("div", { class: "inline-error", text: errorMessage(err) }));
        showError(errorMessage(err), "Hierarchy failed");
      }
    }
    predictHierarchy();
  }

  function predictHierarchy() {
    if (!photo.file) return;
    const predBox = $("#hierarchy-predictions");
    const version = photo.version;
    viewRequest(predBox, () => {
      const f = photoForm();
      if (photo.box) f.append("bbox", boxString(photo.box));
      f.append("tradeoff", $("#hierarchy-tradeoff").value);
      f.append("predictor", $("#hierarchy-predictor").value);
      return api("POST", "/v1/hierarchy/predict", { body: f });
    }, (d) => {
      if (version !== photo.version) return;
      const bundles = d && Array.isArray(d.bundles) ? d.bundles : [];
      predBox.replaceChildren(bundles.length
        ? el("ol", { class: "bundles" }, bundles.map((b) => el("li", {},
          el("div", { class: "bundle-labels" }, (b.labels || []).map((l) => el("span", { class: "chip", text: l }))),
          el("div", { class: "muted small", text: `probability ${fmtPct(b.probability)} · specificity ${typeof b.specificity === "number" ? b.specificity.toFixed(2) : "–"}` }))))
        : el("p", { class: "muted", text: "No prediction." }));
    });
  }

  // ================================================================== LIBRARY
  let libraryTimer = null;

  async function refreshLibrary() {
    const grid = $("#shape-grid");
    if (!shapesState.loaded) grid.replaceChildren(loadingNode("Loading shapes…"));
    try {
      await loadShapes();
      renderLibrary();
    } catch (err) {
      grid.replaceChildren(el("div", { class: "inline-error", text: errorMessage(err) }));
      showError(errorMessage(err), "Could not load the library");
    }
    scheduleLibraryRefresh();
  }

  /** While shapes are being indexed and the Library is visible, refresh every few seconds. */
  function scheduleLibraryRefresh() {
    clearTimeout(libraryTimer);
    const busy = shapesState.list.some((s) => s.index_status === "pending" || s.index_status === "indexing");
    if (busy && !$("#section-library").hidden) libraryTimer = setTimeout(refreshLibrary, 4000);
  }

  function renderLibrary() {
    const cat = $("#library-category").value;
    const shapes = shapesState.list.filter((s) => !cat || s.category === cat);
    $("#library-count").textContent = `${shapes.length} of ${shapesState.list.length} shapes`;
    const grid = $("#shape-grid");
    if (!shapes.length) {
      grid.replaceChildren(el("p", { class: "muted empty", text: shapesState.list.length ? "No shape in this category." : "The library is empty: add a shape." }));
      return;
    }
    grid.replaceChildren(...shapes.map(shapeCard));
  }

  function shapeCard(s) {
    const status = s.index_status || (s.indexed ? "indexed" : "pending");
    return el("article", { class: "card shape-card", dataset: { shapeId: String(s.id) } },
      el("div", { class: "thumb-wrap" },
        el("img", { class: "thumbnail", src: thumbnailUrl(s.id), alt: `${s.name} thumbnail`, loading: "lazy" })),
      el("div", { class: "card-body" },
        el("div", { class: "card-row" },
          el("span", { class: "shape-name", text: s.name }),
          el("span", { class: `badge status-${status}`, text: status })),
        el("div", { class: "muted small" },
          el("span", { class: "shape-category", text: s.category }),
          ` · id ${s.id} · ${Number(s.faces).toLocaleString()} faces`),
        s.subtype ? el("div", { class: "muted small", text: s.subtype }) : null,
        s.license || s.attribution ? el("div", { class: "muted small license", text: [s.license, s.attribution].filter(Boolean).join(" · ") }) : null,
        el("div", { class: "card-actions" },
          el("a", { class: "link-button", href: `/v1/shapes/${encodeURIComponent(s.id)}/mesh`, download: `shape-${s.id}.glb`, text: "Mesh" }),
          el("button", { type: "button", class: "danger small remove-shape", text: "Remove", onclick: () => removeShape(s) }))));
  }

  async function removeShape(s) {
    if (!window.confirm(`Remove shape "${s.name}" (id ${s.id}) from the library?`)) return;
    clearError();
    try {
      await api("DELETE", `/v1/shapes/${encodeURIComponent(s.id)}`, { write: true });
      await refreshLibrary();
    } catch (err) {
      showError(errorMessage(err), `Could not remove "${s.name}"`);
    }
  }

  async function addShape(e) {
    e.preventDefault();
    clearError();
    const file = $("#mesh-input").files[0];
    const name = $("#shape-name").value.trim();
    const category = $("#shape-category").value.trim();
    if (!file || !name || !category) {
      showError("Choose a mesh file and give it a name and a category.");
      return;
    }
    const fd = new FormData();
    fd.append("mesh", file, file.name);
    fd.append("name", name);
    fd.append("category", category);
    const status = $("#add-shape-status");
    const btn = $("#add-shape-button");
    btn.disabled = true;
    status.replaceChildren(spinner(), " Uploading…");
    try {
      const shape = await api("POST", "/v1/shapes", { body: fd, write: true });
      $("#add-shape-form").reset();
      if (shape && shape.created === false) {
        status.textContent = `This file is already in the library as "${shape.name}" (id ${shape.id}).`;
      } else {
        status.textContent = `Added "${shape.name}" (id ${shape.id}).`;
      }
      await refreshLibrary();
      if (shape && shape.job_id) await followIndexJob(shape.job_id, shape);
    } catch (err) {
      status.textContent = "Not added.";
      showError(errorMessage(err), "Could not add the shape");
    } finally {
      btn.disabled = false;
    }
  }

  async function followIndexJob(jobId, shape) {
    const status = $("#add-shape-status");
    const wrap = $("#add-shape-progress-wrap");
    const bar = $("#add-shape-progress");
    wrap.hidden = false;
    for (;;) {
      let job;
      try {
        job = await api("GET", `/v1/jobs/${encodeURIComponent(jobId)}`);
      } catch (err) {
        status.textContent = `Indexing status unavailable: ${errorMessage(err)}`;
        break;
      }
      const frac = progressFraction(job.progress);
      bar.style.width = `${(100 * frac).toFixed(1)}%`;
      status.replaceChildren(TERMINAL.has(job.status) ? "" : spinner(), ` Indexing "${shape.name}": ${job.status} (${fmtPct(frac)})`);
      if (TERMINAL.has(job.status)) {
        status.textContent = job.status === "done" ? `"${shape.name}" is indexed and searchable.` : `Indexing "${shape.name}" ${job.status}${job.error ? ": " + job.error : ""}.`;
        break;
      }
      await sleep(1000);
    }
    wrap.hidden = true;
    await refreshLibrary();
  }

  // ================================================================== BATCH
  const TERMINAL = new Set(["done", "failed", "cancelled"]);
  // Rows the batch view shows (and asks the API for on each poll): a 10,000-image job is followed
  // without fetching and redrawing every result each second; the downloads hold all of them.
  const JOB_ROWS = 200;
  const batch = { files: [], archive: null, jobId: null, timer: null, token: 0 };
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

  function progressFraction(p) {
    if (!p) return 0;
    if (typeof p.fraction === "number") return Math.max(0, Math.min(1, p.fraction));
    return p.total ? Math.max(0, Math.min(1, ((p.done || 0) + (p.failed || 0)) / p.total)) : 0;
  }

  function addBatchFiles(files) {
    for (const f of files) {
      if (/\.zip$/i.test(f.name) || f.type === "application/zip" || f.type === "application/x-zip-compressed") {
        batch.archive = f;
      } else {
        batch.files.push(f);
      }
    }
    renderQueue();
  }

  function renderQueue() {
    const q = $("#batch-queue");
    const items = [];
    if (batch.archive) {
      items.push(el("li", { class: "archive" }, el("span", { text: `📦 ${batch.archive.name} (${fmtBytes(batch.archive.size)}) — the zip is sent instead of the images` }),
        el("button", { type: "button", class: "link-button", text: "remove", onclick: () => { batch.archive = null; $("#batch-archive").value = ""; renderQueue(); } })));
    }
    batch.files.forEach((f, i) => items.push(el("li", {}, el("span", { text: `${f.name} (${fmtBytes(f.size)})` }),
      el("button", { type: "button", class: "link-button", text: "remove", onclick: () => { batch.files.splice(i, 1); renderQueue(); } }))));
    q.replaceChildren(...items);
    $("#batch-submit").disabled = !batch.archive && !batch.files.length;
    const n = batch.files.length;
    $("#batch-form-status").textContent = batch.archive ? "1 zip queued" : n ? `${n} image${n === 1 ? "" : "s"} queued` : "";
  }

  async function submitBatch(e) {
    e.preventDefault();
    clearError();
    if (!batch.archive && !batch.files.length) return;
    const topK = parseInt($("#batch-top-k").value, 10);
    if (!(topK >= 1 && topK <= 100)) {
      showError("Top k must be a whole number between 1 and 100.");
      return;
    }
    const fd = new FormData();
    if (batch.archive) fd.append("archive", batch.archive, batch.archive.name);
    else for (const f of batch.files) fd.append("image", f, f.name);
    fd.append("kind", "search");
    const cat = $("#batch-category").value;
    if (cat) fd.append("category", cat);
    else if ($("#batch-tag-filter").checked) fd.append("tag_filter", "true");
    fd.append("top_k", String(topK));
    const btn = $("#batch-submit");
    btn.disabled = true;
    $("#batch-form-status").replaceChildren(spinner(), " Uploading…");
    try {
      const job = await api("POST", "/v1/jobs", { body: fd, write: true });
      batch.files = [];
      batch.archive = null;
      $("#batch-input").value = "";
      $("#batch-archive").value = "";
      renderQueue();
      $("#batch-form-status").textContent = `Job ${job.job_id} started.`;
      watchJob(job.job_id, job);
      loadJobList();
    } catch (err) {
      showError(errorMessage(err), "Could not start the batch");
      renderQueue();
      $("#batch-form-status").textContent = "Not started.";
    }
  }

  function watchJob(jobId, initial) {
    clearTimeout(batch.timer);
    batch.jobId = jobId;
    const token = ++batch.token;
    $("#job-empty").hidden = true;
    $("#job-view").hidden = false;
    $("#job-id").textContent = jobId;
    $("#job-download-json").href = `/v1/jobs/${encodeURIComponent(jobId)}/results.json`;
    $("#job-download-csv").href = `/v1/jobs/${encodeURIComponent(jobId)}/results.csv`;
    $("#job-download-json").setAttribute("download", `job-${jobId}.json`);
    $("#job-download-csv").setAttribute("download", `job-${jobId}.csv`);
    $("#job-items").replaceChildren();
    if (initial) renderJob(initial);
    const tick = async () => {
      if (token !== batch.token) return;
      let job;
      try {
        job = await api("GET", `/v1/jobs/${encodeURIComponent(jobId)}?limit=${JOB_ROWS}`);
      } catch (err) {
        if (token !== batch.token) return;
        $("#job-error").hidden = false;
        $("#job-error").textContent = `Cannot read the job: ${errorMessage(err)}`;
        if (err instanceof ApiError && err.status === 404) return; // gone: stop polling
        batch.timer = setTimeout(tick, 2000);
        return;
      }
      if (token !== batch.token) return;
      renderJob(job);
      if (TERMINAL.has(job.status)) {
        loadJobList();
        return;
      }
      batch.timer = setTimeout(tick, 1000);
    };
    tick();
  }

  function renderJob(job) {
    const st = $("#job-status");
    st.textContent = job.status || "–";
    st.className = `badge status-${job.status}`;
    const p = job.progress || {};
    const frac = progressFraction(p);
    const bar = $("#job-progress");
    bar.style.width = `${(100 * frac).toFixed(1)}%`;
    bar.setAttribute("aria-valuenow", (100 * frac).toFixed(0));
    bar.dataset.fraction = String(frac);
    $("#job-counts").textContent = `${p.done ?? 0} done · ${p.failed ?? 0} failed${p.cancelled ? ` · ${p.cancelled} cancelled` : ""} · ${p.total ?? "?"} total (${fmtPct(frac)})`;
    $("#job-cancel").disabled = TERMINAL.has(job.status);
    const skipped = Array.isArray(job.skipped) ? job.skipped : [];
    $("#job-skipped").hidden = !skipped.length;
    $("#job-skipped").textContent = skipped.length ? `Skipped: ${skipped.join("; ")}` : "";
    $("#job-error").hidden = !job.error;
    $("#job-error").textContent = job.error ? `Job error: ${job.error}` : "";
    if (!Array.isArray(job.results)) return;
    const rows = job.results.slice(0, JOB_ROWS).map((it) => {
      const res = it.result || {};
      const best = Array.isArray(res.matches) && res.matches.length ? res.matches[0] : null;
      let scoreCell;
      if (it.error) scoreCell = el("td", { class: "item-error", text: it.error });
      else if (best) scoreCell = el("td", { text: `${fmt1(best.score)}°${res.no_match ? " (no match)" : ""}` });
      else scoreCell = el("td", { class: "muted", text: it.status === "done" ? "no match" : "–" });
      return el("tr", { class: `item status-${it.status}`, dataset: { index: String(it.index) } },
        el("td", { text: String(it.index) }),
        el("td", { class: "item-name", text: it.name || "" }),
        el("td", {}, el("span", { class: `badge status-${it.status}`, text: it.status })),
        el("td", { class: "item-best", text: best ? `${best.name} (${best.category}) az ${fmt1(best.azimuth)}° el ${fmt1(best.elevation)}° θ ${fmt1(best.theta)}°` : "" }),
        scoreCell);
    });
    const more = Math.max(job.results.length, typeof p.total === "number" ? p.total : 0) - rows.length;
    if (more > 0) {
      rows.push(el("tr", { class: "more" }, el("td", { colspan: "5", class: "muted", text: `… ${more} more items: download the results for all of them.` })));
    }
    $("#job-items").replaceChildren(...rows);
  }

  async function cancelJob() {
    if (!batch.jobId) return;
    clearError();
    try {
      const job = await api("DELETE", `/v1/jobs/${encodeURIComponent(batch.jobId)}`, { write: true });
      if (job && job.status) renderJob(job);
      watchJob(batch.jobId);
    } catch (err) {
      showError(errorMessage(err), "Could not cancel the job");
    }
  }

  async function loadJobList() {
    const body = $("#job-list");
    const status = $("#job-list-status");
    try {
      const jobs = await api("GET", "/v1/jobs");
      const list = Array.isArray(jobs) ? jobs : (jobs && Array.isArray(jobs.jobs) ? jobs.jobs : []);
      status.textContent = list.length ? "" : "No jobs yet.";
      body.replaceChildren(...list.map((j) => el("tr", {
        class: "job-row" + (j.job_id === batch.jobId ? " selected" : ""), tabindex: "0", dataset: { jobId: j.job_id },
        onclick: () => { watchJob(j.job_id); loadJobList(); },
        onkeydown: (e) => { if (e.key === "Enter") { watchJob(j.job_id); loadJobList(); } },
      },
      el("td", { class: "mono", text: j.job_id }),
      el("td", { text: j.kind || "" }),
      el("td", {}, el("span", { class: `badge status-${j.status}`, text: j.status })),
      el("td", { text: j.progress ? `${(j.progress.done || 0) + (j.progress.failed || 0)} / ${j.progress.total ?? "?"}` : "" }),
      el("td", { text: fmtTime(j.created_at) }))));
    } catch (err) {
      body.replaceChildren();
      if (err instanceof ApiError && NOT_AVAILABLE.has(err.status)) status.textContent = "Batch jobs are not available on this server yet.";
      else status.textContent = `Cannot list jobs: ${errorMessage(err)}`;
    }
  }

  // ================================================================== wiring
  function firstImage(list) {
    return Array.from(list || []).find((f) => f && (!f.type || f.type.startsWith("image/") || /\.(png|jpe?g|webp)$/i.test(f.name || ""))) || null;
  }

  function wireDropZone(zone, onFiles) {
    zone.addEventListener("dragenter", (e) => { e.preventDefault(); zone.classList.add("dragover"); });
    zone.addEventListener("dragover", (e) => { e.preventDefault(); e.dataTransfer.dropEffect = "copy"; zone.classList.add("dragover"); });
    zone.addEventListener("dragleave", (e) => { if (!zone.contains(e.relatedTarget)) zone.classList.remove("dragover"); });
    zone.addEventListener("drop", (e) => {
      e.preventDefault();
      zone.classList.remove("dragover");
      if (e.dataTransfer && e.dataTransfer.files && e.dataTransfer.files.length) onFiles(e.dataTransfer.files);
    });
  }

  function init() {
    // API key
    try { $("#api-key").value = localStorage.getItem(API_KEY_STORAGE) || ""; } catch (_) { /* storage off */ }
    $("#api-key").addEventListener("input", () => {
      try { localStorage.setItem(API_KEY_STORAGE, apiKey()); } catch (_) { /* storage off */ }
    });
    $("#api-key-form").addEventListener("submit", (e) => e.preventDefault());
    $("#error-close").addEventListener("click", clearError);

    // navigation
    for (const b of $$(".nav-link")) b.addEventListener("click", () => showSection(b.dataset.section));
    sectionLoaders.library = refreshLibrary;
    sectionLoaders.batch = loadJobList;
    window.addEventListener("hashchange", () => {
      const name = location.hash.slice(1);
      if ($(`#section-${name}`)) showSection(name);
    });

    // a file dropped outside a drop zone must not navigate away from the page
    window.addEventListener("dragover", (e) => e.preventDefault());
    window.addEventListener("drop", (e) => e.preventDefault());

    // search: photo input, drop, paste, box drawing
    $("#photo-input").addEventListener("change", (e) => {
      const f = e.target.files && e.target.files[0];
      if (f) setPhoto(f);
      e.target.value = "";   // choosing the same file again must fire "change" again
    });
    wireDropZone($("#drop-zone"), (files) => {
      const f = firstImage(files) || files[0];
      if (f) setPhoto(f);
    });
    document.addEventListener("paste", (e) => {
      if ($("#section-search").hidden) return;
      const items = Array.from((e.clipboardData && e.clipboardData.items) || []);
      const item = items.find((it) => it.kind === "file" && it.type.startsWith("image/"));
      if (!item) return;
      const blob = item.getAsFile();
      if (!blob) return;
      e.preventDefault();
      const ext = (blob.type.split("/")[1] || "png").replace("jpeg", "jpg");
      setPhoto(new File([blob], blob.name && blob.name !== "image.png" ? blob.name : `pasted.${ext}`, { type: blob.type }));
    });
    $("#change-photo").addEventListener("click", () => $("#photo-input").click());
    const c = canvas();
    c.addEventListener("pointerdown", onPointerDown);
    c.addEventListener("pointermove", onPointerMove);
    c.addEventListener("pointerup", onPointerUp);
    c.addEventListener("pointercancel", onPointerUp);
    c.addEventListener("lostpointercapture", (e) => { if (drag.active) onPointerUp(e); });
    $("#clear-box").addEventListener("click", clearBox);
    $("#search-form").addEventListener("submit", runSearch);
    $("#category-select").addEventListener("change", () => { if (views.active === "viewpoint") loadView("viewpoint"); });
    for (const t of $$(".tab")) t.addEventListener("click", () => openView(t.dataset.view));
    $("#hierarchy-tradeoff").addEventListener("input", (e) => { $("#hierarchy-tradeoff-value").textContent = Number(e.target.value).toFixed(2); });
    $("#hierarchy-tradeoff").addEventListener("change", () => { if (views.hierarchyTree && views.hierarchyTree !== "loading") predictHierarchy(); });
    $("#hierarchy-predictor").addEventListener("change", () => { if (views.hierarchyTree && views.hierarchyTree !== "loading") predictHierarchy(); });
    $("#hierarchy-predict").addEventListener("click", () => { views.cache.hierarchy = null; loadHierarchy(); });

    // library
    $("#library-category").addEventListener("change", renderLibrary);
    $("#library-refresh").addEventListener("click", refreshLibrary);
    $("#add-shape-form").addEventListener("submit", addShape);

    // batch
    $("#batch-input").addEventListener("change", (e) => { addBatchFiles(e.target.files); e.target.value = ""; });
    $("#batch-archive").addEventListener("change", (e) => { if (e.target.files[0]) { batch.archive = e.target.files[0]; renderQueue(); } });
    wireDropZone($("#batch-drop"), addBatchFiles);
    $("#batch-clear").addEventListener("click", () => { batch.files = []; batch.archive = null; $("#batch-archive").value = ""; renderQueue(); });
    $("#batch-form").addEventListener("submit", submitBatch);
    $("#job-cancel").addEventListener("click", cancelJob);
    $("#jobs-refresh").addEventListener("click", loadJobList);

    // first data
    loadShapes()
      .then(() => { document.body.dataset.ready = "true"; })
      .catch((err) => { document.body.dataset.ready = "error"; showError(errorMessage(err), "Could not load the shape list"); });
    const start = location.hash.slice(1);
    showSection($(`#section-${start}`) ? start : "search");
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
