"use strict";
// Helpers shared by the pages. Text from the API only ever reaches the page as text nodes
// or attribute values (never as HTML), so nothing it contains can run.

const API = "/api/v1";

const STATUS_NAMES = {
  pending: "Pending",
  running: "Running",
  processing: "Processing",
  paused: "Paused",
  stalled: "Stalled",
  cancelling: "Cancelling",
  completed: "Completed",
  failed: "Failed",
  cancelled: "Cancelled",
  skipped: "Skipped",
};

/** Build an element: attributes are set as values, children appended as nodes or text. */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** GET a JSON resource; throws ApiError with the API's `detail` when the answer is not 2xx. */
async function getJson(url) {
  let response;
  try {
    response = await fetch(url, { headers: { Accept: "application/json" }, cache: "no-store" });
  } catch (err) {
    throw new ApiError(0, "the server cannot be reached");
  }
  let body = null;
  try {
    body = await response.json();
  } catch (err) {
    body = null;
  }
  if (!response.ok) {
    const detail = body && typeof body.detail === "string" ? body.detail : response.statusText;
    throw new ApiError(response.status, detail || `HTTP ${response.status}`);
  }
  return body;
}

/** One decimal; rounded down unless complete, so an unfinished session never reads 100.0%. */
function formatPercent(value, complete) {
  const shown = complete ? value : Math.floor(value * 10) / 10;
  return `${shown.toFixed(1)}%`;
}

/** Seconds as "1 h 5 min", "3 min 20 s", "45 s" or "a few seconds". */
function formatDuration(seconds) {
  const s = Math.max(0, Math.round(seconds));
  if (s < 5) return "a few seconds";
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  if (h > 0) return m > 0 ? `${h} h ${m} min` : `${h} h`;
  if (m > 0) return s % 60 > 0 ? `${m} min ${s % 60} s` : `${m} min`;
  return `${s} s`;
}

function formatClock(date) {
  return date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

function formatDateTime(iso) {
  if (!iso) return "—";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? "—" : date.toLocaleString();
}

function statusChip(status) {
  return el("span", { class: `status status-${status}` }, STATUS_NAMES[status] || status);
}

/** A progress bar: a div with role=progressbar holding a fill. */
function progressBar(label) {
  return el(
    "div",
    { class: "bar", role: "progressbar", "aria-label": label, "aria-valuemin": 0,
      "aria-valuemax": 100, "aria-valuenow": 0 },
    el("div", { class: "fill" }),
  );
}

function setBar(bar, percentage, text) {
  const value = Math.min(100, Math.max(0, percentage));
  bar.setAttribute("aria-valuenow", value.toFixed(1));
  if (text) bar.setAttribute("aria-valuetext", text);
  bar.firstElementChild.style.width = `${value}%`;
}
