/* Client page: pick a service (those some online worker serves first: client_services.js),
 * fill its payload in a form drawn from its JSON schema (GET /api/services/<name>/schema, the
 * connector's pydantic models: schema_form.js) or in the JSON box, drop a ComfyUI workflow
 * (API-format JSON file) and its input images (each goes to a LoadImage node's name, as a data
 * URL in the payload's "images") for a comfyui job, choose a batch count, POST /api/jobs, then follow
 * the created jobs live from /ws. The schema catches wrong types, ranges, unknown and missing
 * fields before sending; the server checks again. */
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
  const STORE = "jobqueue.client.jobs.submitted";
  // Jobs created from this tab, newest first (kept for the tab's life across reloads).
  let mine = [];
  try { mine = JSON.parse(sessionStorage.getItem(STORE) || "[]").filter((id) => typeof id === "string"); } catch (exc) { mine = []; }

  const form = document.getElementById("payload-form");
  const drop = document.getElementById("workflow-drop");
  const dropInfo = document.getElementById("workflow-info");
  const imageInfo = document.getElementById("image-info");
  const serviceNote = document.getElementById("service-note");
  const allServices = [...service.options].map((o) => o.value);
  let chosen = null;  // the service the user picked (kept when workers come and go)
  const schemas = {};  // service -> its payload schema (null: none to be had)

  async function loadSchema(name) {
    if (!(name in schemas)) {
      const res = await api("GET", "/api/services/" + encodeURIComponent(name) + "/schema");
      schemas[name] = res.ok && res.data && typeof res.data === "object" ? res.data : null;
    }
    return schemas[name];
  }

  // The schema branch a payload is checked against: a1111's modes are oneOf, picked by "mode".
  function branchFor(schema, body) {
    if (!schema || !Array.isArray(schema.oneOf)) return schema;
    const wanted = body && typeof body.mode === "string" ? body.mode : null;
    return schema.oneOf.find((b) => {
      const mode = b.properties && b.properties.mode;
      return mode && (wanted === null ? mode.default === mode.const : mode.const === wanted);
    }) || schema.oneOf[0];
  }

  function typeName(prop) {
    if (!prop) return "any";
    if (Array.isArray(prop.anyOf)) return prop.anyOf.map(typeName).join(" | ");
    if (prop.const !== undefined) return JSON.stringify(prop.const);
    if (prop.type === "array" && prop.items && prop.items.type) return "list of " + prop.items.type;
    let name = prop.type || "any";
    if (prop.minimum !== undefined && prop.maximum !== undefined) name += " " + prop.minimum + ".." + prop.maximum;
    return name;
  }

  /** The payload in the JSON box, or null when it is not a JSON object. */
  function currentPayload() {
    try {
      const body = JSON.parse(payload.value || "{}");
      return body && typeof body === "object" && !Array.isArray(body) ? body : null;
    } catch (exc) { return null; }
  }

  function setPayload(body) {
    payload.value = JSON.stringify(body, null, 2);
    error.textContent = "";
  }

  function drawForm() {
    const name = service.value;
    drop.hidden = name !== "comfyui";
    serviceNote.textContent = JQClientServices.note(name);
    loadSchema(name).then((schema) => {
      if (service.value !== name) return;
      JQSchemaForm.render(form, schema, currentPayload(), (field, value, redraw) => {
        const body = currentPayload() || {};
        if (value === undefined) delete body[field]; else body[field] = value;
        setPayload(body);
        if (redraw) drawForm();
      });
    });
  }

  let shownBranch = null;
  payload.addEventListener("input", () => {
    const body = currentPayload();
    if (!body) return;
    const disc = JQSchemaForm.discriminator(schemas[service.value]);
    const branch = disc ? String(body[disc.name]) : null;
    if (branch !== shownBranch) { shownBranch = branch; drawForm(); } else JQSchemaForm.show(form, body);
  });

  /** A dropped or chosen JSON file as the comfyui payload's workflow: API format only (node id ->
   * {class_type, inputs}); the UI format (nodes and links) is refused with what to do. */
  async function takeWorkflow(file) {
    let data;
    try { data = JSON.parse(await file.text()); } catch (exc) { error.textContent = file.name + " is not JSON: " + exc.message; return; }
    if (data && Array.isArray(data.nodes) && Array.isArray(data.links)) {
      error.textContent = file.name + " is a UI-format workflow: in ComfyUI use Workflow → Export (API) and drop that file";
      return;
    }
    const nodes = data && typeof data === "object" && !Array.isArray(data) ? Object.values(data) : [];
    if (!nodes.length || !nodes.every((n) => n && typeof n === "object" && typeof n.class_type === "string")) {
      error.textContent = file.name + " is not an API-format workflow (node id → {class_type, inputs})";
      return;
    }
    const body = currentPayload() || {};
    body.workflow = data;
    setPayload(body);
    dropInfo.textContent = file.name + ": " + nodes.length + " nodes";
    JQSchemaForm.show(form, body);
  }

  /** The file names the workflow's LoadImage / LoadImageMask nodes read, in node order. */
  function loaderNames(workflow) {
    const names = [];
    for (const node of Object.values(workflow || {})) {
      const value = node && node.inputs && node.inputs.image;
      if (node && ["LoadImage", "LoadImageMask"].includes(node.class_type) && typeof value === "string") {
        const name = value.endsWith(" [input]") ? value.slice(0, -8) : value;
        if (!names.includes(name)) names.push(name);
      }
    }
    return names;
  }

  function dataUrl(file) {
    return new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(reader.result);
      reader.onerror = () => reject(reader.error);
      reader.readAsDataURL(file);
    });
  }

  /** A dropped or chosen image as one of the payload's input images: it goes to the first
   * loader node's name that has none yet (else the one named like the file), as a data URL. */
  async function takeImage(file) {
    const body = currentPayload() || {};
    const names = loaderNames(body.workflow);
    const images = body.images && typeof body.images === "object" ? body.images : {};
    const name = names.find((n) => !(n in images)) || (names.includes(file.name) ? file.name : null);
    if (!name) {
      error.textContent = names.length ? "every LoadImage node has its image already (" + names.join(", ") + "); edit 'images' in the JSON to replace one"
        : "drop a workflow with a LoadImage node first: an input image goes to the name such a node reads";
      return;
    }
    images[name] = await dataUrl(file);
    body.images = images;
    setPayload(body);
    imageInfo.textContent = Object.keys(images).map((n) => n + (n === name ? " ← " + file.name + " (" + Math.ceil(file.size / 1024) + " kB)" : "")).join(", ");
    JQSchemaForm.show(form, body);
  }

  async function takeFiles(files) {
    for (const file of [...(files || [])]) {
      const isImage = (file.type || "").startsWith("image/") || /\.(png|jpe?g|webp|gif|bmp|tiff?)$/i.test(file.name);
      await (isImage ? takeImage(file) : takeWorkflow(file));
    }
  }

  drop.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.classList.add("dragging"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("dragging"));
  drop.addEventListener("drop", (ev) => {
    ev.preventDefault();
    drop.classList.remove("dragging");
    takeFiles(ev.dataTransfer && ev.dataTransfer.files);
  });
  document.getElementById("workflow-file").addEventListener("change", (ev) => takeFiles(ev.target.files));
  document.getElementById("image-file").addEventListener("change", (ev) => takeFiles(ev.target.files));

  function typeOk(prop, value) {
    if (!prop) return true;
    if (Array.isArray(prop.anyOf)) return prop.anyOf.some((p) => typeOk(p, value));
    if (prop.const !== undefined && value !== prop.const) return false;
    switch (prop.type) {
      case "integer": return Number.isInteger(value);
      case "number": return typeof value === "number" && Number.isFinite(value);
      case "string": return typeof value === "string";
      case "boolean": return typeof value === "boolean";
      case "null": return value === null;
      case "object": return value !== null && typeof value === "object" && !Array.isArray(value);
      case "array": return Array.isArray(value) && (!prop.items || value.every((v) => typeOk(prop.items, v)));
      default: return true;
    }
  }

  function inRange(prop, value) {
    if (!prop || typeof value !== "number") return true;
    if (prop.minimum !== undefined && value < prop.minimum) return false;
    if (prop.maximum !== undefined && value > prop.maximum) return false;
    if (prop.exclusiveMinimum !== undefined && value <= prop.exclusiveMinimum) return false;
    return !Array.isArray(prop.anyOf) || prop.anyOf.some((p) => p.type === "null" || inRange(p, value));
  }

  // Problems the schema shows in a payload, as the server would name them (empty: send it).
  function schemaProblems(schema, body) {
    if (!schema) return [];
    if (body === null || typeof body !== "object" || Array.isArray(body)) return ["payload must be a JSON object"];
    const branch = branchFor(schema, body);
    const props = (branch && branch.properties) || {};
    const problems = [];
    if (branch && branch.additionalProperties === false) {
      const unknown = Object.keys(body).filter((k) => !(k in props));
      if (unknown.length) problems.push("unknown field(s) " + unknown.join(", "));
    }
    for (const name of (branch && branch.required) || []) {
      if (!(name in body)) problems.push("'" + name + "' is required");
    }
    for (const [name, value] of Object.entries(body)) {
      const prop = props[name];
      if (!prop) continue;
      if (!typeOk(prop, value)) problems.push("'" + name + "' must be " + typeName(prop));
      else if (!inRange(prop, value)) problems.push("'" + name + "' must be " + typeName(prop));
    }
    return problems;
  }

  function loadExample() {
    const ex = examples[service.value];
    setPayload(ex === null || ex === undefined ? {} : ex);
    dropInfo.textContent = "";
    imageInfo.textContent = "";
    shownBranch = null;
    drawForm();
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
  service.addEventListener("change", () => { chosen = service.value; loadExample(); });

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
    const problems = schemaProblems(await loadSchema(service.value), body);
    if (problems.length) { error.textContent = service.value + ": " + problems.join("; "); return; }
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

  live.subscribe((kind, id) => {
    if (kind === "snapshot" || kind === "worker") arrangeServices();
    if (kind === "snapshot" || kind === "estimates" || (kind === "job" && mine.includes(id))) render();
  });
  function arrangeServices() {
    if (JQClientServices.arrange(service, allServices, examples, chosen)) loadExample();
    else serviceNote.textContent = JQClientServices.note(service.value);
  }
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
  // Start on a service some online worker serves (known once the first snapshot arrives).
  JQClientServices.arrange(service, allServices, examples, chosen);
  loadExample();
  render();
})();
