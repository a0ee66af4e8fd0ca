/* Stats: completion time per service (box plot: min, median, p95, max, mean), throughput per
 * minute (stacked bars), jobs per hour over 7 days and all-time totals (kept after jobs are
 * pruned), queue depths and failure patterns, from GET /api/stats. Fetched again
 * when a job finishes (a delta says so), at most every 2 s: event-driven, no timer polling. */
"use strict";

(function () {
  const {h, fill, duration, clock, api, live} = JQ;

  function table(head, rows, cls) {
    return h("div", {class: "table-wrap"}, h("table", {class: "table " + (cls || "")},
      h("thead", {}, h("tr", {}, head.map((t) => h("th", {text: t})))),
      h("tbody", {}, rows.length ? rows.map((r) => h("tr", {}, r.map((c) => h("td", {}, c instanceof Node ? c : String(c)))))
        : h("tr", {}, h("td", {colspan: head.length, class: "muted", text: "nothing yet"})))));
  }

  function niceMax(v) {
    if (!(v > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    // Near the float limit (a forged 1e308 runtime) a rounder maximum would overflow.
    for (const m of [1, 2, 4, 8, 10]) if (m * p >= v) return Number.isFinite(m * p) ? m * p : v;
    return Number.isFinite(10 * p) ? 10 * p : v;
  }

  /** Horizontal box plot per service, one row each, x axis in seconds. */
  function timesChart(services) {
    const names = Object.keys(services).filter((s) => typeof services[s].max === "number");
    if (!names.length) return h("p", {class: "muted", text: "no completed jobs yet"});
    const W = 640, rowH = 34, left = 110, right = 20, top = 10, axisH = 26;
    const H = top + rowH * names.length + axisH;
    const max = niceMax(Math.max(...names.map((s) => services[s].max || 0)));
    const x = (v) => left + (W - left - right) * (Math.max(0, v) / max);
    const svg = h("svg", {viewBox: "0 0 " + W + " " + H, class: "svg-chart", role: "img", "aria-label": "completion time per service"});
    for (let i = 0; i <= 4; i++) {
      const v = max / 4 * i, xx = x(v);
      svg.appendChild(h("line", {x1: xx, x2: xx, y1: top, y2: H - axisH, class: "grid"}));
      svg.appendChild(h("text", {x: xx, y: H - 8, "text-anchor": "middle", class: "axis", text: duration(v)}));
    }
    names.forEach((name, i) => {
      const s = services[name], cy = top + rowH * i + rowH / 2;
      const g = h("g", {class: "box"}, h("title", {text: name + ": min " + duration(s.min) + ", median " + duration(s.median) +
        ", p95 " + duration(s.p95) + ", max " + duration(s.max) + ", mean " + duration(s.mean)}));
      g.appendChild(h("text", {x: left - 8, y: cy + 4, "text-anchor": "end", class: "label", text: name}));
      g.appendChild(h("line", {x1: x(s.min), x2: x(s.max), y1: cy, y2: cy, class: "whisker"}));
      for (const v of [s.min, s.max]) g.appendChild(h("line", {x1: x(v), x2: x(v), y1: cy - 6, y2: cy + 6, class: "whisker"}));
      const lo = x(s.median), hi = x(typeof s.p95 === "number" ? s.p95 : s.max);
      g.appendChild(h("rect", {x: lo - 1, y: cy - 9, width: Math.max(2, hi - lo + 2), height: 18, rx: 2, class: "iqr"}));
      g.appendChild(h("line", {x1: lo, x2: lo, y1: cy - 11, y2: cy + 11, class: "median"}));
      if (typeof s.mean === "number") g.appendChild(h("circle", {cx: x(s.mean), cy, r: 3.5, class: "mean"}));
      svg.appendChild(g);
    });
    return h("div", {}, svg, h("p", {class: "muted legend", text: "line: min to max · box: median to p95 · dot: mean"}));
  }

  /** Horizontal grid lines at 0, ¼ … of ``max``, labelled on the left (bar charts). */
  function gridLines(svg, max, y, left, right) {
    for (let i = 0; i <= 4; i++) {
      const v = max / 4 * i;
      svg.appendChild(h("line", {x1: left, x2: right, y1: y(v), y2: y(v), class: "grid"}));
      svg.appendChild(h("text", {x: left - 4, y: y(v) + 4, "text-anchor": "end", class: "axis", text: String(Math.round(v * 10) / 10)}));
    }
  }

  /** Stacked bars per minute: completed (green) under failed (red). */
  function throughputChart(points) {
    if (!points || !points.length) return h("p", {class: "muted", text: "no finished jobs yet"});
    // One slot per minute for the last 30 minutes at least (60 at most), gaps filled with zeros,
    // so one busy minute does not look like a whole hour of work.
    // Only minutes up to an hour around now: a forged timestamp (1e18) must not stretch the
    // axis, and at such magnitudes t += 60 would not even move.
    const nowMinute = Math.floor(JQ.serverNow() / 60) * 60;
    const byMinute = new Map(points.filter((p) => Number.isFinite(p.t) && Math.abs(p.t - nowMinute) <= 3600)
      .map((p) => [Math.floor(p.t / 60) * 60, p]));
    if (!byMinute.size) return h("p", {class: "muted", text: "no finished jobs in the last hour"});
    const end = Math.max(nowMinute, ...byMinute.keys());
    const first = Math.max(Math.min(...byMinute.keys()), end - 59 * 60);
    const start = Math.min(first, end - 29 * 60);
    const pts = [];
    for (let i = 0, t = start; t <= end && i < 120; i++, t = start + i * 60) pts.push(byMinute.get(t) || {t, completed: 0, failed: 0});
    const W = 640, H = 200, left = 36, right = 10, top = 10, axisH = 24;
    const max = niceMax(Math.max(...pts.map((p) => (p.completed || 0) + (p.failed || 0))));
    const slot = (W - left - right) / pts.length, bw = Math.max(2, slot * 0.8);
    const y = (v) => top + (H - top - axisH) * (1 - v / max);
    const svg = h("svg", {viewBox: "0 0 " + W + " " + H, class: "svg-chart", role: "img", "aria-label": "throughput per minute"});
    gridLines(svg, max, y, left, W - right);
    pts.forEach((p, i) => {
      const x0 = left + slot * i + (slot - bw) / 2, c = p.completed || 0, f = p.failed || 0;
      const g = h("g", {}, h("title", {text: clock(p.t) + ": " + c + " completed, " + f + " failed"}));
      if (c) g.appendChild(h("rect", {x: x0, y: y(c), width: bw, height: y(0) - y(c), class: "bar-ok"}));
      if (f) g.appendChild(h("rect", {x: x0, y: y(c + f), width: bw, height: y(c) - y(c + f), class: "bar-fail"}));
      svg.appendChild(g);
    });
    const label = (i) => new Date(pts[i].t * 1000).toLocaleTimeString([], {hour: "2-digit", minute: "2-digit", hour12: false});
    svg.appendChild(h("text", {x: left, y: H - 6, class: "axis", text: label(0)}));
    if (pts.length > 1) svg.appendChild(h("text", {x: W - right, y: H - 6, "text-anchor": "end", class: "axis", text: label(pts.length - 1)}));
    return svg;
  }

  /** Stacked bars per hour over the history window (completed, failed, cancelled), from the
   * hourly table that outlives pruned jobs; hours without finished jobs are drawn empty. */
  function historyChart(history) {
    const hours = ((history && history.hours) || []).filter((p) => Number.isFinite(p.t));
    if (!hours.length) return h("p", {class: "muted", text: "no finished jobs in the history window"});
    const byHour = new Map(hours.map((p) => [p.t, p]));
    const end = Math.max(Math.floor(JQ.serverNow() / 3600) * 3600, ...byHour.keys());
    const start = Math.max(Number.isFinite(history.since) ? history.since : end, end - 24 * 3600 * 400);
    const pts = [];
    for (let t = Math.min(start, ...byHour.keys()); t <= end && pts.length < 9600; t += 3600)
      pts.push(byHour.get(t) || {t, completed: 0, failed: 0, cancelled: 0});
    const W = 640, H = 200, left = 36, right = 10, top = 10, axisH = 24;
    const total = (p) => (p.completed || 0) + (p.failed || 0) + (p.cancelled || 0);
    const max = niceMax(Math.max(...pts.map(total)));
    const slot = (W - left - right) / pts.length, bw = Math.max(1, slot * 0.8);
    const y = (v) => top + (H - top - axisH) * (1 - v / max);
    const svg = h("svg", {viewBox: "0 0 " + W + " " + H, class: "svg-chart", role: "img", "aria-label": "jobs per hour"});
    gridLines(svg, max, y, left, W - right);
    pts.forEach((p, i) => {
      if (!total(p)) return;
      const x0 = left + slot * i + (slot - bw) / 2, c = p.completed || 0, f = p.failed || 0, k = p.cancelled || 0;
      const g = h("g", {class: "hour", "data-t": String(p.t)}, h("title", {text: new Date(p.t * 1000).toLocaleString([], {hour12: false}) +
        ": " + c + " completed, " + f + " failed, " + k + " cancelled" + (p.mean_runtime != null ? ", mean " + duration(p.mean_runtime) : "")}));
      if (c) g.appendChild(h("rect", {x: x0, y: y(c), width: bw, height: y(0) - y(c), class: "bar-ok"}));
      if (f) g.appendChild(h("rect", {x: x0, y: y(c + f), width: bw, height: y(c) - y(c + f), class: "bar-fail"}));
      if (k) g.appendChild(h("rect", {x: x0, y: y(c + f + k), width: bw, height: y(c + f) - y(c + f + k), class: "bar-cancel"}));
      svg.appendChild(g);
    });
    const label = (i) => new Date(pts[i].t * 1000).toLocaleDateString([], {month: "short", day: "numeric"});
    svg.appendChild(h("text", {x: left, y: H - 6, class: "axis", text: label(0)}));
    if (pts.length > 1) svg.appendChild(h("text", {x: W - right, y: H - 6, "text-anchor": "end", class: "axis", text: label(pts.length - 1)}));
    return svg;
  }

  /** All-time jobs per service and final status (pruned jobs included). */
  function historyTable(history) {
    const services = (history && history.services) || {};
    return table(["service", "completed", "failed", "timed out", "cancelled"],
      Object.entries(services).sort(([a], [b]) => a.localeCompare(b)).map(([name, s]) => [name, s.completed || 0, s.failed || 0,
        s.timed_out || 0, s.cancelled || 0]), "history");
  }

  function queueBars(queues) {
    const entries = Object.entries(queues || {}).sort(([a], [b]) => a.localeCompare(b));
    if (!entries.length) return h("p", {class: "muted", text: "no queues known"});
    const max = Math.max(1, ...entries.map(([, d]) => d || 0));
    return h("div", {class: "queue-bars"}, entries.map(([name, depth]) => h("div", {class: "queue-row", "data-queue": name},
      h("span", {class: "queue-name mono", text: name}),
      h("span", {class: "queue-bar"}, h("span", {class: "queue-fill", style: {width: (100 * (depth || 0) / max) + "%"}})),
      h("span", {class: "queue-depth", text: String(depth)}))));
  }

  function render(data) {
    const services = data.services || {};
    fill(document.getElementById("chart-times"), timesChart(services));
    fill(document.getElementById("table-times"), table(["service", "jobs", "completed", "failed", "median", "mean", "p95", "min", "max"],
      Object.entries(services).sort(([a], [b]) => a.localeCompare(b)).map(([name, s]) => [name, s.count ?? "–", s.completed ?? "–",
        s.failed ?? "–", duration(s.median), duration(s.mean), duration(s.p95), duration(s.min), duration(s.max)]), "times"));
    fill(document.getElementById("chart-throughput"), throughputChart(data.throughput));
    fill(document.getElementById("chart-history"), historyChart(data.history));
    fill(document.getElementById("table-history"), historyTable(data.history));
    fill(document.getElementById("queues"), queueBars(data.queues));
    fill(document.getElementById("table-tasks"), table(["task name", "count", "failed", "failure rate", "p50", "p95"],
      Object.entries(data.tasks || {}).sort(([a], [b]) => a.localeCompare(b)).map(([name, t]) => [name, t.count, t.failed,
        t.failure_rate === null ? "–" : (100 * t.failure_rate).toFixed(1) + "%", duration(t.p50), duration(t.p95)]), "tasks"));
    fill(document.getElementById("failures"), table(["service", "error", "message", "count", "last"],
      (data.failures || []).map((f) => [f.service || "?", f.error_type || "–", h("span", {class: "error-text", text: f.message || ""}),
        f.count, clock(f.last_at)]), "failures"));
  }

  let loading = false, last = 0, timer = null;
  async function load() {
    if (loading) return;
    loading = true;
    last = Date.now();
    const res = await api("GET", "/api/stats");
    loading = false;
    if (res.ok && res.data) render(res.data);
    else JQ.notify("stats: " + res.error, "error");
  }

  /** Reload after a change, no more than once every 2 s. */
  function soon() {
    if (timer) return;
    const wait = Math.max(0, 2000 - (Date.now() - last));
    timer = setTimeout(() => { timer = null; load(); }, wait);
  }

  live.subscribe((kind, id, data) => {
    if (kind === "snapshot") load();
    else if (kind === "job" && (!data || JQ.FINAL.has(data.status) || data.status === "queued")) soon();
  });
})();
