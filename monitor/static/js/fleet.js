/* Fleet view: machines -> workers (one per GPU) -> connector badges, live from /ws; or, for a
 * big fleet, a compact table with sort and filter (fleet_table.js). ?view=cards|table chooses;
 * without a choice a fleet of more than CARDS_UP_TO workers is shown as the table. */
"use strict";

(function () {
  const {h, fill, shortId, statusPill, progressBar, controlButton, control, ticking, live, auth} = JQ;
  /* global JQFleetTable */

  //: Heartbeat older than this (s) is shown as late; the monitor calls the worker offline itself.
  const HEARTBEAT_LATE = 10;
  //: Without a chosen view, fleets up to this many workers are cards, bigger ones the table.
  const CARDS_UP_TO = 24;
  const VIEW_KEY = "jobqueue.fleet.view";
  //: ?status=all: workers offline for long are listed too (else left out: JQ.hiddenOffline).
  const SHOW_ALL = new URLSearchParams(location.search).get("status") === "all";

  /** The workers this view shows, and how many it leaves out. */
  function shownWorkers() {
    const all = [...live.workers.values()];
    const shown = SHOW_ALL ? all : all.filter((w) => !JQ.hiddenOffline(w));
    return {shown, hidden: all.length - shown.length};
  }

  /** The link that shows the left-out workers (or, with ?status=all, leaves them out again). */
  function hiddenLink(hidden) {
    const url = new URL(location.href);
    if (SHOW_ALL) url.searchParams.delete("status"); else url.searchParams.set("status", "all");
    if (!SHOW_ALL && !hidden) return null;
    return h("a", {id: "fleet-hidden", class: "stat-link", href: url.pathname + url.search, "data-hidden": hidden,
      title: "workers offline for longer than " + JQ.duration(parseFloat(document.body.dataset.hideOfflineAfter) || 0)},
      h("div", {class: "stat"}, h("span", {class: "stat-value", text: String(hidden)}),
        h("span", {class: "stat-label", text: SHOW_ALL ? "long offline (hide)" : "long offline hidden (show)"})));
  }

  /** The status a badge shows: the worker's death or a stale report beat the last status. */
  function badgeStatus(worker, conn) {
    if (worker.status === "offline") return "offline";
    if (conn.stale) return "stale";
    const s = String(conn.status || "unknown");
    return s === "waiting_for_service" ? "waiting" : s;
  }

  function badge(worker, service, conn) {
    const shown = badgeStatus(worker, conn);
    // A connector may sum up its service in one line (e.g. a1111: loaded checkpoint and version).
    const summary = conn.details && typeof conn.details.summary === "string" ? conn.details.summary : "";
    const title = [service + ": " + (conn.status || "unknown"), conn.message || "", summary,
      conn.updated_at ? "updated " + JQ.clock(conn.updated_at) : ""].filter(Boolean).join("\n");
    let label = shown;
    if (shown === "stale" || (shown === "offline" && conn.status && conn.status !== "offline")) {
      label = shown + " (last: " + String(conn.status).replace(/_/g, " ") + ")";
    }
    return h("span", {class: "badge badge-" + shown.replace(/[^a-z]/g, ""), "data-service": service,
      "data-status": shown, title},
      h("span", {class: "badge-dot"}),
      h("span", {class: "badge-service", text: service}),
      h("span", {class: "badge-status", text: label}),
      shown === "error" && conn.message ? h("span", {class: "badge-message", text: conn.message}) : null,
      summary && shown !== "error" ? h("span", {class: "badge-detail", text: summary}) : null);
  }

  function workerControls(worker) {
    if (!auth.canControl() || worker.status === "offline") return [];
    const name = encodeURIComponent(worker.name);
    const out = [];
    if (worker.status === "draining") {
      out.push(controlButton("resume", () => control("resume " + worker.name, "POST", "/api/workers/" + name + "/resume")));
    } else {
      out.push(controlButton("drain", () => control("drain " + worker.name, "POST", "/api/workers/" + name + "/drain")));
    }
    out.push(controlButton("shutdown", () => {
      if (confirm("Shut down worker " + worker.name + "? Its running job is handed back to the queue.")) {
        control("shutdown " + worker.name, "POST", "/api/workers/" + name + "/shutdown");
      }
    }, "danger"));
    return out;
  }

  function currentJob(worker) {
    if (!worker.current_job) return h("div", {class: "current muted", text: "no current job"});
    const job = live.jobs.get(worker.current_job);
    const link = h("a", {class: "mono", href: JQ.url("/jobs/" + encodeURIComponent(worker.current_job)), title: worker.current_job,
      text: shortId(worker.current_job)});
    if (!job) return h("div", {class: "current"}, "job ", link);
    const p = job.progress || {};
    return h("div", {class: "current"}, h("div", {}, "job ", link, " ", statusPill(job.status),
      p.total_steps ? " step " + (p.step || 0) + "/" + p.total_steps : ""), progressBar(job),
      JQ.previewImage(job, "card-preview"));
  }

  /** Models, VRAM and tags the worker reported (what capability routing matches jobs on), and the
   * checkpoints it has loaded (warm routing). */
  function capabilityFacts(caps) {
    const chips = (items, cls) => items.length ? items.map((x) => h("span", {class: "chip " + cls, text: x}))
      : h("span", {class: "muted", text: "none"});
    const vram = typeof caps.vram_total_gb === "number"
      ? caps.vram_total_gb.toFixed(1) + " GiB" + (typeof caps.vram_free_gb === "number" ? " (" + caps.vram_free_gb.toFixed(1) + " free)" : "")
      : "no GPU reported";
    return [
      h("dt", {text: "models"}), h("dd", {class: "models"}, chips(caps.models || [], "chip-model")),
      h("dt", {text: "VRAM"}), h("dd", {class: "vram", text: vram}),
      h("dt", {text: "tags"}), h("dd", {class: "worker-tags"}, chips(caps.tags || [], "chip-tag")),
      h("dt", {text: "loaded"}), h("dd", {class: "loaded", title: typeof caps.load_seconds === "number"
        ? "a checkpoint load takes about " + caps.load_seconds.toFixed(1) + " s here" : "load time not measured yet"},
        chips(caps.loaded || [], "chip-model")),
    ];
  }

  // The worker's clock offset from its heartbeats (the monitor takes it off its event times).
  function clockOff(worker) {
    return typeof worker.clock_skew === "number" && Math.abs(worker.clock_skew) > 1;
  }

  function clockText(worker) {
    if (typeof worker.clock_skew !== "number") return "not seen";
    if (!clockOff(worker)) return "in step";
    const s = worker.clock_skew;
    return Math.abs(s).toFixed(1) + " s " + (s > 0 ? "ahead" : "behind") + " (corrected)";
  }

  function workerCard(worker) {
    const connectors = Object.entries(worker.connectors || {}).sort(([a], [b]) => a.localeCompare(b));
    return h("article", {class: "worker worker-" + String(worker.status || "unknown"), "data-worker": worker.name},
      h("header", {class: "worker-head"},
        h("a", {class: "worker-name mono", href: JQ.url("/workers/" + encodeURIComponent(worker.name)),
          title: "this worker's page: pool, queues, tasks, remote control", text: worker.name}),
        h("span", {class: "muted", text: worker.gpu !== null && worker.gpu !== undefined ? " GPU " + worker.gpu : " GPU ?"}),
        statusPill(worker.status)),
      worker.identity_complete === false
        ? h("div", {class: "warning identity-warning", text: "⚠ identity incomplete: " + (worker.identity_warning || "unknown fields")})
        : null,
      h("div", {class: "badges"}, connectors.length ? connectors.map(([s, c]) => badge(worker, s, c || {}))
        : h("span", {class: "muted", text: "no connector reported yet"})),
      currentJob(worker),
      h("dl", {class: "facts"},
        h("dt", {text: "processed"}), h("dd", {class: "processed", text: String(worker.processed || 0)}),
        h("dt", {text: "failed"}), h("dd", {class: "failed", text: String(worker.failed || 0)}),
        h("dt", {text: "heartbeat"}), h("dd", {class: "heartbeat"},
          worker.heartbeat_at ? ticking(worker.heartbeat_at, {suffix: " ago", warnAfter: HEARTBEAT_LATE}) : "never"),
        h("dt", {text: "queues"}), h("dd", {class: "queues"},
          (worker.queues || []).map((q) => h("span", {class: "chip", text: q}))),
        h("dt", {text: "clock"}), h("dd", {class: "clock-skew" + (clockOff(worker) ? " warn" : ""), text: clockText(worker)}),
        ...capabilityFacts(worker.capabilities || {})),
      h("div", {class: "controls"}, workerControls(worker)));
  }

  function machineCard(id, machine, workers) {
    const status = machine ? machine.status : (workers.some((w) => w.status !== "offline") ? "online" : "offline");
    return h("section", {class: "machine", "data-machine": id},
      h("header", {class: "machine-head"},
        h("h2", {class: "mono", text: id || "(unknown machine)"}), statusPill(status),
        machine && machine.last_seen ? h("span", {class: "muted"}, " seen ", ticking(machine.last_seen, {suffix: " ago"})) : null,
        h("span", {class: "muted", text: " · " + workers.length + " worker" + (workers.length === 1 ? "" : "s")})),
      h("div", {class: "workers"}, workers.map(workerCard)));
  }

  function summary() {
    const {shown: workers, hidden} = shownWorkers();
    const jobs = [...live.jobs.values()];
    let errors = 0;
    for (const w of workers) for (const c of Object.values(w.connectors || {})) if (c && c.status === "error" && w.status !== "offline") errors++;
    const count = (pred) => jobs.filter(pred).length;
    const item = (label, value, cls) => h("div", {class: "stat " + (cls || "")}, h("span", {class: "stat-value", text: String(value)}),
      h("span", {class: "stat-label", text: label}));
    return [
      item("machines", live.machines.size),
      item("workers online", workers.filter((w) => w.status !== "offline").length + " / " + workers.length),
      item("connectors in error", errors, errors ? "bad" : ""),
      item("pending jobs", count((j) => JQJobsGroup(j) === "pending")),
      item("active jobs", count((j) => j.status === "processing")),
      h("a", {href: JQ.url("/api/dead-letters"), class: "stat-link", "data-dead-letters": deadLetters === null ? "" : deadLetters,
        title: "messages workers could not decode, moved to <queue>.dead"},
        item("dead letters", deadLetters === null ? "–" : deadLetters, deadLetters ? "bad" : "")),
      hiddenLink(hidden),
    ].filter(Boolean);
  }

  function JQJobsGroup(job) {
    if (job.status === "processing") return "active";
    return JQ.FINAL.has(job.status) ? "done" : "pending";
  }

  let chosenView = new URLSearchParams(location.search).get("view") || localStorage.getItem(VIEW_KEY) || "";
  let table = null;

  function currentView() {
    if (chosenView === "cards" || chosenView === "table") return chosenView;
    return shownWorkers().shown.length > CARDS_UP_TO ? "table" : "cards";
  }

  function choose(view) {
    chosenView = view;
    localStorage.setItem(VIEW_KEY, view);
    const url = new URL(location.href);
    url.searchParams.set("view", view);
    history.replaceState(null, "", url);
    render();
  }

  function viewTabs(view) {
    return ["cards", "table"].map((v) => h("button", {type: "button", "data-view": v, class: v === view ? "current" : "",
      "aria-pressed": String(v === view), text: v, onclick: () => choose(v)}));
  }

  const render = JQ.coalesce(() => {
    fill(document.getElementById("summary"), summary());
    const view = currentView();
    fill(document.getElementById("fleet-views"), viewTabs(view));
    if (view === "table") {
      table = table || JQFleetTable.create(badgeStatus);
      table.update(shownWorkers().shown);
      const fleet = document.getElementById("fleet");
      if (fleet.firstChild !== table.element || fleet.childNodes.length !== 1) fill(fleet, table.element);
      return;
    }
    const byMachine = new Map();
    const shown = shownWorkers().shown;
    // A machine whose every worker is left out is left out with them.
    const kept = new Set(shown.map((w) => w.machine_id || ""));
    for (const [id, m] of live.machines) if (kept.has(id) || !(m.workers || []).length) byMachine.set(id, []);
    for (const w of shown) {
      const key = w.machine_id || "";
      if (!byMachine.has(key)) byMachine.set(key, []);
      byMachine.get(key).push(w);
    }
    const sections = [...byMachine.entries()].sort(([a], [b]) => a.localeCompare(b)).map(([id, workers]) =>
      machineCard(id, live.machines.get(id), workers.sort((a, b) => (a.gpu ?? 99) - (b.gpu ?? 99) || a.name.localeCompare(b.name))));
    fill(document.getElementById("fleet"), sections.length ? sections
      : h("p", {class: "empty", text: live.ready ? "No machine has reported yet. Start a worker: celery -A jobqueue worker -Q gpu0" : "loading…"}));
  });

  // Dead letters are not events (a worker moves a poison message aside in the broker), so
  // their count is read from the API, now and every few seconds.
  let deadLetters = null;
  async function refreshDeadLetters() {
    const res = await JQ.api("GET", "/api/dead-letters?items=0");
    const total = res.ok && res.data && typeof res.data.total === "number" ? res.data.total : null;
    if (total !== deadLetters) { deadLetters = total; render(); }
  }
  refreshDeadLetters();
  setInterval(refreshDeadLetters, 5000);

  live.subscribe(() => render());
  setInterval(render, 5000);  // a worker that stays offline leaves the view with time, not with an event
  auth.onChange(render);
})();
