// The playground: send the form, show the answer as it streams (server-sent events over fetch, since the request is
// a POST), then load the attribution record (shares, evidence, receipt) under it. Without JavaScript the form posts
// and the page comes back with the whole answer.
(function () {
  "use strict";
  const form = document.getElementById("chat-form");
  if (!form) return;
  const text = document.getElementById("answer-text");
  const record = document.getElementById("answer-record");
  const error = document.getElementById("answer-error");
  const send = document.getElementById("p-send");
  const base = document.body.dataset.studioBase || "";

  function parseEvents(buffer, onEvent) {
    // SSE frames end with a blank line; returns what is left of an unfinished frame.
    const frames = buffer.split(/\r?\n\r?\n/);
    const rest = frames.pop();
    for (const frame of frames) {
      let name = "message";
      const data = [];
      for (const line of frame.split(/\r?\n/)) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) onEvent(name, JSON.parse(data.join("\n")));
    }
    return rest;
  }

  async function showRecord(done) {
    if (!done.attributed) {
      record.innerHTML = "<p>No attribution record (attribution off).</p>";
      return;
    }
    record.innerHTML = "<p>Loading the attribution record…</p>";
    const response = await fetch(`${base}/playground/answers/${encodeURIComponent(done.id)}?partial=1`,
      { credentials: "same-origin" });
    record.innerHTML = await response.text();
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    text.textContent = "";
    record.innerHTML = "";
    send.setAttribute("aria-busy", "true");
    send.disabled = true;
    try {
      const response = await fetch(form.action, {
        method: "POST", body: new URLSearchParams(new FormData(form)), credentials: "same-origin",
        headers: { "Accept": "text/event-stream", "X-CSRF-Token": document.body.dataset.csrf },
      });
      if (!response.ok) {
        let message = `the server answered ${response.status}`;
        try { message = (await response.json()).error || message; } catch (_) { /* not JSON */ }
        throw new Error(message);
      }
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "", done = null;
      for (;;) {
        const chunk = await reader.read();
        if (chunk.done) break;
        buffer = parseEvents(buffer + chunk.value, (name, data) => {
          if (name === "delta") text.textContent += data.text;
          else if (name === "done") done = data;
          else if (name === "failed") throw new Error(data.error);
        });
      }
      if (!done) throw new Error("the answer stopped before its end");
      text.dataset.inference = done.id;
      if (!text.textContent) text.textContent = "(an empty answer)";
      await showRecord(done);
    } catch (err) {
      error.textContent = "Error: " + err.message;
    } finally {
      send.removeAttribute("aria-busy");
      send.disabled = false;
    }
  });
})();
