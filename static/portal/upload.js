// "Attach a file" in the chat (portal/uploads.py): the file is sent with its progress shown,
// then the conversation's list of files is fetched again every second while one of them is
// queued or being read, until each is ready or failed (the database is the truth; the list is
// the server's HTML). A removed file leaves the list the same way.
"use strict";

(function () {
  const section = document.getElementById("attachments");
  const form = document.getElementById("attach");
  if (!section || !form) return;
  const list = document.getElementById("files");
  const input = document.getElementById("attach-file");
  const problem = document.getElementById("attach-error");
  const button = document.getElementById("attach-send");
  const PENDING = '[data-status="queued"], [data-status="processing"]';
  let timer = null;

  function showProblem(text) {
    problem.textContent = text;
    problem.hidden = !text;
  }

  async function refresh() {
    clearTimeout(timer);
    if (!section.dataset.files) return;
    try {
      const response = await fetch(section.dataset.files, { headers: { Accept: "text/html" } });
      if (response.ok) list.innerHTML = await response.text();
    } catch (error) {
      // Warden is away for a moment: the next look may find it.
    }
    if (list.querySelector(PENDING)) timer = setTimeout(refresh, 1000);
  }

  function send(file) {
    // XMLHttpRequest rather than fetch: it reports the upload's progress.
    const row = document.createElement("li");
    row.className = "file status-uploading";
    const name = document.createElement("span");
    name.className = "file-name";
    name.textContent = file.name;
    const pill = document.createElement("span");
    pill.className = "pill";
    pill.textContent = "uploading";
    row.append(name, " ", pill);
    list.append(row);
    const request = new XMLHttpRequest();
    request.open("POST", form.action);
    request.setRequestHeader("Accept", "application/json");
    request.responseType = "json";
    request.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) {
        pill.textContent = `uploading ${Math.round((100 * event.loaded) / event.total)}%`;
      }
    });
    return new Promise((resolve) => {
      request.addEventListener("load", () => {
        const body = request.response || {};
        row.remove();
        if (request.status >= 400) {
          showProblem(`Not attached: ${file.name}: ${body.detail || "the file was refused."}`);
        } else if (!section.dataset.files) {
          location.assign(body.url); // the first file started the conversation: its own page
        } else {
          refresh();
        }
        resolve();
      });
      request.addEventListener("error", () => {
        row.remove();
        showProblem(`Warden could not be reached; ${file.name} was not attached.`);
        resolve();
      });
      request.send(new FormData(form));
    });
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const [file] = input.files;
    if (!file) {
      showProblem("Choose a file first.");
      return;
    }
    showProblem("");
    button.disabled = true;
    try {
      await send(file);
    } finally {
      form.reset();
      button.disabled = false;
    }
  });
  // Choosing a file attaches it (the button stays, for keyboards and for a second try).
  input.addEventListener("change", () => {
    if (input.files.length) form.requestSubmit();
  });

  list.addEventListener("submit", async (event) => {
    const remove = event.target;
    if (!remove.classList.contains("file-remove")) return;
    event.preventDefault();
    remove.querySelector("button").disabled = true;
    try {
      const response = await fetch(remove.action, {
        method: "POST",
        body: new FormData(remove),
        headers: { Accept: "application/json" },
      });
      if (!response.ok) showProblem("The file could not be removed.");
    } catch (error) {
      showProblem("Warden could not be reached; the file was not removed.");
    }
    refresh();
  });

  if (list.querySelector(PENDING)) refresh();
})();
