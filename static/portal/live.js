// Warden's live pages: one websocket per page (agents/consumers.py), reconnecting with backoff.
// The server sends a frame at least every WARDEN_LIVE_KEEPALIVE_SECONDS (15 s); a socket that
// stays silent longer is asked with a ping, and one that still says nothing is taken for dead
// (a proxy or a network that dropped it without a word) and replaced.
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
  const announcer = document.getElementById("announcer");
  const texts = new Map(); // run id -> Map(step -> {attempt, text})
  const refreshing = new Map(); // run id -> "busy" | "again"
  let retry = 0;
  let steady = null; // the timer that forgives past failures once a socket has stayed up
  const PING_AFTER = 25000; // ms of silence before the page asks (the server speaks every 15 s)
  const DEAD_AFTER = PING_AFTER + 10000; // ms of silence after which the socket is given up

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
    const socket = new WebSocket(`${scheme}//${location.host}/ws/`);
    let heard = Date.now();
    let watch = null;
    let givenUp = false;

    function reconnect() {
      clearTimeout(steady);
      clearInterval(watch);
      retry = Math.min(retry + 1, 6);
      showStatus("Reconnecting…");
      setTimeout(connect, 250 * 2 ** retry);
    }

    socket.addEventListener("open", () => {
      frames.forEach((frame) => socket.send(JSON.stringify(frame)));
      steady = setTimeout(() => (retry = 0), 10000);
      watch = setInterval(() => {
        const silent = Date.now() - heard;
        if (silent >= DEAD_AFTER) {
          // A dead connection's close can take minutes to be noticed: do not wait for it.
          givenUp = true;
          socket.close();
          reconnect();
        } else if (silent >= PING_AFTER) {
          socket.send(JSON.stringify({ type: "ping" }));
        }
      }, 5000);
    });
    socket.addEventListener("message", (message) => {
      heard = Date.now();
      receive(JSON.parse(message.data));
    });
    socket.addEventListener("close", (event) => {
      clearTimeout(steady);
      clearInterval(watch);
      if (givenUp) return; // replaced already
      if (event.code === 4401 || event.code === 4403) {
        showStatus("This page is no longer live: sign in again, or reload it.");
        return;
      }
      reconnect(); // and the new socket's replay brings back what this one missed
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
        showStatus("");
        if (frame.inbox) refreshInbox(); // what arrived or was decided while not listening
        if (!frame.conversation) break;
        // Runs that ended, or started and ended, while the page was not listening.
        document.querySelectorAll('article.run[data-final="0"]').forEach((article) => {
          refresh(Number(article.dataset.run));
        });
        frame.runs.forEach((id) => {
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
        // "live_unavailable": the server lost Redis; it closes the socket next (4503).
        if (frame.reason === "live_unavailable") showStatus("Reconnecting…");
        console.warn("warden:", frame.detail);
        break;
      case "keepalive":
      case "pong":
        break; // heard: that is all they are for
    }
  }

  function apply(runId, event, live) {
    if (event.type === "token") {
      const steps = texts.get(runId) || new Map();
      texts.set(runId, steps);
      const held = steps.get(event.step);
      // A step redone by another worker (the first one died) streams afresh.
      const text = held && held.attempt === event.attempt ? held.text : "";
      steps.set(event.step, { attempt: event.attempt, text: text + event.text });
      paintStream(runId);
    } else if (live) {
      refresh(runId);
    }
  }

  function paintStream(runId) {
    const article = document.getElementById(`run-${runId}`);
    if (!article) return;
    const stream = article.querySelector("[data-stream]");
    // The step being written; or, once the answer's step is saved and until the run ends
    // and shows it, that step's text stays up.
    const step = Number(article.dataset.steps) - (article.dataset.answering === "1" ? 1 : 0);
    const held = (texts.get(runId) || new Map()).get(step);
    const text = held ? held.text : "";
    stream.textContent = text;
    stream.hidden = !text || article.dataset.final === "1";
  }

  async function fetchPart(url) {
    const response = await fetch(url, { headers: { Accept: "text/html" } });
    if (response.redirected || response.status === 403) {
      showStatus("Your session has ended: sign in again to follow this page.");
      return null;
    }
    return response.ok ? response.text() : null;
  }

  // Fetch the run's part from the server; one fetch at a time per run, again if asked meanwhile.
  async function refresh(runId) {
    if (refreshing.get(runId)) {
      refreshing.set(runId, "again");
      return;
    }
    refreshing.set(runId, "busy");
    try {
      const html = await fetchPart(`/chat/runs/${runId}/`);
      if (html) place(runId, html);
    } catch (error) {
      showStatus("Warden could not be reached; the page will catch up when it can.");
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
      const before = current.querySelector("[data-state]").textContent;
      const focus = focusKey(current);
      current.className = fresh.className;
      for (const key of ["steps", "final", "answering"]) current.dataset[key] = fresh.dataset[key];
      current.querySelector(".run-body").replaceWith(fresh.querySelector(".run-body"));
      current.querySelector(".run-meta").replaceWith(fresh.querySelector(".run-meta"));
      restoreFocus(current, focus);
      const after = current.querySelector("[data-state]").textContent;
      if (announcer && after !== before) announcer.textContent = after;
    } else {
      const empty = document.getElementById("empty-history");
      if (empty) empty.remove();
      // In the order the runs were made, whatever order their parts arrive in.
      const later = [...history.querySelectorAll("article.run")].find(
        (article) => Number(article.dataset.run) > runId,
      );
      history.insertBefore(fresh, later || null);
    }
    paintStream(runId);
    const article = document.getElementById(`run-${runId}`);
    if (article.dataset.final === "1" && !article.contains(document.activeElement)) {
      article.scrollIntoView({ block: "nearest" });
    }
  }

  // Replacing a run's part must not throw away the keyboard focus inside it.
  function focusKey(container) {
    const active = document.activeElement;
    if (!active || !container.contains(active)) return null;
    return active.getAttribute("href") || active.textContent;
  }

  function restoreFocus(container, key) {
    if (key === null) return;
    const same = [...container.querySelectorAll("a, button, summary")].find(
      (element) => (element.getAttribute("href") || element.textContent) === key,
    );
    (same || container).focus({ preventScroll: true });
  }

  // The inbox list (on the inbox page) and the badge (everywhere), from the server; only the
  // answer to the latest request is used, whatever order the answers come in.
  let inboxAsked = 0;
  async function refreshInbox() {
    const asked = ++inboxAsked;
    const url = new URL(inboxList ? location.href : "/inbox/", location.href);
    url.searchParams.set("part", "1");
    let html = null;
    try {
      html = await fetchPart(url);
    } catch (error) {
      return;
    }
    if (!html || asked !== inboxAsked) return;
    const items = new DOMParser().parseFromString(html, "text/html").getElementById("inbox-items");
    if (!items) return;
    if (badge) {
      badge.textContent = items.dataset.count;
      badge.setAttribute("aria-label", `${items.dataset.count} pending`);
    }
    if (inboxList) {
      const current = document.getElementById("inbox-items");
      const focus = focusKey(current);
      current.replaceWith(items);
      restoreFocus(items, focus);
    }
  }

  if (composer) {
    const box = composer.querySelector("textarea");
    const problem = document.getElementById("composer-error");
    let sending = false;
    box.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        composer.requestSubmit();
      }
    });
    composer.addEventListener("submit", async (event) => {
      event.preventDefault();
      if (sending) return; // a second Enter while the first is on its way
      if (!box.value.trim()) {
        problem.textContent = "Type a message first.";
        problem.hidden = false;
        return;
      }
      sending = true;
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
        sending = false;
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

  // Stop, without leaving the page; the run stops at its next step.
  document.addEventListener("submit", async (event) => {
    const form = event.target;
    if (!form.classList.contains("stop")) return;
    event.preventDefault();
    const button = form.querySelector("button");
    button.disabled = true;
    button.textContent = "Stopping…";
    try {
      await fetch(form.action, {
        method: "POST",
        body: new FormData(form),
        headers: { Accept: "application/json" },
      });
    } catch (error) {
      showStatus("Warden could not be reached; the run was not stopped.");
    }
  });

  // A conversation opens at its latest message.
  if (history && history.lastElementChild) history.lastElementChild.scrollIntoView({ block: "end" });

  connect();
})();
