/* The job page: polls /dashboard/api/jobs/<id> every 2 s while the job can still change, and
   draws one uPlot chart per metric group (loss, reward margin, reward accuracy, reward). */
"use strict";
(function () {
  const root = document.getElementById("job");
  const jobId = root.dataset.jobId;
  const $ = (id) => document.getElementById(id);
  const COLORS = { train: "#3457d5", valid: "#e67e22", full_valid: "#1a7f4b" };
  const charts = {};  // chart id -> { plot, key }
  window.MMCharts = charts;
  let last = null;

  function colorOf(name) {
    return name.startsWith("full_valid_") ? COLORS.full_valid : name.startsWith("valid_") ? COLORS.valid : COLORS.train;
  }

  function drawCharts(metrics) {
    const box = $("charts");
    $("charts-empty").hidden = metrics.charts.length > 0;
    const wanted = new Set(metrics.charts.map(c => c.id));
    for (const id of Object.keys(charts)) {
      if (!wanted.has(id)) { charts[id].plot.destroy(); charts[id].node.remove(); delete charts[id]; }
    }
    for (const chart of metrics.charts) {
      const data = [metrics.steps, ...chart.series.map(n => metrics.series[n])];
      const key = chart.series.join(",");
      const points = {};
      chart.series.forEach(n => { points[n] = metrics.series[n].filter(v => v !== null).length; });
      let entry = charts[chart.id];
      if (entry && entry.key !== key) { entry.plot.destroy(); entry.node.remove(); delete charts[chart.id]; entry = null; }
      if (!entry) {
        const node = MM.el("div", { class: "chart", id: "chart-" + chart.id }, MM.el("h3", { text: chart.title }));
        box.append(node);
        const width = Math.max(320, node.clientWidth - 16);
        const plot = new uPlot({
          width, height: 240, scales: { x: { time: false } },
          axes: [{ label: "step" }, {}],
          series: [{ label: "step" }, ...chart.series.map(n => {
            const sparse = !n.startsWith("train_");
            return { label: n, stroke: colorOf(n), width: 1.5, spanGaps: true,
                     points: { show: sparse, size: 5, fill: colorOf(n) } };
          })],
        }, data, node);
        entry = charts[chart.id] = { plot, key, node };
      } else {
        entry.plot.setData(data);
      }
      entry.node.dataset.series = key;
      entry.node.dataset.points = JSON.stringify(points);
      entry.node.dataset.steps = String(metrics.steps.length);
    }
  }

  function drawCheckpoints(d) {
    const rows = d.checkpoints.slice().reverse().map(c => {
      const metrics = Object.entries(c.metrics).filter(([k]) => k !== "step").map(([k, v]) => `${k}=${MM.num(v)}`).join("  ");
      return MM.el("tr", { class: c.best ? "best" : null, "data-step": c.step, "data-best": c.best ? "1" : null },
        MM.el("td", { text: c.step }),
        MM.el("td", { class: "mono" }, MM.el("a", { href: "/playground?b=" + encodeURIComponent(c.model), text: c.model })),
        MM.el("td", { class: "mono small", text: metrics }),
        MM.el("td", {}, c.best ? MM.el("span", { class: "status succeeded", text: "best" }) : ""));
    });
    $("checkpoints-body").replaceChildren(...(rows.length ? rows
      : [MM.el("tr", {}, MM.el("td", { colspan: 4, class: "muted", text: "No checkpoints yet." }))]));
    const higher = d.best_by && d.best_by.includes("reward");
    $("best-by").textContent = d.best_by ? `Best: ${higher ? "highest" : "lowest"} ${d.best_by}.` : "";
  }

  // Links from event data: only paths on this server or http(s) URLs (never javascript:).
  function safeUrl(url) { return typeof url === "string" && (/^\/(?!\/)/.test(url) || /^https?:\/\//.test(url)); }

  function drawEvals(cmp) {
    $("eval-section").hidden = !cmp;
    if (!cmp) return;
    const head = MM.el("tr", {}, MM.el("th", { text: "" }), MM.el("th", { text: "model" }),
      ...cmp.criteria.map(c => MM.el("th", { text: c })), MM.el("th", { text: "passed" }), MM.el("th", { text: "report" }));
    const rows = cmp.rows.map(r => MM.el("tr", { "data-label": r.label },
      MM.el("td", { text: r.label }), MM.el("td", { class: "mono small", text: r.model || "" }),
      ...cmp.criteria.map(c => MM.el("td", { text: r.scores && r.scores[c] !== undefined ? MM.num(r.scores[c]) : "–" })),
      MM.el("td", { text: r.total !== undefined ? `${r.passed}/${r.total}` : "" }),
      MM.el("td", {}, safeUrl(r.report_url) ? MM.el("a", { href: r.report_url, text: "report" }) : "")));
    $("eval-table").tHead.replaceChildren(head);
    $("eval-table").tBodies[0].replaceChildren(...rows);
  }

  // Agentic RFT: one sampled rollout per eval step; the step picked stays picked across polls.
  function drawTrajectories(list) {
    $("trajectory-section").hidden = !list || !list.length;
    if (!list || !list.length) return;
    const select = $("trajectory-step");
    const picked = select.value === "" ? null : Number(select.value);
    select.replaceChildren(...list.map(t => MM.el("option", { value: String(t.step), text: String(t.step) })));
    const t = list.find(x => x.step === picked) || list[list.length - 1];
    select.value = String(t.step);
    $("trajectory-reward").textContent = t.reward === null ? "" : `reward ${MM.num(t.reward)}`;
    $("trajectory").replaceChildren(...t.messages.map(m => MM.el("li", { class: "msg role-" + m.role, "data-role": m.role },
      MM.el("div", { class: "who small", text: m.role === "tool" ? `tool result${m.name ? " · " + m.name : ""}` : m.role }),
      m.content ? MM.el("pre", { class: "text", text: m.content }) : "",
      ...(m.tool_calls || []).map(c => MM.el("div", { class: "tool-call mono small", text: `→ ${c.name}(${c.arguments})` })))));
    $("trajectory-state").textContent = JSON.stringify(t.environment_state ?? {}, null, 2);
  }

  function drawEvents(events) {
    const showMetrics = $("show-metrics-events").checked;
    const shown = events.filter(e => showMetrics || e.type !== "metrics");
    $("events").replaceChildren(...shown.map(e => MM.el("div", { class: "ev " + e.level, "data-type": e.type },
      MM.el("span", { class: "t", text: new Date(e.created_at * 1000).toLocaleTimeString() }),
      MM.el("span", { class: "lvl", text: e.level }), MM.el("span", { text: e.message }))));
  }

  function draw(d) {
    last = d;
    const job = d.job, row = d.row;
    $("job-status").textContent = job.status; $("job-status").className = "status " + job.status;
    $("job-progress").textContent = MM.progress(row);
    $("job-progress-bar").style.width = (row.progress === null ? 0 : Math.round(row.progress * 100)) + "%";
    $("job-elapsed").textContent = MM.duration(row.elapsed_s);
    $("job-tokens").textContent = MM.tokens(row.tokens, row.tokens_estimated);
    $("job-ft-model").textContent = job.fine_tuned_model || "–";
    $("job-error").hidden = !job.error;
    if (job.error) $("job-error").textContent = `${job.error.code}: ${job.error.message}`;
    $("btn-pause").disabled = !["validating_files", "queued", "running"].includes(job.status);
    $("btn-resume").disabled = job.status !== "paused";
    $("btn-cancel").disabled = MM.terminal(job.status);
    drawCharts(d.metrics);
    drawCheckpoints(d);
    drawEvals(d.eval_comparison);
    drawTrajectories(d.trajectories);
    $("hyperparameters").tBodies[0].replaceChildren(...Object.entries(d.hyperparameters).map(([k, v]) =>
      MM.el("tr", {}, MM.el("th", { text: k }), MM.el("td", { text: typeof v === "object" ? JSON.stringify(v) : String(v) }))));
    $("hp-note").textContent = d.hyperparameters_resolved ? "Resolved values." : "As requested; \"auto\" is resolved when training starts.";
    drawEvents(d.events);
    root.dataset.status = job.status;
  }

  async function refresh() {
    const d = await MM.api("/dashboard/api/jobs/" + encodeURIComponent(jobId));
    draw(d);
    return !MM.terminal(d.job.status);
  }

  for (const btn of root.querySelectorAll("button[data-action]")) {
    btn.addEventListener("click", async () => {
      btn.disabled = true;
      $("action-error").hidden = true;
      try {
        await MM.api(`/v1/fine_tuning/jobs/${encodeURIComponent(jobId)}/${btn.dataset.action}`, { method: "POST" });
      } catch (e) {
        $("action-error").textContent = e.message; $("action-error").hidden = false;
      }
      if (last && MM.terminal(last.job.status)) return;
      refresh();
    });
  }
  $("show-metrics-events").addEventListener("change", () => last && drawEvents(last.events));
  $("trajectory-step").addEventListener("change", () => last && drawTrajectories(last.trajectories));
  // Poll while the job can change; a resumed job restarts polling.
  let polling = false;
  function startPolling() {
    if (polling) return;
    polling = true;
    MM.poll(async () => { const again = await refresh(); polling = again; return again; }, 2000);
  }
  startPolling();
  $("btn-resume").addEventListener("click", () => setTimeout(startPolling, 500));
})();
