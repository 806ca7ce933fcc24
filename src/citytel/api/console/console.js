// The operations console: the public API drawn on a map, kept live by /v1/events.
import * as maplibregl from "/console/vendor/maplibre-gl/maplibre-gl.mjs";
import { apiKey, follow, getAll, getJSON, postJSON, setApiKey } from "/console/api.js";

// Fill steps, viridis (readable with every common colour-vision deficiency); grey: no reading.
export const FILL_STEPS = [
  [0, "#440154", "0–25 %"],
  [25, "#3b528b", "25–50 %"],
  [50, "#21918c", "50–75 %"],
  [75, "#5ec962", "75–90 %"],
  [90, "#fde725", "90 % and over"],
];
const NO_FILL = "#9e9e9e";
// Okabe–Ito colours for the spots.
const SPOT_COLOURS = { free: "#0072b2", occupied: "#d55e00", unknown: "#9e9e9e" };
const ATTENTION = "#cc79a7";
const HOUR_MS = 3600 * 1000;

const $ = (id) => document.getElementById(id);
const state = {
  containers: new Map(),
  spots: new Map(),
  attention: [],
  zones: [],
  round: null,
  spotHistory: new Map(),
  asOf: null,
  lastEventAt: null,
  stream: "connecting",
};
window.citytelConsole = state;

function showError(error) {
  const box = $("error");
  box.textContent = error.message || String(error);
  box.hidden = false;
  setTimeout(() => { box.hidden = true; }, 8000);
}

const time = (iso) => (iso ? new Date(iso).toLocaleString() : "—");
const pct = (value) => (value === null || value === undefined ? "—" : `${value.toFixed(1)} %`);

function fillColour(fill) {
  if (fill === null || fill === undefined) return NO_FILL;
  let colour = FILL_STEPS[0][1];
  for (const [from, step] of FILL_STEPS) if (fill >= from) colour = step;
  return colour;
}

function horizonH() {
  return Number($("horizon").value) || 0;
}

// ---- map data ---------------------------------------------------------------------------------

function point(lon, lat, properties) {
  return { type: "Feature", geometry: { type: "Point", coordinates: [lon, lat] }, properties };
}

function containerFeatures() {
  const limit = Date.now() + horizonH() * HOUR_MS;
  return [...state.containers.values()].map((c) => point(c.location.lon, c.location.lat, {
    id: c.id,
    zone: c.zone,
    fill_pct: c.fill_pct ?? -1,
    full_soon: c.predicted_full_at !== null && Date.parse(c.predicted_full_at) <= limit,
  }));
}

function spotFeatures() {
  return [...state.spots.values()].map((s) => point(s.location.lon, s.location.lat, { id: s.id, status: s.status }));
}

function zoneFeatures() {
  // A zone is where its devices are: drawn at their centre.
  const sums = new Map();
  for (const device of [...state.containers.values(), ...state.spots.values()]) {
    const sum = sums.get(device.zone) || { lon: 0, lat: 0, n: 0 };
    sum.lon += device.location.lon;
    sum.lat += device.location.lat;
    sum.n += 1;
    sums.set(device.zone, sum);
  }
  return [...sums].map(([zone, s]) => point(s.lon / s.n, s.lat / s.n, { zone, devices: s.n }));
}

function attentionFeatures() {
  return state.attention.map((d) => point(d.location.lon, d.location.lat, { id: d.id, kind: d.device_kind }));
}

const collection = (features) => ({ type: "FeatureCollection", features });

// With no basemap setting: a plain background, nothing fetched (no glyphs, no sprites, no tiles).
const PLAIN_STYLE = {
  version: 8,
  sources: {},
  layers: [{ id: "background", type: "background", paint: { "background-color": "#f2efe9" } }],
};
let map = null;

let redrawPending = false;
function redraw() {
  if (redrawPending) return;
  redrawPending = true;
  requestAnimationFrame(() => {
    redrawPending = false;
    if (!map.getSource("containers")) return;
    map.getSource("containers").setData(collection(containerFeatures()));
    map.getSource("spots").setData(collection(spotFeatures()));
    map.getSource("zones").setData(collection(zoneFeatures()));
    map.getSource("attention").setData(collection(attentionFeatures()));
    renderContainerList();
  });
}

function addLayers() {
  const empty = collection([]);
  for (const name of ["zones", "spots", "containers", "attention", "round"]) {
    map.addSource(name, { type: "geojson", data: empty });
  }
  map.addLayer({
    id: "zones", type: "circle", source: "zones",
    paint: { "circle-radius": 48, "circle-color": "#20232a", "circle-opacity": 0.06, "circle-stroke-width": 1, "circle-stroke-color": "#888" },
  });
  map.addLayer({ id: "round", type: "line", source: "round", paint: { "line-color": "#000", "line-width": 3, "line-dasharray": [2, 1] } });
  map.addLayer({
    id: "spots", type: "circle", source: "spots",
    paint: {
      "circle-radius": 4,
      "circle-color": ["match", ["get", "status"], "free", SPOT_COLOURS.free, "occupied", SPOT_COLOURS.occupied, SPOT_COLOURS.unknown],
    },
  });
  const steps = ["step", ["get", "fill_pct"], NO_FILL];
  for (const [from, colour] of FILL_STEPS) steps.push(from, colour);
  map.addLayer({
    id: "containers", type: "circle", source: "containers",
    paint: {
      "circle-radius": 7,
      "circle-color": steps,
      "circle-stroke-color": ["case", ["get", "full_soon"], "#000", "#fff"],
      "circle-stroke-width": ["case", ["get", "full_soon"], 3, 1],
    },
  });
  map.addLayer({
    id: "attention", type: "circle", source: "attention",
    paint: { "circle-radius": 11, "circle-opacity": 0, "circle-stroke-color": ATTENTION, "circle-stroke-width": 2.5 },
  });
  for (const layer of ["containers", "spots"]) {
    map.on("click", layer, (e) => openPanel(layer, e.features[0].properties.id));
    map.on("mouseenter", layer, () => { map.getCanvas().style.cursor = "pointer"; });
    map.on("mouseleave", layer, () => { map.getCanvas().style.cursor = ""; });
  }
}

// ---- lists (keyboard: arrows move, Enter or Space picks) ---------------------------------------

function fillList(list, entries) {
  list.replaceChildren();
  entries.forEach(({ label, swatch, pick, key }, i) => {
    const item = document.createElement("li");
    item.setAttribute("role", "option");
    item.tabIndex = i === 0 ? 0 : -1;
    item.dataset.key = key;
    if (swatch) {
      const dot = document.createElement("span");
      dot.className = "swatch";
      dot.style.background = swatch;
      dot.setAttribute("aria-hidden", "true");
      item.append(dot);
    }
    item.append(document.createTextNode(label));
    item.addEventListener("click", () => select(list, item, pick));
    item.addEventListener("keydown", (e) => {
      const items = [...list.children];
      const at = items.indexOf(item);
      const moves = { ArrowDown: at + 1, ArrowUp: at - 1, Home: 0, End: items.length - 1 };
      if (e.key in moves) {
        e.preventDefault();
        const next = items[Math.max(0, Math.min(items.length - 1, moves[e.key]))];
        item.tabIndex = -1;
        next.tabIndex = 0;
        next.focus();
      } else if (e.key === "Enter" || e.key === " ") {
        e.preventDefault();
        select(list, item, pick);
      }
    });
    list.append(item);
  });
}

function select(list, item, pick) {
  for (const other of list.children) other.setAttribute("aria-selected", String(other === item));
  pick();
}

function flyTo(location) {
  map.easeTo({ center: [location.lon, location.lat], zoom: Math.max(map.getZoom(), 15) });
}

function renderContainerList() {
  const fullest = [...state.containers.values()]
    .filter((c) => c.fill_pct !== null)
    .sort((a, b) => b.fill_pct - a.fill_pct || a.id.localeCompare(b.id))
    .slice(0, 50);
  const list = $("containers");
  const focused = document.activeElement?.parentElement === list ? document.activeElement.dataset.key : null;
  fillList(list, fullest.map((c) => ({
    key: c.id, label: `${c.id} · ${pct(c.fill_pct)} · ${c.zone}`, swatch: fillColour(c.fill_pct),
    pick: () => { flyTo(c.location); openPanel("containers", c.id); },
  })));
  if (focused) list.querySelector(`[data-key="${CSS.escape(focused)}"]`)?.focus();
}

function renderLegend() {
  const legend = $("legend");
  const entries = FILL_STEPS.map(([from, colour, label]) => [colour, `container ${label}`, from]);
  entries.push([NO_FILL, "container, no reading yet", ""]);
  entries.push([SPOT_COLOURS.free, "parking spot free", ""], [SPOT_COLOURS.occupied, "parking spot occupied", ""]);
  legend.replaceChildren(...entries.map(([colour, label, from]) => {
    const item = document.createElement("li");
    item.innerHTML = `<span class="swatch" style="background:${colour}"></span>`;
    item.dataset.colour = colour;
    item.dataset.from = from;
    item.append(label);
    return item;
  }));
  const ring = document.createElement("li");
  ring.innerHTML = `<span class="swatch ring"></span>predicted full within the horizon`;
  const attention = document.createElement("li");
  attention.innerHTML = `<span class="swatch ring" style="border-color:${ATTENTION}"></span>device needs attention`;
  legend.append(ring, attention);
}

// ---- panels -------------------------------------------------------------------------------------

function chart(readings) {
  // Fill over time, 0–100 %, as an inline SVG polyline.
  if (!readings.length) return "<p>No readings in the last 24 hours.</p>";
  const t0 = Date.parse(readings[0].ts);
  const span = Math.max(1, Date.parse(readings[readings.length - 1].ts) - t0);
  const points = readings
    .map((r) => `${((Date.parse(r.ts) - t0) / span * 300).toFixed(1)},${(100 - r.fill_pct).toFixed(1)}`)
    .join(" ");
  return `<svg class="chart" viewBox="-4 -4 308 108" preserveAspectRatio="none" role="img"
      aria-label="Fill level over the last 24 hours, ${readings.length} readings">
    <line x1="0" y1="0" x2="300" y2="0" stroke="#ccc"/><line x1="0" y1="100" x2="300" y2="100" stroke="#ccc"/>
    <polyline points="${points}" fill="none" stroke="#3b528b" stroke-width="1.5" vector-effect="non-scaling-stroke"/>
  </svg><p><small>${time(readings[0].ts)} – ${time(readings[readings.length - 1].ts)}, 0–100 %</small></p>`;
}

async function openPanel(layer, id) {
  const panel = $("panel");
  panel.hidden = false;
  try {
    if (layer === "containers") {
      const c = await getJSON(`/v1/containers/${encodeURIComponent(id)}`);
      const history = await getJSON(`/v1/containers/${encodeURIComponent(id)}/readings`);
      panel.innerHTML = `<h2>Container ${c.id}</h2><dl>
        <dt>Zone</dt><dd>${c.zone}</dd><dt>Fill</dt><dd>${pct(c.fill_pct)}</dd>
        <dt>Measured</dt><dd>${time(c.measured_at)}</dd>
        <dt>Fill rate</dt><dd>${c.fill_rate_pct_per_h === null ? "—" : `${c.fill_rate_pct_per_h} %/h`}</dd>
        <dt>Predicted full</dt><dd id="predicted-full">${time(c.predicted_full_at)}</dd>
        <dt>Battery</dt><dd>${pct(c.battery_pct)}</dd></dl>
        <h3>Fill, last 24 hours</h3>${chart(history.readings || [])}`;
      panel.dataset.readings = String((history.readings || []).length);
    } else {
      const s = await getJSON(`/v1/parking/spots/${encodeURIComponent(id)}`);
      const seen = state.spotHistory.get(id) || [];
      panel.innerHTML = `<h2>Parking spot ${s.id}</h2><dl>
        <dt>Zone</dt><dd>${s.zone}</dd><dt>Category</dt><dd>${s.category}</dd>
        <dt>Status</dt><dd>${s.status}</dd><dt>Since</dt><dd>${time(s.status_since)}</dd>
        <dt>Last seen</dt><dd>${time(s.last_seen)}</dd><dt>Battery</dt><dd>${pct(s.battery_pct)}</dd></dl>
        <h3>Recent occupancy (since this page opened)</h3>
        <ul>${seen.map((e) => `<li>${time(e.status_since)}: ${e.status}</li>`).join("") || "<li>no change yet</li>"}</ul>`;
    }
    panel.dataset.id = id;
  } catch (error) {
    showError(error);
  }
}

// ---- dispatch -------------------------------------------------------------------------------------

let stopMarkers = [];

async function planRound(event) {
  event.preventDefault();
  try {
    const round = await getJSON("/v1/collection/round", {
      zone: $("round-zone").value, within_h: $("round-horizon").value,
    });
    state.round = round;
    drawRound(round);
  } catch (error) {
    showError(error);
  }
}

function roundGeoJSON(round) {
  const line = round.stops.map((s) => [s.container.location.lon, s.container.location.lat]);
  if (round.start) line.unshift([round.start.lon, round.start.lat]);
  const features = round.stops.map((s) => point(s.container.location.lon, s.container.location.lat, {
    order: s.order, container: s.container.id, fill_pct: s.container.fill_pct, due_at: s.due_at, leg_m: s.leg_m,
  }));
  if (line.length > 1) {
    features.unshift({
      type: "Feature", geometry: { type: "LineString", coordinates: line },
      properties: { zone: round.zone, length_m: round.length_m, generated_at: round.generated_at },
    });
  }
  return collection(features);
}

function drawRound(round) {
  const geojson = roundGeoJSON(round);
  map.getSource("round").setData(collection(geojson.features.filter((f) => f.geometry.type === "LineString")));
  for (const marker of stopMarkers) marker.remove();
  stopMarkers = round.stops.map((s) => {
    const element = document.createElement("div");
    element.className = "stop-marker";
    element.textContent = String(s.order);
    element.title = `stop ${s.order}: ${s.container.id}`;
    return new maplibregl.Marker({ element }).setLngLat([s.container.location.lon, s.container.location.lat]).addTo(map);
  });
  $("round-summary").textContent = round.stops.length
    ? `${round.stops.length} stops, ${(round.length_m / 1000).toFixed(2)} km${round.left_out ? `, ${round.left_out} left out` : ""}`
    : "Nothing is due in this zone within that horizon.";
  fillList($("round-stops"), round.stops.map((s) => ({
    key: s.container.id,
    label: `${s.container.id} · ${pct(s.container.fill_pct)} · due ${time(s.due_at)}`,
    swatch: fillColour(s.container.fill_pct),
    pick: () => { flyTo(s.container.location); openPanel("containers", s.container.id); },
  })));
  $("round-export").disabled = round.stops.length === 0;
  if (round.stops.length) {
    const bounds = new maplibregl.LngLatBounds();
    for (const s of round.stops) bounds.extend([s.container.location.lon, s.container.location.lat]);
    map.fitBounds(bounds, { padding: 60, maxZoom: 16, duration: 0 });
  }
}

function exportRound() {
  if (!state.round) return;
  const blob = new Blob([JSON.stringify(roundGeoJSON(state.round), null, 2)], { type: "application/geo+json" });
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = `round-${state.round.zone || "all"}.geojson`;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 1000);
}

// ---- operator ---------------------------------------------------------------------------------------

async function loadDeadLetters() {
  try {
    const page = await getJSON("/v1/dead-letters", { limit: 200 });
    const byReason = new Map();
    for (const letter of page.items) byReason.set(letter.reason, (byReason.get(letter.reason) || 0) + 1);
    const reasons = $("dead-reasons");
    reasons.replaceChildren(...[...byReason].map(([reason, count]) => {
      const item = document.createElement("li");
      const replay = document.createElement("button");
      replay.textContent = `Replay all ${reason}`;
      replay.addEventListener("click", () => replayLetters({ reason }));
      item.append(`${reason}: ${count} `, replay);
      return item;
    }));
    if (!page.items.length) reasons.innerHTML = "<li>none</li>";
    fillList($("dead-letters"), page.items.map((letter) => ({
      key: String(letter.id),
      label: `#${letter.id} ${letter.reason}: ${letter.detail} (${letter.topic})`,
      pick: () => { if (window.confirm(`Replay dead letter #${letter.id}?`)) replayLetters({ ids: [letter.id] }); },
    })));
  } catch (error) {
    showError(error);
  }
}

async function replayLetters(body) {
  try {
    const result = await postJSON("/v1/dead-letters/replay", body);
    showError(new Error(`${result.replayed} replayed`));
    await loadDeadLetters();
  } catch (error) {
    showError(error);
  }
}

function renderAttention() {
  fillList($("attention"), state.attention.map((d) => ({
    key: `${d.device_kind}:${d.id}`,
    label: `${d.device_kind} ${d.id} (${d.zone}): ${d.problems.map((p) => p.detail).join("; ")}`,
    swatch: ATTENTION,
    pick: () => flyTo(d.location),
  })));
}

async function loadAttention() {
  try {
    state.attention = await getAll("/v1/devices/attention", {}, 1000);
    renderAttention();
    redraw();
  } catch (error) {
    showError(error);
  }
}

// ---- live -------------------------------------------------------------------------------------------

function renderFreshness() {
  const asOf = state.asOf ? new Date(state.asOf).toLocaleTimeString() : "—";
  const ago = state.lastEventAt ? `, last change ${Math.round((Date.now() - state.lastEventAt) / 1000)} s ago` : "";
  $("freshness").textContent = `Data as of ${asOf} · stream ${state.stream}${ago}`;
}

let attentionReload = null;
function onEvent(message) {
  if (message.event === "ready") {
    state.asOf = JSON.parse(message.data).as_of || new Date().toISOString();
  } else if (message.event === "reset") {
    loadAll();
  } else if (message.event === "container" || message.event === "spot") {
    const item = JSON.parse(message.data);
    (message.event === "container" ? state.containers : state.spots).set(item.id, item);
    if (message.event === "spot") {
      const seen = state.spotHistory.get(item.id) || [];
      seen.unshift({ status: item.status, status_since: item.status_since });
      state.spotHistory.set(item.id, seen.slice(0, 20));
    }
    state.asOf = new Date().toISOString();
    state.lastEventAt = Date.now();
    redraw();
  } else if (message.event === "device") {
    clearTimeout(attentionReload);
    attentionReload = setTimeout(loadAttention, 1000);
  }
  renderFreshness();
}

async function loadAll() {
  try {
    const [containers, spots, zones] = await Promise.all([
      getAll("/v1/containers", {}, 1000),
      getAll("/v1/parking/spots", {}, 5000),
      getJSON("/v1/zones"),
    ]);
    state.containers = new Map(containers.map((c) => [c.id, c]));
    state.spots = new Map(spots.map((s) => [s.id, s]));
    state.zones = zones;
    state.asOf = new Date().toISOString();
    renderZones();
    redraw();
    fitToData();
    document.body.dataset.loaded = "true";
  } catch (error) {
    showError(error);
  }
}

let fitted = false;
function fitToData() {
  if (fitted || !state.containers.size) return;
  fitted = true;
  const bounds = new maplibregl.LngLatBounds();
  for (const d of [...state.containers.values(), ...state.spots.values()]) bounds.extend([d.location.lon, d.location.lat]);
  map.fitBounds(bounds, { padding: 40, duration: 0 });
}

function renderZones() {
  fillList($("zones"), state.zones.map((z) => ({
    key: z.zone,
    label: `${z.zone} · ${z.containers} containers · ${z.spots} spots`,
    pick: () => showZone(z.zone),
  })));
  const select = $("round-zone");
  select.replaceChildren(new Option("all zones", ""), ...state.zones.map((z) => new Option(z.zone, z.zone)));
}

async function showZone(zone) {
  const panel = $("panel");
  panel.hidden = false;
  try {
    const z = await getJSON(`/v1/zones/${encodeURIComponent(zone)}`);
    panel.innerHTML = `<h2>Zone ${z.zone}</h2><dl>
      <dt>Containers</dt><dd>${z.containers_total} (${z.containers_reporting} reporting)</dd>
      <dt>Mean fill</dt><dd>${pct(z.mean_fill_pct)}</dd>
      <dt>Over ${z.threshold_pct} %</dt><dd>${z.containers_over_threshold.length}</dd>
      <dt>Spots</dt><dd>${z.spots_free} free, ${z.spots_occupied} occupied, ${z.spots_unknown} unknown</dd></dl>`;
    const centre = zoneFeatures().find((f) => f.properties.zone === zone);
    if (centre) flyTo({ lon: centre.geometry.coordinates[0], lat: centre.geometry.coordinates[1] });
  } catch (error) {
    showError(error);
  }
}

// ---- wiring -----------------------------------------------------------------------------------------

function wireTabs() {
  const tabs = [...document.querySelectorAll('[role="tab"]')];
  const show = (tab) => {
    for (const other of tabs) {
      const selected = other === tab;
      other.setAttribute("aria-selected", String(selected));
      other.tabIndex = selected ? 0 : -1;
      $(other.getAttribute("aria-controls")).hidden = !selected;
    }
    tab.focus();
    if (tab.id === "tab-operator") loadDeadLetters();
  };
  tabs.forEach((tab, i) => {
    tab.addEventListener("click", () => show(tab));
    tab.addEventListener("keydown", (e) => {
      if (e.key === "ArrowRight") show(tabs[(i + 1) % tabs.length]);
      if (e.key === "ArrowLeft") show(tabs[(i + tabs.length - 1) % tabs.length]);
    });
  });
}

async function start() {
  renderLegend();
  wireTabs();
  $("api-key").value = apiKey();
  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    setApiKey($("api-key").value.trim());
    window.location.reload();
  });
  $("horizon").addEventListener("change", redraw);
  $("round-form").addEventListener("submit", planRound);
  $("round-export").addEventListener("click", exportRound);
  setInterval(renderFreshness, 1000);
  const settings = await getJSON("/console/settings.json");
  map = new maplibregl.Map({
    container: "map",
    style: settings.style_url || PLAIN_STYLE,
    center: [-7.6, 33.57],
    zoom: 12,
    // Kept so that what is drawn can be read back (the browser tests check colours on it).
    canvasContextAttributes: { preserveDrawingBuffer: true },
  });
  window.citytelMap = map;
  map.addControl(new maplibregl.NavigationControl());
  map.once("load", () => {
    addLayers();
    loadAll();
    loadAttention();
    follow("/v1/events", {}, onEvent, (streamState) => { state.stream = streamState; renderFreshness(); });
  });
}

start().catch(showError);
