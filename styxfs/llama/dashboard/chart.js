// A line chart in SVG, small enough to ship with llamafs (no CDN, works offline).
// drawChart(svg, values, label): values are numbers or null (no reading), oldest first;
// label, if given, is told the latest value and the highest.
"use strict";
function drawChart(svg, values, label) {
  const w = 300, h = 100, pad = 4;
  const known = values.filter(v => v !== null && v !== undefined);
  const top = Math.max(1e-9, ...known) * 1.1;
  const x = i => values.length < 2 ? w : (i / (values.length - 1)) * w;
  const y = v => h - pad - (v / top) * (h - 2 * pad);
  let line = "", started = false;
  values.forEach((v, i) => {
    if (v === null || v === undefined) { started = false; return; }
    line += (started ? "L" : "M") + x(i).toFixed(1) + "," + y(v).toFixed(1);
    started = true;
  });
  const area = known.length > 1 && values.every(v => v !== null && v !== undefined)
    ? line + `L${w},${h}L0,${h}Z` : "";
  svg.innerHTML = `<path class="area" d="${area}"/><path class="line" d="${line}"/>`;
  if (label) {
    const round = v => Number(v.toPrecision(3));
    label.textContent = known.length
      ? `now ${round(known[known.length - 1])} · max ${round(Math.max(...known))}` : "";
  }
}
