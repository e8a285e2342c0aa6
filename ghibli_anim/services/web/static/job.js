// The job page: follows the job's server-sent events and shows what lands.
//
// Every text from the server goes in with textContent, never innerHTML (the
// idea and the prompts are user text). Frames and depth maps are added once,
// keyed by index, so an image already shown is never loaded again. The forms
// that direct a job (the storyboard editor, "re-render from here") are plain
// forms the server renders: the page reloads to show the editor once the job
// waits for review.
"use strict";

(function () {
  const root = document.getElementById("job");
  if (!root) return;
  const jobId = root.dataset.jobId;
  const $ = (id) => document.getElementById(id);
  const MAX_EVENTS = 40;

  let lastSequence = 0;
  let source = null;
  let refreshing = false;
  let refreshAgain = false;

  function setText(id, value) {
    const el = $(id);
    if (el) el.textContent = value == null ? "" : String(value);
  }

  function figure(kind, index, url) {
    const fig = document.createElement("figure");
    fig.dataset.index = String(index);
    const img = document.createElement("img");
    img.src = url;
    img.alt = kind + " " + index;
    const cap = document.createElement("figcaption");
    cap.textContent = kind + " " + index;
    if (kind === "frame") {
      // A click opens the frame for editing ("re-render from here").
      const link = document.createElement("a");
      link.href = `/jobs/${jobId}?frame=${index}#refork`;
      link.append(img);
      fig.append(link, cap);
    } else {
      fig.append(img, cap);
    }
    return fig;
  }

  // Adds the items not shown yet, keeping the grid in index order.
  function upsertGrid(container, items, kind) {
    for (const item of items) {
      if (container.querySelector(`figure[data-index="${item.index}"]`)) continue;
      const fig = figure(kind, item.index, item.url);
      const after = Array.from(container.children).find(
        (el) => Number(el.dataset.index) > item.index,
      );
      container.insertBefore(fig, after || null);
    }
  }

  function renderStoryboard(board) {
    const body = $("storyboard").tBodies[0];
    if (!board || body.rows.length) return;
    for (const shot of board.shots) {
      const row = body.insertRow();
      row.dataset.index = String(shot.index);
      for (const [text, cls] of [
        [shot.index, ""],
        [shot.prompt, "prompt"],
        [shot.camera_text, ""],
        [shot.continuity, ""],
      ]) {
        const cell = row.insertCell();
        cell.textContent = String(text);
        if (cls) cell.className = cls;
      }
    }
    let meta = `style “${board.style}”, planned by ${board.planner.backend || "?"}`;
    if (board.planner.offline) meta += " (offline planner)";
    setText("storyboard-meta", meta);
    $("storyboard-card").hidden = false;
  }

  function renderOutputs(outputs) {
    if (!outputs.length || $("downloads").children.length) return;
    const players = $("players");
    for (const out of outputs) {
      let media = null;
      if (out.kind === "gif" || out.kind === "webp") {
        media = document.createElement("img");
        media.id = "final-" + out.kind;
        media.alt = "the animation (" + out.kind.toUpperCase() + ")";
      } else if (out.kind === "mp4") {
        media = document.createElement("video");
        media.id = "final-mp4";
        media.controls = media.loop = media.muted = media.autoplay = media.playsInline = true;
      }
      if (media) {
        media.src = out.url;
        const fig = document.createElement("figure");
        const cap = document.createElement("figcaption");
        cap.textContent = out.kind === "mp4" ? "MP4 (H.264)" : out.kind.toUpperCase();
        fig.append(media, cap);
        players.append(fig);
      }
      const li = document.createElement("li");
      const a = document.createElement("a");
      a.href = out.url;
      a.download = out.name;
      a.dataset.kind = out.kind;
      a.textContent = out.name;
      const size = document.createElement("span");
      size.className = "muted";
      size.textContent = " " + out.size_bytes + " bytes";
      li.append(a, size);
      $("downloads").append(li);
    }
    $("outputs-card").hidden = false;
    // A fork's page plays it next to its parent.
    const self = $("compare-self");
    const first = players.querySelector("img, video");
    if (self && first && !self.querySelector("img, video")) {
      const placeholder = self.querySelector(".placeholder");
      if (placeholder) placeholder.remove();
      self.prepend(first.cloneNode(false));
    }
  }

  function render(view) {
    setText("job-title", view.title || "Untitled");
    setText("job-idea", view.idea);
    const status = $("job-status");
    status.textContent = view.status;
    status.className = "status status-" + view.status.toLowerCase();
    setText("frames-done", view.frames_done);
    setText("frames-total", view.frames_total);
    setText("job-seed", view.seed);
    setText("job-profile", view.profile);
    setText("job-planner", view.planner_backend);
    setText("job-attempt", view.attempt);
    const bar = $("job-progress");
    bar.max = view.frames_total || 1;
    bar.value = view.frames_done;
    setText("job-error", view.error);
    $("job-error").hidden = !view.error;
    $("cancel").hidden = !view.cancellable;
    $("resume").hidden = !view.resumable;
    $("unreachable").hidden = !view.unreachable;
    if (view.terminal) $("frame-progress-line").hidden = true;
    $("frames-hint").hidden = !view.terminal;
    // Waiting for review: the server renders the storyboard editor.
    if (view.status === "PLANNED" && root.dataset.status !== "PLANNED") {
      window.location.reload();
      return;
    }
    if ($("editor-card")) $("editor-card").hidden = view.status !== "PLANNED";
    renderStoryboard(view.storyboard);
    upsertGrid($("frames"), view.frames, "frame");
    upsertGrid($("depth"), view.depth, "depth");
    if (view.depth.length) $("depth-card").hidden = false;
    renderOutputs(view.outputs);
  }

  // One GetAnimation at a time; events that arrive meanwhile ask for one more.
  async function refresh() {
    if (refreshing) {
      refreshAgain = true;
      return;
    }
    refreshing = true;
    try {
      do {
        refreshAgain = false;
        const response = await fetch(`/api/jobs/${jobId}`, {
          headers: { Accept: "application/json" },
        });
        if (response.ok) render(await response.json());
      } while (refreshAgain);
    } finally {
      refreshing = false;
    }
  }

  function logEvent(ev) {
    const list = $("events");
    const li = document.createElement("li");
    const when = ev.time ? ev.time.slice(11, 19) + " " : "";
    let text = when + ev.type;
    if (ev.frame >= 0) text += " frame " + ev.frame;
    if (ev.type === "frame.progress") text += ` step ${ev.step}/${ev.steps}`;
    if (ev.reason) text += " — " + ev.reason;
    li.textContent = text;
    li.dataset.type = ev.type;
    list.append(li);
    while (list.children.length > MAX_EVENTS) list.firstElementChild.remove();
    list.scrollTop = list.scrollHeight; // the newest in view
  }

  function frameProgress(ev) {
    const line = $("frame-progress-line");
    const bar = $("frame-progress");
    if (ev.type === "frame.started") {
      bar.max = 1;
      bar.value = 0;
      setText("frame-progress-text", `rendering frame ${ev.frame}`);
    } else {
      bar.max = Math.max(ev.steps, 1);
      bar.value = ev.step;
      setText("frame-progress-text", `frame ${ev.frame}: step ${ev.step} of ${ev.steps}`);
    }
    line.hidden = false;
  }

  const REFRESH_ON = new Set([
    "job.planned",
    "job.approved",
    "job.assembled",
    "job.completed",
    "job.failed",
    "job.cancelled",
    "frame.rendered",
    "frame.failed",
    "depth.ready",
    "depth.failed",
  ]);
  const EVENT_TYPES = [
    "job.created",
    ...REFRESH_ON,
    "frame.started",
    "frame.progress",
  ];

  function onEvent(message) {
    const ev = JSON.parse(message.data);
    lastSequence = Math.max(lastSequence, ev.sequence);
    logEvent(ev);
    if (ev.type === "frame.started" || ev.type === "frame.progress") frameProgress(ev);
    if (REFRESH_ON.has(ev.type)) refresh();
  }

  function follow() {
    if (source) source.close();
    source = new EventSource(`/jobs/${jobId}/events?after=${lastSequence}`);
    for (const type of EVENT_TYPES) source.addEventListener(type, onEvent);
    // The job reached its end: stop, or EventSource would reconnect forever.
    source.addEventListener("end", () => {
      source.close();
      source = null;
      refresh();
    });
    source.addEventListener("relay.error", (message) => {
      const { message: text } = JSON.parse(message.data);
      setText("control-error", text);
      $("control-error").hidden = false;
    });
  }

  async function control(event) {
    event.preventDefault();
    const form = event.currentTarget;
    const button = form.querySelector("button");
    button.disabled = true;
    $("control-error").hidden = true;
    try {
      const response = await fetch(form.action, {
        method: "POST",
        headers: { Accept: "application/json" },
      });
      const body = await response.json();
      if (!response.ok) {
        setText("control-error", body.error || response.statusText);
        $("control-error").hidden = false;
        return;
      }
      render(body);
      if (!body.terminal && !source) follow(); // a resumed job: follow its new attempt
    } finally {
      button.disabled = false;
    }
  }

  for (const form of document.querySelectorAll("form.control")) {
    form.addEventListener("submit", control);
  }
  follow();
  refresh();
})();
