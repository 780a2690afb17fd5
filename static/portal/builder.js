// The agent builder (templates/admin/agents/agent/builder.html). The test chat is the chat's
// own script (live.js): this only says when the configuration has unsaved changes, which the
// test chat does not use until they are saved, and asks before leaving the page with them.
"use strict";

(function () {
  const form = document.getElementById("builder-form");
  const notice = document.getElementById("builder-unsaved");
  if (!form || !notice) return;
  const saved = new FormData(form);
  let dirty = false;
  let saving = false;

  function same(now) {
    const keys = new Set([...saved.keys(), ...now.keys()]);
    return [...keys].every((key) => {
      const before = saved.getAll(key).map(String).sort().join("\u0000");
      return before === now.getAll(key).map(String).sort().join("\u0000");
    });
  }

  function check() {
    dirty = !same(new FormData(form));
    notice.hidden = !dirty;
  }

  form.addEventListener("input", check);
  form.addEventListener("change", check);
  form.addEventListener("submit", () => (saving = true));
  window.addEventListener("beforeunload", (event) => {
    if (dirty && !saving) event.preventDefault();
  });
})();
