// Tally Studio: small progressive enhancements. Every page works without this file; it adds the CSRF header to htmx
// requests and exposes `TallyStudio` helpers that page scripts (static/*.js) use.
(function () {
  "use strict";
  document.documentElement.classList.add("js");
  const body = document.body;
  const csrf = body ? body.dataset.csrf : "";

  document.addEventListener("htmx:configRequest", function (event) {
    if (csrf) event.detail.headers["X-CSRF-Token"] = csrf;
  });

  // Move focus to the main content when the skip link is used (some browsers do not).
  document.addEventListener("click", function (event) {
    const link = event.target.closest && event.target.closest("a.skip-link");
    if (link) {
      const main = document.getElementById("main");
      if (main) main.focus();
    }
  });

  // A checkbox with data-tick-all="NAME" ticks or clears every checkbox named NAME in its form.
  document.addEventListener("change", function (event) {
    const box = event.target;
    if (!box || !box.dataset || !box.dataset.tickAll || !box.form) return;
    for (const other of box.form.querySelectorAll('input[type="checkbox"][name="' + box.dataset.tickAll + '"]')) {
      other.checked = box.checked;
    }
  });

  function hex(bytes) {
    return Array.from(new Uint8Array(bytes), (b) => b.toString(16).padStart(2, "0")).join("");
  }
  function fromHex(text) {
    const clean = text.startsWith("0x") ? text.slice(2) : text;
    if (clean.length % 2 !== 0 || /[^0-9a-fA-F]/.test(clean)) throw new Error("not hex: " + text);
    const out = new Uint8Array(clean.length / 2);
    for (let i = 0; i < out.length; i++) out[i] = parseInt(clean.substr(i * 2, 2), 16);
    return out;
  }
  function concat(...parts) {
    const size = parts.reduce((n, p) => n + p.length, 0);
    const out = new Uint8Array(size);
    let at = 0;
    for (const p of parts) { out.set(p, at); at += p.length; }
    return out;
  }
  async function sha256(bytes) {
    return new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  }

  // A status message a screen reader announces (the element has role="status").
  function say(element, text, ok) {
    element.textContent = text;
    element.classList.remove("result-ok", "result-bad");
    if (ok !== undefined) element.classList.add(ok ? "result-ok" : "result-bad");
  }

  async function postForm(url, fields) {
    const data = new URLSearchParams(fields);
    const response = await fetch(url, {
      method: "POST", body: data, credentials: "same-origin",
      headers: { "X-CSRF-Token": csrf, "Accept": "application/json" },
    });
    return response;
  }

  window.TallyStudio = { hex, fromHex, concat, sha256, say, postForm, csrf, base: body ? body.dataset.studioBase : "" };
})();
