// exaslide viewer: slides as Deep Zoom in OpenSeadragon, with exaslide's overlays, a scale
// bar, the cursor position, the view in the URL hash and retrieval on click.
// Plain JavaScript, no framework; talks to the JSON API of exaslide/viewer/app.py.
"use strict";

(function () {
  const TOKEN = new URLSearchParams(location.search).get("token");
  const OSD_DIR = "static/vendor/openseadragon/";
  const SEARCH_BOX = 256;      // level-0 px side of the box a plain click queries
  const SEARCH_K = 8;
  const SCALEBAR_PX = 120;     // the scale bar's longest length on screen
  const POINT_RADIUS = 4;      // screen px of a point feature
  const DEFAULT_ON = { heatmap: true, annotations: true, froc: true, mask: false, patches: false };
  const DEFAULT_OPACITY = { heatmap: 0.5, mask: 0.5, annotations: 1, patches: 1, froc: 1 };
  const CLASS_COLOURS = {
    tumour: "#e6194b", tumor: "#e6194b", normal: "#3cb44b", tissue: "#4363d8",
    exclusion: "#9e9e9e", "ignore*": "#9e9e9e", background: "#bdbdbd",
    tp: "#00c853", fp: "#ff1744", fn: "#ffab00", itc: "#ffab00",
  };
  const PALETTE = ["#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45",
    "#469990", "#9a6324", "#800000", "#000075"];

  // Everything the page knows; window.exaslide lets tests and the console look at it.
  const state = {
    slides: [], slide: null, viewer: null, overlays: [], generation: 0,
    opened: false, tilesLoaded: 0, overlaysReady: false, pendingView: null,
    selection: null, highlight: null, drag: null, search: null, hash: "",
  };
  window.exaslide = state;

  const $ = (id) => document.getElementById(id);

  function withToken(url) {
    if (!TOKEN || url.startsWith("data:") || url.startsWith("blob:")) return url;
    return url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(TOKEN);
  }

  function showBanner(message) {
    const banner = $("banner");
    banner.textContent = message;
    banner.hidden = false;
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === "class") node.className = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else if (value !== undefined && value !== null && value !== false) node.setAttribute(key, value);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  async function getJSON(url) {
    const response = await fetch(withToken(url));
    let body = null;
    try { body = await response.json(); } catch (_) { body = null; }
    if (!response.ok) {
      const message = (body && (body.error || body.detail)) || `HTTP ${response.status}`;
      const error = new Error(message);
      error.status = response.status;
      throw error;
    }
    return body;
  }

  function loadScript(src) {
    return new Promise((resolve, reject) => {
      const script = document.createElement("script");
      script.src = src;
      script.onload = resolve;
      script.onerror = () => reject(new Error(`could not load ${src}`));
      document.head.appendChild(script);
    });
  }

  function loadImage(url) {
    return new Promise((resolve, reject) => {
      const image = new Image();
      image.onload = () => resolve(image);
      image.onerror = () => reject(new Error(`could not load image ${url.split("?")[0]}`));
      image.src = withToken(url);
    });
  }

  // ---- numbers -------------------------------------------------------------------------

  function fmt(value, digits) {
    if (!Number.isFinite(value)) return "–";
    return value.toLocaleString("en-US", { maximumFractionDigits: digits === undefined ? 1 : digits });
  }

  function formatLength(um) {
    if (um >= 1000) return `${fmt(um / 1000, 2)} mm`;
    return `${fmt(um, um < 1 ? 2 : 1)} µm`;
  }

  function niceLength(max) {  // the largest 1, 2 or 5 x 10^k not above max
    const power = Math.pow(10, Math.floor(Math.log10(max)));
    for (const step of [5, 2, 1]) if (step * power <= max) return step * power;
    return power;
  }

  // ---- coordinates: the slide is world item 0, placed at x=0 with width 1 -----------------

  function screenScale() {  // screen px per level-0 px
    const vp = state.viewer.viewport;
    const origin = vp.pixelFromPoint(new OpenSeadragon.Point(0, 0), true);
    const one = vp.pixelFromPoint(new OpenSeadragon.Point(1, 0), true);
    return (one.x - origin.x) / state.slide.width;
  }

  function level0FromPixel(x, y) {
    const point = state.viewer.viewport.pointFromPixel(new OpenSeadragon.Point(x, y), true);
    return { x: point.x * state.slide.width, y: point.y * state.slide.width };
  }

  // ---- start ---------------------------------------------------------------------------

  async function main() {
    try {
      await loadScript(withToken(OSD_DIR + "openseadragon.min.js"));
    } catch (_) {
      showBanner("Viewer assets missing: static/vendor/openseadragon/openseadragon.min.js "
        + "could not be loaded. In a source checkout run `pip install -e .` (needs npm) to "
        + "bundle OpenSeadragon.");
      state.failed = "assets";
      return;
    }
    createViewer();
    try {
      state.slides = await getJSON("api/slides");
    } catch (error) {
      showBanner(`Could not list the slides: ${error.message}`);
      return;
    }
    renderSlideList();
    const view = parseHash();
    const good = state.slides.filter((slide) => !slide.error);
    const wanted = view.slide && good.find((slide) => slide.id === view.slide);
    if (view.slide && !wanted) showBanner(`Slide ${view.slide} is not available here.`);
    const first = wanted || good[0];
    if (first) openSlide(first.id, wanted ? view : null);
    else showBanner("No slide could be opened: see the errors in the slide list.");
    window.addEventListener("hashchange", onHashChange);
  }

  function navImagesWithToken() {
    if (!TOKEN) return undefined;
    const images = JSON.parse(JSON.stringify(OpenSeadragon.DEFAULT_SETTINGS.navImages));
    for (const button of Object.values(images)) {
      for (const key of Object.keys(button)) button[key] = withToken(button[key]);
    }
    return images;
  }

  function createViewer() {
    const viewer = OpenSeadragon({
      element: $("viewer"),
      drawer: "canvas",
      prefixUrl: OSD_DIR + "images/",
      navImages: navImagesWithToken(),
      showNavigator: true,
      navigatorPosition: "TOP_RIGHT",
      imageSmoothingEnabled: false,
      visibilityRatio: 0.2,
      minZoomImageRatio: 0.5,
      maxZoomPixelRatio: 4,
      gestureSettingsMouse: { clickToZoom: false, dblClickToZoom: true },
    });
    state.viewer = viewer;

    const vectors = el("canvas", { id: "vectors", class: "vectors" });
    viewer.canvas.appendChild(vectors);
    state.vectors = vectors;

    viewer.addHandler("tile-loaded", () => { state.tilesLoaded += 1; });
    viewer.addHandler("open", onOpen);
    viewer.addHandler("open-failed", (event) => {
      showBanner(`Could not open slide ${state.slide ? state.slide.id : ""}: ${event.message}`);
    });
    viewer.addHandler("update-viewport", () => { drawVectors(); updateScaleBar(); });
    viewer.addHandler("animation-finish", () => { writeHash(); updateZoomLabel(); });
    viewer.addHandler("resize", () => { drawVectors(); updateScaleBar(); });
    viewer.addHandler("canvas-click", onClick);
    viewer.addHandler("canvas-press", onPress);
    viewer.addHandler("canvas-drag", onDrag);
    viewer.addHandler("canvas-release", onRelease);
    viewer.element.addEventListener("mousemove", onMouseMove);
    viewer.element.addEventListener("mouseleave", () => { $("cursor").textContent = ""; });
    $("results-close").addEventListener("click", () => {
      $("results").hidden = true;
      state.selection = null;
      drawVectors();
    });
  }

  // ---- slides --------------------------------------------------------------------------

  function renderSlideList() {
    const list = $("slides");
    list.replaceChildren();
    if (!state.slides.length) list.append(el("li", { class: "muted" }, "no slides"));
    for (const slide of state.slides) {
      if (slide.error) {
        list.append(el("li", { class: "slide error", "data-id": slide.id },
          el("span", { class: "name" }, slide.name || slide.id),
          el("span", { class: "detail" }, slide.error)));
        continue;
      }
      const mpp = slide.mpp ? ` · ${fmt(slide.mpp[0], 3)} µm/px` : " · no µm/px";
      list.append(el("li", { class: "slide", "data-id": slide.id },
        el("button", { type: "button", onclick: () => openSlide(slide.id, null) },
          el("span", { class: "name" }, slide.name || slide.id),
          el("span", { class: "detail" }, `${slide.width} × ${slide.height} px${mpp}`))));
    }
  }

  function openSlide(id, view) {
    const slide = state.slides.find((s) => s.id === id && !s.error);
    if (!slide) { showBanner(`Slide ${id} is not available here.`); return; }
    state.generation += 1;
    state.slide = slide;
    state.opened = false;
    state.overlaysReady = false;
    state.overlays = [];
    state.pendingView = view;
    state.selection = null;
    if (!state.highlight || state.highlight.slide !== id) state.highlight = null;
    for (const item of document.querySelectorAll("#slides .slide")) {
      item.classList.toggle("current", item.dataset.id === id);
    }
    $("slide-name").textContent = slide.name || slide.id;
    $("overlays").replaceChildren(el("p", { class: "muted" }, "loading…"));
    state.viewer.open(withToken(slide.dzi));
  }

  function onOpen() {
    state.opened = true;
    if (state.pendingView) applyView(state.pendingView, true);
    state.pendingView = null;
    writeHash();
    updateZoomLabel();
    loadOverlays(state.slide, state.generation);
  }

  // ---- the view in the URL hash: #slide=ID&x=..&y=..&zoom=.. ----------------------------
  // x, y: the centre in level-0 px; zoom: screen px per level-0 px (1 = full resolution),
  // so a shared link shows the same magnification on any screen size.

  function parseHash() {
    const params = new URLSearchParams(location.hash.slice(1));
    const number = (key) => {
      const value = parseFloat(params.get(key));
      return Number.isFinite(value) ? value : null;
    };
    return { slide: params.get("slide"), x: number("x"), y: number("y"), zoom: number("zoom") };
  }

  function applyView(view, immediately) {
    const vp = state.viewer.viewport;
    const width = state.slide.width;
    if (view.zoom && view.zoom > 0) {
      const containerWidth = vp.getContainerSize().x;
      vp.zoomTo(view.zoom * width / containerWidth, null, immediately);
    }
    if (view.x !== null && view.y !== null) {
      vp.panTo(new OpenSeadragon.Point(view.x / width, view.y / width), immediately);
    }
    if (immediately) vp.applyConstraints(true);
  }

  function writeHash() {
    if (!state.opened) return;
    const centre = state.viewer.viewport.getCenter(true);
    const width = state.slide.width;
    const hash = `slide=${encodeURIComponent(state.slide.id)}`
      + `&x=${Math.round(centre.x * width)}&y=${Math.round(centre.y * width)}`
      + `&zoom=${Number(screenScale().toPrecision(4))}`;
    state.hash = hash;
    if (location.hash.slice(1) !== hash) history.replaceState(null, "", "#" + hash);
  }

  function onHashChange() {
    if (location.hash.slice(1) === state.hash) return;
    const view = parseHash();
    if (view.slide && (!state.slide || view.slide !== state.slide.id)) openSlide(view.slide, view);
    else if (state.opened) applyView(view, false);
  }

  // ---- scale bar, cursor and zoom --------------------------------------------------------

  function updateScaleBar() {
    const bar = $("scalebar");
    if (!state.opened || !state.slide.mpp) { bar.hidden = true; return; }
    const umPerScreenPx = state.slide.mpp[0] / screenScale();
    const length = niceLength(SCALEBAR_PX * umPerScreenPx);
    bar.querySelector(".bar").style.width = `${Math.round(length / umPerScreenPx)}px`;
    bar.querySelector(".label").textContent = formatLength(length);
    bar.hidden = false;
  }

  function updateZoomLabel() {
    if (!state.opened) return;
    const scale = screenScale();
    let text = `${fmt(scale * 100, scale < 0.1 ? 2 : 1)}% of full resolution`;
    if (state.slide.mpp) text += ` · ${fmt(state.slide.mpp[0] / scale, 2)} µm/screen px`;
    $("zoom").textContent = text;
  }

  function onMouseMove(event) {
    if (!state.opened) return;
    const rect = state.viewer.element.getBoundingClientRect();
    const p = level0FromPixel(event.clientX - rect.left, event.clientY - rect.top);
    let text = `${fmt(p.x, 0)}, ${fmt(p.y, 0)} px`;
    if (state.slide.mpp) {
      text += ` · ${fmt(p.x * state.slide.mpp[0], 1)}, ${fmt(p.y * state.slide.mpp[1], 1)} µm`;
    }
    $("cursor").textContent = text;
  }

  // ---- overlays --------------------------------------------------------------------------

  async function loadOverlays(slide, generation) {
    let overlays;
    try {
      overlays = await getJSON(`api/slides/${encodeURIComponent(slide.id)}/overlays`);
    } catch (error) {
      if (generation !== state.generation) return;
      $("overlays").replaceChildren(el("p", { class: "error" }, `Overlays: ${error.message}`));
      state.overlaysReady = true;
      return;
    }
    if (generation !== state.generation) return;
    // one heatmap at a time by default (a CNN's and a MIL model's hide each other)
    const firstHeatmap = overlays.find((spec) => spec.kind === "heatmap" && !spec.error);
    state.overlays = overlays.map((spec) => ({
      spec, kind: spec.kind,
      visible: DEFAULT_ON[spec.kind] !== false && (spec.kind !== "heatmap" || spec === firstHeatmap),
      opacity: DEFAULT_OPACITY[spec.kind] === undefined ? 1 : DEFAULT_OPACITY[spec.kind],
      item: null, features: null, error: null, threshold: null,
    }));
    renderOverlayPanel();
    await Promise.all(state.overlays.map((overlay) => loadOverlay(overlay, generation)));
    if (generation !== state.generation) return;
    state.overlaysReady = true;
    drawVectors();
  }

  async function loadOverlay(overlay, generation) {
    if (overlay.spec.error) {
      overlay.error = overlay.spec.error;
      renderOverlay(overlay);
      return;
    }
    try {
      if (overlay.kind === "heatmap" || overlay.kind === "mask") {
        if (overlay.kind === "heatmap" && overlay.spec.legend_url) await loadLegend(overlay);
        await placeImage(overlay, withToken(overlay.spec.url), generation);
      } else {
        const geojson = await getJSON(overlay.spec.url);
        overlay.features = parseFeatures(geojson, overlay);
      }
    } catch (error) {
      overlay.error = error.message || String(error);
    }
    if (generation === state.generation) renderOverlay(overlay);
  }

  // An RGBA image placed over its level-0 bounds as a second tiled image in the world.
  function placeImage(overlay, url, generation) {
    const [x, y, width] = overlay.spec.bounds;
    const slideWidth = state.slide.width;
    return new Promise((resolve, reject) => {
      state.viewer.addTiledImage({
        tileSource: { type: "image", url, buildPyramid: false },
        x: x / slideWidth, y: y / slideWidth, width: width / slideWidth,
        opacity: overlay.visible ? overlay.opacity : 0,
        success: (event) => {
          if (generation !== state.generation) {
            state.viewer.world.removeItem(event.item);
            resolve();
            return;
          }
          const previous = overlay.item;
          overlay.item = event.item;
          if (previous) state.viewer.world.removeItem(previous);
          resolve();
        },
        error: (event) => reject(new Error(`could not load ${overlay.spec.name}: ${event.message}`)),
      });
    });
  }

  function setImageOpacity(overlay) {
    if (overlay.item) overlay.item.setOpacity(overlay.visible ? overlay.opacity : 0);
  }

  // The legend image is the colour map from vmin (left, or bottom when taller than wide) to
  // vmax. Sampling it gives the colour bar and a colour -> value table for the threshold.
  async function loadLegend(overlay) {
    const image = await loadImage(overlay.spec.legend_url);
    const canvas = el("canvas");
    canvas.width = image.naturalWidth;
    canvas.height = image.naturalHeight;
    const ctx = canvas.getContext("2d");
    ctx.drawImage(image, 0, 0);
    const vertical = canvas.height > canvas.width;
    const n = 256;
    const table = [];
    for (let i = 0; i < n; i += 1) {
      const t = i / (n - 1);
      const px = vertical ? Math.floor(canvas.width / 2) : Math.round(t * (canvas.width - 1));
      const py = vertical ? Math.round((1 - t) * (canvas.height - 1)) : Math.floor(canvas.height / 2);
      const [r, g, b] = ctx.getImageData(px, py, 1, 1).data;
      table.push([r, g, b]);
    }
    overlay.legend = table;
    overlay.threshold = overlay.spec.vmin;
  }

  function valueOfColour(overlay, r, g, b, cache) {
    const key = (r << 16) | (g << 8) | b;
    let value = cache.get(key);
    if (value !== undefined) return value;
    let best = 0;
    let bestDistance = Infinity;
    overlay.legend.forEach(([lr, lg, lb], i) => {
      const d = (lr - r) ** 2 + (lg - g) ** 2 + (lb - b) ** 2;
      if (d < bestDistance) { bestDistance = d; best = i; }
    });
    const { vmin, vmax } = overlay.spec;
    value = vmin + (best / (overlay.legend.length - 1)) * (vmax - vmin);
    cache.set(key, value);
    return value;
  }

  // The heatmap with the cells below the threshold made transparent, done on a canvas.
  async function applyThreshold(overlay, generation) {
    if (!overlay.source) overlay.source = await loadImage(overlay.spec.url);
    const image = overlay.source;
    const canvas = el("canvas");
    canvas.width = image.naturalWidth;
    canvas.height = image.naturalHeight;
    const ctx = canvas.getContext("2d");
    ctx.drawImage(image, 0, 0);
    if (overlay.threshold > overlay.spec.vmin) {
      const data = ctx.getImageData(0, 0, canvas.width, canvas.height);
      const px = data.data;
      const cache = new Map();
      for (let i = 0; i < px.length; i += 4) {
        if (px[i + 3] && valueOfColour(overlay, px[i], px[i + 1], px[i + 2], cache) < overlay.threshold) {
          px[i + 3] = 0;
        }
      }
      ctx.putImageData(data, 0, 0);
    }
    await placeImage(overlay, canvas.toDataURL("image/png"), generation);
  }

  // ---- vector overlays (annotations, patch points, FROC outcomes) ------------------------

  function className(props, overlay) {
    const classification = props.classification;
    let name = typeof classification === "string" ? classification
      : classification && typeof classification === "object" ? classification.name : null;
    // exaslide's own label of a file's group (ASAP's "_0" is CAMELYON's tumour)
    const label = props.exaslide_label;
    if (name && label && String(label).toLowerCase() !== String(name).toLowerCase()) name = `${label} (${name})`;
    if (name) return name;
    if (overlay.colourBy === "prediction" && props.prediction !== undefined) return String(props.prediction);
    for (const key of ["label", "outcome", "class", "name"]) {
      if (props[key] !== undefined && props[key] !== null) return String(props[key]);
    }
    return overlay.spec.name;
  }

  function colourOf(value) {
    if (Array.isArray(value) && value.length >= 3) return `rgb(${value[0]},${value[1]},${value[2]})`;
    if (typeof value === "string" && value) return value;
    if (typeof value === "number") {  // QuPath's packed RGB integer
      const rgb = value & 0xffffff;
      return `rgb(${(rgb >> 16) & 255},${(rgb >> 8) & 255},${rgb & 255})`;
    }
    return null;
  }

  function paletteColour(name) {
    const key = String(name).toLowerCase();
    if (CLASS_COLOURS[key]) return CLASS_COLOURS[key];
    let hash = 0;
    for (const ch of key) hash = (hash * 31 + ch.charCodeAt(0)) >>> 0;
    return PALETTE[hash % PALETTE.length];
  }

  function featureColour(props, overlay, name) {
    if (overlay.colourBy === "prediction") {
      const p = props.prediction;
      if (typeof p === "number") {  // a probability: blue (0) to red (1)
        const t = Math.max(0, Math.min(1, p));
        return `rgb(${Math.round(255 * t)},${Math.round(64 * (1 - Math.abs(2 * t - 1)))},${Math.round(255 * (1 - t))})`;
      }
      return paletteColour(name);
    }
    const classification = props.classification;
    return colourOf(props.color) || colourOf(props.colour)
      || (classification && colourOf(classification.color)) || paletteColour(name);
  }

  function parseFeatures(geojson, overlay) {
    let features = [];
    if (Array.isArray(geojson)) features = geojson;
    else if (geojson && geojson.type === "FeatureCollection") features = geojson.features || [];
    else if (geojson && geojson.type === "Feature") features = [geojson];
    overlay.hasPrediction = features.some((f) => f.properties && f.properties.prediction !== undefined);
    overlay.raw = features;
    return buildShapes(overlay);
  }

  function buildShapes(overlay) {
    const shapes = [];
    const classes = new Map();
    for (const feature of overlay.raw) {
      const geometry = feature.geometry;
      if (!geometry) continue;
      const props = feature.properties || {};
      const name = className(props, overlay);
      const colour = featureColour(props, overlay, name);
      if (!classes.has(name)) classes.set(name, { colour, count: 0 });
      classes.get(name).count += 1;
      const polygons = geometry.type === "Polygon" ? [geometry.coordinates]
        : geometry.type === "MultiPolygon" ? geometry.coordinates : [];
      for (const rings of polygons) shapes.push({ type: "polygon", rings, colour });
      const lines = geometry.type === "LineString" ? [geometry.coordinates]
        : geometry.type === "MultiLineString" ? geometry.coordinates : [];
      for (const line of lines) shapes.push({ type: "line", line, colour });
      const points = geometry.type === "Point" ? [geometry.coordinates]
        : geometry.type === "MultiPoint" ? geometry.coordinates : [];
      for (const point of points) shapes.push({ type: "point", point, colour });
    }
    overlay.classes = classes;
    return shapes;
  }

  function drawVectors() {
    const canvas = state.vectors;
    if (!canvas) return;
    const ratio = window.devicePixelRatio || 1;
    const width = state.viewer.container.clientWidth;
    const height = state.viewer.container.clientHeight;
    if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
      canvas.style.width = `${width}px`;
      canvas.style.height = `${height}px`;
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    if (!state.opened) return;
    const scale = screenScale();
    const origin = state.viewer.viewport.pixelFromPoint(new OpenSeadragon.Point(0, 0), true);
    ctx.setTransform(scale * ratio, 0, 0, scale * ratio, origin.x * ratio, origin.y * ratio);
    ctx.lineJoin = "round";
    for (const overlay of state.overlays) {
      if (!overlay.features || !overlay.visible || overlay.opacity <= 0) continue;
      ctx.globalAlpha = overlay.opacity;
      drawShapes(ctx, overlay.features, scale);
    }
    ctx.globalAlpha = 1;
    const boxes = [];
    if (state.selection) boxes.push([state.selection, "#ffeb3b"]);
    if (state.highlight && state.highlight.slide === state.slide.id) boxes.push([state.highlight, "#00e5ff"]);
    for (const [box, colour] of boxes) {
      ctx.setLineDash([6 / scale, 4 / scale]);
      ctx.lineWidth = 2 / scale;
      ctx.strokeStyle = colour;
      ctx.strokeRect(box.x, box.y, box.w, box.h);
      ctx.setLineDash([]);
    }
  }

  function drawShapes(ctx, shapes, scale) {
    ctx.lineWidth = 2 / scale;
    const radius = POINT_RADIUS / scale;
    const points = new Map();  // colour -> points: one path each, drawn in one fill
    for (const shape of shapes) {
      if (shape.type === "point") {
        if (!points.has(shape.colour)) points.set(shape.colour, []);
        points.get(shape.colour).push(shape.point);
        continue;
      }
      ctx.strokeStyle = shape.colour;
      ctx.fillStyle = shape.colour;
      ctx.beginPath();
      if (shape.type === "polygon") {
        for (const ring of shape.rings) {
          ring.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
          ctx.closePath();
        }
        const alpha = ctx.globalAlpha;
        ctx.globalAlpha = alpha * 0.2;
        ctx.fill("evenodd");   // interior rings (CAMELYON exclusions) stay holes
        ctx.globalAlpha = alpha;
        ctx.stroke();
      } else {
        shape.line.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
        ctx.stroke();
      }
    }
    const view = visibleBox(radius);
    for (const [colour, list] of points) {
      ctx.fillStyle = colour;
      ctx.beginPath();
      for (const [x, y] of list) {
        if (x < view.x0 || x > view.x1 || y < view.y0 || y > view.y1) continue;
        ctx.moveTo(x + radius, y);
        ctx.arc(x, y, radius, 0, 2 * Math.PI);
      }
      ctx.fill();
    }
  }

  function visibleBox(margin) {  // the level-0 box on screen, widened by margin
    const size = state.viewer.viewport.getContainerSize();
    const a = level0FromPixel(0, 0);
    const b = level0FromPixel(size.x, size.y);
    return { x0: a.x - margin, y0: a.y - margin, x1: b.x + margin, y1: b.y + margin };
  }

  // ---- the overlay panel -------------------------------------------------------------------

  function renderOverlayPanel() {
    const panel = $("overlays");
    panel.replaceChildren();
    if (!state.overlays.length) panel.append(el("p", { class: "muted" }, "no overlays for this slide"));
    for (const overlay of state.overlays) {
      overlay.node = el("div", { class: `overlay ${overlay.kind}`, "data-id": overlay.spec.id });
      panel.append(overlay.node);
      renderOverlay(overlay);
    }
  }

  function renderOverlay(overlay) {
    const node = overlay.node;
    if (!node) return;
    const generation = state.generation;
    const toggle = el("input", { type: "checkbox", class: "toggle", checked: overlay.visible,
      "aria-label": `show ${overlay.spec.name}` });
    toggle.checked = overlay.visible;
    toggle.addEventListener("change", () => {
      overlay.visible = toggle.checked;
      setImageOpacity(overlay);
      drawVectors();
    });
    const opacity = el("input", { type: "range", class: "opacity", min: 0, max: 1, step: 0.05,
      value: overlay.opacity, "aria-label": `opacity of ${overlay.spec.name}` });
    opacity.addEventListener("input", () => {
      overlay.opacity = parseFloat(opacity.value);
      setImageOpacity(overlay);
      drawVectors();
    });
    const children = [
      el("label", { class: "title" }, toggle, " ", el("span", { class: "name" }, overlay.spec.name),
        " ", el("span", { class: "kind" }, overlay.kind)),
      el("label", { class: "slider" }, "opacity ", opacity),
    ];
    if (overlay.error) children.push(el("p", { class: "error" }, overlay.error));
    if (overlay.kind === "heatmap" && !overlay.error) children.push(...heatmapControls(overlay, generation));
    if (overlay.features) children.push(...vectorLegend(overlay));
    node.replaceChildren(...children);
  }

  function heatmapControls(overlay, generation) {
    const { vmin, vmax, colormap } = overlay.spec;
    const nodes = [];
    if (overlay.legend) {
      const bar = el("canvas", { class: "colorbar", width: overlay.legend.length, height: 1 });
      const ctx = bar.getContext("2d");
      overlay.legend.forEach(([r, g, b], i) => {
        ctx.fillStyle = `rgb(${r},${g},${b})`;
        ctx.fillRect(i, 0, 1, 1);
      });
      nodes.push(bar);
    } else if (overlay.spec.legend_url) {
      nodes.push(el("img", { class: "colorbar", src: withToken(overlay.spec.legend_url), alt: "colour bar" }));
    }
    nodes.push(el("div", { class: "ticks" }, el("span", {}, fmt(vmin, 2)),
      el("span", {}, colormap || ""), el("span", {}, fmt(vmax, 2))));
    if (overlay.legend) {
      const value = el("span", { class: "value" }, fmt(overlay.threshold, 2));
      const threshold = el("input", { type: "range", class: "threshold", min: vmin, max: vmax,
        step: (vmax - vmin) / 100, value: overlay.threshold, "aria-label": `threshold of ${overlay.spec.name}` });
      let timer = null;
      threshold.addEventListener("input", () => {
        overlay.threshold = parseFloat(threshold.value);
        value.textContent = fmt(overlay.threshold, 2);
        clearTimeout(timer);
        timer = setTimeout(() => {
          overlay.thresholdApplied = false;
          applyThreshold(overlay, generation)
            .then(() => { overlay.thresholdApplied = true; })
            .catch((error) => showBanner(`Threshold: ${error.message}`));
        }, 150);
      });
      nodes.push(el("label", { class: "slider" }, "threshold ", threshold, " ", value));
    }
    return nodes;
  }

  function vectorLegend(overlay) {
    const nodes = [];
    if (overlay.hasPrediction) {
      const select = el("select", { class: "colour-by", "aria-label": "colour points by" },
        el("option", { value: "label" }, "colour by label"),
        el("option", { value: "prediction" }, "colour by prediction"));
      select.value = overlay.colourBy || "label";
      select.addEventListener("change", () => {
        overlay.colourBy = select.value;
        overlay.features = buildShapes(overlay);
        renderOverlay(overlay);
        drawVectors();
      });
      nodes.push(select);
    }
    const list = el("ul", { class: "classes" });
    let shown = 0;
    for (const [name, { colour, count }] of overlay.classes) {
      if (shown++ >= 12) { list.append(el("li", { class: "muted" }, "…")); break; }
      const swatch = el("span", { class: "swatch" });
      swatch.style.background = colour;
      list.append(el("li", {}, swatch, ` ${name} `, el("span", { class: "muted" }, `(${count})`)));
    }
    nodes.push(list);
    return nodes;
  }

  // ---- retrieval: click or shift-drag a box ------------------------------------------------

  function onClick(event) {
    if (!event.quick || !state.opened || state.justDragged) return;
    const p = level0FromPixel(event.position.x, event.position.y);
    search({ x: p.x - SEARCH_BOX / 2, y: p.y - SEARCH_BOX / 2, w: SEARCH_BOX, h: SEARCH_BOX });
  }

  function onPress(event) {
    state.justDragged = false;
    if (!state.opened || !event.originalEvent || !event.originalEvent.shiftKey) return;
    state.drag = level0FromPixel(event.position.x, event.position.y);
  }

  function onDrag(event) {
    if (!state.drag) return;
    event.preventDefaultAction = true;   // no panning while a box is drawn
    const p = level0FromPixel(event.position.x, event.position.y);
    state.selection = boxOf(state.drag, p);
    drawVectors();
  }

  function onRelease(event) {
    if (!state.drag) return;
    const p = level0FromPixel(event.position.x, event.position.y);
    const box = boxOf(state.drag, p);
    state.drag = null;
    state.justDragged = true;
    if (box.w * screenScale() >= 4 && box.h * screenScale() >= 4) search(box);
  }

  function boxOf(a, b) {
    return { x: Math.min(a.x, b.x), y: Math.min(a.y, b.y), w: Math.abs(a.x - b.x), h: Math.abs(a.y - b.y) };
  }

  async function search(box) {
    const slide = state.slide;
    const x = Math.max(0, Math.round(box.x));
    const y = Math.max(0, Math.round(box.y));
    const w = Math.max(1, Math.round(box.w + box.x - x));
    const h = Math.max(1, Math.round(box.h + box.y - y));
    state.selection = { x, y, w, h };
    drawVectors();
    const run = { box: state.selection, status: "running", results: [] };
    state.search = run;
    $("results").hidden = false;
    $("results-status").textContent = `Searching around ${fmt(x, 0)}, ${fmt(y, 0)} px…`;
    $("results-list").replaceChildren();
    const url = `api/slides/${encodeURIComponent(slide.id)}/search?x=${x}&y=${y}&w=${w}&h=${h}&k=${SEARCH_K}`;
    let body;
    try {
      body = await getJSON(url);
    } catch (error) {
      if (state.search !== run) return;
      run.status = error.status === 404 ? "no-index" : "error";
      $("results-status").textContent = error.status === 404
        ? `No retrieval index for this slide (${error.message}).`
        : `Search failed: ${error.message}`;
      return;
    }
    if (state.search !== run) return;
    run.results = body.results || [];
    run.status = "done";
    $("results-status").textContent = run.results.length
      ? `${run.results.length} most similar regions to the ${w} × ${h} px box`
      : "No similar regions found.";
    $("results-list").replaceChildren(...run.results.map(resultItem));
  }

  function resultItem(result) {
    // slide: the id of the hit's slide in this viewer (null when not served); slide_id: its
    // id in the index
    const target = result.slide || result.slide_id;
    const known = state.slides.some((s) => s.id === target && !s.error);
    const caption = [result.slide_id || result.slide, result.label, `score ${fmt(result.score, 3)}`]
      .filter((part) => part !== undefined && part !== null && part !== "").join(" · ");
    return el("li", { class: "result", "data-slide": target },
      el("button", { type: "button", disabled: !known, title: known ? "open this region" : "slide not served here",
        onclick: () => openResult(result) },
        result.thumbnail ? el("img", { src: withToken(result.thumbnail), alt: "", loading: "lazy" }) : null,
        el("span", { class: "caption" }, caption),
        el("span", { class: "detail" }, `${fmt(result.x, 0)}, ${fmt(result.y, 0)} px`)));
  }

  function openResult(result) {
    const size = result.size || SEARCH_BOX;
    const target = result.slide || result.slide_id;
    const containerWidth = state.viewer.viewport.getContainerSize().x;
    const view = { slide: target, x: result.x + size / 2, y: result.y + size / 2,
      zoom: containerWidth / (4 * size) };
    state.highlight = { slide: target, x: result.x, y: result.y, w: size, h: size };
    if (state.slide && state.slide.id === target && state.opened) {
      state.selection = null;
      applyView(view, false);
      drawVectors();
    } else {
      openSlide(target, view);
    }
  }

  main();
})();
