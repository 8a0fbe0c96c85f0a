// A small line chart on <canvas>, enough for per-round curves. No library: nothing to fetch.
"use strict";

function niceStep(range, target) {
  const raw = range / Math.max(1, target);
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const norm = raw / mag;
  return (norm < 1.5 ? 1 : norm < 3 ? 2 : norm < 7 ? 5 : 10) * mag;
}

// series: [{name, color, xs: [..], ys: [.. or null], dash}] or a shaded band
// {name, color, fill, xs, lo: [..], hi: [..]}; opts: {yMin, yMax, yFormat, xLabel}
function drawLineChart(canvas, series, opts) {
  const dpr = window.devicePixelRatio || 1;
  const cssWidth = canvas.clientWidth || canvas.width;
  const cssHeight = Math.round(cssWidth * 300 / 560);
  if (canvas.width !== Math.round(cssWidth * dpr)) {
    canvas.width = Math.round(cssWidth * dpr);
    canvas.height = Math.round(cssHeight * dpr);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, cssWidth, cssHeight);
  ctx.font = "12px system-ui, sans-serif";
  const pad = { left: 52, right: 14, top: 28, bottom: 34 };
  const w = cssWidth - pad.left - pad.right;
  const h = cssHeight - pad.top - pad.bottom;

  const values = (s) => (s.lo ? [...s.lo, ...s.hi] : s.ys);
  const points = series.flatMap((s) => {
    const ys = values(s);
    return ys.map((y, i) => [s.xs[i % s.xs.length], y]).filter((p) => p[1] != null);
  });
  if (!points.length) {
    ctx.fillStyle = "#667085";
    ctx.fillText("no finished round yet", pad.left + 10, pad.top + h / 2);
    return;
  }
  const xMin = Math.min(...points.map((p) => p[0]));
  let xMax = Math.max(...points.map((p) => p[0]));
  if (xMax === xMin) xMax = xMin + 1;
  let yMin = opts.yMin != null ? opts.yMin : Math.min(...points.map((p) => p[1]));
  let yMax = opts.yMax != null ? opts.yMax : Math.max(...points.map((p) => p[1]));
  if (yMax === yMin) { yMax += 1; yMin = Math.max(0, yMin - 1); }
  const yStep = niceStep(yMax - yMin, 5);
  yMax = Math.ceil(yMax / yStep) * yStep;
  yMin = Math.floor(yMin / yStep) * yStep;
  const sx = (x) => pad.left + (x - xMin) / (xMax - xMin) * w;
  const sy = (y) => pad.top + h - (y - yMin) / (yMax - yMin) * h;

  ctx.strokeStyle = "#e6e9ee";
  ctx.fillStyle = "#667085";
  ctx.lineWidth = 1;
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  for (let y = yMin; y <= yMax + yStep / 2; y += yStep) {
    ctx.beginPath();
    ctx.moveTo(pad.left, sy(y));
    ctx.lineTo(pad.left + w, sy(y));
    ctx.stroke();
    ctx.fillText(opts.yFormat ? opts.yFormat(y) : y.toFixed(2), pad.left - 6, sy(y));
  }
  const xStep = Math.max(1, niceStep(xMax - xMin, 8));
  ctx.textAlign = "center";
  ctx.textBaseline = "top";
  for (let x = Math.ceil(xMin / xStep) * xStep; x <= xMax; x += xStep) {
    ctx.fillText(String(x), sx(x), pad.top + h + 6);
  }
  ctx.fillText(opts.xLabel || "round", pad.left + w / 2, pad.top + h + 20);

  let legendX = pad.left;
  const legend = (name, swatch) => {  // swatch: [y, height] of a 14-px patch in the current fill colour
    ctx.fillRect(legendX, swatch[0], 14, swatch[1]);
    ctx.fillStyle = "#1d2330";
    ctx.textAlign = "left";
    ctx.textBaseline = "middle";
    ctx.fillText(name, legendX + 18, 10);
    legendX += 26 + ctx.measureText(name).width;
  };
  for (const s of series) {
    if (s.lo) {
      const band = s.xs.map((x, i) => [x, s.lo[i], s.hi[i]]).filter((p) => p[1] != null && p[2] != null);
      ctx.fillStyle = s.fill;
      if (band.length) {
        ctx.beginPath();
        band.forEach((p, i) => (i ? ctx.lineTo(sx(p[0]), sy(p[2])) : ctx.moveTo(sx(p[0]), sy(p[2]))));
        band.slice().reverse().forEach((p) => ctx.lineTo(sx(p[0]), sy(p[1])));
        ctx.closePath();
        ctx.fill();
      }
      legend(s.name, [5, 9]);
      continue;
    }
    const pts = s.xs.map((x, i) => [x, s.ys[i]]).filter((p) => p[1] != null);
    ctx.strokeStyle = s.color;
    ctx.fillStyle = s.color;
    ctx.lineWidth = 2;
    ctx.setLineDash(s.dash ? [6, 4] : []);
    ctx.beginPath();
    pts.forEach((p, i) => (i ? ctx.lineTo(sx(p[0]), sy(p[1])) : ctx.moveTo(sx(p[0]), sy(p[1]))));
    ctx.stroke();
    ctx.setLineDash([]);
    if (pts.length <= 40) pts.forEach((p) => { ctx.beginPath(); ctx.arc(sx(p[0]), sy(p[1]), 2.5, 0, 2 * Math.PI); ctx.fill(); });
    legend(s.name, [8, 3]);
  }
}
