// pg_jobs dashboard: the parts of a page marked data-live (a run in progress,
// the newest runs, the workers) are fetched again every second and replaced.
// The fresh copy is parsed with DOMParser, which runs no script, and comes from
// the same server-side templates, which escape every value.
(function () {
  "use strict";

  function liveRegion() {
    return document.querySelector("[data-live]");
  }

  async function refresh(region) {
    const response = await fetch(location.href, {
      headers: { Accept: "text/html" },
      cache: "no-store",
      credentials: "same-origin",
    });
    if (!response.ok) return;
    const fresh = new DOMParser()
      .parseFromString(await response.text(), "text/html")
      .getElementById(region.id);
    if (!fresh) return;
    // Keep open what the reader opened (a step's output).
    const open = new Set(
      Array.from(region.querySelectorAll("details[open][data-step]"), (d) => d.dataset.step)
    );
    fresh.querySelectorAll("details[data-step]").forEach((d) => {
      if (open.has(d.dataset.step)) d.open = true;
    });
    region.replaceWith(document.adoptNode(fresh));
  }

  async function tick() {
    const region = liveRegion();
    if (!region) return;
    if (!document.hidden) {
      try {
        await refresh(region);
      } catch (e) {
        // The server restarted or the network blinked: try again next second.
      }
    }
    if (liveRegion()) setTimeout(tick, 1000);
  }

  if (liveRegion()) setTimeout(tick, 1000);
})();
