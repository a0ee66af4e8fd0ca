/* The canvas of a job page: the chain, group or chord the task belongs to, drawn as a tree
 * from its root (GET /api/jobs/<id>/canvas), each node's status live from the websocket.
 * A node whose parent is not in the canvas hangs under the root. Built with textContent only. */
"use strict";

const JQCanvas = (function () {
  const {h, fill, api, live, statusPill, shortId} = JQ;
  let canvas = null, loading = false, again = false;
  let boxId = null, jobId = null;

  function node(task) {
    return live.jobs.get(task.id) || task;
  }

  function item(task, kids, depth) {
    const t = node(task);
    const here = t.id === jobId;
    const label = here ? h("strong", {class: "mono", text: shortId(t.id)})
      : h("a", {class: "mono task-link", href: JQ.url("/jobs/" + encodeURIComponent(t.id)), title: t.id, text: shortId(t.id)});
    const below = depth < 50 ? (kids.get(t.id) || []).map((k) => item(k, kids, depth + 1)) : [];
    return h("li", {class: here ? "current" : null, "data-task-id": t.id, "data-status": t.status},
      label, " ", statusPill(t.status), " ", h("span", {text: t.name || t.service || "(name not seen)"}),
      t.group_id ? h("span", {class: "muted", text: " group " + shortId(t.group_id)}) : null,
      below.length ? h("ul", {}, below) : null);
  }

  function draw() {
    const box = document.getElementById(boxId);
    if (!box || !canvas) return;
    const ids = new Set(canvas.nodes.map((n) => n.id));
    const kids = new Map();
    let root = null;
    for (const n of canvas.nodes) {
      if (n.id === canvas.root) { root = n; continue; }
      const parent = n.parent_id && ids.has(n.parent_id) ? n.parent_id : canvas.root;
      if (!kids.has(parent)) kids.set(parent, []);
      kids.get(parent).push(n);
    }
    const top = root ? [item(root, kids, 0)]
      : [h("li", {class: "muted", text: "root " + shortId(canvas.root) + " (not seen)"}),
        ...(kids.get(canvas.root) || []).map((k) => item(k, kids, 1))];
    fill(box, h("h2", {text: "Canvas · " + canvas.nodes.length + " task" + (canvas.nodes.length === 1 ? "" : "s")
        + (canvas.truncated ? " (first 500)" : "")}),
      h("ul", {id: "canvas-tree", class: "canvas-tree"}, top));
  }

  async function load() {
    if (loading) { again = true; return; }
    loading = true;
    const res = await api("GET", "/api/jobs/" + encodeURIComponent(jobId) + "/canvas");
    loading = false;
    if (res.ok && res.data) canvas = res.data;
    draw();
    if (again) { again = false; load(); }
  }

  /** Draw the canvas of ``job`` into element ``id`` when the job is part of one. */
  function show(id, job) {
    boxId = id;
    if (!job || (!job.parent_id && !job.root_id && !(job.children || []).length)) return;
    if (jobId !== job.id) { jobId = job.id; canvas = null; load(); } else draw();
  }

  live.subscribe((kind, id, data) => {
    if (!canvas || kind !== "job" || !data) return;
    const known = canvas.nodes.some((n) => n.id === id);
    if (known) draw();
    else if (data.root_id === canvas.root || canvas.nodes.some((n) => n.id === data.parent_id)) load();
  });

  return {show};
})();
