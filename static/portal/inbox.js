// The reviewer's inbox, enhanced: keyboard navigation between rows (j/k or the arrow keys,
// Enter opens, x selects), selections that survive the list's live refresh (live.js replaces
// #inbox-items), "select every row", and on the approval page a diff of the reviewer's edit
// against the arguments asked. Everything here is an enhancement: without it, the filters, the
// bulk form and the decision form work as plain HTML forms.
"use strict";

(function () {
  const bulkForm = document.getElementById("inbox-bulk");
  if (bulkForm) inboxList(bulkForm);
  const edit = document.querySelector("textarea[data-asked]");
  if (edit) editDiff(edit);

  function inboxList(form) {
    const selected = new Set();
    let current = null; // the data-key of the row the keyboard is on
    const selectAll = form.querySelector("[data-select-all]");
    const fieldset = form.querySelector("[data-bulk]");

    const keys = document.getElementById("inbox-keys");
    if (keys) keys.hidden = false; // the keys work only with this script
    const rows = () => [...form.querySelectorAll("#inbox-items tr[data-row]")];
    const boxes = () => [...form.querySelectorAll('#inbox-items input[name="item"]')];

    function typing(target) {
      if (!(target instanceof HTMLElement)) return false;
      if (target.isContentEditable) return true;
      if (target instanceof HTMLInputElement) return target.type !== "checkbox";
      return target instanceof HTMLTextAreaElement || target instanceof HTMLSelectElement;
    }

    function focusRow(row) {
      if (!row) return;
      current = row.dataset.key;
      row.focus();
      row.scrollIntoView({ block: "nearest" });
    }

    function rowOf(element) {
      return element instanceof Element ? element.closest("#inbox-items tr[data-row]") : null;
    }

    function sync() {
      // After a refresh (or at load): the boxes say what is selected, the header box and the
      // bulk buttons follow the rows there are.
      const all = boxes();
      for (const box of all) box.checked = selected.has(box.value);
      if (selectAll) {
        const label = selectAll.closest("label");
        if (label) label.hidden = all.length === 0;
        const chosen = all.filter((box) => box.checked).length;
        selectAll.checked = all.length > 0 && chosen === all.length;
        selectAll.indeterminate = chosen > 0 && chosen < all.length;
      }
      if (fieldset) fieldset.hidden = all.length === 0;
    }

    for (const box of boxes()) if (box.checked) selected.add(box.value); // back/forward cache

    form.addEventListener("change", (event) => {
      const target = event.target;
      if (target === selectAll) {
        for (const box of boxes()) {
          box.checked = selectAll.checked;
          if (box.checked) selected.add(box.value);
          else selected.delete(box.value);
        }
      } else if (target instanceof HTMLInputElement && target.name === "item") {
        if (target.checked) selected.add(target.value);
        else selected.delete(target.value);
      }
      sync();
    });

    form.addEventListener("focusin", (event) => {
      const row = rowOf(event.target);
      if (row) current = row.dataset.key;
    });

    document.addEventListener("keydown", (event) => {
      if (event.defaultPrevented || event.altKey || event.ctrlKey || event.metaKey) return;
      if (event.isComposing || typing(event.target)) return;
      const list = rows();
      if (!list.length) return;
      const inList = rowOf(document.activeElement) !== null;
      const at = list.findIndex((row) => row.dataset.key === current);
      const key = event.key;
      // j and k work from anywhere on the page (not while typing); the arrow keys only once
      // the focus is in the list, so that they still scroll the page elsewhere.
      if (key === "j" || (key === "ArrowDown" && inList)) {
        event.preventDefault();
        focusRow(inList && at >= 0 ? list[Math.min(at + 1, list.length - 1)] : list[Math.max(at, 0)]);
      } else if (key === "k" || (key === "ArrowUp" && inList)) {
        event.preventDefault();
        focusRow(inList && at >= 0 ? list[Math.max(at - 1, 0)] : list[Math.max(at, 0)]);
      } else if (key === "Enter" && document.activeElement instanceof HTMLTableRowElement) {
        const link = document.activeElement.querySelector("a[data-open]");
        if (link) {
          event.preventDefault();
          link.click();
        }
      } else if (key === "x" && inList) {
        const box = rowOf(document.activeElement).querySelector('input[name="item"]');
        if (box) {
          event.preventDefault();
          box.click(); // a change event: the selection follows
        }
      }
    });

    // live.js replaces the list when something arrives or is decided elsewhere: keep the
    // selection (of the rows still there) and the keyboard's row.
    new MutationObserver(() => {
      const ids = new Set(boxes().map((box) => box.value));
      for (const value of [...selected]) if (!ids.has(value)) selected.delete(value);
      const hadFocus = document.activeElement === document.body || !document.activeElement;
      sync();
      if (hadFocus && current) {
        const row = rows().find((r) => r.dataset.key === current);
        if (row) row.focus({ preventScroll: true });
      }
    }).observe(form, { childList: true });

    sync();
  }

  function editDiff(box) {
    const askedElement = document.getElementById(box.dataset.asked);
    const out = document.querySelector("[data-edit-diff]");
    const status = document.getElementById("arguments-diff-status");
    if (!askedElement || !out || !status) return;
    const asked = normalise(askedElement.textContent).text;

    function normalise(text) {
      try {
        return { text: JSON.stringify(JSON.parse(text), null, 2), json: true };
      } catch (error) {
        return { text, json: false };
      }
    }

    function show() {
      const raw = box.value;
      out.replaceChildren();
      if (!raw.trim()) {
        out.hidden = true;
        status.textContent = "Empty: approving runs the call as asked.";
        return;
      }
      const edited = normalise(raw);
      if (edited.json && edited.text === asked) {
        out.hidden = true;
        status.textContent = "No change: approving runs the call as asked.";
        return;
      }
      const lines = diffLines(asked.split("\n"), edited.text.split("\n"));
      if (lines === null) {
        out.hidden = true;
        status.textContent = "Edited (too long to compare here).";
        return;
      }
      let added = 0;
      let removed = 0;
      for (const [sign, line] of lines) {
        const element = document.createElement(sign === "+" ? "ins" : sign === "-" ? "del" : "span");
        element.textContent = `${sign === " " ? " " : sign} ${line}\n`;
        out.append(element);
        if (sign === "+") added += 1;
        if (sign === "-") removed += 1;
      }
      out.hidden = false;
      status.textContent =
        `Your edit: ${added} line${added === 1 ? "" : "s"} added, ${removed} removed` +
        (edited.json ? "; approving runs the edited arguments." : "; not JSON yet: it cannot be approved as it is.");
    }

    box.addEventListener("input", show);
    show();
  }

  // The lines of `b` against `a` by their longest common subsequence: [sign, line] with sign
  // " ", "-" (only in a) or "+" (only in b). null when the texts are too long to compare here.
  function diffLines(a, b) {
    const n = a.length;
    const m = b.length;
    if (n * m > 4_000_000) return null;
    const table = Array.from({ length: n + 1 }, () => new Uint32Array(m + 1));
    for (let i = n - 1; i >= 0; i -= 1) {
      for (let j = m - 1; j >= 0; j -= 1) {
        table[i][j] = a[i] === b[j] ? table[i + 1][j + 1] + 1 : Math.max(table[i + 1][j], table[i][j + 1]);
      }
    }
    const lines = [];
    let i = 0;
    let j = 0;
    while (i < n && j < m) {
      if (a[i] === b[j]) {
        lines.push([" ", a[i]]);
        i += 1;
        j += 1;
      } else if (table[i + 1][j] >= table[i][j + 1]) {
        lines.push(["-", a[i]]);
        i += 1;
      } else {
        lines.push(["+", b[j]]);
        j += 1;
      }
    }
    while (i < n) lines.push(["-", a[i++]]);
    while (j < m) lines.push(["+", b[j++]]);
    return lines;
  }
})();
