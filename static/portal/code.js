// Code blocks in answers (governance/guardrails/highlight.py renders them, code.css colours
// them): a Copy button on each, which puts the code on the clipboard as plain text and says
// "Copied" for a moment. Answers arrive after the page has loaded (live.js replaces a run's
// part when it changes), so blocks are looked for again whenever elements are added.
"use strict";

(function () {
  const SHOWN_FOR = 2000; // ms that the button says "Copied"
  let status = null; // one polite live region for the page, made when first needed

  function announce(text) {
    if (!status) {
      status = document.createElement("p");
      status.className = "sr-only";
      status.setAttribute("role", "status");
      document.body.appendChild(status);
    }
    status.textContent = text;
  }

  // Without the Clipboard API (a page served over plain HTTP is not a secure context), or
  // when the browser refuses it: the old way, through a selected text area.
  function copyBySelection(text, returnTo) {
    const area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.setAttribute("aria-hidden", "true");
    area.tabIndex = -1;
    area.className = "sr-only";
    document.body.appendChild(area);
    area.select();
    let copied = false;
    try {
      copied = document.execCommand("copy");
    } catch (error) {
      copied = false;
    }
    area.remove();
    returnTo.focus({ preventScroll: true });
    return copied;
  }

  async function copy(text, button) {
    if (navigator.clipboard && window.isSecureContext) {
      try {
        await navigator.clipboard.writeText(text);
        return true;
      } catch (error) {
        // refused (no permission, the page not focused): try the other way
      }
    }
    return copyBySelection(text, button);
  }

  function enhance(block) {
    const head = block.querySelector(".code-head");
    const pre = block.querySelector("pre");
    const code = pre && pre.querySelector("code");
    if (!head || !code || head.querySelector(".code-copy")) return;
    const language = (head.querySelector(".code-lang") || {}).textContent || "Code";
    const what = language === "Code" ? "code" : `${language} code`;
    // A long line scrolls sideways: the keyboard must be able to reach it too.
    pre.tabIndex = 0;
    pre.setAttribute("role", "group");
    pre.setAttribute("aria-label", what);
    const button = document.createElement("button");
    button.type = "button";
    button.className = "code-copy";
    const shown = document.createElement("span");
    shown.textContent = "Copy";
    const named = document.createElement("span");
    named.className = "sr-only";
    named.textContent = ` ${what}`;
    button.append(shown, named);
    let timer = null;
    button.addEventListener("click", async () => {
      const copied = await copy(code.textContent.replace(/\n$/, ""), button);
      clearTimeout(timer);
      shown.textContent = copied ? "Copied" : "Copy failed";
      button.toggleAttribute("data-copied", copied);
      announce(
        copied
          ? `${what[0].toUpperCase()}${what.slice(1)} copied to the clipboard.`
          : "The code could not be copied: select it and copy it by hand.",
      );
      timer = setTimeout(() => {
        shown.textContent = "Copy";
        button.removeAttribute("data-copied");
      }, SHOWN_FOR);
    });
    head.appendChild(button);
  }

  function enhanceAll(root) {
    if (root.matches && root.matches(".code-block")) enhance(root);
    root.querySelectorAll(".code-block").forEach(enhance);
  }

  enhanceAll(document);
  new MutationObserver((mutations) => {
    for (const mutation of mutations) {
      for (const node of mutation.addedNodes) {
        // The streamed answer's text changes are text nodes: nothing to look at.
        if (node.nodeType === Node.ELEMENT_NODE) enhanceAll(node);
      }
    }
  }).observe(document.body, { childList: true, subtree: true });
})();
