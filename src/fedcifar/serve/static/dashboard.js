// Live dashboard: polls /api/run every 2 s and redraws the status, curves and partition figure.
"use strict";

const POLL_MS = 2000;
let partitionStamp = null;
const pct = (v) => `${(100 * v).toFixed(0)}%`;

function fmtSeconds(s) {
  if (s == null) return "";
  if (s < 90) return `${s.toFixed(0)} s`;
  if (s < 5400) return `${(s / 60).toFixed(1)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

function lastValue(values) {
  for (let i = values.length - 1; i >= 0; i--) if (values[i] != null) return values[i];
  return null;
}

function showStatus(run) {
  const states = {
    waiting: "waiting for training",
    training: "training",
    finished: "finished",
    stalled: "no new round (stopped?)",
  };
  document.getElementById("run-dir").textContent = `run directory: ${run.run_dir}`;
  document.getElementById("state").textContent = states[run.state] || run.state;
  const total = run.total_rounds == null ? "?" : run.total_rounds;
  document.getElementById("round").textContent = run.state === "training"
    ? `${run.current_round} / ${total}` : `${run.rounds_done} / ${total}`;
  const acc = lastValue(run.metrics.test_acc);
  document.getElementById("test-acc").textContent = acc == null ? "–" : `${(100 * acc).toFixed(1)}%`;
  const p10 = lastValue(run.metrics.client_acc_p10 || []);
  const worst = lastValue(run.metrics.client_acc_min || []);
  document.getElementById("client-acc").textContent = p10 == null ? "–"
    : `${(100 * p10).toFixed(1)}% / ${(100 * worst).toFixed(1)}%`;

  const epsilon = lastValue(run.metrics.dp_epsilon || []);
  document.getElementById("privacy").hidden = epsilon == null;
  document.getElementById("epsilon").textContent = epsilon == null ? "–" : epsilon.toFixed(2);

  const bar = document.getElementById("progress");
  const fill = document.getElementById("progress-fill");
  const text = document.getElementById("progress-text");
  bar.classList.remove("indeterminate");
  if (run.state === "training" && run.round_progress != null) {
    // Exact: clients that reported this round (progress.json), failures included.
    fill.style.width = `${100 * run.round_progress}%`;
    const failed = run.clients_failed ? ` (${run.clients_failed} failed)` : "";
    const reported = run.clients_done + run.clients_failed;
    text.textContent = reported < run.clients_total
      ? `round ${run.current_round}: ${run.clients_done} of ${run.clients_total} clients${failed}`
      : `round ${run.current_round}: all ${run.clients_total} clients in${failed}; aggregating and evaluating`;
  } else if (run.state === "training" && run.round_progress_estimate != null) {
    // Runs without progress.json: an estimate from recent round times.
    fill.style.width = pct(run.round_progress_estimate);
    text.textContent = `round ${run.current_round}: about ${pct(run.round_progress_estimate)} ` +
      `(${fmtSeconds(run.round_elapsed_s)} of a typical ${fmtSeconds(run.mean_round_s)})`;
  } else if (run.state === "training") {
    bar.classList.add("indeterminate");
    text.textContent = `round ${run.current_round} running for ${fmtSeconds(run.round_elapsed_s)}; ` +
      "an estimate appears after the first round";
  } else if (run.state === "finished") {
    fill.style.width = "100%";
    text.textContent = `all ${run.rounds_done} rounds done`;
  } else if (run.state === "stalled") {
    fill.style.width = "0";
    const idle = run.idle_s != null && run.idle_s < run.round_elapsed_s - 1
      ? `, nothing new for ${fmtSeconds(run.idle_s)}` : "";
    text.textContent = `last round finished ${fmtSeconds(run.round_elapsed_s)} ago${idle}; resume with make run`;
  } else {
    fill.style.width = "0";
    text.textContent = "waiting for fedcifar train to write into this run directory";
  }
}

function showTrainer(trainer) {
  // Training run beside the server (make run): a failure leaves the server serving the last model.
  const box = document.getElementById("trainer-error");
  const failed = trainer != null && trainer.state === "failed";
  box.hidden = !failed;
  if (failed) {
    const why = trainer.detail ? `: ${trainer.detail}` : "";
    box.textContent = `training stopped with exit code ${trainer.exit_code}${why}. ` +
      "Still serving the last model; fix the cause and start make run again to resume.";
  }
}

function showCurves(m) {
  const x = m.round;
  const percent = (v) => `${(100 * v).toFixed(0)}%`;
  const mean = m.client_acc_mean || [];
  const std = m.client_acc_std || [];
  const band = (sign) => mean.map((v, i) => (v == null || std[i] == null ? null : v + sign * std[i]));
  drawLineChart(document.getElementById("acc-chart"), [
    { name: "clients ± std", fill: "rgba(247, 144, 9, 0.18)", xs: x, lo: band(-1), hi: band(1) },
    { name: "client p10", color: "#f79009", xs: x, ys: m.client_acc_p10 || [], dash: true },
    { name: "train top-1", color: "#98a2b3", xs: x, ys: m.train_acc, dash: true },
    { name: "test top-1", color: "#2f6fdd", xs: x, ys: m.test_acc },
    { name: "test top-5", color: "#12b76a", xs: x, ys: m.test_top5 },
  ], { yMin: 0, yFormat: percent });
  drawLineChart(document.getElementById("loss-chart"), [
    { name: "train loss", color: "#98a2b3", xs: x, ys: m.train_loss, dash: true },
    { name: "test loss", color: "#d92d20", xs: x, ys: m.test_loss },
  ], { yMin: 0, yFormat: (v) => v.toFixed(1) });
}

function showPartition(run) {
  const img = document.getElementById("partition");
  document.getElementById("partition-missing").hidden = run.has_partition;
  img.hidden = !run.has_partition;
  if (run.has_partition && run.partition_mtime !== partitionStamp) {
    partitionStamp = run.partition_mtime;
    img.src = `/api/run/partition.png?v=${partitionStamp}`;
  }
}

async function poll() {
  const errorBox = document.getElementById("error");
  try {
    const r = await fetchJSON("/api/run");
    if (r.ok) {
      errorBox.hidden = true;
      showStatus(r.body);
      showTrainer(r.body.trainer);
      showCurves(r.body.metrics);
      showPartition(r.body);
      showModelBadge(r.body.model);
      document.body.dataset.rounds = String(r.body.rounds_done);
    } else {
      errorBox.textContent = r.body && r.body.detail ? r.body.detail : `HTTP ${r.status}`;
      errorBox.hidden = false;
      refreshModelBadge();
    }
  } catch (e) {
    errorBox.textContent = "the server does not answer; retrying…";
    errorBox.hidden = false;
  }
  setTimeout(poll, POLL_MS);
}
poll();
