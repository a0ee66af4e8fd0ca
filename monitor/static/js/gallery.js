/* A job's outputs as a gallery: images as thumbnails, videos and audio in players (a video
 * with its poster when the result names one), anything else as a download link with its size.
 * Files are served by the monitor (/jobs/<id>/files/<name>, with Range so players seek);
 * an http(s) url of the result is used as given. */
"use strict";

const JQGallery = (function () {
  const {h} = JQ;
  const IMAGE = /\.(png|jpe?g|webp|gif)$/i;
  const VIDEO = /\.(mp4|webm|mov|m4v)$/i;
  const AUDIO = /\.(wav|mp3|flac|ogg|opus|m4a|aac)$/i;

  /** The file entry of a result's "files" list, normalised: {name, url, kind, size, poster}. */
  function entry(jobId, f) {
    const file = typeof f === "string" ? {name: f} : (f || {});
    const name = String(file.name || file.filename || (file.path ? String(file.path).split("/").pop() : "") || "file");
    const served = (n) => JQ.url("/jobs/" + encodeURIComponent(jobId) + "/files/" + encodeURIComponent(n));
    const local = file.name ? String(file.name) : (file.path ? String(file.path).split("/").pop() : null);
    const url = JQ.safeUrl(file.url) || (local ? served(local) : null);
    const type = String(file.content_type || "");
    const kind = type.startsWith("image/") || IMAGE.test(name) ? "image"
      : type.startsWith("video/") || VIDEO.test(name) ? "video"
      : type.startsWith("audio/") || AUDIO.test(name) ? "audio" : "file";
    const poster = file.poster ? served(String(file.poster)) : null;
    return {name, url, kind, size: typeof file.size === "number" ? file.size : null, poster, posterName: file.poster || null};
  }

  function bytes(n) {
    if (n === null) return "";
    const units = ["B", "KB", "MB", "GB", "TB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : String(n)) + " " + units[i];
  }

  function caption(file) {
    return h("figcaption", {class: "mono"}, h("a", {href: file.url, target: "_blank", rel: "noopener", text: file.name}),
      file.size !== null ? h("span", {class: "muted", text: " · " + bytes(file.size)}) : null);
  }

  function media(file) {
    const el = h(file.kind, {class: "output-media", "data-name": file.name, title: file.name});
    el.controls = true;
    el.preload = "metadata";
    if (file.poster && file.kind === "video") el.poster = file.poster;
    el.src = file.url;
    return h("figure", {class: "output output-" + file.kind, "data-kind": file.kind}, el, caption(file));
  }

  function image(file) {
    const cap = caption(file);
    const img = h("img", {src: file.url, alt: file.name, loading: "lazy", onerror: () => {
      img.hidden = true;
      cap.appendChild(h("span", {class: "muted", text: " (not available on this monitor's host)"}));
    }});
    return h("figure", {class: "output output-image", "data-kind": "image"},
      h("a", {href: file.url, target: "_blank", rel: "noopener"}, img), cap);
  }

  function download(file) {
    return h("div", {class: "output output-file", "data-kind": "file"},
      h("a", {href: file.url, class: "mono", text: "⤓ " + file.name}),
      file.size !== null ? h("span", {class: "muted", text: " " + bytes(file.size)}) : null);
  }

  /** The gallery's nodes for a result (empty when it lists no files). A video's poster is
   * shown as its poster, not again as an image of its own. */
  function render(jobId, result) {
    const files = result && Array.isArray(result.files) ? result.files.map((f) => entry(jobId, f)) : [];
    const posters = new Set(files.filter((f) => f.kind === "video" && f.posterName).map((f) => f.posterName));
    return files.filter((f) => !posters.has(f.name)).map((file) => {
      if (!file.url) return h("div", {class: "output"}, h("span", {class: "mono", text: file.name}), h("span", {class: "muted", text: " (not served)"}));
      if (file.kind === "image") return image(file);
      if (file.kind === "video" || file.kind === "audio") return media(file);
      return download(file);
    });
  }

  return {render, entry, bytes};
})();
