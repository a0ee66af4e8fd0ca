/* Job lists: one row per job, the detail that matters for its state (queue position and
 * expected wait, a real progress bar with step x/y, node, elapsed and ETA, duration, the error),
 * plus the /jobs page with its state filter, service filter, search box, sort order and pager:
 * finished and failed jobs (and "all") are paged and sorted by the server, so the page never
 * loads every job of a million-job store. */
"use strict";

const JQJobs = (function () {
  const {h, fill, duration, clock, shortId, statusPill, progressBar, jobControls, ticking, live, FINAL} = JQ;

  /** pending | active | finished | failed: the four groups of the jobs page. */
  function group(job) {
    const s = job.status;
    if (s === "processing") return "active";
    if (s === "failed" || s === "timed_out") return "failed";
    if (FINAL.has(s)) return "finished";
    return "pending";
  }

  function runtime(job) {
    if (typeof job.runtime === "number") return job.runtime;
    if (job.started_at && job.finished_at) return job.finished_at - job.started_at;
    return null;
  }

  function errorText(job) {
    const err = job.error;
    if (!err) return "";
    if (typeof err === "string") return err;
    return (err.type ? err.type + ": " : "") + (err.message || "");
  }

  // Queue positions and expected waits. The rule lives on the server (monitor/web/eta.py):
  // /api/estimates is asked after a snapshot and whenever a job, worker or service changes
  // while jobs are queued (they depend on every other job, so deltas do not carry them); a
  // wait counts down from the server time it was computed at. A snapshot's (or a REST job's)
  // own queue_position / eta_seconds serve until the first answer.
  // Asked at most once a second (or every 10 answer times, for a long backlog), so a busy
  // stream costs the server a bounded amount; waits count down locally in between.
  const estimates = {at: null, jobs: new Map(), timer: null, asked: 0, applied: 0, last: 0, gap: 1000};
  function refreshEstimates() {
    if (estimates.timer !== null) return;
    const delay = Math.max(150, estimates.last + estimates.gap - Date.now());
    estimates.timer = setTimeout(async () => {
      estimates.timer = null;
      const n = ++estimates.asked;
      const sent = estimates.last = Date.now();
      const res = await JQ.api("GET", "/api/estimates");
      estimates.gap = Math.max(1000, 10 * (Date.now() - sent));
      if (!res.ok || !res.data || n < estimates.applied) return;  // a later answer is in
      estimates.applied = n;
      estimates.at = typeof res.data.at === "number" ? res.data.at : JQ.serverNow();
      estimates.jobs = new Map(Object.entries(res.data.jobs || {}));
      live.emit("estimates", null, null);
    }, delay);
  }
  function hasQueued() {
    if (estimates.jobs.size) return true;
    for (const j of live.jobs.values()) if (j.status === "queued") return true;
    return false;
  }
  live.subscribe((kind) => {
    if ((kind === "snapshot" || kind === "job" || kind === "worker" || kind === "service") && hasQueued()) refreshEstimates();
  });
  /** {position, wait} of a queued job: the server's, its wait counted down since computed. */
  function estimate(job) {
    const known = estimates.jobs.get(job.id);
    if (!known) return {position: job.queue_position, wait: job.eta_seconds};
    const wait = typeof known.wait === "number" ? Math.max(0, known.wait - (JQ.serverNow() - estimates.at)) : null;
    return {position: known.position, wait};
  }

  // Why queued jobs with requirements wait. The rule lives on the server: /api/waiting is asked
  // after a snapshot and whenever a worker or such a job changes (the snapshot and deltas do
  // not carry it: it depends on the workers, not on the job).
  const waiting = new Map();
  let waitingTimer = null;
  function refreshWaiting() {
    if (waitingTimer !== null) return;
    waitingTimer = setTimeout(async () => {
      waitingTimer = null;
      const res = await JQ.api("GET", "/api/waiting");
      if (!res.ok || !res.data) return;
      waiting.clear();
      for (const [id, reason] of Object.entries(res.data.waiting || {})) waiting.set(id, reason);
      live.emit("waiting", null, null);
    }, 300);
  }
  function hasWaitingCandidates() {
    for (const j of live.jobs.values()) if ((j.status === "queued" || j.status === "retrying") && j.requires) return true;
    return false;
  }
  live.subscribe((kind, id, data) => {
    if (kind === "snapshot") waiting.clear();
    if ((kind === "worker" || kind === "snapshot" || (kind === "job" && data && data.requires)) && hasWaitingCandidates()) {
      refreshWaiting();
    }
  });
  function waitingFor(job) {
    return job.status === "queued" || job.status === "retrying" ? (waiting.get(job.id) || null) : null;
  }

  function pendingDetail(job) {
    const bits = [];
    const reason = waitingFor(job);
    if (reason) {
      return h("div", {class: "detail"}, h("span", {class: "waiting-for", text: "waiting: " + reason}));
    }
    if (job.status === "queued") {
      const est = estimate(job);
      bits.push(est.position ? "queue position " + est.position : "queued");
      bits.push(typeof est.wait === "number" ? "expected wait ~" + duration(est.wait) : "expected wait unknown");
    } else if (job.status === "assigned") {
      bits.push("assigned, starting");
    } else if (job.status === "retrying") {
      bits.push("retrying (attempt " + ((job.attempt || 0) + 1) + ")");
      if (job.error) bits.push(errorText(job));
    } else if (job.status === "lost") {
      bits.push("its worker went offline; waiting for the broker to hand it out again");
    }
    const since = job.submitted_at || job.received_at;
    return h("div", {class: "detail"}, h("span", {text: bits.join(" · ")}),
      since ? h("span", {class: "muted"}, " · waiting ", ticking(since)) : null);
  }

  function activeDetail(job) {
    const p = job.progress || {};
    const parts = [];
    if (p.total_steps) parts.push(h("span", {class: "steps", text: "step " + (p.step || 0) + "/" + p.total_steps}));
    if (p.node !== null && p.node !== undefined && p.node !== "") parts.push(h("span", {text: "node " + p.node}));
    if (job.started_at) parts.push(h("span", {}, "elapsed ", ticking(job.started_at)));
    const eta = JQ.processingEta(job);
    if (eta === null) parts.push(h("span", {class: "eta", text: "ETA –"}));
    else parts.push(h("span", {class: "eta"}, JQ.countdown(JQ.serverNow() + eta, "ETA ")));
    const sep = [];
    parts.forEach((part, i) => { if (i) sep.push(" · "); sep.push(part); });
    return h("div", {class: "detail"}, progressBar(job),
      h("div", {class: "meta"}, sep),
      p.message ? h("div", {class: "muted msg", text: p.message}) : null);
  }

  function finishedDetail(job) {
    const took = runtime(job);
    const text = (job.status === "completed" ? "took " : job.status.replace("_", " ") + " after ") + duration(took);
    return h("div", {class: "detail"}, h("span", {class: "duration", text}),
      job.finished_at ? h("span", {class: "muted", text: " · at " + clock(job.finished_at)}) : null,
      job.status === "completed" ? null : (job.error ? h("div", {class: "error-text", text: errorText(job)}) : null));
  }

  function failedDetail(job) {
    return h("div", {class: "detail"},
      h("div", {class: "error-text job-error", text: errorText(job) || "failed (no message)"}),
      h("span", {class: "muted", text: (runtime(job) !== null ? "after " + duration(runtime(job)) : "") +
        (job.finished_at ? " · at " + clock(job.finished_at) : "")}));
  }

  function detail(job) {
    switch (group(job)) {
      case "active": return activeDetail(job);
      case "finished": return finishedDetail(job);
      case "failed": return failedDetail(job);
      default: return pendingDetail(job);
    }
  }

  /** "step 1 of 3" (of a workflow), "2 of 3" (of a batch), for a job that has them. */
  function stepText(job) {
    if (!job.workflow_id) return null;
    return "step " + (job.step || "?") + (job.workflow_steps ? " of " + job.workflow_steps : "");
  }
  function batchText(job) {
    if (!job.batch_id) return null;
    return "batch " + ((job.batch_index || 0) + 1) + (job.batch_size ? " of " + job.batch_size : "");
  }

  /** Small tags under the service: priority, workflow step, batch member, tenant. */
  function tags(job) {
    const out = [];
    if (typeof job.priority === "number") out.push(h("span", {class: "tag tag-priority", title: "priority (9 = most urgent)", text: "p" + job.priority}));
    if (job.workflow_id) {
      out.push(h("a", {class: "tag tag-workflow", href: JQ.url("/jobs?q=" + encodeURIComponent(job.workflow_id)),
        title: "workflow " + job.workflow_id, text: "wf " + shortId(job.workflow_id) + " · " + stepText(job)}));
    }
    if (job.batch_id) out.push(h("span", {class: "tag tag-batch", title: "batch " + job.batch_id, text: batchText(job)}));
    // Whose job it is: shown to who sees every tenant's (a tenant's own caller sees only its own).
    if (job.tenant && !JQ.auth.info.tenant) {
      out.push(h("a", {class: "tag tag-tenant", href: JQ.url("/jobs?tenant=" + encodeURIComponent(job.tenant)),
        title: "tenant " + job.tenant, text: job.tenant}));
    }
    return out.length ? h("div", {class: "tags"}, out) : null;
  }

  /** One job as a row (a grid on a laptop, a card on a phone). */
  function row(job) {
    const link = JQ.url("/jobs/" + encodeURIComponent(job.id));
    return h("div", {class: "job-row group-" + group(job), "data-job-id": job.id, "data-status": job.status},
      h("div", {class: "c-status"}, statusPill(job.status)),
      h("div", {class: "c-id"}, h("a", {class: "mono", href: link, title: job.id, text: shortId(job.id)})),
      h("div", {class: "c-service"}, h("span", {text: job.service || "?"}), tags(job)),
      h("div", {class: "c-worker", title: job.worker || "", text: job.worker || "–"}),
      h("div", {class: "c-detail"}, detail(job)),
      h("div", {class: "c-controls controls"}, jobControls(job)));
  }

  /** Active first, then pending by queue position, then the most recently finished. */
  function compare(a, b) {
    const rank = {active: 0, pending: 1, failed: 2, finished: 2};
    const ra = rank[group(a)], rb = rank[group(b)];
    if (ra !== rb) return ra - rb;
    if (ra === 0) return (a.started_at || 0) - (b.started_at || 0);
    if (ra === 1) return (estimate(a).position || 1e9) - (estimate(b).position || 1e9) || (a.submitted_at || 0) - (b.submitted_at || 0);
    return (b.finished_at || 0) - (a.finished_at || 0);
  }

  function matches(job, text) {
    if (!text) return true;
    const hay = [job.id, job.service, job.worker, job.machine_id, job.status, job.queue, errorText(job),
      job.workflow_id, job.batch_id,
      job.payload_summary, job.progress && job.progress.message].filter(Boolean).join(" ").toLowerCase();
    return hay.includes(text.toLowerCase());
  }

  function header() {
    return h("div", {class: "job-row job-head"},
      h("div", {class: "c-status", text: "status"}), h("div", {class: "c-id", text: "job"}),
      h("div", {class: "c-service", text: "service"}), h("div", {class: "c-worker", text: "worker"}),
      h("div", {class: "c-detail", text: "detail"}), h("div", {class: "c-controls", text: ""}));
  }

  function renderList(container, jobs, emptyText) {
    const rows = jobs.sort(compare).slice(0, 500).map(row);
    fill(container, header(), rows.length ? rows : [h("div", {class: "empty", text: emptyText || "no jobs"})]);
  }

  /** Server-side states of each tab; pending and active come from the live state (every
   * unfinished job is in it), the others are paged and sorted by the server (/api/jobs). */
  const TAB_STATES = {all: "", finished: "completed,cancelled", failed: "failed,timed_out"};
  const PAGE_SIZE = 50;

  function setupJobsPage() {
    const container = document.getElementById("jobs");
    const tabs = document.getElementById("state-filter");
    const service = document.getElementById("service-filter");
    const search = document.getElementById("search");
    const sortBy = document.getElementById("sort-by");
    const pager = document.getElementById("pager");
    const params = new URLSearchParams(location.search);
    let state = params.get("state") || "all";
    let offset = 0;
    search.value = params.get("q") || "";
    const tenant = params.get("tenant") || "";  // one tenant's jobs (a link from a tenant tag)
    const known = new Set();
    // The server's page for the current tab: its ids in server order and the exact total.
    let page = {key: null, ids: [], rows: new Map(), total: null};
    let fetching = false, again = false, lastFetch = 0, timer = null;

    function syncServices() {
      for (const job of live.jobs.values()) {
        if (job.service && !known.has(job.service)) {
          known.add(job.service);
          service.appendChild(h("option", {value: job.service, text: job.service}));
        }
      }
    }

    function query() {
      const [sort, order] = (sortBy && sortBy.value ? sortBy.value : "submitted:desc").split(":");
      const p = new URLSearchParams({limit: PAGE_SIZE, offset, sort, order});
      if (TAB_STATES[state]) p.set("state", TAB_STATES[state]);
      if (service.value) p.set("service", service.value);
      if (tenant) p.set("tenant", tenant);
      const q = search.value.trim();
      if (q) p.set("q", q);
      return p.toString();
    }

    async function fetchPage() {
      if (fetching) { again = true; return; }
      fetching = true;
      lastFetch = Date.now();
      const key = query();
      const res = await JQ.api("GET", "/api/jobs?" + key);
      fetching = false;
      if (res.ok && res.data && key === query()) {
        page = {key, ids: res.data.jobs.map((j) => j.id), rows: new Map(res.data.jobs.map((j) => [j.id, j])),
          total: res.data.total};
        render();
      }
      if (again || key !== query()) { again = false; fetchPage(); }
    }

    /** Refetch the page soon (at most once a second while jobs change). */
    function refetchSoon() {
      if (timer) return;
      const wait = Math.max(0, 1000 - (Date.now() - lastFetch));
      timer = setTimeout(() => { timer = null; fetchPage(); }, wait);
    }

    function renderPager(shown) {
      if (!pager) return;
      if (!(state in TAB_STATES) || page.total === null) { fill(pager); return; }
      const first = page.total ? offset + 1 : 0;
      const prev = h("button", {type: "button", class: "pager-prev", text: "‹ newer"});
      const next = h("button", {type: "button", class: "pager-next", text: "older ›"});
      prev.disabled = offset === 0;
      next.disabled = offset + PAGE_SIZE >= page.total;
      prev.addEventListener("click", () => { offset = Math.max(0, offset - PAGE_SIZE); fetchPage(); });
      next.addEventListener("click", () => { offset += PAGE_SIZE; fetchPage(); });
      fill(pager, prev, h("span", {class: "pager-range", text: first + "–" + (offset + shown) + " of " + page.total}), next);
    }

    const render = JQ.coalesce(() => {
      syncServices();
      for (const b of tabs.querySelectorAll("button")) b.classList.toggle("current", b.dataset.state === state);
      if (state in TAB_STATES) {
        // The server's page, each row as fresh as the live state knows it.
        const jobs = page.key === query() ? page.ids.map((id) => live.jobs.get(id) || page.rows.get(id)) : [];
        const rows = jobs.map(row);
        fill(container, header(), rows.length ? rows : [h("div", {class: "empty",
          text: page.key === query() ? "no jobs match" : "loading…"})]);
        renderPager(rows.length);
        return;
      }
      const q = search.value.trim();
      const jobs = [...live.jobs.values()].filter((j) =>
        group(j) === state && (!service.value || j.service === service.value) && (!tenant || j.tenant === tenant)
        && matches(j, q));
      renderList(container, jobs, live.ready ? "no jobs match" : "loading…");
      renderPager(0);
    });

    function changed() {
      offset = 0;
      render();
      if (state in TAB_STATES) fetchPage();
    }

    tabs.addEventListener("click", (ev) => {
      const b = ev.target.closest("button");
      if (!b) return;
      state = b.dataset.state;
      changed();
    });
    service.addEventListener("change", changed);
    search.addEventListener("input", changed);
    if (sortBy) sortBy.addEventListener("change", changed);
    live.subscribe((kind) => {
      if (kind === "snapshot" || kind === "job" || kind === "waiting" || kind === "estimates") {
        render();
        if (state in TAB_STATES) refetchSoon();
      }
    });
    JQ.auth.onChange(render);
    changed();
  }

  if (document.body.dataset.page === "jobs") setupJobsPage();

  return {group, row, detail, renderList, errorText, runtime, compare, matches, stepText, batchText, estimate, waitingFor};
})();
