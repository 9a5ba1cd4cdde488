/* The jobs table: polls /dashboard/api/jobs every 2 s. */
"use strict";
(function () {
  const body = document.getElementById("jobs-body");
  const updated = document.getElementById("jobs-updated");
  function row(j) {
    const pct = j.progress === null ? 0 : Math.round(j.progress * 100);
    const bar = MM.el("div", { class: "bar" }, MM.el("div", { class: "fill" }));
    bar.firstChild.style.width = pct + "%";
    return MM.el("tr", { "data-job-id": j.id, "data-status": j.status },
      MM.el("td", { class: "mono" }, MM.el("a", { href: "/jobs/" + j.id, text: j.id })),
      MM.el("td", {}, MM.status(j.status)),
      MM.el("td", { text: j.method }),
      MM.el("td", { class: "mono", title: j.fine_tuned_model || "" }, j.model),
      MM.el("td", { class: "progress" }, MM.progress(j), bar),
      MM.el("td", { class: "elapsed", text: MM.duration(j.elapsed_s) }),
      MM.el("td", { class: "tokens", text: MM.tokens(j.tokens, j.tokens_estimated) }),
      MM.el("td", { class: "small muted", text: MM.when(j.created_at) }));
  }
  MM.poll(async () => {
    const page = await MM.api("/dashboard/api/jobs");
    body.replaceChildren(...(page.data.length ? page.data.map(row)
      : [MM.el("tr", {}, MM.el("td", { colspan: 8, class: "muted", text: "No jobs yet." }))]));
    updated.textContent = "Updated " + new Date().toLocaleTimeString();
    return true;
  }, 2000);
})();
