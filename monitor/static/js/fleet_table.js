/* Fleet table: one compact row per worker, sortable by any column and filtered by status,
 * machine, service, tag and connector state, for fleets too big for cards (fleet.js picks it). */
"use strict";

(function () {
  const {h, fill, shortId, statusPill, ticking} = JQ;

  function tags(w) { return ((w.capabilities || {}).tags || []).map(String); }

  /** ``create(badgeStatus)``: the table's controls and body, updated with ``update(workers)``. */
  function create(badgeStatus) {
    const connectorStates = (w) => Object.entries(w.connectors || {}).map(([, c]) => badgeStatus(w, c || {}));
    const COLUMNS = [
      {key: "name", label: "worker", value: (w) => w.name},
      {key: "machine", label: "machine", value: (w) => w.machine_id || ""},
      {key: "gpu", label: "GPU", value: (w) => (typeof w.gpu === "number" ? w.gpu : -1)},
      {key: "status", label: "status", value: (w) => w.status || ""},
      {key: "connectors", label: "connectors", value: (w) => connectorStates(w).sort().join(" ")},
      {key: "job", label: "current job", value: (w) => w.current_job || ""},
      {key: "processed", label: "processed", value: (w) => w.processed || 0},
      {key: "failed", label: "failed", value: (w) => w.failed || 0},
      {key: "heartbeat", label: "heartbeat", value: (w) => w.heartbeat_at || 0},
      {key: "tags", label: "tags", value: (w) => tags(w).join(" ")},
    ];
    const FILTERS = [
      {key: "status", label: "status", values: (w) => [w.status || "unknown"]},
      {key: "machine", label: "machine", values: (w) => [w.machine_id || "(unknown)"]},
      {key: "service", label: "service", values: (w) => Object.keys(w.connectors || {})},
      {key: "tag", label: "tag", values: tags},
      {key: "connector", label: "connector state", values: connectorStates},
    ];
    const state = {sort: "name", dir: 1, filters: {}, text: ""};
    let workers = [];

    const selects = {};
    const search = h("input", {id: "fleet-search", type: "search", placeholder: "worker name", "aria-label": "filter by worker name",
      oninput: () => { state.text = search.value.trim().toLowerCase(); draw(); }});
    const count = h("span", {id: "fleet-count", class: "muted"});
    const controls = h("div", {class: "filters fleet-filters", id: "fleet-filters"},
      FILTERS.map((f) => {
        const select = h("select", {"data-filter": f.key, "aria-label": "filter by " + f.label,
          onchange: () => { state.filters[f.key] = select.value; draw(); }});
        selects[f.key] = select;
        return select;
      }), search, count);
    const head = h("tr", {});
    const body = h("tbody", {});
    const table = h("table", {class: "table fleet-table", id: "fleet-table"}, h("thead", {}, head), body);
    const element = h("div", {class: "fleet-table-view"}, controls, h("div", {class: "table-wrap"}, table));

    /** Refill a filter's options when the values on offer change (the choice is kept). */
    function refreshOptions(f) {
      const values = [...new Set(workers.flatMap(f.values))].sort();
      const select = selects[f.key];
      const key = values.join("\u0000");
      if (select.dataset.options === key) return;
      select.dataset.options = key;
      const chosen = state.filters[f.key] || "";
      fill(select, h("option", {value: "", text: "any " + f.label}),
        values.map((v) => h("option", {value: v, text: v})));
      select.value = values.includes(chosen) ? chosen : "";
      state.filters[f.key] = select.value;
    }

    function drawHead() {
      fill(head, COLUMNS.map((c) => {
        const active = state.sort === c.key;
        return h("th", {scope: "col", "aria-sort": active ? (state.dir > 0 ? "ascending" : "descending") : "none"},
          h("button", {type: "button", class: "sort" + (active ? " sorted" : ""), "data-sort": c.key,
            text: c.label + (active ? (state.dir > 0 ? " ▲" : " ▼") : ""),
            onclick: () => { state.dir = state.sort === c.key ? -state.dir : 1; state.sort = c.key; draw(); }}));
      }));
    }

    function shown() {
      const column = COLUMNS.find((c) => c.key === state.sort) || COLUMNS[0];
      const kept = workers.filter((w) => FILTERS.every((f) => !state.filters[f.key] || f.values(w).includes(state.filters[f.key]))
        && (!state.text || w.name.toLowerCase().includes(state.text)));
      return kept.sort((a, b) => {
        const x = column.value(a), y = column.value(b);
        const order = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
        return state.dir * order || a.name.localeCompare(b.name);
      });
    }

    function row(w) {
      const connectors = Object.entries(w.connectors || {}).sort(([a], [b]) => a.localeCompare(b));
      return h("tr", {"data-worker": w.name, "data-status": w.status || "unknown", "data-machine": w.machine_id || ""},
        h("td", {}, h("a", {class: "mono worker-link", href: JQ.url("/workers/" + encodeURIComponent(w.name)), text: w.name})),
        h("td", {class: "mono", text: w.machine_id || "?"}),
        h("td", {text: typeof w.gpu === "number" ? String(w.gpu) : "?"}),
        h("td", {}, statusPill(w.status)),
        h("td", {class: "connectors"}, connectors.map(([s, c]) => {
          const shownStatus = badgeStatus(w, c || {});
          return h("span", {class: "badge badge-" + shownStatus.replace(/[^a-z]/g, ""), "data-service": s,
            "data-status": shownStatus, title: (c && c.message) || ""},
            h("span", {class: "badge-dot"}), h("span", {class: "badge-service", text: s + " " + shownStatus}));
        })),
        h("td", {}, w.current_job ? h("a", {class: "mono", href: JQ.url("/jobs/" + encodeURIComponent(w.current_job)),
          title: w.current_job, text: shortId(w.current_job)}) : "–"),
        h("td", {class: "processed", text: String(w.processed || 0)}),
        h("td", {class: "failed", text: String(w.failed || 0)}),
        h("td", {}, w.heartbeat_at ? ticking(w.heartbeat_at, {suffix: " ago", warnAfter: 10}) : "never"),
        h("td", {}, tags(w).map((t) => h("span", {class: "chip chip-tag", text: t}))));
    }

    function draw() {
      for (const f of FILTERS) refreshOptions(f);
      drawHead();
      const rows = shown();
      fill(body, rows.map(row));
      count.textContent = rows.length + " of " + workers.length + " workers";
    }

    return {
      element,
      update(list) { workers = list; draw(); },
    };
  }

  window.JQFleetTable = {create};
})();
