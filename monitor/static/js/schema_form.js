/* A connector's payload JSON schema (GET /api/services/<name>/schema) as a form: one control
 * per field, typed (number inputs with their bounds, a select for an enum or a boolean, a text
 * input for a string, a JSON box for objects, lists and anything else), its default shown, its
 * description as help, required fields marked. A schema with several kinds of request (oneOf,
 * told apart by a constant field such as a1111's "mode") gets a select for that field first.
 *
 * The payload JSON box stays the one source of the payload: a form edit writes only the field
 * it changed into it (a control left empty removes the field, so the default applies), and an
 * edit of the JSON box is shown back in the form. */
"use strict";

const JQSchemaForm = (function () {
  const {h} = JQ;

  /** A property without its "or null" (``anyOf: [X, {type: null}]`` is an optional X). */
  function core(prop) {
    if (prop && Array.isArray(prop.anyOf)) {
      const real = prop.anyOf.filter((p) => p.type !== "null");
      if (real.length === 1) return Object.assign({}, prop, real[0], {anyOf: undefined, nullable: true});
    }
    return prop || {};
  }

  /** The constant field telling a oneOf's branches apart, with each branch's value. */
  function discriminator(schema) {
    if (!schema || !Array.isArray(schema.oneOf)) return null;
    const first = schema.oneOf[0].properties || {};
    const name = Object.keys(first).find((k) => first[k].const !== undefined &&
      schema.oneOf.every((b) => b.properties && b.properties[k] && b.properties[k].const !== undefined));
    if (!name) return null;
    return {name, values: schema.oneOf.map((b) => b.properties[name].const),
      default: (first[name].default !== undefined ? first[name].default : first[name].const)};
  }

  function branchOf(schema, payload) {
    const disc = discriminator(schema);
    if (!disc) return schema;
    const wanted = payload && payload[disc.name] !== undefined ? payload[disc.name] : disc.default;
    return schema.oneOf.find((b) => b.properties[disc.name].const === wanted) || schema.oneOf[0];
  }

  function kindOf(prop) {
    if (Array.isArray(prop.enum)) return "enum";
    if (prop.type === "integer" || prop.type === "number") return "number";
    if (prop.type === "boolean") return "boolean";
    if (prop.type === "string") return "string";
    return "json";
  }

  function typeText(prop) {
    const kind = kindOf(prop);
    let text = kind === "enum" ? "one of " + prop.enum.join(", ") : kind === "json" ? (prop.type || "JSON") : prop.type;
    if (prop.minimum !== undefined || prop.maximum !== undefined) {
      text += " " + (prop.minimum !== undefined ? prop.minimum : "") + ".." + (prop.maximum !== undefined ? prop.maximum : "");
    }
    return text + (prop.nullable ? " or null" : "");
  }

  function control(name, prop) {
    const kind = kindOf(prop);
    const dflt = prop.default === undefined || prop.default === null ? "" : (typeof prop.default === "object" ? JSON.stringify(prop.default) : String(prop.default));
    const common = {id: "field-" + name, name, "data-field": name, "data-kind": kind, "aria-label": name};
    if (kind === "enum" || kind === "boolean") {
      const values = kind === "enum" ? prop.enum : [true, false];
      return h("select", common, h("option", {value: "", text: dflt ? "default (" + dflt + ")" : "(not set)"}),
        values.map((v) => h("option", {value: JSON.stringify(v), text: String(v)})));
    }
    if (kind === "number") {
      const input = h("input", Object.assign({type: "number", placeholder: dflt ? "default " + dflt : "", min: prop.minimum, max: prop.maximum}, common));
      input.step = prop.type === "integer" ? "1" : "any";
      return input;
    }
    if (kind === "string") return h("input", Object.assign({type: "text", placeholder: dflt ? "default " + dflt : ""}, common));
    const box = h("textarea", Object.assign({rows: 3, placeholder: dflt ? "default " + dflt : "JSON"}, common));
    box.spellcheck = false;
    return box;
  }

  /** The value a control holds, or undefined when it is empty (the field is left out). */
  function read(el) {
    const raw = el.value;
    if (raw === "") return undefined;
    const kind = el.dataset.kind;
    if (kind === "enum" || kind === "boolean") return JSON.parse(raw);
    if (kind === "number") return Number(raw);
    if (kind === "string") return raw;
    try { return JSON.parse(raw); } catch (exc) { return raw; }  // the schema check names it
  }

  function write(el, value) {
    if (value === undefined) { el.value = ""; return; }
    const kind = el.dataset.kind;
    if (kind === "enum" || kind === "boolean") el.value = JSON.stringify(value);
    else if (kind === "number" || kind === "string") el.value = value === null ? "" : String(value);
    else el.value = JSON.stringify(value);
  }

  /** Draw the form of ``schema`` for ``payload`` into ``box``; ``onEdit(name, value)`` is
   * called when the user changes a field (value undefined: removed). */
  function render(box, schema, payload, onEdit) {
    JQ.clear(box);
    if (!schema) return;
    const disc = discriminator(schema);
    const branch = branchOf(schema, payload);
    const props = (branch && branch.properties) || {};
    const required = new Set((branch && branch.required) || []);
    const rows = [];
    if (disc) rows.push(row(disc.name, {enum: disc.values, default: disc.default, type: "string",
      description: "kind of request"}, required.has(disc.name)));
    for (const [name, raw] of Object.entries(props)) {
      if (disc && name === disc.name) continue;
      rows.push(row(name, core(raw), required.has(name)));
    }
    for (const r of rows) box.appendChild(r);
    for (const el of box.querySelectorAll("[data-field]")) {
      write(el, payload ? payload[el.dataset.field] : undefined);
      el.addEventListener("change", () => onEdit(el.dataset.field, read(el), disc && el.dataset.field === disc.name));
    }
  }

  function row(name, prop, isRequired) {
    return h("div", {class: "schema-field" + (isRequired ? " required" : ""), "data-row": name},
      h("label", {for: "field-" + name},
        h("span", {class: "field-name mono", text: name + (isRequired ? " *" : "")}),
        h("span", {class: "field-type muted", text: " " + typeText(prop)})),
      control(name, prop),
      prop.description ? h("div", {class: "field-help muted", text: prop.description}) : null);
  }

  /** Show ``payload`` in a form drawn by :func:`render` (after an edit of the JSON box). */
  function show(box, payload) {
    for (const el of box.querySelectorAll("[data-field]")) {
      if (document.activeElement !== el) write(el, payload ? payload[el.dataset.field] : undefined);
    }
  }

  return {render, show, branchOf, discriminator};
})();
