// The dashboard's only script, served from here (no build step, nothing from elsewhere).
// Pages work without it; it adds two things:
//  - live updates: every few seconds it fetches the page again and swaps in each part
//    marked data-live whose content changed (unchanged parts are left alone, so a
//    traceback being selected or a button under the pointer stays put);
//  - a confirmation before buttons that carry data-confirm (cancel, delete, bulk actions);
//    a button with data-confirm-selected asks with the number of boxes ticked in its form.
(function () {
  "use strict";

  document.addEventListener("submit", function (event) {
    const button = event.submitter;
    let question = button && button.dataset.confirm;
    if (button && button.dataset.confirmSelected) {
      // the boxes sit in the table's rows, tied to the form by their form= attribute
      const ticked = Array.from(event.target.elements)
        .filter(function (e) { return e.name === "ids" && e.checked; }).length;
      question = button.dataset.confirmSelected.replace("{n}", String(ticked));
    }
    if (question && !window.confirm(question)) {
      event.preventDefault();
    }
  });

  const period = Number(document.body.dataset.refresh || 0);
  if (!period || !document.querySelector("[data-live]")) {
    return;
  }
  const stamp = document.getElementById("live-stamp");
  let busy = false;
  // a click is pointerdown, then pointerup and click: a button swapped in between would
  // lose it, so nothing is swapped while a pointer is down
  let pressed = false;
  document.addEventListener("pointerdown", function () { pressed = true; });
  document.addEventListener("pointerup", function () { pressed = false; });
  document.addEventListener("pointercancel", function () { pressed = false; });

  async function refresh() {
    if (busy || pressed || document.hidden) {
      return;
    }
    busy = true;
    try {
      const response = await fetch(window.location.href, {
        headers: { "X-Live": "1", "Accept": "text/html" },
        credentials: "same-origin",
      });
      // signed out, or sent to the login form: leave the page as it is
      if (!response.ok || response.redirected) {
        if (stamp) stamp.textContent = "not live";
        return;
      }
      const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
      if (pressed) {
        return; // pressed while the page was fetched: the next tick brings it again
      }
      for (const old of document.querySelectorAll("[data-live]")) {
        const next = fresh.getElementById(old.id);
        if (next && next.innerHTML !== old.innerHTML) {
          old.replaceWith(next);
        }
      }
      // UTC and 24-hour, as every time the pages show
      if (stamp) stamp.textContent = "live " + new Date().toISOString().slice(11, 19) + " UTC";
    } catch (error) {
      // the dashboard may be restarting: try again at the next tick
      if (stamp) stamp.textContent = "reconnecting…";
    } finally {
      busy = false;
    }
  }

  window.setInterval(refresh, period);
})();
