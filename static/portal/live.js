// Warden's live pages: one websocket per page (agents/consumers.py), reconnecting with backoff.
// The database is the truth: every event about a run makes the page fetch that run's part
// again; only the tokens of the answer being written are shown straight from the socket.
// A (re)subscription first replays the run's events, so the text is rebuilt, never appended
// twice.
"use strict";

(function () {
  const history = document.getElementById("history");
  const composer = document.getElementById("composer");
  const inboxList = document.getElementById("inbox-items");
  const badge = document.querySelector("[data-inbox-count]");
  const status = document.querySelector("[data-live-status]");
  const texts = new Map(); // run id -> Map(step -> streamed text)
  const refreshing = new Map(); // run id -> "busy" | "again"
  let socket = null;
  let retry = 0;

  function subscriptions() {
    const frames = [];
    if (history && history.dataset.conversation) {
      frames.push({ type: "subscribe", conversation: Number(history.dataset.conversation) });
    }
    if (badge) frames.push({ type: "subscribe", inbox: true });
    return frames;
  }

  function connect() {
    const frames = subscriptions();
    if (!frames.length) return;
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    socket = new WebSocket(`${scheme}//${location.host}/ws/`);
    socket.addEventListener("open", () => {
      retry = 0;
      showStatus("");
      frames.forEach((frame) => socket.send(JSON.stringify(frame)));
      // Whatever ended or was decided while the page was loading or offline.
      document.querySelectorAll('article.run[data-final="0"]').forEach((article) => {
        refresh(Number(article.dataset.run));
      });
      if (badge) refreshInbox();
    });
    socket.addEventListener("message", (message) => receive(JSON.parse(message.data)));
    socket.addEventListener("close", (event) => {
      socket = null;
      if (event.code === 4401 || event.code === 4403) {
        showStatus("This page is no longer live: sign in again or reload it.");
        return;
      }
      retry = Math.min(retry + 1, 6);
      showStatus("Reconnecting…");
      setTimeout(connect, 250 * 2 ** retry);
    });
  }

  function showStatus(text) {
    if (!status) return;
    status.textContent = text;
    status.hidden = !text;
  }

  function receive(frame) {
    switch (frame.type) {
      case "subscribed":
        // Runs that started (and maybe ended) while the page was not listening.
        (frame.runs || []).forEach((id) => {
          if (!document.getElementById(`run-${id}`)) refresh(id);
        });
        break;
      case "replay":
        texts.set(frame.run, new Map());
        frame.events.forEach((item) => apply(frame.run, item.event, false));
        refresh(frame.run);
        break;
      case "event":
        apply(frame.run, frame.event, true);
        break;
      case "inbox":
        refreshInbox();
        break;
      case "notice":
        if (frame.event.type === "budget.threshold_reached") {
          showStatus(`The budget “${frame.event.budget}” has passed its notice threshold.`);
        }
        break;
      case "error":
        console.warn("warden:", frame.detail);
        break;
    }
  }

  function apply(runId, event, live) {
    if (event.type === "token") {
      const steps = texts.get(runId) || new Map();
      texts.set(runId, steps);
      steps.set(event.step, (steps.get(event.step) || "") + event.text);
      paintStream(runId);
    } else if (live) {
      refresh(runId);
    }
  }

  function paintStream(runId) {
    const article = document.getElementById(`run-${runId}`);
    if (!article) return;
    const stream = article.querySelector("[data-stream]");
    const text = (texts.get(runId) || new Map()).get(Number(article.dataset.steps)) || "";
    stream.textContent = text;
    stream.hidden = !text || article.dataset.final === "1";
  }

  // Fetch the run's part from the server; one fetch at a time per run, again if asked meanwhile.
  async function refresh(runId) {
    if (refreshing.get(runId)) {
      refreshing.set(runId, "again");
      return;
    }
    refreshing.set(runId, "busy");
    try {
      const response = await fetch(`/chat/runs/${runId}/`, { headers: { Accept: "text/html" } });
      if (response.ok) place(runId, await response.text());
    } finally {
      const again = refreshing.get(runId) === "again";
      refreshing.delete(runId);
      if (again) refresh(runId);
    }
  }

  function place(runId, html) {
    const fresh = new DOMParser().parseFromString(html, "text/html").querySelector("article");
    if (!fresh || !history) return;
    const current = document.getElementById(`run-${runId}`);
    if (current) {
      current.className = fresh.className;
      current.dataset.steps = fresh.dataset.steps;
      current.dataset.final = fresh.dataset.final;
      current.querySelector(".run-body").replaceWith(fresh.querySelector(".run-body"));
      current.querySelector(".run-meta").replaceWith(fresh.querySelector(".run-meta"));
    } else {
      const empty = document.getElementById("empty-history");
      if (empty) empty.remove();
      history.append(fresh);
    }
    paintStream(runId);
    const article = document.getElementById(`run-${runId}`);
    if (article.dataset.final === "1") article.scrollIntoView({ block: "nearest" });
  }

  // The inbox list (on the inbox page) and the badge (everywhere), from the server; only the
  // answer to the latest request is used, whatever order the answers come in.
  let inboxAsked = 0;
  async function refreshInbox() {
    const asked = ++inboxAsked;
    const url = new URL(inboxList ? location.href : "/inbox/", location.href);
    url.searchParams.set("part", "1");
    const response = await fetch(url, { headers: { Accept: "text/html" } });
    if (!response.ok || asked !== inboxAsked) return;
    const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
    const items = fresh.getElementById("inbox-items");
    if (!items || asked !== inboxAsked) return;
    if (badge) {
      badge.textContent = items.dataset.count;
      badge.setAttribute("aria-label", `${items.dataset.count} pending`);
    }
    if (inboxList) document.getElementById("inbox-items").replaceWith(items);
  }

  if (composer) {
    const box = composer.querySelector("textarea");
    const problem = document.getElementById("composer-error");
    box.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        composer.requestSubmit();
      }
    });
    composer.addEventListener("submit", async (event) => {
      event.preventDefault();
      if (!box.value.trim()) return;
      const button = composer.querySelector("button[type=submit]");
      button.disabled = true;
      problem.hidden = true;
      try {
        const response = await fetch(composer.action, {
          method: "POST",
          body: new FormData(composer),
          headers: { Accept: "application/json" },
        });
        const body = await response.json();
        if (!response.ok) {
          problem.textContent = body.detail || "The message could not be sent.";
          problem.hidden = false;
          return; // the text stays in the box
        }
        box.value = "";
        if (!history.dataset.conversation) {
          location.assign(body.url); // a new conversation: its own page
          return;
        }
        if (!document.getElementById(`run-${body.run}`)) refresh(body.run);
      } catch (error) {
        problem.textContent = "Warden could not be reached; your message is still here.";
        problem.hidden = false;
      } finally {
        button.disabled = false;
        box.focus();
      }
    });
  }

  // A citation marker opens its passage.
  document.addEventListener("click", (event) => {
    const link = event.target.closest('a[href^="#run-"][href*="-cite-"]');
    if (!link) return;
    const target = document.querySelector(link.getAttribute("href"));
    if (target && target.tagName === "DETAILS") target.open = true;
  });

  // Stop, without leaving the page.
  document.addEventListener("submit", async (event) => {
    const form = event.target;
    if (!form.classList.contains("stop")) return;
    event.preventDefault();
    await fetch(form.action, {
      method: "POST",
      body: new FormData(form),
      headers: { Accept: "application/json" },
    });
  });

  // A conversation opens at its latest message.
  if (history && history.lastElementChild) history.lastElementChild.scrollIntoView({ block: "end" });

  connect();
})();
