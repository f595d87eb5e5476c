"use strict";
// The list of recent sessions, each with its status and overall percentage.

const body = document.getElementById("sessions-body");

function message(text, cls) {
  body.replaceChildren(el("tr", {}, el("td", { colspan: 5, class: cls }, text)));
}

function row(session) {
  const complete = session.status === "completed";
  const percentage = el("td", { class: "num percentage" }, formatPercent(session.percentage, complete));
  const href = `/sessions/${encodeURIComponent(session.sessionId)}`;
  return el(
    "tr",
    { "data-session": session.sessionId },
    el("td", {}, el("a", { href }, session.name)),
    el("td", {}, el("code", {}, session.folder ?? "—")),
    el("td", {}, statusChip(session.status)),
    percentage,
    el("td", {}, formatDateTime(session.startedAt || session.createdAt)),
  );
}

async function load() {
  try {
    const { sessions } = await getJson(`${API}/training/sessions?limit=20`);
    if (sessions.length === 0) message("No sessions yet: start one with `photoindex index DIR`.", "muted");
    else body.replaceChildren(...sessions.map(row));
  } catch (err) {
    message(`Sessions are not available: ${err.message}`, "error");
  }
}

load();
