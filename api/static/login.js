// Post the token; on success go back to the page that sent us here (same origin only).
"use strict";

document.getElementById("login").addEventListener("submit", async (event) => {
  event.preventDefault();
  const error = document.getElementById("login-error");
  const token = document.getElementById("token").value;
  const response = await fetch("/login", {
    method: "POST",
    headers: { "Content-Type": "application/json", Accept: "application/json" },
    body: JSON.stringify({ token }),
  });
  if (response.ok) {
    const next = new URL(
      new URLSearchParams(window.location.search).get("next") || "/",
      window.location.origin,
    );
    window.location.assign(next.origin === window.location.origin ? next.href : "/");
    return;
  }
  const body = await response.json().catch(() => ({}));
  error.textContent = body.detail || `Login failed (HTTP ${response.status}).`;
});
