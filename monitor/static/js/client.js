/* Client test page: pick a service, edit its JSON payload (an example per service), choose a
 * batch count, POST /api/jobs, then follow the created jobs live from /ws. */
"use strict";

(function () {
  const {h, api, live, auth, notify} = JQ;
  const examples = JSON.parse(document.getElementById("examples").textContent || "{}");
  const service = document.getElementById("service");
  const payload = document.getElementById("payload");
  const count = document.getElementById("count");
  const priority = document.getElementById("priority");
  const error = document.getElementById("submit-error");
  const submitted = document.getElementById("submitted");
  const STORE = "jobqueue.client.submitted";
  // Jobs created from this tab, newest first (kept for the tab's life across reloads).
  let mine = [];
  try { mine = JSON.parse(sessionStorage.getItem(STORE) || "[]").filter((id) => typeof id === "string"); } catch (exc) { mine = []; }

  function loadExample() {
    const ex = examples[service.value];
    payload.value = ex === null || ex === undefined ? "{}" : JSON.stringify(ex, null, 2);
    error.textContent = "";
  }

  const render = JQ.coalesce(() => {
    const jobs = mine.map((id) => live.jobs.get(id) || {id, status: "queued", service: "?", progress: null});
    JQJobs.renderList(submitted, jobs, "nothing submitted from this page yet");
    // Outputs right under each finished job's row.
    for (const job of jobs) {
      const result = job.result;
      if (!result) continue;
      const row = submitted.querySelector('[data-job-id="' + CSS.escape(job.id) + '"] .c-detail');
      if (!row) continue;
      const files = Array.isArray(result.files) ? result.files : [];
      row.appendChild(h("div", {class: "outputs-inline"},
        result.output !== undefined && result.output !== null
          ? h("span", {class: "mono output-text", text: "output: " + (typeof result.output === "string" ? result.output : JSON.stringify(result.output))}) : null,
        files.map((f) => {
          const url = JQ.safeUrl(f && f.url);
          const name = String((f && (f.name || f.filename)) || f);
          return url && /\.(png|jpe?g|webp|gif)$/i.test(name)
            ? h("a", {href: url, target: "_blank", rel: "noopener"}, h("img", {src: url, alt: name, class: "thumb"}))
            : h("span", {class: "mono", text: name});
        })));
    }
  });

  document.getElementById("example").addEventListener("click", loadExample);
  service.addEventListener("change", loadExample);

  document.getElementById("submit-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    error.textContent = "";
    let body;
    try {
      body = JSON.parse(payload.value);
    } catch (exc) {
      error.textContent = "payload is not valid JSON: " + exc.message;
      return;
    }
    const n = parseInt(count.value, 10);
    if (!(n >= 1 && n <= 100)) { error.textContent = "count must be 1..100"; return; }
    const request = {service: service.value, payload: body, count: n};
    if (priority.value !== "") request.priority = parseInt(priority.value, 10);
    const button = document.getElementById("submit");
    button.disabled = true;
    const res = await api("POST", "/api/jobs", request);
    syncSubmit();
    if (!res.ok) {
      error.textContent = res.error;
      if (res.status === 401 || res.status === 403) auth.refresh();
      return;
    }
    const ids = ((res.data && res.data.jobs) || []).map((j) => j.id).filter(Boolean);
    mine = ids.concat(mine).slice(0, 200);
    sessionStorage.setItem(STORE, JSON.stringify(mine));
    notify("submitted " + ids.length + " job" + (ids.length === 1 ? "" : "s"), "ok");
    render();
  });

  live.subscribe((kind, id) => { if (kind === "snapshot" || kind === "estimates" || (kind === "job" && mine.includes(id))) render(); });
  // Submitting is a control: off in read-only mode and until the server accepts our credentials.
  function syncSubmit() {
    const button = document.getElementById("submit");
    const allowed = auth.canControl();
    button.disabled = !allowed;
    button.title = allowed ? "" : (auth.info.read_only ? "the monitor is read-only" : "log in to submit jobs");
  }
  auth.onChange(syncSubmit);
  syncSubmit();
  auth.onChange(render);
  // Start on the first service that has an example (its connector is installed here).
  const ready = [...service.options].find((o) => examples[o.value] !== null && examples[o.value] !== undefined);
  if (ready) service.value = ready.value;
  loadExample();
  render();
})();
