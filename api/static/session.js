"use strict";
// The live page of one session: polls progress-unified every 2 s until the session ends.

const POLL_MS = 2000;
const FINAL = new Set(["completed", "failed", "cancelled"]);
const ACTIVE = new Set(["running", "processing", "paused", "stalled"]);
// The phase table is the server's (photoindex/phases.py), served as /phases.js.
const PHASES = PHASE_TABLE.map((p) => ({ key: p.contract, icon: p.icon, label: p.page_label, unit: p.page_unit }));
const PHASE_KEYS = Object.fromEntries(PHASE_TABLE.map((p) => [p.name, p.contract]));
const CURRENT_LABELS = {
  ...Object.fromEntries(PHASE_TABLE.map((p) => [p.name, p.title])),
  completed: COMPLETED_TITLE,
};

const sessionId = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop() || "");
const progressUrl = `${API}/training/sessions/${encodeURIComponent(sessionId)}/progress-unified`;
const $ = (id) => document.getElementById(id);
// Only touch text that changed, so screen readers announce changes, not every poll.
const setText = (node, text) => { if (node.textContent !== text) node.textContent = text; };
let resultsShown = false;

async function poll() {
  let progress;
  try {
    progress = await getJson(progressUrl);
  } catch (err) {
    showError(err);
    if (err.status === 404 || err.status === 422) return; // no such session: stop
    setTimeout(poll, POLL_MS);
    return;
  }
  $("error").hidden = true;
  render(progress);
  if (!FINAL.has(progress.overallStatus)) setTimeout(poll, POLL_MS);
}

function showError(err) {
  const box = $("error");
  box.hidden = false;
  box.textContent = err.status === 404
    ? "Session not found."
    : `Progress is not available right now (${err.message}); retrying…`;
}

function render(p) {
  const overall = p.overallProgress;
  const complete = p.overallStatus === "completed";
  const current = PHASES.find((phase) => phase.key === PHASE_KEYS[overall.currentPhase]);
  let label = CURRENT_LABELS[overall.currentPhase] || overall.currentPhase;
  if (p.overallStatus === "failed") label = `✗ Failed during ${current ? current.label : "the session"}`;
  if (p.overallStatus === "cancelled") label = `Cancelled during ${current ? current.label : "the session"}`;
  const percentage = formatPercent(overall.percentage, complete);

  const status = $("overall-status");
  setText(status, STATUS_NAMES[p.overallStatus] || p.overallStatus);
  status.className = `status status-${p.overallStatus}`;
  $("progress").dataset.status = p.overallStatus;
  setText($("phase-label"), label);
  setText($("percentage"), percentage);
  setBar($("overall-bar"), overall.percentage, `${percentage}, ${label}`);
  document.title = `${percentage} · ${label} · photoindex`;
  renderEta(overall.etaSeconds, p.overallStatus);
  renderFailure(p);
  renderWarnings(p.warnings || []);
  const ended = FINAL.has(p.overallStatus);
  $("phases").replaceChildren(
    ...PHASES.map((phase) => {
      const info = p.phases[phase.key];
      // A phase still pending when the session has ended will never run.
      return phaseItem(phase, ended && info.status === "pending" ? { ...info, status: "skipped" } : info);
    }),
  );
  if (complete && !resultsShown) showResults(p);
}

function renderEta(seconds, status) {
  const eta = $("eta");
  eta.hidden = status !== "running";
  if (eta.hidden) return;
  if (seconds === null || seconds === undefined) {
    setText(eta, "Estimating the time left…");
    return;
  }
  const finish = new Date(Date.now() + seconds * 1000);
  setText(eta, `Time left: ${formatDuration(seconds)} · finishes around ${formatClock(finish)}`);
}

function renderFailure(p) {
  const box = $("failure");
  box.hidden = p.overallStatus !== "failed";
  if (box.hidden) return;
  const failed = PHASES.filter((phase) => p.phases[phase.key].status === "failed");
  const lines = failed.length
    ? failed.map((phase) => {
        const info = p.phases[phase.key];
        const done = `${info.progress.current} of ${info.progress.total} ${phase.unit}`;
        const where = `${phase.icon} ${phase.label} failed after ${done}`;
        // A per-phase `message` is read when the API provides one.
        return el("p", { "data-phase": phase.key }, info.message ? `${where}: ${info.message}` : where);
      })
    : [el("p", {}, "The session failed outside its phases.")];
  box.replaceChildren(el("strong", {}, "✗ Session failed"), ...lines);
}

function renderWarnings(warnings) {
  const list = $("warnings");
  list.hidden = warnings.length === 0;
  list.replaceChildren(...warnings.map((text) => el("li", {}, `⚠ ${text}`)));
}

function phaseStatusText(info) {
  const pct = formatPercent(info.progress.percentage, false);
  switch (info.status) {
    case "completed": return "✓ Complete";
    case "failed": return "✗ Failed";
    case "skipped": return "Skipped";
    case "cancelled": return "Cancelled";
    case "cancelling": return "Cancelling…";
    case "paused": return `Paused at ${pct}`;
    case "stalled": return `Stalled at ${pct}`;
    case "running":
    case "processing": return pct;
    default: return "Pending";
  }
}

function phaseCounts(phase, info) {
  const stats = info.progress;
  const parts = [`${stats.current} / ${stats.total} ${phase.unit}`];
  if (stats.skipped) parts.push(`${stats.skipped} skipped`);
  if (stats.failed) parts.push(`${stats.failed} failed`);
  if (stats.imagesPerMinute) parts.push(`${stats.imagesPerMinute.toFixed(1)} ${phase.unit}/min`);
  if (ACTIVE.has(info.status) && stats.etaSeconds) parts.push(`${formatDuration(stats.etaSeconds)} left`);
  return parts.join(" · ");
}

function phaseItem(phase, info) {
  let bar = null;
  if (ACTIVE.has(info.status)) {
    bar = progressBar(`${phase.label} progress`);
    setBar(bar, info.progress.percentage);
  }
  return el(
    "li",
    { class: `phase phase-${info.status}`, "data-phase": phase.key, "data-status": info.status },
    el("span", { class: "icon", "aria-hidden": "true" }, phase.icon),
    el(
      "div",
      { class: "phase-body" },
      el(
        "div",
        { class: "phase-head" },
        el("span", { class: "phase-label" }, phase.label),
        el("span", { class: "phase-status" }, phaseStatusText(info)),
      ),
      bar,
      el("div", { class: "counts muted" }, phaseCounts(phase, info)),
    ),
  );
}

function showResults(p) {
  resultsShown = true;
  $("results").hidden = false;
  if (p.phases.faceDetection.status === "skipped") {
    $("persons").replaceChildren(el("p", { class: "muted" }, "Face detection was skipped for this session."));
  } else {
    loadPersons();
  }
}

async function loadPersons() {
  const box = $("persons");
  try {
    const body = await getJson(`${API}/persons?limit=24&samples=0`);
    box.replaceChildren(
      ...(body.persons.length ? body.persons.map(personCard) : [el("p", { class: "muted" }, "No persons found.")]),
    );
  } catch (err) {
    box.replaceChildren(el("p", { class: "error" }, `Persons are not available: ${err.message}`));
  }
}

let personFilter = null; // a personId: searches keep to that person's photos

function personCard(person) {
  const faces = `${person.faceCount} face${person.faceCount === 1 ? "" : "s"}`;
  const crop = person.representativeFaceId
    ? el("img", {
        src: `${API}/faces/${encodeURIComponent(person.representativeFaceId)}/crop`,
        alt: `A face of person ${person.personId}`,
        width: 96,
        height: 96,
        loading: "lazy",
      })
    : el("div", { class: "no-crop" }, "no crop");
  const card = el(
    "figure",
    { class: "person", "data-person": person.personId, tabindex: 0, role: "button",
      title: "Search only the photos of this person" },
    crop,
    el("figcaption", {}, faces),
  );
  const pick = () => setPersonFilter(personFilter === person.personId ? null : person.personId);
  card.addEventListener("click", pick);
  card.addEventListener("keydown", (e) => (e.key === "Enter" || e.key === " ") && (e.preventDefault(), pick()));
  return card;
}

function setPersonFilter(personId) {
  personFilter = personId;
  for (const card of document.querySelectorAll("#persons figure[data-person]")) {
    card.classList.toggle("selected", card.dataset.person === personId);
  }
  const chip = $("person-filter");
  chip.hidden = personId === null;
  chip.replaceChildren(
    personId === null ? "" : `Only photos of ${personId} `,
    personId === null ? "" : el("button", { type: "button", "aria-label": "Search all photos" }, "×"),
  );
  const clear = chip.querySelector("button");
  if (clear) clear.addEventListener("click", () => setPersonFilter(null));
}

function hitCard(hit) {
  // The thumbnail URL is built here from the photo's id, never taken from the answer.
  const id = typeof hit.photoId === "string" && /^[0-9a-f]{64}$/.test(hit.photoId) ? hit.photoId : null;
  const thumb = id
    ? el("img", { src: `${API}/photos/${id}/thumbnail`, alt: hit.path, loading: "lazy", width: 160, height: 160 })
    : el("div", { class: "no-thumb" }, "no preview");
  const taken = typeof hit.takenAt === "string" ? hit.takenAt.slice(0, 10) : "";
  const similar = id
    ? el("button", { type: "button", class: "similar", "data-like": id }, "More like this")
    : null;
  if (similar) similar.addEventListener("click", () => runSearch({ like: id }, `photos like ${hit.path}`));
  return el(
    "li",
    { class: "hit", "data-photo": id },
    thumb,
    el("code", { class: "hit-path" }, hit.path),
    el("span", { class: "hit-meta" }, el("span", { class: "score" }, hit.score.toFixed(3)), taken ? ` · ${taken}` : ""),
    similar,
  );
}

function filters() {
  const params = { k: "24" };
  for (const [id, name] of [["search-after", "after"], ["search-before", "before"], ["search-min", "minScore"]]) {
    const value = $(id).value.trim();
    if (value) params[name] = value;
  }
  const sort = $("search-sort").value;
  if (sort !== "relevance") params.sort = sort;
  if (personFilter) params.person = personFilter;
  return params;
}

async function runSearch(what, label) {
  const list = $("search-results");
  $("search-label").textContent = label ? `Showing ${label}` : "";
  list.replaceChildren(el("li", { class: "muted" }, "Searching…"));
  try {
    const body = await getJson(`${API}/search?${new URLSearchParams({ ...what, ...filters() })}`);
    list.replaceChildren(
      ...(body.results.length ? body.results.map(hitCard) : [el("li", { class: "muted" }, "No matching photos.")]),
    );
  } catch (err) {
    list.replaceChildren(el("li", { class: "error" }, `Search is not available: ${err.message}`));
  }
}

async function search(event) {
  event.preventDefault();
  const q = $("search-q").value.trim();
  if (!q) return;
  await runSearch({ q }, "");
}

$("session-id").textContent = sessionId;
$("search-form").addEventListener("submit", search);
poll();
