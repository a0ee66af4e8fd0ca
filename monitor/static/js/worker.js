/* One worker's page: what Celery's inspect says of it (GET /api/workers/<name>/inspect, every
 * 5 s) and its remote controls: pool, consumers, per-task-type limits, revoke. Built with
 * textContent only (JQ.h); every control answers with a notice. */
(function () {
  "use strict";
  const {h, fill, api, notify, controlButton} = JQ;
  const name = document.body.dataset.worker;
  const base = "/api/workers/" + encodeURIComponent(name);

  async function act(label, path, body) {
    const res = await api("POST", path, body);
    notify(res.ok ? label + ": done" : label + " failed: " + res.error, res.ok ? "ok" : "error");
    load();
  }

  function pretty(value) { return JSON.stringify(value === undefined ? null : value, null, 2); }

  function taskList(id, tasks, withRevoke) {
    const rows = (tasks || []).map((t) => h("tr", {"data-task-id": t.id || ""}, [
      h("td", {}, [h("a", {class: "mono", href: JQ.url("/jobs/" + encodeURIComponent(t.id || "")), text: JQ.shortId(t.id || "")})]),
      h("td", {text: t.name || ""}), h("td", {class: "mono", text: t.args || ""}),
      h("td", {}, withRevoke ? [controlButton("terminate", () => act("terminate " + JQ.shortId(t.id),
        "/api/tasks/" + encodeURIComponent(t.id) + "/revoke", {terminate: true, signal: "SIGTERM"}), "danger")] : []),
    ]));
    fill(document.getElementById(id), rows.length ? h("table", {class: "table"}, [h("tbody", {}, rows)])
      : h("p", {class: "muted", text: "none"}));
  }

  function registered(types) {
    const rows = (types || []).map((task) => {
      const rate = h("input", {placeholder: "10/m", class: "rate-input"});
      const hard = h("input", {type: "number", placeholder: "hard s", class: "hard-input"});
      return h("tr", {"data-task-type": task}, [h("td", {class: "mono", text: task}),
        h("td", {}, [rate, controlButton("set rate", () => act("rate limit of " + task,
          "/api/task-types/" + encodeURIComponent(task) + "/limits", {rate_limit: rate.value, worker: name}))]),
        h("td", {}, [hard, controlButton("set time limit", () => act("time limit of " + task,
          "/api/task-types/" + encodeURIComponent(task) + "/limits",
          {time_limit: hard.value ? Number(hard.value) : null, worker: name}))])]);
    });
    fill(document.getElementById("worker-registered"), rows.length ? h("table", {class: "table"}, [h("tbody", {}, rows)])
      : h("p", {class: "muted", text: "none"}));
  }

  async function load() {
    const res = await api("GET", base + "/inspect");
    if (!res.ok) { fill(document.getElementById("worker-pool"), h("p", {class: "error-text", text: res.error})); return; }
    const d = res.data, pool = (d.stats && d.stats.pool) || {};
    fill(document.getElementById("worker-pool"), h("p", {id: "pool-size",
      "data-processes": String((pool.processes || []).length || pool["max-concurrency"] || 0),
      text: "max concurrency " + (pool["max-concurrency"] ?? "?") + " · processes " + (pool.processes || []).length
        + (pool.implementation ? " · " + pool.implementation : "")}));
    const queues = (d.active_queues || []).map((q) => h("li", {"data-queue": q.name}, [h("span", {class: "mono", text: q.name}), " ",
      controlButton("cancel", () => act("cancel consumer " + q.name, base + "/consumers", {action: "cancel", queue: q.name}), "danger")]));
    fill(document.getElementById("worker-queues"), queues.length ? h("ul", {}, queues) : h("p", {class: "muted", text: "none"}));
    registered(d.registered);
    taskList("worker-active", d.active, true);
    taskList("worker-reserved", d.reserved, false);
    taskList("worker-scheduled", (d.scheduled || []).map((s) => s.request || s), false);
    fill(document.getElementById("worker-revoked"), h("p", {class: "mono", text: (d.revoked || []).join(", ") || "none"}));
    document.getElementById("worker-conf").textContent = pretty(d.conf);
    document.getElementById("worker-stats").textContent = pretty(d.stats);
  }

  document.getElementById("pool-grow").addEventListener("click", () => act("grow", base + "/pool", {action: "grow", n: 1}));
  document.getElementById("pool-shrink").addEventListener("click", () => act("shrink", base + "/pool", {action: "shrink", n: 1}));
  document.getElementById("pool-restart").addEventListener("click", () => act("restart", base + "/pool", {action: "restart"}));
  document.getElementById("autoscale-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    act("autoscale", base + "/pool", {action: "autoscale", min: Number(document.getElementById("autoscale-min").value),
      max: Number(document.getElementById("autoscale-max").value)});
  });
  document.getElementById("consumer-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    act("add consumer", base + "/consumers", {action: "add", queue: document.getElementById("consumer-queue").value.trim()});
  });
  load();
  setInterval(load, 5000);
})();
