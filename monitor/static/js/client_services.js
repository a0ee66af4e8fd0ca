/* The client page's service picker: services some online worker serves come first (the page
 * opens on one of them), the others follow under "no worker online" (a job for them waits in
 * its queue until a worker comes). Redrawn when workers come and go. */
"use strict";

const JQClientServices = (function () {
  const {h, live} = JQ;

  /** Services the connectors of workers that are not offline serve, from the live state. */
  function online() {
    const served = new Set();
    for (const w of live.workers.values()) {
      if (!w || w.status === "offline") continue;
      for (const name of Object.keys(w.connectors || {})) served.add(name);
    }
    return served;
  }

  /** Regroup ``select``'s services (``all``, in name order); keep the user's choice, else pick
   * the first served one that has an example. Returns whether the selection changed. */
  function arrange(select, all, examples, chosen) {
    const served = online();
    const key = all.map((s) => s + (served.has(s) ? "+" : "-")).join(",");
    if (select.dataset.arranged === key) return false;
    select.dataset.arranged = key;
    const before = select.value;
    const option = (s) => h("option", {value: s, text: s + (served.has(s) ? "" : " (no worker online)")});
    const up = all.filter((s) => served.has(s)), down = all.filter((s) => !served.has(s));
    JQ.fill(select, up.length ? h("optgroup", {"aria-label": "served now"}, up.map(option)) : null,
      down.length ? h("optgroup", {"aria-label": "no worker online"}, down.map(option)) : null);
    for (const group of select.querySelectorAll("optgroup")) group.label = group.getAttribute("aria-label");
    const ready = (s) => examples[s] !== null && examples[s] !== undefined;
    select.value = chosen && all.includes(chosen) ? chosen
      : (up.find(ready) || up[0] || all.find(ready) || all[0] || "");
    return select.value !== before;
  }

  /** A short note on the chosen service: how many online workers serve it. */
  function note(service) {
    let n = 0;
    for (const w of live.workers.values()) if (w && w.status !== "offline" && (w.connectors || {})[service]) n++;
    return n ? n + " online worker" + (n === 1 ? "" : "s") + " serve " + service : "no online worker serves " + service + ": jobs wait in its queue";
  }

  return {arrange, note, online};
})();
