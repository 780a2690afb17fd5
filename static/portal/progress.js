// Progress wherever work takes more than a second, without reloading the page:
// - a run being worked on in the chat counts its seconds (the run's part, re-rendered by
//   live.js at each step, says which step; this keeps the clock going in between);
// - the chat says Warden is warming up while no worker is ready to answer, asking the server
//   every few seconds, and stops saying it by itself once one is;
// - a knowledge base's page follows its documents being read or embedded again.
"use strict";

(function () {
  // The same words as agents.selectors.duration_text.
  function duration(seconds) {
    if (seconds < 60) return `${seconds} s`;
    const pad = (n) => String(n).padStart(2, "0");
    if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${pad(seconds % 60)} s`;
    return `${Math.floor(seconds / 3600)} h ${pad(Math.floor((seconds % 3600) / 60))} min`;
  }

  // Each line counts on from the seconds the server gave it when it was drawn (the server's
  // clock, not this machine's).
  const drawn = new WeakMap(); // element -> performance.now() when first seen
  function tick() {
    document.querySelectorAll(".run-progress[data-elapsed]").forEach((line) => {
      if (!drawn.has(line)) drawn.set(line, performance.now());
      const since = Number(line.dataset.elapsed) || 0;
      const seconds = since + Math.floor((performance.now() - drawn.get(line)) / 1000);
      const text = line.querySelector("[data-elapsed-text]");
      if (text && text.textContent !== duration(seconds)) text.textContent = duration(seconds);
    });
  }
  if (document.getElementById("history")) setInterval(tick, 1000);

  async function getJSON(url) {
    const response = await fetch(url, { headers: { Accept: "application/json" } });
    if (!response.ok || response.redirected) throw new Error(`${url}: ${response.status}`);
    return response.json();
  }

  // Warming up ---------------------------------------------------------------------------------
  const warming = document.querySelector("[data-workers-url]");
  const WARMING_EVERY = 3000; // ms between asks while no worker is ready
  const READY_EVERY = 30000; // and once one is (a worker may be restarted)
  let warm = null; // not known yet

  function showWarming(ready) {
    if (ready === warm) return;
    const was = warm;
    warm = ready;
    warming.replaceChildren();
    if (!ready) {
      const notice = document.createElement("p");
      notice.className = "bubble notice";
      notice.textContent =
        "Warden is warming up: answers will start when a worker is ready. " +
        "You may send your message now; it waits its turn.";
      warming.appendChild(notice);
    } else if (was === false) {
      const done = document.createElement("span");
      done.className = "sr-only";
      done.textContent = "A worker is ready: answers start now.";
      warming.appendChild(done);
    }
  }

  async function askWorkers() {
    let next = WARMING_EVERY;
    try {
      const body = await getJSON(warming.dataset.workersUrl);
      showWarming(Boolean(body.ready));
      if (body.ready) next = READY_EVERY;
    } catch (error) {
      next = READY_EVERY; // signed out or the server away: live.js says so; ask again later
    }
    setTimeout(askWorkers, next);
  }
  if (warming) askWorkers();

  // A knowledge base's documents -------------------------------------------------------------
  const panel = document.getElementById("kb-progress");
  const KB_EVERY = 2000;

  function cell(text) {
    const td = document.createElement("td");
    td.textContent = text;
    return td;
  }

  function drawDocuments(body) {
    const summary = panel.querySelector("[data-summary]");
    if (summary.textContent !== body.summary) summary.textContent = body.summary;
    const bar = panel.querySelector("[data-bar]");
    bar.max = Math.max(body.total, 1);
    bar.value = body.ready;
    bar.textContent = `${body.ready} of ${body.total}`;
    bar.hidden = !body.total;
    const rows = body.documents.map((document_) => {
      const row = document.createElement("tr");
      row.className = `status-${document_.status}`;
      const name = document.createElement("td");
      const link = document.createElement("a");
      link.href = document_.url;
      link.textContent = document_.name;
      name.appendChild(link);
      row.append(name, cell(document_.status), cell(String(document_.chunks)), cell(document_.error));
      return row;
    });
    panel.querySelector("[data-rows]").replaceChildren(...rows);
    panel.querySelector("[data-more-count]").textContent = body.more;
    panel.querySelector("[data-more]").hidden = !body.more;
    panel.dataset.working = body.working ? "1" : "0";
  }

  async function followDocuments() {
    try {
      const body = await getJSON(panel.dataset.progressUrl);
      drawDocuments(body);
      if (!body.working) return; // all read: nothing more will change by itself
    } catch (error) {
      // the server away for a moment: ask again
    }
    setTimeout(followDocuments, KB_EVERY);
  }
  if (panel && panel.dataset.working === "1") setTimeout(followDocuments, KB_EVERY);
})();
