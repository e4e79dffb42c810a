// Keeps the fleet page's intake figures live: polls /ui/intake.json every two seconds.
(function () {
  "use strict";
  const text = (id, value) => {
    const node = document.getElementById(id);
    if (node) node.textContent = value;
  };
  function render(data) {
    text("telemetry-rows", data.telemetry_rows);
    if (!data.intake) return;
    text("messages-handled", data.intake.messages_handled);
    if (data.intake.last_message_at) text("last-message", data.intake.last_message_at.slice(11, 19));
    const dropped = document.getElementById("dropped");
    if (!dropped) return;
    const reasons = Object.entries(data.intake.dropped).sort();
    if (reasons.length === 0) {
      dropped.replaceChildren(Object.assign(document.createElement("p"), { textContent: "no messages dropped" }));
      return;
    }
    const table = document.createElement("table");
    table.className = "counts";
    const head = table.insertRow();
    head.appendChild(Object.assign(document.createElement("th"), { textContent: "dropped, by reason" }));
    for (const [reason, count] of reasons) {
      const row = table.insertRow();
      row.insertCell().textContent = reason;
      row.insertCell().textContent = count;
    }
    dropped.replaceChildren(table);
  }
  async function poll() {
    try {
      const answer = await fetch("/ui/intake.json", { credentials: "same-origin", cache: "no-store" });
      if (answer.ok) render(await answer.json());
    } catch (error) {
      // The server restarting or the network dropping: try again at the next tick.
    }
  }
  setInterval(poll, 2000);
})();
