/* The broker page: every queue as the broker holds it (GET /api/broker), refreshed every 3 s,
 * and a purge per queue (admins; asks first). Built with textContent only (JQ.h). */
(function () {
  "use strict";
  const {h, fill, api, notify, controlButton} = JQ;

  function levels(queue) {
    const parts = Object.entries(queue.levels || {}).map(([level, n]) => level + ": " + n);
    return parts.length ? parts.join(", ") : "–";
  }

  async function purgeQueue(name) {
    if (!window.confirm("Remove every message waiting in queue " + name + "? Its jobs are cancelled.")) return;
    const res = await api("POST", "/api/queues/" + encodeURIComponent(name) + "/purge", {});
    notify(res.ok ? "purged " + res.data.removed + " message(s) from " + name + " (" + res.data.jobs_cancelled
      + " job(s) cancelled)" : "purge failed: " + res.error, res.ok ? "ok" : "error");
    load();
  }

  async function load() {
    const res = await api("GET", "/api/broker");
    if (!res.ok) { notify("broker: " + res.error, "error"); return; }
    document.getElementById("broker-transport").textContent = "(" + res.data.transport + ")";
    const rows = res.data.queues.map((q) => h("tr", {"data-queue": q.name}, [
      h("td", {text: q.name}), h("td", {class: "num queue-depth", text: String(q.depth)}),
      h("td", {text: levels(q)}), h("td", {class: "num", text: String(q.consumers)}),
      h("td", {text: (q.workers || []).join(", ") || "–"}),
      h("td", {}, [controlButton("Purge", () => purgeQueue(q.name), "danger")]),
    ]));
    fill(document.getElementById("broker-queues"), h("table", {class: "table"}, [
      h("thead", {}, [h("tr", {}, ["queue", "waiting", "by priority level", "consumers", "workers", ""].map(
        (t) => h("th", {text: t})))]),
      h("tbody", {}, rows)]));
  }

  load();
  setInterval(load, 3000);
})();
