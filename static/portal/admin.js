// The Django admin, made to pass axe-core's serious checks (WCAG 2.2 AA).
//
// The two-list widget (SelectFilter2.js) draws its search icon as a <span aria-label=...>: a
// label on an element with no role is not announced and is prohibited (aria-prohibited-attr).
// Giving the icon the role of an image makes its label its name. The widget is built after
// the page loads, so newly added icons are handled as they appear.
(function () {
  "use strict";

  function name(root) {
    root.querySelectorAll("span.help-tooltip[aria-label]:not([role])").forEach(function (icon) {
      icon.setAttribute("role", "img");
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    name(document);
    new MutationObserver(function (changes) {
      changes.forEach(function (change) {
        change.addedNodes.forEach(function (node) {
          if (node.nodeType === Node.ELEMENT_NODE) {
            name(node.parentNode || node);
          }
        });
      });
    }).observe(document.body, { childList: true, subtree: true });
  });
})();
