// The dashboard's one script: each page (body[data-page]) reads the public /v1 API from the browser.
// Every call goes through api(), which adds the API key saved in the header field. Data from the API reaches
// the DOM only as textContent or attribute values, never as HTML.
"use strict";

(() => {
  const root = document.body.dataset.root || "";
  const KEY = "lrbs.apiKey";
  const ENDED = ["succeeded", "failed", "cancelled"];
  const $ = (id) => document.getElementById(id);
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  // ------------------------------------------------------------------------------------ helpers

  function el(tag, props = {}, ...children) {
    const node = Object.assign(document.createElement(tag), props);
    for (const child of children) {
      if (child != null) node.append(child); // strings become text nodes
    }
    return node;
  }

  // LRs span decades: always 3 significant digits in exponent form (the browser test formats them the same way).
  const fmtLr = (x) => (x == null ? "–" : Number(x).toExponential(2));

  function fmtNum(x, digits = 3) {
    if (x == null) return "–";
    return Math.abs(x) >= 1000 ? Math.round(x).toLocaleString("en-US") : String(Number(x.toPrecision(digits)));
  }

  function fmtTime(iso) {
    if (!iso) return "–";
    const d = new Date(iso);
    const pad = (n) => String(n).padStart(2, "0");
    const time = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
    if (d.toDateString() === new Date().toDateString()) return time;
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${time}`;
  }

  function fmtDuration(seconds) {
    if (seconds == null) return "–";
    if (seconds < 60) return `${seconds.toFixed(1)} s`;
    const s = Math.round(seconds);
    if (s < 3600) return `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, "0")} s`;
    return `${Math.floor(s / 3600)} h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")} min`;
  }

  function duration(job) {
    if (!job.started_at) return null;
    const end = job.finished_at ? new Date(job.finished_at) : new Date();
    return Math.max(0, (end - new Date(job.started_at)) / 1000);
  }

  function stateBadge(node, state, cancelling) {
    node.className = `state state-${state}`;
    node.textContent = cancelling && !ENDED.includes(state) ? `${state} · cancelling` : state;
  }

  // The batch-size schedule's stages and predicted saving, or why there is none.
  function batchSchedule(advice) {
    const plan = advice.batch_schedule;
    if (!plan) return advice.batch_schedule_reason || null;
    const stages = plan.stages.map((s) => `from step ${s.from_step}: ${s.effective_batch_size}`).join(", ");
    return `${stages} (predicted ${Math.round(100 * plan.step_saving)}% fewer optimizer steps)`;
  }

  // What each of world_size ranks runs, when the advice is for more than one device.
  function dataParallel(dp) {
    if (!dp || dp.world_size <= 1) return null;
    return (
      `${dp.world_size} devices × ${dp.micro_batch_size} × ${dp.grad_accumulation_steps} accumulation = ` +
      `global batch ${dp.global_batch_size} at LR ${fmtLr(dp.global_lr)}; ` +
      `predicted ${fmtNum(dp.fleet_samples_per_s)} samples/s (all-reduce ${fmtNum(1000 * dp.allreduce_s)} ms a step)`
    );
  }

  // <dl> rows from [term, value] pairs; rows whose value is null are left out.
  function facts(dl, rows) {
    dl.replaceChildren();
    for (const [term, value] of rows) {
      if (value == null || value === "") continue;
      dl.append(el("dt", { textContent: term }), el("dd", { textContent: String(value) }));
    }
  }

  // ------------------------------------------------------------------------ API key and errors

  function savedKey() {
    try {
      return localStorage.getItem(KEY) || "";
    } catch {
      return ""; // storage disabled: the key lasts for this page only
    }
  }

  let sessionKey = savedKey();

  function banner(message) {
    const node = $("banner");
    node.textContent = message || "";
    node.hidden = !message;
  }

  async function api(path, options = {}) {
    const headers = new Headers(options.headers || {});
    if (sessionKey) headers.set("Authorization", `Bearer ${sessionKey}`);
    const response = await fetch(root + path, { ...options, headers });
    if (response.status === 401) {
      banner(
        sessionKey
          ? "The service refused this API key (unknown or revoked). Enter a valid key in the API key field above."
          : "This service needs an API key: enter yours in the API key field above and press Save " +
              "(an operator creates keys with `lrbs keys create`).",
      );
      $("api-key").focus();
    }
    return response;
  }

  // An error answer as {detail, errors}: RFC 9457 problem+json from the API, or whatever came instead.
  async function problemOf(response) {
    try {
      const body = await response.json();
      const detail = body.detail || `${response.status} ${response.statusText}`;
      return { title: body.title || detail, detail, errors: body.errors || [] };
    } catch {
      const detail = `${response.status} ${response.statusText}`;
      return { title: detail, detail, errors: [] };
    }
  }

  function setupKeyField() {
    const input = $("api-key");
    input.value = sessionKey;
    $("key-form").addEventListener("submit", (event) => {
      event.preventDefault();
      sessionKey = input.value.trim();
      try {
        if (sessionKey) localStorage.setItem(KEY, sessionKey);
        else localStorage.removeItem(KEY);
      } catch {
        // storage disabled: keep the key in memory
      }
      location.reload(); // every page fetches again with the new key
    });
  }

  // ----------------------------------------------------------------------------------- job list

  function jobsPage() {
    const filter = $("state-filter");
    filter.value = new URLSearchParams(location.search).get("state") || "";
    let timer = null;
    let generation = 0; // a reply to an older filter is dropped

    async function refresh() {
      clearTimeout(timer);
      const mine = ++generation;
      const query = new URLSearchParams({ view: "summary", page_size: "50" });
      if (filter.value) query.set("state", filter.value);
      try {
        const response = await api(`/v1/jobs?${query}`);
        if (mine !== generation) return;
        if (response.status === 401) return; // the banner asks for a key; saving it reloads the page
        if (!response.ok) {
          banner(`Could not list jobs: ${(await problemOf(response)).detail}`);
        } else {
          const page = await response.json();
          if (mine !== generation) return;
          banner(null);
          renderRows(page);
          $("updated").textContent = `updated ${fmtTime(new Date().toISOString())}`;
        }
      } catch (error) {
        banner(`The service is unreachable (${error.message}); retrying.`);
      }
      timer = setTimeout(refresh, document.hidden ? 10000 : 2000);
    }

    function renderRows(page) {
      const rows = page.jobs.map((job) => {
        const href = `${root}/jobs/${encodeURIComponent(job.id)}`;
        const state = el("span");
        stateBadge(state, job.state, job.cancel_requested);
        if (job.state === "running" && job.progress.total) {
          state.textContent += ` ${Math.round(job.progress.fraction * 100)}%`;
        }
        const labels = Object.entries(job.spec.labels || {}).map(([k, v]) =>
          el("span", { className: "chip", textContent: `${k}: ${v}` }),
        );
        const rec = job.result && job.result.recommendation;
        const advice = job.result && job.result.batch_advice;
        const batch = advice ? advice.batch_size : rec ? rec.batch_size : null;
        const row = el(
          "tr",
          {},
          el("td", {}, state),
          el(
            "td",
            {},
            el("a", { href, textContent: job.spec.name || job.id }),
            job.spec.name ? el("div", { className: "muted small mono", textContent: job.id }) : null,
          ),
          el("td", {}, ...labels),
          el("td", { textContent: fmtTime(job.created_at), title: job.created_at }),
          el("td", { textContent: fmtDuration(duration(job)) }),
          el("td", { className: "num mono", textContent: rec ? fmtLr(rec.lr) : "–" }),
          el("td", { className: "num mono", textContent: batch == null ? "–" : String(batch) }),
        );
        row.addEventListener("click", (event) => {
          if (!event.target.closest("a") && !getSelection().toString()) location.href = href;
        });
        return row;
      });
      $("job-rows").replaceChildren(...rows);
      $("no-jobs").hidden = rows.length > 0;
      $("more").hidden = !page.next_page_token;
    }

    filter.addEventListener("change", () => {
      history.replaceState(null, "", filter.value ? `?state=${encodeURIComponent(filter.value)}` : location.pathname);
      refresh();
    });
    document.addEventListener("visibilitychange", () => document.hidden || refresh());
    refresh();
  }

  // ------------------------------------------------------------------------------------ one job

  function jobPage() {
    const id = $("job").dataset.jobId;
    const path = `/v1/jobs/${encodeURIComponent(id)}`;
    let ended = false;
    let resultShown = false;

    function live(message) {
      $("live").textContent = message;
    }

    // Fetches the whole job and shows it; null when it is gone or not visible to this key.
    async function load() {
      const response = await api(path);
      if (response.status === 404) {
        ended = true;
        $("not-found").hidden = false;
        $("job-state").hidden = true;
        $("job-title").textContent = "Job not found";
        for (const name of ["progress-card", "error-card", "result", "spec-card", "cancel"]) $(name).hidden = true;
        return null;
      }
      if (!response.ok) {
        ended = true; // 401 (the banner asks for a key) or a server error: stop following
        if (response.status !== 401) banner(`Could not read the job: ${(await problemOf(response)).detail}`);
        return null;
      }
      const job = await response.json();
      render(job);
      return job;
    }

    function render(job) {
      const spec = job.spec;
      document.title = `${spec.name || `Job ${job.id}`} · lrbs`;
      $("job-title").textContent = spec.name || "Job";
      const meta = [job.id, `created ${fmtTime(job.created_at)}`];
      if (job.finished_at && job.started_at) meta.push(`ran ${fmtDuration(duration(job))}`);
      else if (job.started_at) meta.push(`started ${fmtTime(job.started_at)}`);
      if (job.attempts > 1) meta.push(`${job.attempts} attempts`);
      if (job.result) meta.push(`on ${job.result.environment.device}`);
      const metaNode = $("job-meta");
      metaNode.replaceChildren(meta.join(" · "));
      for (const [k, v] of Object.entries(spec.labels || {})) {
        metaNode.append(" ", el("span", { className: "chip", textContent: `${k}: ${v}` }));
      }
      $("spec").textContent = JSON.stringify(spec, null, 2);
      $("spec-card").hidden = false;
      applyLive(job);
      if (job.state === "succeeded" && job.result && !resultShown) {
        resultShown = true;
        renderResult(job.result);
      }
    }

    // What an event carries (state, progress, cancel_requested, error) and the same fields of a full job.
    function applyLive(event) {
      const active = !ENDED.includes(event.state);
      stateBadge($("job-state"), event.state, event.cancel_requested);
      $("cancel").hidden = !active || event.cancel_requested;

      const p = event.progress;
      $("progress-card").hidden = !active;
      $("bar-fill").style.width = `${Math.round((p.fraction || 0) * 100)}%`;
      facts($("progress-facts"), [
        ["Phase", p.phase],
        ["Step", p.total ? `${p.step} / ${p.total}` : null],
        ["LR", p.lr == null ? null : fmtLr(p.lr)],
        ["Loss", p.loss == null ? null : fmtNum(p.loss, 4)],
        ["Cancel", event.cancel_requested ? "requested: the job stops within a few seconds" : null],
      ]);

      const error = event.error;
      $("error-card").hidden = !error;
      if (error) {
        $("error-card").querySelector("h2").textContent =
          event.state === "failed" ? "Failed" : `Attempt ${error.attempt} failed; it will run again`;
        $("error-message").textContent = error.message;
        $("error-kind").textContent = `${error.kind} · attempt ${error.attempt}`;
      }
    }

    function renderResult(result) {
      $("result").hidden = false;
      const rec = result.recommendation;
      const advice = result.batch_advice;
      if (rec) {
        $("rec-lr").textContent = fmtLr(rec.lr);
        $("rec-batch").textContent = String(advice ? advice.batch_size : rec.batch_size);
        $("rec-confidence").textContent = rec.confidence;
        $("rec-confidence").className = `big confidence-${rec.confidence}`;
        const params = Object.entries(rec.schedule_params)
          .map(([k, v]) => `${k}=${Number.isInteger(v) ? v : fmtNum(v)}`)
          .join(", ");
        const accumulation =
          rec.grad_accumulation_steps > 1
            ? ` × ${rec.grad_accumulation_steps} accumulation steps = ${rec.effective_batch_size} effective`
            : "";
        facts($("rec-facts"), [
          ["Safe range", `${fmtLr(rec.lr_low)} – ${fmtLr(rec.lr_high)}`],
          ["Schedule", `${rec.schedule} over ${rec.train_steps} steps${params ? ` (${params})` : ""}`],
          ["Optimizer", rec.optimizer_class],
          ["Range test batch", `${rec.batch_size}${accumulation}`],
          ["Warm-up", rec.warmup_steps ? `${rec.warmup_steps} steps` : "none"],
          ["Why warm-up", rec.warmup_reason],
          ["Rule", rec.rule],
          ["Why this LR", rec.reason],
          ["Range test", `${result.sweeps} sweep(s), ${result.steps_run} steps, ${result.stop_reason}`],
          [
            "Optimizer steps",
            Object.keys(result.phase_steps || {}).length
              ? Object.entries(result.phase_steps)
                  .map(([phase, n]) => `${phase} ${n}`)
                  .join(", ")
              : null,
          ],
        ]);
        $("snippet").textContent = rec.snippet;
        $("snippet-card").hidden = false;
      } else {
        for (const name of ["rec-lr", "rec-batch", "rec-confidence"]) $(name).textContent = "–";
        const reasons = Object.entries(result.suggestions).map(([rule, s]) => `${rule}: ${s.reason}`);
        $("no-recommendation").textContent = `No rule could read the curve. ${reasons.join(" ")}`;
        $("no-recommendation").hidden = false;
      }

      if (advice) {
        $("batch-card").hidden = false;
        const noise = advice.noise_scale;
        facts($("batch-facts"), [
          ["Batch size", advice.batch_size],
          ["Its LR", advice.lr == null ? null : fmtLr(advice.lr)],
          ["LR scaling", advice.lr_scaling],
          ["Largest that fits", advice.largest_fitting == null ? "none" : advice.largest_fitting],
          ["Accumulation steps", advice.grad_accumulation_steps],
          [
            "Noise scale",
            noise && noise.b_noise != null
              ? `${fmtNum(noise.b_noise)} (95%: ${fmtNum(noise.low)} – ${fmtNum(noise.high)})`
              : null,
          ],
          [
            "Noise scale along training",
            advice.noise_trajectory && advice.noise_trajectory.length
              ? advice.noise_trajectory
                  .map((p) => `step ${p.step}: ${p.b_noise == null ? "–" : fmtNum(p.b_noise)}`)
                  .join(", ")
              : null,
          ],
          ["Batch-size warm-up", batchSchedule(advice)],
          ["Data-parallel", dataParallel(advice.data_parallel)],
          ["Why", advice.reason],
        ]);
        $("candidate-rows").replaceChildren(
          ...advice.candidates.map((c) =>
            el(
              "tr",
              { className: c.batch_size === advice.batch_size ? "chosen" : "" },
              el("td", { className: "num mono", textContent: String(c.batch_size) }),
              el("td", { textContent: c.fits ? "yes" : c.note || "no" }),
              el("td", { className: "num mono", textContent: fmtNum(c.peak_memory_mb) }),
              el("td", { className: "num mono", textContent: fmtNum(c.samples_per_s) }),
              el("td", { className: "num mono", textContent: fmtLr(c.lr) }),
              ...[c.relative_time_to_target, c.relative_steps_to_target, c.relative_samples_to_target].map((x) =>
                el("td", { className: "num mono", textContent: x == null ? "–" : `${fmtNum(x)}×` }),
              ),
            ),
          ),
        );
      }
      loadPlot("lr_range");
      if (advice) loadPlot("batch_size");
      else $("plot-batch_size").hidden = true;
    }

    // Images need the Authorization header too, so they are fetched here and shown through object URLs.
    async function loadPlot(kind) {
      const figure = $(`plot-${kind}`);
      const img = figure.querySelector("img");
      try {
        const response = await api(`${path}/plots/${kind}.svg`);
        if (response.status === 404 && kind === "batch_size") {
          figure.hidden = true; // the job asked for no batch sizes
          return;
        }
        if (!response.ok) throw new Error((await problemOf(response)).detail);
        const blob = new Blob([await response.blob()], { type: "image/svg+xml" });
        img.src = URL.createObjectURL(blob);
        img.parentElement.href = img.src; // click: the plot at full size in a new tab
      } catch (error) {
        img.hidden = true;
        figure.querySelector("figcaption").textContent = `No plot: ${error.message}`;
      }
    }

    // Server-Sent Events read with fetch(), because EventSource cannot send the Authorization header.
    // Returns once the job has ended; throws when the stream cannot be opened or breaks off.
    async function stream() {
      const response = await api(`${path}/events`, { headers: { Accept: "text/event-stream" } });
      if (!response.ok || !response.body) throw new Error(`events answered ${response.status}`);
      live("Live: following the job's events.");
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) throw new Error("the event stream closed before the job ended");
        buffer += value;
        // Lines may end in \r\n, \n or \r; a \r at the very end may be half of a \r\n, so it waits.
        const cut = buffer.endsWith("\r") ? buffer.length - 1 : buffer.length;
        let text = buffer.slice(0, cut).replace(/\r\n?/g, "\n");
        const held = buffer.slice(cut);
        let blank;
        while ((blank = text.indexOf("\n\n")) >= 0) {
          const event = parseEvent(text.slice(0, blank));
          text = text.slice(blank + 2);
          if (!event) continue;
          applyLive(event.data);
          if (event.type === "end") {
            reader.cancel().catch(() => {});
            return;
          }
        }
        buffer = text + held;
      }
    }

    function parseEvent(block) {
      let type = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (!line || line.startsWith(":")) continue; // keep-alive comment
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? "" : line.slice(colon + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        if (field === "event") type = value;
        else if (field === "data") data.push(value);
      }
      return data.length ? { type, data: JSON.parse(data.join("\n")) } : null;
    }

    async function poll() {
      live("Live: checking every second.");
      while (!ended) {
        await sleep(1000);
        try {
          const job = await load();
          if (job && ENDED.includes(job.state)) ended = true;
        } catch (error) {
          live(`The service is unreachable (${error.message}); retrying.`);
        }
      }
    }

    async function follow() {
      try {
        await stream();
      } catch {
        await poll(); // the stream could not be opened, or it broke off
        live("");
        return;
      }
      ended = true;
      live("");
      await load(); // the result comes with the job, not with the events
    }

    $("cancel").addEventListener("click", async () => {
      if (!confirm("Cancel this job?")) return;
      const button = $("cancel");
      button.disabled = true;
      try {
        const response = await api(`${path}:cancel`, { method: "POST" });
        if (response.ok) render(await response.json());
        else if (response.status !== 401) banner(`Could not cancel: ${(await problemOf(response)).detail}`);
      } catch (error) {
        banner(`The service is unreachable (${error.message}).`);
      }
      button.disabled = false;
    });

    $("copy").addEventListener("click", async () => {
      const ok = await copyText($("snippet").textContent);
      $("copied").textContent = ok ? "Copied." : "Copy failed: select the code and copy it by hand.";
      setTimeout(() => ($("copied").textContent = ""), 2500);
    });

    load()
      .then((job) => {
        if (job && !ENDED.includes(job.state)) return follow();
      })
      .catch((error) => banner(`The service is unreachable (${error.message}). Reload to try again.`));
  }

  // navigator.clipboard exists only on secure pages (https, localhost); elsewhere a selected textarea is copied.
  async function copyText(text) {
    try {
      await navigator.clipboard.writeText(text);
      return true;
    } catch {
      const area = el("textarea", { value: text, readOnly: true });
      area.style.position = "fixed";
      area.style.opacity = "0";
      document.body.append(area);
      area.select();
      let ok = false;
      try {
        ok = document.execCommand("copy");
      } catch {
        ok = false;
      }
      area.remove();
      return ok;
    }
  }

  // ---------------------------------------------------------------------------------- submit form

  function submitPage() {
    const examples = JSON.parse($("examples").textContent);
    const select = $("example");
    const area = $("spec");
    const button = $("submit-button");

    function showProblem(detail, errors = [], title = "") {
      $("problem").hidden = !detail;
      // A validation detail only repeats its errors, listed below: the title says enough above them.
      const repeats = errors.length > 0 && errors.every((e) => (detail || "").includes(e.message));
      $("problem-detail").textContent = (repeats && title) || detail || "";
      $("problem-errors").replaceChildren(
        ...errors.map((e) => el("li", {}, el("code", { textContent: e.field }), `: ${e.message}`)),
      );
    }

    select.addEventListener("change", () => {
      area.value = JSON.stringify(examples[select.value].value, null, 2);
      showProblem(null);
    });

    $("submit-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      showProblem(null);
      try {
        JSON.parse(area.value); // checked here for a message with the position; sent exactly as typed
      } catch (error) {
        showProblem(`The spec is not valid JSON: ${error.message}`);
        return;
      }
      button.disabled = true;
      try {
        const response = await api("/v1/jobs", {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: area.value,
        });
        if (response.ok) {
          const job = await response.json();
          location.href = `${root}/jobs/${encodeURIComponent(job.id)}`;
          return;
        }
        const problem = await problemOf(response);
        showProblem(problem.detail, problem.errors, problem.title);
      } catch (error) {
        showProblem(`The service is unreachable (${error.message}).`);
      } finally {
        button.disabled = false;
      }
    });

    area.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) $("submit-form").requestSubmit();
    });
  }

  setupKeyField();
  const pages = { jobs: jobsPage, job: jobPage, submit: submitPage };
  pages[document.body.dataset.page]();
})();
