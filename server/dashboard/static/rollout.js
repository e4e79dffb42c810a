// Keeps a rollout page current without a reload: polls the page's JSON twin and rewrites
// the figures that change (state, counts, each wave's progress and failure rate).
(function () {
  "use strict";
  const root = document.getElementById("rollout");
  if (!root) return;
  const url = "/ui/rollouts/" + root.dataset.rollout + "/progress.json";
  const text = (id, value) => {
    const node = document.getElementById(id);
    if (node && node.textContent !== String(value)) node.textContent = value;
  };
  const percent = (value) => Math.round(value * 100) + "%";
  function render(data) {
    const state = document.getElementById("rollout-state");
    if (state) { state.textContent = data.state; state.className = "state " + data.state; }
    text("rollout-wave", data.current_wave);
    text("rollout-ended", data.ended);
    text("rollout-devices", data.devices);
    text("rollout-reason", data.reason);
    for (const wave of data.waves) {
      const row = root.querySelector('tr[data-wave="' + wave.wave + '"]');
      if (!row) continue;
      row.querySelector(".size").textContent = wave.size;
      row.querySelector(".ended").textContent = wave.ended;
      row.querySelector(".failures").textContent = wave.failures;
      const rate = row.querySelector(".rate");
      rate.textContent = percent(wave.failure_rate);
      rate.className = "rate" + (wave.failure_rate > data.max_failure_rate ? " bad" : "");
      const bar = row.querySelector(".bar");
      if (bar && wave.size > 0) {
        const steps = wave.steps;
        const parts = [
          ["ok", steps.committed || 0], ["bad", (steps.failed || 0) + (steps.timed_out || 0)],
          ["sent", steps.sent || 0], ["other", (steps.superseded || 0) + (steps.rolled_back || 0)],
        ];
        bar.replaceChildren(...parts.filter(([, n]) => n > 0).map(([css, n]) => {
          const seg = document.createElement("span");
          seg.className = "seg " + css;
          seg.style.width = (100 * n / wave.size).toFixed(2) + "%";
          seg.title = css + ": " + n;
          return seg;
        }));
      }
    }
    const live = document.getElementById("live");
    if (live) live.textContent = "live, updated " + new Date().toLocaleTimeString();
  }
  async function poll() {
    try {
      const answer = await fetch(url, { credentials: "same-origin", cache: "no-store" });
      if (answer.ok) render(await answer.json());
    } catch (error) {
      // The server restarting or the network dropping: try again at the next tick.
    }
  }
  setInterval(poll, 1500);
})();
