/* The playground: one prompt to two models through /v1/chat/completions, answers side by side. */
"use strict";
(function () {
  const form = document.getElementById("playground-form");
  const run = document.getElementById("pg-run");
  async function ask(side, messages, params) {
    const answer = document.getElementById("answer-" + side), meta = document.getElementById("meta-" + side);
    const model = document.getElementById("pg-model-" + side).value;
    answer.textContent = "…"; answer.classList.remove("error"); answer.removeAttribute("data-done"); meta.textContent = "";
    const t0 = performance.now();
    try {
      const r = await MM.api("/v1/chat/completions", { method: "POST", body: JSON.stringify({ model, messages, ...params }) });
      const msg = r.choices[0].message;
      let text = msg.content || "";
      if (msg.tool_calls) text += (text ? "\n" : "") + msg.tool_calls.map(c => `${c.function.name}(${c.function.arguments})`).join("\n");
      answer.textContent = text || "(empty answer)";
      meta.textContent = `${r.usage.completion_tokens} tokens · ${((performance.now() - t0) / 1000).toFixed(1)} s · finish: ${r.choices[0].finish_reason}`;
    } catch (e) {
      answer.textContent = "Error: " + e.message; answer.classList.add("error");
    }
    answer.setAttribute("data-done", "1");
  }
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const prompt = document.getElementById("pg-prompt").value.trim();
    if (!prompt) return;
    const system = document.getElementById("pg-system").value.trim();
    const messages = (system ? [{ role: "system", content: system }] : []).concat([{ role: "user", content: prompt }]);
    const params = { max_tokens: Number(document.getElementById("pg-max-tokens").value) || 64,
                     temperature: Number(document.getElementById("pg-temperature").value) || 0,
                     seed: Number(document.getElementById("pg-seed").value) || 0 };
    run.disabled = true;
    for (const side of ["a", "b"]) document.getElementById("answer-" + side).textContent = "…";
    // One after the other: on a CPU the two would only share the cores, and the first model a
    // request names is loaded on demand (loading two at once is not safe in transformers).
    await ask("a", messages, params);
    await ask("b", messages, params);
    run.disabled = false;
  });
})();
