// geofm view: the page. Layers come from /layers.json, tiles from /tiles, pixel values from /point.
// Nothing is requested outside this server unless the server was given a basemap URL.
"use strict";

(async function main() {
  const origin = window.location.origin;
  const [layers, config] = await Promise.all([
    fetch("/layers.json").then((r) => r.json()),
    fetch("/config.json").then((r) => r.json()),
  ]);
  const RGB_KINDS = ["reflectance", "imputed"];
  // Per-layer drawing state: visibility, opacity, frame, bands (query values).
  const state = {};
  for (const l of layers) {
    state[l.id] = {
      visible: true,
      opacity: 1,
      t: 0,
      bands: RGB_KINDS.includes(l.kind) && l.bands.length >= 3 ? "true" : "1",
    };
  }
  const swipe = { on: false, left: null, right: null, x: 0.5 };

  function tileUrl(l) {
    const s = state[l.id];
    const q = new URLSearchParams({ t: String(s.t), bands: s.bands });
    return `${origin}/tiles/${encodeURIComponent(l.id)}/{z}/{x}/{y}.png?${q}`;
  }

  function baseStyle() {
    const style = {
      version: 8,
      sources: {},
      layers: [{ id: "background", type: "background", paint: { "background-color": "#e8e8e8" } }],
    };
    if (config.basemap) {
      style.sources.basemap = { type: "raster", tiles: [config.basemap], tileSize: 256 };
      style.layers.push({ id: "basemap", type: "raster", source: "basemap" });
    }
    return style;
  }

  function union(ls) {
    const b = [180, 90, -180, -90];
    for (const l of ls) {
      b[0] = Math.min(b[0], l.bounds[0]);
      b[1] = Math.min(b[1], l.bounds[1]);
      b[2] = Math.max(b[2], l.bounds[2]);
      b[3] = Math.max(b[3], l.bounds[3]);
    }
    return [[b[0], b[1]], [b[2], b[3]]];
  }

  function addLayer(m, l) {
    m.addSource(l.id, {
      type: "raster", tiles: [tileUrl(l)], tileSize: 256, bounds: l.bounds, minzoom: 0, maxzoom: l.maxzoom,
    });
    m.addLayer({
      id: l.id, type: "raster", source: l.id,
      paint: {
        "raster-opacity": state[l.id].opacity,
        "raster-resampling": ["classes", "fmask"].includes(l.kind) ? "nearest" : "linear",
        "raster-fade-duration": 0,
      },
    });
  }

  // Start on the top layer (layers far apart would otherwise be drawn too small to see).
  const top = layers[layers.length - 1];
  const map = new maplibregl.Map({
    container: "map", style: baseStyle(), bounds: union([top]), fitBoundsOptions: { padding: 20 },
    maxZoom: 24, attributionControl: config.basemap ? {} : false, fadeDuration: 0,
  });
  map.addControl(new maplibregl.NavigationControl({ showCompass: false }), "top-left");
  map.addControl(new maplibregl.ScaleControl(), "bottom-left");
  let mapB = null;
  let ready = false;
  window.__geofmIdle = false;
  window.__geofmMap = map;

  function applyVisibility() {
    for (const l of layers) {
      let show = state[l.id].visible;
      if (swipe.on) show = l.id === swipe.left;
      map.setLayoutProperty(l.id, "visibility", show ? "visible" : "none");
      map.setPaintProperty(l.id, "raster-opacity", state[l.id].opacity);
    }
    if (mapB && mapB.getLayer(swipe.right)) {
      mapB.setPaintProperty(swipe.right, "raster-opacity", state[swipe.right].opacity);
    }
  }

  function refreshTiles(l) {
    map.getSource(l.id).setTiles([tileUrl(l)]);
    if (mapB && mapB.getSource(l.id)) mapB.getSource(l.id).setTiles([tileUrl(l)]);
  }

  // ----------------------------------------------------------------- the layer list
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "text") e.textContent = v;
      else e.setAttribute(k, v);
    }
    for (const c of children) if (c) e.append(c);
    return e;
  }

  function legendOf(l) {
    if (!l.legend.length) return null;
    if (["classes", "fmask"].includes(l.kind)) {
      return el("ul", { class: "legend" }, ...l.legend.map((item) => {
        const sw = el("span", { class: "swatch" });
        sw.style.background = item.color;
        return el("li", {}, sw, el("span", { text: `${item.value} ${item.name}` }));
      }));
    }
    const ramp = el("div", { class: "ramp" });
    ramp.style.background = `linear-gradient(to right, ${l.legend.map((i) => i.color).join(", ")})`;
    const first = l.legend[0].name;
    const last = l.legend[l.legend.length - 1].name;
    return el("div", {}, ramp, el("span", { text: `${first} … ${last}` }));
  }

  function select(options, value, onChange) {
    const s = el("select");
    for (const [v, label] of options) s.append(el("option", { value: v, text: label }));
    s.value = value;
    s.addEventListener("change", () => onChange(s.value));
    return s;
  }

  const list = document.getElementById("layers");
  for (const l of [...layers].reverse()) {
    const s = state[l.id];
    const vis = el("input", { type: "checkbox" });
    vis.checked = true;
    vis.addEventListener("change", () => { s.visible = vis.checked; applyVisibility(); });
    const op = el("input", { type: "range", min: "0", max: "1", step: "0.05", value: "1" });
    op.addEventListener("input", () => { s.opacity = Number(op.value); applyVisibility(); });
    const item = el("div", { class: "layer", "data-id": l.id },
      el("label", {}, vis, " ", el("span", { class: "name", text: l.name }),
        el("span", { class: "kind", text: ` ${l.kind}` })),
      el("label", {}, "opacity ", op));
    const zoom = el("button", { type: "button", text: "zoom to" });
    zoom.addEventListener("click", () => map.fitBounds(union([l]), { padding: 20 }));
    item.querySelector("label").append(" ", zoom);
    if (l.dates.length > 1) {
      const opts = l.dates.map((d, i) => [String(i), d || `frame ${i + 1}`]);
      item.append(el("label", {}, "date ", select(opts, "0", (v) => { s.t = Number(v); refreshTiles(l); })));
    }
    if (RGB_KINDS.includes(l.kind) && l.bands.length >= 4) {
      const opts = [["true", "true colour (Red, Green, Blue)"], ["false", "false colour (NIR, Red, Green)"]];
      item.append(el("label", {}, select(opts, s.bands, (v) => { s.bands = v; refreshTiles(l); })));
    } else if (["probabilities", "raw"].includes(l.kind) && l.bands.length > 1) {
      const opts = l.bands.map((b, i) => [String(i + 1), b]);
      item.append(el("label", {}, "band ", select(opts, "1", (v) => { s.bands = v; refreshTiles(l); })));
    }
    const leg = legendOf(l);
    if (leg) item.append(leg);
    list.append(item);
  }

  // ----------------------------------------------------------------- swipe / compare
  const left = document.getElementById("swipe-left");
  const right = document.getElementById("swipe-right");
  for (const sel of [left, right]) {
    for (const l of [...layers].reverse()) sel.append(el("option", { value: l.id, text: l.name }));
  }
  if (layers.length > 1) right.value = layers[layers.length - 2].id;
  const divider = document.getElementById("divider");
  const boxB = document.getElementById("map-b");

  function placeDivider() {
    const w = map.getContainer().clientWidth;
    const px = Math.round(swipe.x * w);
    divider.style.left = `${px}px`;
    boxB.style.clipPath = `inset(0 0 0 ${px}px)`;
  }

  function startSwipe() {
    swipe.left = left.value;
    swipe.right = right.value;
    if (mapB) mapB.remove();
    boxB.hidden = false;
    divider.hidden = false;
    mapB = new maplibregl.Map({
      container: "map-b", style: baseStyle(), center: map.getCenter(), zoom: map.getZoom(),
      interactive: false, attributionControl: false, fadeDuration: 0,
    });
    window.__geofmSwipeIdle = false;
    mapB.on("idle", () => { if (mapB.getLayer(swipe.right)) window.__geofmSwipeIdle = true; });
    mapB.on("load", () => {
      addLayer(mapB, layers.find((l) => l.id === swipe.right));
      applyVisibility();
    });
    placeDivider();
    applyVisibility();
  }

  function stopSwipe() {
    if (mapB) mapB.remove();
    mapB = null;
    boxB.hidden = true;
    divider.hidden = true;
    applyVisibility();
  }

  const swipeOn = document.getElementById("swipe-on");
  swipeOn.addEventListener("change", () => {
    swipe.on = swipeOn.checked;
    if (swipe.on) startSwipe(); else stopSwipe();
  });
  for (const sel of [left, right]) sel.addEventListener("change", () => { if (swipe.on) startSwipe(); });
  map.on("move", () => { if (mapB) mapB.jumpTo({ center: map.getCenter(), zoom: map.getZoom() }); });
  map.on("resize", () => { if (mapB) { mapB.resize(); placeDivider(); } });
  divider.addEventListener("pointerdown", (ev) => {
    divider.setPointerCapture(ev.pointerId);
    const move = (e) => {
      const r = map.getContainer().getBoundingClientRect();
      swipe.x = Math.min(1, Math.max(0, (e.clientX - r.left) / r.width));
      placeDivider();
    };
    divider.addEventListener("pointermove", move);
    divider.addEventListener("pointerup", () => divider.removeEventListener("pointermove", move), { once: true });
  });

  // ----------------------------------------------------------------- pixel values
  function fmt(v) {
    if (v === null || v === undefined) return "nodata";
    return Number.isInteger(v) ? String(v) : Number(v).toFixed(4);
  }

  map.on("click", async (e) => {
    const { lng, lat } = e.lngLat;
    const r = await fetch(`/point/${lng.toFixed(7)},${lat.toFixed(7)}`);
    const data = await r.json();
    const table = el("table");
    for (const l of [...layers].reverse()) {
      const v = data[l.id];
      if (!v) continue;
      const frame = v.values[Math.min(state[l.id].t, v.values.length - 1)];
      const title = frame.date ? `${l.name} — ${frame.date}` : l.name;
      table.append(el("tr", {}, el("th", { colspan: "2", text: title })));
      if (frame.class !== undefined) {
        const raw = Object.values(frame.bands)[0];
        table.append(el("tr", {}, el("td", { text: "class" }),
          el("td", { text: frame.class === null ? "nodata" : `${frame.class} (${fmt(raw)})` })));
        continue;
      }
      for (const [name, val] of Object.entries(frame.bands)) {
        table.append(el("tr", {}, el("td", { text: name }), el("td", { text: fmt(val) })));
      }
    }
    const box = el("div", { class: "popup" },
      el("div", { text: `${lat.toFixed(5)}, ${lng.toFixed(5)}` }), table);
    new maplibregl.Popup({ maxWidth: "320px" }).setLngLat(e.lngLat).setDOMContent(box).addTo(map);
  });

  // ----------------------------------------------------------------- start
  map.on("load", () => {
    for (const l of layers) addLayer(map, l);
    ready = true;
  });
  map.on("dataloading", () => { window.__geofmIdle = false; });
  map.on("idle", () => { if (ready) window.__geofmIdle = true; });
})().catch((err) => {
  console.error(err);
});
