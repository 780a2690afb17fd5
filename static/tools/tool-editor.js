// The tool form's JSON editors: each is checked as it is typed, by the server's own validators
// (the JSON Schema check of the parameters, the kind's configuration check), and the verdict is
// shown under it. Saving checks again; this only tells the admin sooner.
"use strict";
(function () {
  function csrfToken() {
    const input = document.querySelector("input[name=csrfmiddlewaretoken]");
    return input ? input.value : "";
  }

  function verdict(editor) {
    let note = editor.parentNode.querySelector(".json-verdict");
    if (!note) {
      note = document.createElement("p");
      note.className = "json-verdict";
      note.setAttribute("role", "status");
      editor.insertAdjacentElement("afterend", note);
    }
    return note;
  }

  function check(editor) {
    const kind = document.getElementById("id_kind");
    const parameters = document.getElementById("id_parameters");
    const body = {
      value: editor.value,
      kind: kind ? kind.value : editor.dataset.kind || "",
      parameters: parameters ? parameters.value : null,
    };
    fetch(editor.dataset.check, {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken() },
      body: JSON.stringify(body),
      credentials: "same-origin",
    })
      .then((response) => response.json())
      .then((answer) => {
        const note = verdict(editor);
        note.textContent = answer.problem || "Valid.";
        note.className = "json-verdict " + (answer.problem ? "errornote" : "help");
      })
      .catch(() => {}); // offline or logged out: the save will say
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("textarea.json-editor[data-check]").forEach(function (editor) {
      let timer = null;
      editor.addEventListener("input", function () {
        clearTimeout(timer);
        timer = setTimeout(() => check(editor), 300);
      });
      check(editor);
    });
  });
})();
