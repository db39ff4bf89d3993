// The rating page: one task at a time from the study web service's JSON API. A click or a
// key 1-4 answers the task on screen (its id goes with the answer, so a late or double click
// can never answer the next one: the server records one answer per task). Both images share
// one zoom and pan.
(function () {
  "use strict";
  const token = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop());
  const query = new URLSearchParams(location.search);
  const api = "/api/rate/" + encodeURIComponent(token);
  const $ = (id) => document.getElementById(id);
  const main = $("study");
  let task = null;       // the task on screen
  let busy = true;       // no answer while a request or the next task's images are pending
  let view = { scale: 1, x: 0, y: 0 };

  function show(section) {
    for (const id of ["task", "thanks", "problem"]) $(id).hidden = id !== section;
  }

  function problem(text) {
    show("problem");
    $("problem-text").textContent = text;
    main.dataset.state = "problem";
  }

  function progress(done, total) {
    $("count").textContent = Math.min(done + 1, total) + " / " + total;
    $("bar").style.width = (total ? (100 * done / total) : 0) + "%";
    $("progress").setAttribute("aria-valuenow", String(done));
    $("progress").setAttribute("aria-valuemax", String(total));
  }

  async function call(url, options) {
    let response;
    try {
      response = await fetch(url, options);
    } catch (e) {
      throw new Error("The connection was lost. Check your network and reload the page.");
    }
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(body.error || ("The server answered " + response.status));
    return body;
  }

  function loaded(img, src) {
    return new Promise((resolve, reject) => {
      img.onload = () => resolve();
      img.onerror = () => reject(new Error("An image could not be loaded; reload the page."));
      img.src = src;
    });
  }

  async function present(next) {
    if (next.finished) {
      show("thanks");
      $("code").textContent = next.completion_code;
      progress(next.total, next.total);
      $("count").textContent = next.total + " / " + next.total;
      main.dataset.state = "finished";
      return;
    }
    busy = true;
    main.dataset.state = "loading";
    task = next;
    const sides = next.result_left ? ["result", "input"] : ["input", "result"];
    const figures = [$("left"), $("right")];
    const waits = [];
    figures.forEach((figure, i) => {
      figure.querySelector("figcaption").textContent = sides[i] === "input" ? "Original" : "Result";
      figure.dataset.side = sides[i];
      const img = figure.querySelector("img");
      img.alt = sides[i] === "input" ? "the original photo" : "the result to rate";
      waits.push(loaded(img, next[sides[i]]));
    });
    resetZoom();
    show("task");
    progress(next.done, next.total);
    main.dataset.task = next.task_id;
    await Promise.all(waits);
    // A short pause before answers count: a double click meant for the last task is dropped.
    setTimeout(() => { busy = false; main.dataset.state = "ready"; setButtons(true); }, 300);
  }

  function setButtons(enabled) {
    for (const b of document.querySelectorAll("#levels button")) b.disabled = !enabled;
  }

  async function answer(level) {
    if (busy || !task) return;
    busy = true;
    setButtons(false);
    main.dataset.state = "sending";
    try {
      const next = await call(api + "/answer", {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ task_id: task.task_id, level: level }),
      });
      await present(next);
    } catch (e) {
      problem(e.message);
    }
  }

  // -- one zoom for both images -----------------------------------------------------------
  function apply() {
    for (const img of document.querySelectorAll(".frame img")) {
      img.style.transform = "translate(" + view.x + "px," + view.y + "px) scale(" + view.scale + ")";
    }
    $("zoom-level").textContent = Math.round(view.scale * 100) + "%";
  }
  function clamp() {
    const frame = document.querySelector(".frame");
    const w = frame.clientWidth, h = frame.clientHeight;
    view.scale = Math.min(16, Math.max(1, view.scale));
    view.x = Math.min(0, Math.max(w - w * view.scale, view.x));
    view.y = Math.min(0, Math.max(h - h * view.scale, view.y));
  }
  function zoomAt(factor, cx, cy) {
    const scale = Math.min(16, Math.max(1, view.scale * factor));
    view.x = cx - (cx - view.x) * (scale / view.scale);
    view.y = cy - (cy - view.y) * (scale / view.scale);
    view.scale = scale;
    clamp();
    apply();
  }
  function zoomCentre(factor) {
    const frame = document.querySelector(".frame");
    zoomAt(factor, frame.clientWidth / 2, frame.clientHeight / 2);
  }
  function resetZoom() { view = { scale: 1, x: 0, y: 0 }; apply(); }

  for (const frame of document.querySelectorAll(".frame")) {
    frame.addEventListener("wheel", (e) => {
      e.preventDefault();
      const r = frame.getBoundingClientRect();
      zoomAt(e.deltaY < 0 ? 1.25 : 0.8, e.clientX - r.left, e.clientY - r.top);
    }, { passive: false });
    const pointers = new Map();
    let pinch = 0;
    frame.addEventListener("pointerdown", (e) => {
      frame.setPointerCapture(e.pointerId);
      pointers.set(e.pointerId, { x: e.clientX, y: e.clientY });
    });
    frame.addEventListener("pointermove", (e) => {
      const last = pointers.get(e.pointerId);
      if (!last) return;
      if (pointers.size === 1) {
        view.x += e.clientX - last.x;
        view.y += e.clientY - last.y;
        clamp();
        apply();
      } else if (pointers.size === 2) {
        const [a, b] = [...pointers.values()];
        const d = Math.hypot(a.x - b.x, a.y - b.y);
        if (pinch) {
          const r = frame.getBoundingClientRect();
          zoomAt(d / pinch, (a.x + b.x) / 2 - r.left, (a.y + b.y) / 2 - r.top);
        }
        pinch = d;
      }
      pointers.set(e.pointerId, { x: e.clientX, y: e.clientY });
    });
    const up = (e) => { pointers.delete(e.pointerId); pinch = 0; };
    frame.addEventListener("pointerup", up);
    frame.addEventListener("pointercancel", up);
  }
  $("zoom-in").addEventListener("click", () => zoomCentre(1.5));
  $("zoom-out").addEventListener("click", () => zoomCentre(1 / 1.5));
  $("zoom-reset").addEventListener("click", resetZoom);

  // -- answers -------------------------------------------------------------------------------
  for (const button of document.querySelectorAll("#levels button")) {
    button.addEventListener("click", () => answer(Number(button.dataset.level)));
  }
  document.addEventListener("keydown", (e) => {
    if (e.altKey || e.ctrlKey || e.metaKey) return;
    if (e.key >= "1" && e.key <= "4") { e.preventDefault(); answer(Number(e.key)); }
    else if (e.key === "+" || e.key === "=") zoomCentre(1.5);
    else if (e.key === "-") zoomCentre(1 / 1.5);
    else if (e.key === "0") resetZoom();
  });

  const ids = new URLSearchParams();
  for (const name of ["workerId", "assignmentId"]) if (query.get(name)) ids.set(name, query.get(name));
  call(api + "/task" + (ids.toString() ? "?" + ids : ""))
    .then(present)
    .catch((e) => problem(e.message));
})();
