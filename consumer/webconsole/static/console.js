// Progressive enhancement for the Dagger Adapter console: live regions refreshed over
// server-sent events, validation as you type, select-all. Message data is never handled as
// HTML here: fragments come rendered (and autoescaped) from the server and are parsed with
// DOMParser (scripts in them never run); everything else is set with textContent / value.
(() => {
  "use strict";
  const csrf = document.querySelector('meta[name="csrf-token"]')?.content || "";
  const regions = [...document.querySelectorAll("[data-live]")];

  function swap(element, html) {
    const doc = new DOMParser().parseFromString(html, "text/html");
    element.replaceChildren(...[...doc.body.childNodes].map((node) => document.importNode(node, true)));
  }

  // One refresher per region: at most one request in flight, at least data-min-gap ms apart,
  // and a change announced meanwhile is fetched once afterwards.
  function refresher(element) {
    const gap = Number(element.dataset.minGap || 250);
    let busy = false;
    let again = false;
    let last = 0;
    const run = async () => {
      if (busy) {
        again = true;
        return;
      }
      busy = true;
      again = false;
      const wait = last + gap - Date.now();
      if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
      last = Date.now();
      try {
        const response = await fetch(element.dataset.live, { headers: { Accept: "text/html" } });
        if (response.ok) {
          swap(element, await response.text());
          // A page rendered while RabbitMQ was unreachable fills itself in once it is back.
          if (element.dataset.on === "broker" && !element.children.length && document.body.hasAttribute("data-broker-down")) {
            location.reload();
          }
        }
        else if (response.status === 401) location.reload(); // signed out: show the sign-in page
      } catch (_) {
        // offline for a moment: the next event or timer tries again
      } finally {
        busy = false;
        if (again) run();
      }
    };
    return run;
  }

  const refreshers = new Map(regions.map((element) => [element, refresher(element)]));
  for (const [element, refresh] of refreshers) {
    const every = Number(element.dataset.every || 0);
    if (every > 0) setInterval(refresh, every * 1000);
  }

  const indicator = document.getElementById("live");
  function setLive(on) {
    if (!indicator) return;
    indicator.classList.toggle("on", on);
    indicator.title = on ? "live updates: on" : "live updates: reconnecting…";
  }

  if (regions.length && window.EventSource) {
    // Ask only for what this page shows: its regions' kinds, and one task's events on its page.
    const kinds = new Set(regions.flatMap((element) => (element.dataset.on || "").split(" ").filter(Boolean)));
    const query = new URLSearchParams({ kinds: [...kinds].join(",") });
    const tasks = new Set(regions.map((element) => element.dataset.task).filter((task) => task !== undefined));
    if (tasks.size === 1 && !regions.some((element) => element.dataset.on.includes("flow") && element.dataset.task === undefined)) {
      query.set("task", [...tasks][0]);
    }
    const source = new EventSource("/events?" + query.toString());
    let hellos = 0;
    source.addEventListener("hello", (event) => {
      setLive(true);
      // Whatever changed between rendering the page (or losing the stream) and now was not
      // announced to this page: catch up once. The version counts the hub's notices.
      let version = null;
      try {
        version = String(JSON.parse(event.data || "{}").version);
      } catch (_) {
        // unknown: catch up
      }
      const missed = hellos++ > 0 || version !== document.body.dataset.version;
      for (const [element, refresh] of refreshers) {
        if (missed || element.dataset.on === "broker") refresh();
      }
    });
    source.addEventListener("error", () => setLive(false));
    for (const kind of ["fleet", "flow", "broker"]) {
      source.addEventListener(kind, (event) => {
        let notice = {};
        try {
          notice = JSON.parse(event.data || "{}");
        } catch (_) {
          // a malformed notice refreshes every region of its kind
        }
        for (const [element, refresh] of refreshers) {
          if (!(element.dataset.on || "").split(" ").includes(kind)) continue;
          if (kind === "flow" && notice.task_id != null) {
            if (element.dataset.task !== undefined && element.dataset.task !== notice.task_id) continue;
            const states = element.dataset.states;
            if (states && notice.state != null && !states.split(" ").includes(notice.state)) continue;
          }
          refresh();
        }
      });
    }
  }

  // "/" jumps to the task search box, as in most consoles.
  const find = document.querySelector(".find input");
  document.addEventListener("keydown", (event) => {
    const typing = /^(INPUT|TEXTAREA|SELECT)$/.test(document.activeElement?.tagName || "");
    if (event.key === "/" && find && !typing && !event.ctrlKey && !event.metaKey) {
      event.preventDefault();
      find.focus();
    }
  });

  // Dead letters: a header checkbox ticks every row of its form.
  for (const all of document.querySelectorAll("[data-select-all]")) {
    all.addEventListener("change", () => {
      for (const box of all.form.querySelectorAll(`input[type=checkbox][name="${all.dataset.selectAll}"]`)) {
        box.checked = all.checked;
      }
    });
  }

  // Submit: validate as you type; pick an example without leaving the page.
  const text = document.getElementById("command-text");
  const verdict = document.getElementById("verdict");
  if (text && verdict) {
    let timer = null;
    let sequence = 0;
    const validate = async () => {
      const mine = ++sequence;
      try {
        const response = await fetch("/submit/validate", {
          method: "POST",
          headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
          body: JSON.stringify({ text: text.value }),
        });
        const answer = await response.json();
        if (mine !== sequence) return; // a newer check is on its way
        verdict.textContent = answer.ok ? `✔ ${answer.message}` : `✘ ${answer.message || answer.error || "not valid"}`;
        verdict.className = "verdict " + (answer.ok ? "verdict-ok" : "verdict-bad");
      } catch (_) {
        if (mine === sequence) verdict.textContent = "cannot check right now";
      }
    };
    text.addEventListener("input", () => {
      clearTimeout(timer);
      timer = setTimeout(validate, 250);
    });
    for (const link of document.querySelectorAll("[data-example]")) {
      link.addEventListener("click", async (event) => {
        event.preventDefault();
        const response = await fetch("/submit/examples/" + encodeURIComponent(link.dataset.example));
        if (!response.ok) return;
        text.value = await response.text();
        document.querySelectorAll("[data-example]").forEach((other) => other.classList.toggle("active", other === link));
        history.replaceState(null, "", "/submit?example=" + encodeURIComponent(link.dataset.example));
        validate();
      });
    }
    if (text.value.trim()) validate();
  }
})();
