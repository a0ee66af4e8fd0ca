/* jobqueue dashboard: shared helpers.
 *
 * - h(): builds DOM nodes. Data only ever goes in through textContent or setAttribute on a
 *   short list of safe attributes, never innerHTML, so a worker name or an error message such
 *   as <img src=x onerror=alert(1)> shows as text.
 * - Auth: the login token lives in sessionStorage and travels in the Authorization header.
 *   No cookie is involved, so a cross-site form cannot forge a control request (CSRF-safe).
 * - Base path: the monitor may be served under a prefix (/flower; <meta name="jq-base">). Every
 *   request goes through url(): api() and control() take app paths ("/api/jobs") and add it;
 *   links and other fetches call JQ.url() themselves, and the websocket's URL carries it too.
 * - Live: the /ws client. It applies the snapshot, then each delta in seq order, and on
 *   reconnect asks for ?since=<last seq> so nothing is missed and nothing is applied twice.
 */
"use strict";

const JQ = (function () {
  const SAFE_ATTRS = new Set(["class", "id", "title", "type", "value", "placeholder", "role",
    "aria-label", "aria-valuenow", "aria-valuemin", "aria-valuemax", "for", "name", "rows",
    "min", "max", "colspan", "alt", "width", "height", "viewBox", "x", "y", "x1", "x2", "y1",
    "y2", "rx", "cx", "cy", "r", "fill", "stroke", "stroke-width", "text-anchor", "font-size", "d", "transform",
    "loading", "target", "rel", "aria-sort", "scope", "aria-pressed"]);
  const SVG_NS = "http://www.w3.org/2000/svg";
  const SVG_TAGS = new Set(["svg", "g", "rect", "line", "text", "path", "title", "circle"]);

  const BASE = (document.querySelector('meta[name="jq-base"]') || {content: ""}).content.replace(/\/+$/, "");

  /** ``path`` of this monitor ("/jobs/x") as the browser must ask for it: under the base path. */
  function url(path) {
    return typeof path === "string" && path.startsWith("/") && !path.startsWith("//") ? BASE + path : path;
  }

  /** A URL we are willing to put in href/src: same-origin paths or http(s). */
  function safeUrl(url) {
    if (typeof url !== "string") return null;
    if (url.startsWith("/") && !url.startsWith("//")) return url;
    if (/^https?:\/\//i.test(url)) return url;
    return null;
  }

  /** h("div", {class: "x", text: "hello"}, child, "text child") */
  function h(tag, props, ...children) {
    const el = SVG_TAGS.has(tag) ? document.createElementNS(SVG_NS, tag) : document.createElement(tag);
    props = props || {};
    for (const [key, value] of Object.entries(props)) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "text") el.textContent = String(value);
      else if (key === "href" || key === "src") {
        const url = safeUrl(value);
        if (url) el.setAttribute(key, url);
      } else if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
      else if (key.startsWith("data-")) el.setAttribute(key, String(value));
      else if (key === "style" && typeof value === "object") Object.assign(el.style, value);
      else if (key === "hidden" || key === "disabled") el[key] = !!value;
      else if (SAFE_ATTRS.has(key)) el.setAttribute(key, String(value));
      else throw new Error("h(): attribute not allowed: " + key);
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      el.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  function clear(el) {
    while (el.firstChild) el.removeChild(el.firstChild);
    return el;
  }

  /** Replace the children of el with nodes (keeping the element itself). */
  function fill(el, ...nodes) {
    clear(el);
    for (const node of nodes.flat()) if (node) el.appendChild(node);
    return el;
  }

  // ---- formatting -------------------------------------------------------------------------

  function duration(seconds) {
    if (seconds === null || seconds === undefined || !isFinite(seconds)) return "–";
    seconds = Math.max(0, seconds);
    if (seconds < 10) return seconds.toFixed(1) + " s";
    if (seconds < 60) return Math.round(seconds) + " s";
    const m = Math.floor(seconds / 60), s = Math.round(seconds % 60);
    if (m < 60) return m + " min " + s + " s";
    const hours = Math.floor(m / 60);
    return hours + " h " + (m % 60) + " min";
  }

  function clock(ts) {
    if (!ts) return "–";
    const d = new Date(ts * 1000);
    return d.toLocaleTimeString([], {hour12: false}) + "." + String(d.getMilliseconds()).padStart(3, "0");
  }

  function shortId(id) {
    return typeof id === "string" && id.length > 12 ? id.slice(0, 8) + "…" : String(id);
  }

  // ---- server clock -----------------------------------------------------------------------
  // Ages tick in the browser; skew is the server clock minus ours, estimated from a worker's
  // heartbeat_at + heartbeat_age (both taken on the server at the same moment).
  let skew = 0;
  function serverNow() { return Date.now() / 1000 + skew; }
  // Only a clear difference counts (a few seconds of it would be noise from transit time).
  function learnSkew(workers) {
    for (const w of workers || []) {
      if (w && typeof w.heartbeat_at === "number" && typeof w.heartbeat_age === "number") {
        const measured = (w.heartbeat_at + w.heartbeat_age) - Date.now() / 1000;
        skew = Math.abs(measured) > 5 ? measured : 0;
        return;
      }
    }
  }

  // ---- workers the fleet view leaves out ------------------------------------------------
  // The rule of monitor/web/offline.py: offline, and last heard of (heartbeat_at) longer ago
  // than the monitor's JOBQUEUE_MONITOR_HIDE_OFFLINE_AFTER (on <body>; 0: never).
  const HIDE_OFFLINE_AFTER = parseFloat(document.body ? document.body.dataset.hideOfflineAfter : "") || 0;
  function hiddenOffline(worker) {
    if (!(HIDE_OFFLINE_AFTER > 0) || !worker || worker.status !== "offline") return false;
    return typeof worker.heartbeat_at !== "number" || serverNow() - worker.heartbeat_at > HIDE_OFFLINE_AFTER;
  }

  // ---- notices ----------------------------------------------------------------------------

  let noticeTimer = null;
  function notify(message, kind) {
    const el = document.getElementById("notice");
    if (!el) return;
    el.textContent = String(message);
    el.className = "notice notice-" + (kind || "info");
    el.hidden = false;
    clearTimeout(noticeTimer);
    noticeTimer = setTimeout(() => { el.hidden = true; }, 6000);
  }

  // ---- auth + API -------------------------------------------------------------------------

  const TOKEN_KEY = "jobqueue.monitor.auth";
  const auth = {
    info: {auth_required: true, read_only: false, authenticated: false, known: false},
    listeners: [],
    header() {
      const raw = sessionStorage.getItem(TOKEN_KEY);
      if (!raw) return null;
      return raw;
    },
    /** True when controls may be shown: not read-only and the server accepts our credentials. */
    canControl() {
      return !this.info.read_only && !!this.info.authenticated;
    },
    onChange(fn) { this.listeners.push(fn); },
    changed() { for (const fn of this.listeners) fn(); renderAuth(); },
    async refresh() {
      const res = await api("GET", "/api/auth");
      if (res.ok && res.data && typeof res.data === "object") {
        this.info = {
          auth_required: !!res.data.auth_required,
          read_only: !!res.data.read_only,
          authenticated: !!res.data.authenticated,
          role: res.data.role || null,
          subject: res.data.subject || null,
          tenant: res.data.tenant || null,
          session: !!res.data.session,
          known: true,
        };
      } else {
        // Older backend without /api/auth: trust a stored token until a POST says otherwise.
        this.info = {auth_required: true, read_only: false, authenticated: !!this.header(), known: false};
      }
      this.changed();
      return this.info;
    },
    async login(secret) {
      secret = secret.trim();
      if (!secret) return "enter a token";
      const value = secret.includes(":") ? "Basic " + btoa(secret) : "Bearer " + secret;
      // A session cookie too, so images, previews and /ws are authorised as well.
      await api("POST", "/login", {credential: secret});
      sessionStorage.setItem(TOKEN_KEY, value);
      const info = await this.refresh();
      if (info.known && !info.authenticated) {
        sessionStorage.removeItem(TOKEN_KEY);
        await this.refresh();
        return "the monitor refused these credentials";
      }
      return null;
    },
    async logout() {
      sessionStorage.removeItem(TOKEN_KEY);
      const hadSession = this.info.session;
      await api("POST", "/logout", {});
      const info = await this.refresh();
      if (hadSession && info.auth_required) location.assign(url("/login"));
    },
  };

  /** fetch() wrapper: JSON in, JSON out, never throws; {ok, status, data, error}. */
  async function api(method, path, body) {
    const headers = {"Accept": "application/json"};
    const authHeader = auth.header();
    if (authHeader) headers["Authorization"] = authHeader;
    // The session cookie (HttpOnly, SameSite=Lax) rides along; it is refused cross-site.
    const init = {method, headers, credentials: "same-origin", cache: "no-store"};
    // Every control sends a JSON body: the monitor refuses any other (a cross-site form or a
    // no-cors fetch cannot send application/json).
    if (body === undefined && method !== "GET" && method !== "HEAD") body = {};
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let res;
    try {
      res = await fetch(url(path), init);
    } catch (exc) {
      return {ok: false, status: 0, data: null, error: "monitor unreachable: " + exc};
    }
    let data = null;
    try { data = await res.json(); } catch (exc) { data = null; }
    let error = null;
    if (!res.ok) {
      const err = data && data.error;
      error = (err && (err.message || err.code)) || ("HTTP " + res.status);
      if (res.status === 401) error = "not logged in (" + error + ")";
      if (res.status === 403) error = "not allowed (" + error + ")";
    }
    return {ok: res.ok, status: res.status, data, error};
  }

  /** Run a control action and report the outcome in the notice bar. */
  async function control(label, method, path, body) {
    const res = await api(method, path, body);
    if (res.ok) notify(label + ": done", "ok");
    else {
      notify(label + " failed: " + res.error, "error");
      if (res.status === 401 || res.status === 403) await auth.refresh();
    }
    return res;
  }

  function renderAuth() {
    const state = document.getElementById("auth-state");
    if (!state) return;
    const open = document.getElementById("login-open");
    const out = document.getElementById("logout");
    const form = document.getElementById("login-form");
    const info = auth.info;
    document.body.classList.toggle("can-control", auth.canControl());
    if (info.read_only) {
      state.textContent = "read-only";
      open.hidden = true; out.hidden = true; form.hidden = true;
    } else if (info.authenticated) {
      state.textContent = info.auth_required ? "logged in" + (info.role ? " (" + info.role + ")" : "")
        : "controls on (no auth configured)";
      open.hidden = true; form.hidden = true; out.hidden = !auth.header() && !info.session;
    } else if (info.session) {
      state.textContent = "logged in (" + info.role + ")";
      open.hidden = true; form.hidden = true; out.hidden = false;
    } else {
      state.textContent = "view only";
      out.hidden = true;
      open.hidden = !form.hidden;
    }
  }

  function setupAuthUi() {
    const open = document.getElementById("login-open");
    const out = document.getElementById("logout");
    const form = document.getElementById("login-form");
    const input = document.getElementById("login-token");
    const err = document.getElementById("login-error");
    open.addEventListener("click", () => { form.hidden = false; open.hidden = true; input.focus(); });
    document.getElementById("login-cancel").addEventListener("click", () => {
      form.hidden = true; err.textContent = ""; renderAuth();
    });
    out.addEventListener("click", () => auth.logout());
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      err.textContent = "";
      const problem = await auth.login(input.value);
      input.value = "";
      if (problem) err.textContent = problem;
      else form.hidden = true;
      renderAuth();
    });
    auth.refresh();
  }

  // ---- live state over /ws ----------------------------------------------------------------

  class Live {
    constructor() {
      this.seq = null;
      this.machines = new Map();
      this.workers = new Map();
      this.jobs = new Map();
      this.services = new Map();
      this.listeners = [];
      this.retryDelay = 500;
      this.ws = null;
      this.ready = false;
    }

    /** fn(kind, id, data) for each delta; fn("snapshot") after a snapshot. */
    subscribe(fn) { this.listeners.push(fn); }

    emit(kind, id, data) {
      for (const fn of this.listeners) {
        try { fn(kind, id, data); } catch (exc) { console.error(exc); }
      }
    }

    url() {
      const proto = location.protocol === "https:" ? "wss:" : "ws:";
      const since = this.seq === null ? "" : "?since=" + encodeURIComponent(this.seq);
      return proto + "//" + location.host + BASE + "/ws" + since;
    }

    connect() {
      setConn("connecting", this.seq === null ? "connecting…" : "reconnecting…");
      const ws = new WebSocket(this.url());
      this.ws = ws;
      ws.onopen = () => { this.retryDelay = 500; setConn("live", "live"); };
      ws.onmessage = (ev) => {
        let msg;
        try { msg = JSON.parse(ev.data); } catch (exc) { return; }
        this.handle(msg);
      };
      ws.onclose = () => {
        if (this.ws !== ws) return;
        this.ws = null;
        setConn("down", "disconnected, retrying…");
        setTimeout(() => this.connect(), this.retryDelay);
        this.retryDelay = Math.min(this.retryDelay * 2, 5000);
      };
      ws.onerror = () => { /* onclose follows and reconnects */ };
    }

    /** Drop the connection and reconnect asking for what we missed (used on a seq gap). */
    resync() {
      const ws = this.ws;
      this.ws = null;
      if (ws) { ws.onclose = null; ws.close(); }
      this.connect();
    }

    handle(msg) {
      if (!msg || typeof msg !== "object") return;
      if (msg.type === "snapshot") {
        const state = msg.state || {};
        this.machines = new Map((state.machines || []).map((m) => [m.id, m]));
        this.workers = new Map((state.workers || []).map((w) => [w.name, w]));
        this.jobs = new Map((state.jobs || []).map((j) => [j.id, j]));
        this.services = new Map((state.services || []).map((s) => [s.service, s]));
        this.seq = typeof msg.seq === "number" ? msg.seq : (state.seq || 0);
        this.ready = true;
        learnSkew(state.workers);
        document.body.setAttribute("data-seq", String(this.seq));
        this.emit("snapshot", null, null);
      } else if (msg.type === "delta") {
        if (this.seq !== null && msg.seq <= this.seq) return;  // already applied
        if (this.seq !== null && msg.seq > this.seq + 1) {
          // A gap: never apply out of order; reconnect with ?since= to get the missing ones.
          this.resync();
          return;
        }
        this.seq = msg.seq;
        // A change this (tenant's) client may not see: it only keeps its place in the sequence.
        if (msg.kind === "hidden") { document.body.setAttribute("data-seq", String(this.seq)); return; }
        const maps = {job: this.jobs, worker: this.workers, machine: this.machines, service: this.services};
        const map = maps[msg.kind];
        if (map) {
          if (msg.data === null || msg.data === undefined) map.delete(msg.id);
          else map.set(msg.id, msg.data);
        }
        document.body.setAttribute("data-seq", String(this.seq));
        this.emit(msg.kind, msg.id, msg.data);
      }
    }
  }

  function setConn(kind, text) {
    const el = document.getElementById("conn");
    if (!el) return;
    el.className = "conn conn-" + kind;
    el.textContent = text;
  }

  // ---- ETAs -------------------------------------------------------------------------------

  /** Seconds left of a processing job: its worker's ETA counted down since it was reported. */
  function processingEta(job) {
    const p = job.progress || {};
    const eta = typeof job.eta_seconds === "number" ? job.eta_seconds : (typeof p.eta_seconds === "number" ? p.eta_seconds : null);
    if (eta === null) return null;
    return typeof job.eta_at === "number" ? Math.max(0, eta - (serverNow() - job.eta_at)) : eta;
  }

  /** Call fn at most once per animation frame however many times it is asked for. */
  function coalesce(fn) {
    let pending = false;
    return function () {
      if (pending) return;
      pending = true;
      requestAnimationFrame(() => { pending = false; fn(); });
    };
  }

  // ---- shared pieces of UI ----------------------------------------------------------------

  const FINAL = new Set(["completed", "failed", "cancelled", "timed_out"]);
  const PENDING = new Set(["queued", "assigned", "retrying", "lost"]);

  function statusPill(status) {
    const s = String(status || "unknown");
    return h("span", {class: "pill pill-" + s.replace(/[^a-z_]/g, ""), "data-status": s, text: s.replace("_", " ")});
  }

  function progressBar(job) {
    const p = (job && job.progress) || {};
    let pct = typeof p.percent === "number" ? p.percent : 0;
    if (job && job.status === "completed") pct = 100;
    pct = Math.max(0, Math.min(100, pct));
    const bar = h("div", {class: "progress", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100,
      "aria-valuenow": pct.toFixed(1), "data-percent": pct.toFixed(1)},
      h("div", {class: "progress-fill", style: {width: pct + "%"}}),
      h("span", {class: "progress-label", text: pct.toFixed(0) + "%"}));
    return bar;
  }

  function controlButton(label, onClick, kind) {
    return h("button", {type: "button", class: "ctl ctl-" + (kind || "default"), "data-control": label, text: label,
      onclick: (ev) => { ev.preventDefault(); ev.stopPropagation(); onClick(ev); }});
  }

  /** Controls offered for a job (empty when not allowed). */
  function jobControls(job) {
    if (!auth.canControl() || !job) return [];
    const out = [];
    const id = encodeURIComponent(job.id);
    if (!FINAL.has(job.status)) {
      out.push(controlButton("cancel", () => control("cancel " + shortId(job.id), "POST", "/api/jobs/" + id + "/cancel"), "danger"));
    }
    if (["failed", "cancelled", "timed_out", "lost"].includes(job.status)) {
      out.push(controlButton("retry", async () => {
        const res = await control("retry " + shortId(job.id), "POST", "/api/jobs/" + id + "/retry");
        if (res.ok && res.data && res.data.id) notify("retried as " + res.data.id, "ok");
      }));
    }
    return out;
  }

  // Ages and elapsed times tick in the browser between deltas.
  function startTicking() {
    setInterval(() => {
      const now = serverNow();
      for (const el of document.querySelectorAll("[data-since]")) {
        const since = parseFloat(el.getAttribute("data-since"));
        if (!isFinite(since)) continue;
        const age = now - since;
        el.textContent = (el.getAttribute("data-prefix") || "") + duration(age) + (el.getAttribute("data-suffix") || "");
        const warn = parseFloat(el.getAttribute("data-warn-after"));
        if (isFinite(warn)) el.classList.toggle("late", age > warn);
      }
      for (const el of document.querySelectorAll("[data-until]")) {
        const until = parseFloat(el.getAttribute("data-until"));
        if (isFinite(until)) el.textContent = (el.getAttribute("data-prefix") || "") + duration(until - now);
      }
    }, 1000);
  }

  /** A span whose text is the time since ts, kept current by startTicking(). */
  function ticking(ts, opts) {
    opts = opts || {};
    const text = ts ? (opts.prefix || "") + duration(serverNow() - ts) + (opts.suffix || "") : "–";
    return h("span", {class: "ticking " + (opts.cls || ""), "data-since": ts || null, "data-prefix": opts.prefix || null,
      "data-suffix": opts.suffix || null, "data-warn-after": opts.warnAfter || null, text});
  }

  /** A span counting down to server time ``until`` (kept current by startTicking()). */
  function countdown(until, prefix) {
    return h("span", {class: "countdown", "data-until": until, "data-prefix": prefix || null,
      text: (prefix || "") + duration(until - serverNow())});
  }

  const live = new Live();

  /** A login link (``jobqueue up`` prints one: /#token=...) logs this tab in; the token is
   * then removed from the address bar and history. The fragment never reaches the server. */
  function tokenFromLink() {
    const match = /(?:^#|&)token=([^&]+)/.exec(location.hash || "");
    if (!match) return;
    let token = "";
    try { token = decodeURIComponent(match[1]).trim(); } catch (exc) { token = ""; }
    if (token) sessionStorage.setItem(TOKEN_KEY, "Bearer " + token);
    history.replaceState(null, "", location.pathname + location.search);
  }

  function start() {
    tokenFromLink();
    setupAuthUi();
    startTicking();
    live.connect();
  }

  document.addEventListener("DOMContentLoaded", start);

  // ---- live previews ----------------------------------------------------------------------

  /** One <img> per job and place, reused across renders so an unchanged preview never reloads. */
  const previewImages = new Map();

  /** The latest live preview of a running job (its progress carries the preview's number), or
   * null. The image is fetched again only when that number moves. */
  function previewImage(job, cls) {
    const seq = job && job.status === "processing" && job.progress ? job.progress.preview : null;
    if (!seq) return null;
    const key = cls + "\u0000" + job.id;
    let img = previewImages.get(key);
    if (!img) {
      img = h("img", {class: "preview-image " + cls, alt: "live preview of job " + job.id, "data-job-id": job.id});
      previewImages.set(key, img);
      if (previewImages.size > 200) previewImages.delete(previewImages.keys().next().value);
    }
    if (img.dataset.want !== String(seq)) {
      // Fetch first, swap when the bytes are in: the old frame stays on screen meanwhile.
      img.dataset.want = String(seq);
      fetch(url("/api/jobs/" + encodeURIComponent(job.id) + "/preview?seq=" + encodeURIComponent(seq)))
        .then((res) => (res.ok ? res.blob() : null))
        .then((blob) => {
          if (!blob || img.dataset.want !== String(seq)) return;  // gone, or a newer one is coming
          const old = img.dataset.objectUrl;
          const url = URL.createObjectURL(blob);
          img.dataset.objectUrl = url;
          img.dataset.seq = String(seq);
          img.setAttribute("src", url);
          if (old) setTimeout(() => URL.revokeObjectURL(old), 1000);
        })
        .catch(() => {});
    }
    return img;
  }

  return {url, base: BASE, hiddenOffline, h, clear, fill, duration, clock, shortId, serverNow, notify, auth, api, control, live,
    coalesce, processingEta, countdown, statusPill, progressBar, controlButton, jobControls, ticking, FINAL, PENDING, safeUrl,
    previewImage};
})();
