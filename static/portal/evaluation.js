// An evaluation's page follows it while it runs: every few seconds it asks the server for the
// evaluation's state and its results so far (server-rendered, escaped there) and shows them,
// until the evaluation has finished.
"use strict";

(function () {
  const panel = document.getElementById("evaluation");
  if (!panel) return;
  const EVERY = 2000; // ms between asks while it runs

  async function follow() {
    try {
      const response = await fetch(panel.dataset.progressUrl, {
        headers: { Accept: "application/json" },
      });
      if (!response.ok || response.redirected) throw new Error(String(response.status));
      const body = await response.json();
      const template = document.createElement("template");
      template.innerHTML = body.html;
      panel.replaceChildren(template.content);
      if (body.state === "succeeded" || body.state === "failed") {
        panel.dataset.working = "0";
        return; // finished: nothing more will change
      }
    } catch (error) {
      // the server away for a moment: ask again
    }
    setTimeout(follow, EVERY);
  }
  if (panel.dataset.working === "1") setTimeout(follow, EVERY);
})();
