/* The login page: posts the credential as JSON to /login (the monitor answers with an
 * HttpOnly session cookie) and goes on to the page that sent us here. A login link
 * (/#token=..., as `jobqueue up` prints it) logs in by itself; the token is then removed from
 * the address bar. */
(function () {
  "use strict";

  // The path the monitor is served under (/flower), from the page: every URL here starts with it.
  const BASE = (document.querySelector('meta[name="jq-base"]') || {content: ""}).content.replace(/\/+$/, "");

  async function logIn(credential) {
    let res;
    try {
      res = await fetch(BASE + "/login", {method: "POST", credentials: "same-origin", cache: "no-store",
        headers: {"Content-Type": "application/json", "Accept": "application/json"},
        body: JSON.stringify({credential})});
    } catch (exc) {
      return "monitor unreachable";
    }
    if (res.ok) return null;
    let message = "HTTP " + res.status;
    try { const data = await res.json(); message = (data.error && data.error.message) || message; } catch (exc) { /* keep */ }
    return message;
  }

  function next(form) {
    const target = form.dataset.next || "/";
    return BASE + (target.startsWith("/") && !target.startsWith("//") ? target : "/");
  }

  async function start() {
    const form = document.getElementById("page-login-form");
    const input = document.getElementById("credential");
    const error = document.getElementById("page-login-error");
    const match = /(?:^#|&)token=([^&]+)/.exec(location.hash || "");
    if (match) {
      history.replaceState(null, "", location.pathname + location.search);
      let token = "";
      try { token = decodeURIComponent(match[1]).trim(); } catch (exc) { token = ""; }
      if (token) {
        const problem = await logIn(token);
        if (!problem) { location.replace(next(form)); return; }
        error.textContent = problem;
      }
    }
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      error.textContent = "";
      const problem = await logIn(input.value);
      input.value = "";
      if (problem) error.textContent = problem;
      else location.assign(next(form));
    });
  }

  document.addEventListener("DOMContentLoaded", start);
})();
