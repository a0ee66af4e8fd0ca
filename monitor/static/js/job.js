/* One job, outputs first: a gallery (gallery.js), then what can be done with the job (download
 * a ComfyUI job's workflow as API JSON, re-run it), its state, progress, error and fields, the
 * payload summary, the result JSON folded, and the event timeline with its progress events
 * folded into one row. The job object comes live from /ws; the timeline from
 * GET /api/jobs/<id>, fetched again whenever a delta for this job arrives (event-driven, never
 * on a timer). */
"use strict";

(function () {
  const {h, fill, duration, clock, statusPill, jobControls, api, live, auth} = JQ;
  const jobId = document.body.dataset.jobId;
  let job = null;
  let events = [];
  let workflow = null;
  let missing = false;

  function field(label, value) {
    if (value === null || value === undefined || value === "") return null;
    return [h("dt", {text: label}), h("dd", {}, value instanceof Node ? value : String(value))];
  }

  /** ``value``, or "not seen" where the job must have had one and neither its events nor the
   * result backend said it (unknown, never guessed); nothing where it may not exist yet. */
  function seen(value, mustHave) {
    if (value !== null && value !== undefined && value !== "") return value;
    return mustHave ? h("span", {class: "muted not-seen", text: "not seen"}) : null;
  }

  function pretty(value) {
    try { return JSON.stringify(value, null, 2); } catch (exc) { return String(value); }
  }

  /** A job's requirements in one line: models, VRAM, tags. */
  function requiresText(req) {
    const bits = [];
    if (req.models && req.models.length) bits.push("models " + req.models.join(", "));
    if (typeof req.vram_gb === "number") bits.push(req.vram_gb + " GiB VRAM");
    if (req.tags && req.tags.length) bits.push("tags " + req.tags.join(", "));
    return bits.join(" · ");
  }

  /** A link to another task's page. */
  function taskLink(id) {
    return h("a", {class: "mono task-link", href: JQ.url("/jobs/" + encodeURIComponent(id)), text: JQ.shortId(id)});
  }

  /** What the events said of the Celery task: name, args, kwargs, family, schedule (shown
   *  only when known: a field no event carried is not guessed). */
  function taskFields() {
    const kids = (job.children || []).map(taskLink);
    return [
      field("task", job.name), field("args", job.args), field("kwargs", job.kwargs),
      field("scheduled", job.scheduled ? "waits for its ETA" : null),
      field("eta", job.eta ? clock(job.eta) : null), field("expires", job.expires ? clock(job.expires) : null),
      field("routing key", job.routing_key),
      field("parent", job.parent_id ? taskLink(job.parent_id) : null),
      field("root", job.root_id && job.root_id !== job.id ? taskLink(job.root_id) : null),
      field("group", job.group_id),
      field("children", kids.length ? h("span", {class: "children"}, kids) : null),
    ].filter(Boolean).flat();
  }

  let shownControls = null;
  function renderDetail() {
    const detail = document.getElementById("job-detail");
    fill(document.getElementById("job-status"), job ? statusPill(job.status) : null);
    // Controls are redrawn only when what they depend on changes: a button replaced on every
    // progress update could never be clicked while the job runs.
    const controlsKey = job ? [auth.canControl(), job.id, job.status].join("|") : "";
    if (controlsKey !== shownControls) {
      shownControls = controlsKey;
      fill(document.getElementById("job-controls"), job ? jobControls(job) : []);
    }
    if (!job) {
      fill(detail, h("p", {class: missing ? "error-text" : "muted", text: missing ? "No job with this id." : "loading…"}));
      return;
    }
    const p = job.progress || {};
    const group = JQJobs.group(job);
    const took = JQJobs.runtime(job);
    // It ran: it had a worker and a start, whether or not anyone saw them.
    const ran = ["completed", "failed", "timed_out"].includes(job.status);
    const preview = JQ.previewImage(job, "job-preview");
    fill(detail,
      group === "active" || group === "pending" ? h("div", {class: "job-progress"}, JQJobs.detail(job)) : null,
      preview ? h("figure", {id: "job-preview", class: "preview"}, preview,
        h("figcaption", {class: "muted", text: "live preview #" + job.progress.preview})) : null,
      job.error ? h("div", {class: "error-box"}, h("strong", {text: job.error.type || "error"}),
        h("div", {class: "job-error", text: job.error.message || JQJobs.errorText(job)}),
        job.error.details && Object.keys(job.error.details).length ? h("pre", {class: "mono", text: pretty(job.error.details)}) : null) : null,
      h("dl", {class: "fields"},
        field("tenant", job.tenant && !JQ.auth.info.tenant ? job.tenant : null),
        field("service", job.service), field("queue", job.queue), field("priority", job.priority),
        field("requires", job.requires ? requiresText(job.requires) : null),
        field("worker", seen(job.worker, ran)), field("machine", job.machine_id),
        field("attempt", job.attempt), field("retries", job.retries),
        field("workflow", job.workflow_id ? h("span", {class: "mono", text: job.workflow_id}) : null),
        field("step", JQJobs.stepText(job)),
        field("batch", job.batch_id ? JQJobs.batchText(job) + " (" + job.batch_id + ")" : null),
        field("progress", p.total_steps ? "step " + (p.step || 0) + "/" + p.total_steps + " · " + (p.percent || 0).toFixed(0) + "%" : null),
        field("node", p.node), field("message", p.message),
        field("submitted", seen(job.submitted_at ? clock(job.submitted_at) : null, true)),
        field("started", seen(job.started_at ? clock(job.started_at) : null, ran)),
        field("finished", job.finished_at ? clock(job.finished_at) : null),
        field("duration", took !== null ? duration(took) : null),
        field("queue position", job.status === "queued" ? JQJobs.estimate(job).position : null),
        ...taskFields()),
      workflowSteps(),
      batchMembers(),
      h("h2", {text: "Payload"}),
      h("pre", {class: "payload mono", text: job.payload_summary || "(no payload summary)"}),
      job.result ? folded("job-result", "Result JSON", h("pre", {class: "result mono", text: pretty(job.result)})) : null);
  }

  /** A folded section; it stays open across redraws once opened. */
  const openFolds = new Set();
  function folded(id, title, body) {
    const box = h("details", {id, class: "folded"}, h("summary", {text: title}), body);
    box.open = openFolds.has(id);
    box.addEventListener("toggle", () => { if (box.open) openFolds.add(id); else openFolds.delete(id); });
    return box;
  }

  /** Re-run (any ended job that the retry control does not already offer) and, for a ComfyUI
   * job, its workflow as an API-format JSON file (to open in ComfyUI). */
  let shownActions = null;
  function renderActions() {
    const key = job ? [auth.canControl(), job.status, job.service].join("|") : "";
    if (key === shownActions) return;
    shownActions = key;
    const out = [];
    if (job && job.service === "comfyui") {
      out.push(JQ.controlButton("workflow (API JSON)", downloadWorkflow));
    }
    if (job && auth.canControl() && job.status === "completed") {
      out.push(JQ.controlButton("re-run", async () => {
        const res = await JQ.control("re-run " + JQ.shortId(job.id), "POST", "/api/jobs/" + encodeURIComponent(job.id) + "/retry");
        if (res.ok && res.data && res.data.id) JQ.notify("re-run as " + res.data.id, "ok");
      }));
    }
    fill(document.getElementById("job-actions"), out);
  }

  async function downloadWorkflow() {
    const res = await api("GET", "/api/jobs/" + encodeURIComponent(jobId) + "/payload");
    const workflow = res.ok && res.data && res.data.payload ? res.data.payload.workflow : null;
    if (!workflow) { JQ.notify("workflow not available: " + (res.error || "no workflow in the payload"), "error"); return; }
    const url = URL.createObjectURL(new Blob([JSON.stringify(workflow, null, 2)], {type: "application/json"}));
    const link = h("a", {class: "hidden-download"});
    link.href = url;  // our own blob: URL (h() takes only http(s) and same-origin paths)
    link.download = "workflow-" + jobId + ".json";
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  }

  /** The workflow's steps 1..total with links; steps not published yet (a step is queued
   * only when the one before it ends) are listed as such. */
  function workflowSteps() {
    if (!job.workflow_id) return null;
    const known = new Map();
    for (const s of (workflow && workflow.steps) || []) known.set(s.step, live.jobs.get(s.id) || s);
    const total = Math.max(job.workflow_steps || 0, (workflow && workflow.total_steps) || 0, job.step || 0);
    const items = [];
    for (let n = 1; n <= total; n++) {
      const s = known.get(n) || (n === job.step ? job : null);
      const current = s && s.id === jobId;
      items.push(h("li", {class: current ? "current" : null, "data-step": n, "data-job-id": s ? s.id : null},
        "step " + n + ": ",
        s ? (current ? h("span", {class: "mono", text: JQ.shortId(s.id)}) :
          h("a", {class: "mono", href: JQ.url("/jobs/" + encodeURIComponent(s.id)), title: s.id, text: JQ.shortId(s.id)})) :
          h("span", {class: "muted", text: "not queued yet"}),
        s ? [" ", statusPill(s.status), " ", s.service || ""] : null));
    }
    return [h("h2", {text: "Workflow" + (workflow ? " · " + String(workflow.status).replace("_", " ") : "")}),
      h("ol", {id: "workflow-steps", class: "workflow-steps"}, items)];
  }

  /** The other jobs of the same batch that the live state holds. */
  function batchMembers() {
    if (!job.batch_id) return null;
    const members = [...live.jobs.values()].filter((j) => j.batch_id === job.batch_id)
      .sort((a, b) => (a.batch_index || 0) - (b.batch_index || 0));
    if (members.length < 2) return null;
    return [h("h2", {text: "Batch"}), h("ol", {id: "batch-members", class: "workflow-steps"}, members.map((m) =>
      h("li", {class: m.id === jobId ? "current" : null, "data-job-id": m.id},
        h("a", {class: "mono", href: JQ.url("/jobs/" + encodeURIComponent(m.id)), text: JQ.shortId(m.id)}), " ", statusPill(m.status))))];
  }

  let fetchingWf = false, againWf = false;
  async function loadWorkflow() {
    if (!job || !job.workflow_id) return;
    if (fetchingWf) { againWf = true; return; }
    fetchingWf = true;
    const res = await api("GET", "/api/workflows/" + encodeURIComponent(job.workflow_id));
    fetchingWf = false;
    if (res.ok && res.data) workflow = res.data;
    render();
    if (againWf) { againWf = false; loadWorkflow(); }
  }

  function renderOutputs() {
    const box = document.getElementById("job-outputs");
    const result = job && job.result;
    const nodes = JQGallery.render(jobId, result);
    if (result && result.output !== undefined && result.output !== null) {
      nodes.push(h("div", {class: "output output-text"}, h("span", {class: "muted", text: "output: "}),
        h("span", {class: "mono", text: typeof result.output === "string" ? result.output : pretty(result.output)})));
    }
    // Media elements are kept while the same files are shown: a redraw must not stop a player.
    const key = JSON.stringify(result ? [result.files, result.output] : null) + (job ? job.status : "");
    if (key === box.dataset.shown) return;
    box.dataset.shown = key;
    fill(box, nodes.length ? nodes : h("p", {class: "muted", text: job && JQ.FINAL.has(job.status) ? "no outputs" : "outputs appear when the job completes"}));
  }

  function eventRow(ev, first) {
    const fields = ev.fields || {};
    const summary = Object.entries(fields).filter(([k]) => !["uuid", "hostname", "clock", "pid", "utcoffset", "timestamp", "local_received"].includes(k))
      .map(([k, v]) => k + "=" + (typeof v === "string" ? v : JSON.stringify(v))).join("  ");
    return h("li", {class: "event", "data-type": ev.type},
      h("span", {class: "event-time mono", text: clock(ev.timestamp)}),
      h("span", {class: "event-rel muted", text: first ? "+" + duration(ev.timestamp - first) : ""}),
      h("span", {class: "event-type", text: ev.type}),
      h("span", {class: "event-host muted", text: fields.hostname || ""}),
      h("div", {class: "event-fields mono", text: summary}));
  }

  /** The progress events as one row (where the first was), the steps they went through in its
   * summary and each event inside, folded. */
  function progressRow(progress, first) {
    const steps = progress.map((ev) => (ev.fields || {}).step).filter((s) => typeof s === "number");
    const total = progress.map((ev) => (ev.fields || {}).total_steps).filter((s) => typeof s === "number").pop();
    const span = steps.length ? " · step " + Math.min(...steps) + " → " + Math.max(...steps) + (total ? "/" + total : "") : "";
    const last = progress[progress.length - 1];
    return h("li", {class: "event event-progress-group", "data-type": "task-progress", "data-count": progress.length},
      h("span", {class: "event-time mono", text: clock(progress[0].timestamp)}),
      h("span", {class: "event-rel muted", text: first ? "+" + duration(progress[0].timestamp - first) + " … +" + duration(last.timestamp - first) : ""}),
      folded("progress-events", progress.length + " progress event" + (progress.length === 1 ? "" : "s") + span,
        h("ol", {class: "timeline progress-events"}, progress.map((ev) => eventRow(ev, first)))));
  }

  function renderTimeline() {
    const list = document.getElementById("timeline");
    const first = events.length ? events[0].timestamp : null;
    const progress = events.filter((ev) => ev.type === "task-progress");
    const rows = [];
    for (const ev of events) {
      if (ev.type !== "task-progress") rows.push(eventRow(ev, first));
      else if (ev === progress[0]) rows.push(progressRow(progress, first));
    }
    fill(list, rows.length ? rows : h("li", {class: "muted", text: "no events yet"}));
  }

  let fetching = false, again = false;
  async function load() {
    if (fetching) { again = true; return; }
    fetching = true;
    const res = await api("GET", "/api/jobs/" + encodeURIComponent(jobId));
    fetching = false;
    if (res.ok && res.data) {
      const {events: evs, ...rest} = res.data;
      events = Array.isArray(evs) ? evs : [];
      // The websocket copy wins when it is newer (higher seq).
      if (!job || (rest.seq || 0) >= (job.seq || 0)) job = rest;
      missing = false;
      if (job.workflow_id && !workflow) loadWorkflow();
    } else if (res.status === 404 && !job) {
      missing = true;
    }
    render();
    maybeLoadWebhooks();
    if (again) { again = false; load(); }
  }

  const render = JQ.coalesce(() => {
    renderDetail(); renderActions(); renderOutputs(); renderTimeline(); JQCanvas.show("job-canvas", job);
  });

  // Webhook tries (GET /api/jobs/<id>/webhooks): workers record them in the result backend,
  // not as events, so while a delivery is still pending the page asks again every few seconds.
  // Asked once when the page opens and once when the job ends; only the webhook box redraws.
  let hooks = null, hooksTimer = null, hooksAsked = false, hooksAskedFinal = false;
  function maybeLoadWebhooks() {
    const final = !!(job && JQ.FINAL.has(job.status));
    if (hooksTimer || (hooksAsked && (!final || hooksAskedFinal))) return;
    hooksAsked = true;
    if (final) hooksAskedFinal = true;
    loadWebhooks();
  }
  async function loadWebhooks() {
    hooksTimer = null;
    const res = await api("GET", "/api/jobs/" + encodeURIComponent(jobId) + "/webhooks");
    if (res.ok && res.data) hooks = res.data;
    renderWebhooks();
    const tries = hooks && Array.isArray(hooks.attempts) ? hooks.attempts : [];
    const done = tries.some((t) => t.delivered);
    if (hooks && hooks.webhook_url && job && JQ.FINAL.has(job.status) && !done && !hooksTimer) {
      hooksTimer = setTimeout(loadWebhooks, 5000);
    }
  }

  function renderWebhooks() {
    const box = document.getElementById("job-webhooks");
    if (!box) return;
    const url = hooks && hooks.webhook_url;
    const tries = hooks && Array.isArray(hooks.attempts) ? hooks.attempts : [];
    if (!url && !tries.length) { fill(box, h("p", {class: "muted", text: "no webhook"})); return; }
    const rows = tries.map((t) => h("li", {class: "webhook-try" + (t.delivered ? " delivered" : "")},
      h("span", {class: "mono", text: "try " + t.try + " "}),
      h("span", {class: "muted", text: t.at ? clock(t.at) + " " : ""}),
      h("span", {text: t.delivered ? "delivered (" + t.status_code + ")"
        : t.refused ? t.error : "failed: " + (t.status_code || "") + " " + (t.error || "")}),
      h("span", {class: "muted mono", text: " " + (t.webhook_id || "") + (t.worker ? " via " + t.worker : "")})));
    fill(box, [h("p", {class: "mono", text: url || ""}),
      rows.length ? h("ol", {class: "webhook-tries"}, ...rows) : h("p", {class: "muted", text: "not sent yet"})]);
  }

  live.subscribe((kind, id, data) => {
    if (kind === "snapshot") {
      const fresh = live.jobs.get(jobId);
      if (fresh) job = fresh;
      load();
    } else if (kind === "job" && id === jobId) {
      if (data) job = data;
      load();
      loadWorkflow();
    } else if (kind === "job" && data && job && job.workflow_id && data.workflow_id === job.workflow_id) {
      loadWorkflow();  // a sibling step moved (or a later step was just queued)
    } else if (kind === "job" && data && job && job.batch_id && data.batch_id === job.batch_id) {
      render();
    } else if (kind === "estimates" && job && job.status === "queued") {
      render();  // its queue position moved
    }
  });
  auth.onChange(render);
  render();
})();
