// The run footer's feedback (thumbs up or down, then an optional comment) and Regenerate, on the
// chat page, without leaving it. Each posts its form for JSON (portal/feedback.py); the footer
// is then fetched again from the server, which is the truth. A regenerated run is placed at
// the end of the conversation at once; live.js follows it from the conversation's socket and
// streams its answer in (it places the run itself if its events come first).
"use strict";

(function () {
  const history = document.getElementById("history");
  if (!history) return;
  const status = document.querySelector("[data-live-status]");

  document.addEventListener("submit", (event) => {
    const form = event.target;
    if (form.classList.contains("feedback")) rate(event, form);
    else if (form.classList.contains("regenerate")) regenerate(event, form);
  });

  function post(form, body) {
    return fetch(form.action, { method: "POST", body, headers: { Accept: "application/json" } });
  }

  // The form's fields with the button that sent it, read before any button is disabled (a
  // disabled button sends nothing).
  function fieldsOf(form, submitter) {
    const body = new FormData(form);
    if (submitter && submitter.name) body.set(submitter.name, submitter.value);
    return body;
  }

  async function problemOf(response) {
    try {
      const body = await response.json();
      const errors = body.errors ? Object.values(body.errors).flat() : [];
      return errors.length ? errors.join("; ") : body.detail;
    } catch (error) {
      return null;
    }
  }

  async function part(url) {
    const response = await fetch(url, { headers: { Accept: "text/html" } });
    if (!response.ok || response.redirected) return null;
    const html = await response.text();
    return new DOMParser().parseFromString(html, "text/html").querySelector("article.run");
  }

  async function rate(event, form) {
    event.preventDefault();
    const article = form.closest("article.run");
    const error = form.querySelector("[data-feedback-error]");
    const rating = event.submitter ? event.submitter.value : "";
    const body = fieldsOf(form, event.submitter);
    const buttons = [...form.querySelectorAll("button")];
    buttons.forEach((button) => (button.disabled = true));
    try {
      const response = await post(form, body);
      if (!response.ok) {
        error.textContent = (await problemOf(response)) || "The feedback could not be saved.";
        error.hidden = false;
        return;
      }
      const fresh = article && (await part(article.dataset.part));
      if (!fresh) return;
      article.querySelector(".run-meta").replaceWith(fresh.querySelector(".run-meta"));
      // Down without a comment yet: the comment box is open, and the keyboard goes there.
      const box = article.querySelector(".feedback-comment[open] textarea");
      const pressed = article.querySelector(`button.thumb[value="${rating}"]`);
      (box || pressed || article).focus({ preventScroll: true });
    } catch (failure) {
      error.textContent = "Warden could not be reached; your feedback was not saved.";
      error.hidden = false;
    } finally {
      buttons.forEach((button) => (button.disabled = false));
    }
  }

  async function regenerate(event, form) {
    event.preventDefault();
    const body = fieldsOf(form, null);
    const button = form.querySelector("button");
    button.disabled = true;
    button.textContent = "Regenerating…";
    try {
      const response = await post(form, body);
      if (!response.ok) {
        showStatus((await problemOf(response)) || "The answer could not be asked again.");
        button.disabled = false;
        button.textContent = "Regenerate";
        return;
      }
      const started = await response.json();
      const id = `run-${started.run}`;
      if (document.getElementById(id)) return; // live.js placed it already
      const fresh = await part(`/chat/runs/${started.run}/`);
      if (fresh && !document.getElementById(id)) history.appendChild(fresh);
    } catch (failure) {
      showStatus("Warden could not be reached; the answer was not asked again.");
      button.disabled = false;
      button.textContent = "Regenerate";
    }
  }

  function showStatus(text) {
    if (!status) return;
    status.textContent = text;
    status.hidden = !text;
  }
})();
