/* The admin page: API keys (create, list, revoke) and the audit trail (filters, paging).
 * Everything is built with textContent (JQ.h); a new key's secret is shown once. */
(function () {
  "use strict";
  const {h, fill, api, notify} = JQ;
  const PAGE = 50;
  let offset = 0;

  function when(ts) { return ts ? new Date(ts * 1000).toISOString().replace("T", " ").slice(0, 19) : "–"; }

  async function loadKeys() {
    const res = await api("GET", "/api/keys");
    if (!res.ok) { notify("keys: " + res.error, "error"); return; }
    const rows = res.data.keys.map((key) => h("tr", {"data-key-id": key.id}, [
      h("td", {text: key.id}), h("td", {text: key.name || ""}), h("td", {text: key.role}),
      h("td", {text: key.tenant || "–"}), h("td", {text: key.state}), h("td", {text: when(key.created_at)}),
      h("td", {text: when(key.expires_at)}),
      h("td", {}, key.state === "revoked" ? [] : [h("button", {type: "button", class: "revoke", text: "Revoke",
        onclick: () => revoke(key.id)})]),
    ]));
    fill(document.getElementById("keys"), h("table", {class: "table"}, [
      h("thead", {}, [h("tr", {}, ["id", "name", "role", "tenant", "state", "created", "expires", ""].map(
        (t) => h("th", {text: t})))]),
      h("tbody", {}, rows)]));
  }

  async function revoke(id) {
    const res = await api("POST", "/api/keys/" + encodeURIComponent(id) + "/revoke", {});
    notify(res.ok ? "key " + id + " revoked" : "revoke failed: " + res.error, res.ok ? "ok" : "error");
    loadKeys(); loadAuditSoon();
  }

  /* The trail is written by the monitor's single writer, a moment after the action answered:
     read it now and once more shortly after, and every few seconds while the page is open. */
  function loadAuditSoon() { loadAudit(); setTimeout(loadAudit, 1000); }

  async function create(ev) {
    ev.preventDefault();
    const body = {role: document.getElementById("key-role").value, name: document.getElementById("key-name").value};
    const tenant = document.getElementById("key-tenant").value.trim();
    const expires = document.getElementById("key-expires").value.trim();
    if (tenant) body.tenant = tenant;
    if (expires) body.expires_in = expires;
    const res = await api("POST", "/api/keys", body);
    if (!res.ok) { notify("create failed: " + res.error, "error"); return; }
    document.getElementById("key-secret").textContent = res.data.key;
    document.getElementById("key-new").hidden = false;
    loadKeys(); loadAuditSoon();
  }

  async function loadAudit() {
    const params = new URLSearchParams({limit: String(PAGE), offset: String(offset)});
    for (const name of ["action", "subject", "outcome"]) {
      const value = document.getElementById("audit-" + name).value.trim();
      if (value) params.set(name, value);
    }
    const res = await api("GET", "/api/audit?" + params);
    if (!res.ok) { notify("audit: " + res.error, "error"); return; }
    const rows = res.data.entries.map((e) => h("tr", {class: "audit-" + e.outcome}, [
      h("td", {text: when(e.at)}), h("td", {text: e.subject}), h("td", {text: e.role || ""}),
      h("td", {text: e.tenant || "–"}), h("td", {text: e.address || ""}), h("td", {text: e.action}),
      h("td", {text: e.target}), h("td", {text: e.outcome + " (" + e.status + ")"}),
    ]));
    fill(document.getElementById("audit"), h("table", {class: "table"}, [
      h("thead", {}, [h("tr", {}, ["when", "who", "role", "tenant", "address", "what", "target", "outcome"].map(
        (t) => h("th", {text: t})))]),
      h("tbody", {}, rows)]));
    document.getElementById("audit-older").hidden = offset + PAGE >= res.data.total;
  }

  document.addEventListener("DOMContentLoaded", () => {
    document.getElementById("key-form").addEventListener("submit", create);
    document.getElementById("audit-filter").addEventListener("submit", (ev) => { ev.preventDefault(); offset = 0; loadAudit(); });
    document.getElementById("audit-older").addEventListener("click", () => { offset += PAGE; loadAudit(); });
    loadKeys();
    loadAudit();
    setInterval(() => { if (!document.hidden) loadAudit(); }, 5000);
  });
})();
