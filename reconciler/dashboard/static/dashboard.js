// reconciler dashboard: small enhancements over server-rendered pages (they work without it).
// - "Copy" buttons copy a deployment URL.
// - A deployment's log follows new lines (server-sent events).
// - A deployment's charts refresh every 5 seconds.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  for (const button of document.querySelectorAll("button.copy")) {
    button.addEventListener("click", async () => {
      try {
        await navigator.clipboard.writeText(button.dataset.copy);
        button.textContent = "Copied";
      } catch (err) {
        button.textContent = "Select and copy";
      }
      setTimeout(() => { button.textContent = "Copy"; }, 2000);
    });
  }

  const log = document.getElementById("log");
  if (log && log.dataset.src && window.EventSource) {
    const state = document.getElementById("log-state");
    const source = new EventSource(log.dataset.src);
    let first = true;
    source.onmessage = (event) => {
      const line = JSON.parse(event.data);
      if (first) { log.textContent = ""; first = false; }
      const follow = log.scrollTop + log.clientHeight >= log.scrollHeight - 8;
      log.append(document.createTextNode(line.text + "\n"));
      while (log.childNodes.length > 2000) log.removeChild(log.firstChild);
      if (follow) log.scrollTop = log.scrollHeight;
    };
    source.onopen = () => { if (state) state.textContent = "Live: new lines appear as the replicas write them."; };
    source.onerror = () => { if (state) state.textContent = "Live log paused: reconnecting."; };
  }

  const charts = document.getElementById("charts");
  if (charts) {
    setInterval(async () => {
      const answer = await fetch(charts.dataset.src, { credentials: "same-origin" });
      if (answer.ok) charts.innerHTML = await answer.text();
    }, 5000);
  }
});
