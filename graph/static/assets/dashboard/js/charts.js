// Charts: uPlot (vendored) for time series and bars, small SVG for intervals. uPlot draws on a canvas and sizes
// its DOM through the CSSOM, which the page's CSP allows (it forbids style attributes and <style> elements only).

import { h, svg } from "./dom.js";

export const COLORS = ["#1f4e79", "#e07b39", "#2a9d8f", "#b5179e", "#6a994e", "#8d99ae"];

function width(el) {
  return Math.max(el.clientWidth || el.parentElement?.clientWidth || 600, 240);
}

/** Keep a chart as wide as its container. */
function follow(el, plot, height) {
  const observer = new ResizeObserver(() => plot.setSize({ width: width(el), height }));
  observer.observe(el);
  return () => observer.disconnect();
}

/**
 * A time-series chart in `el`: series are {label, color?, scale?, value?(u, v)}; `data` is [times (s), ...columns].
 * Returns {update(data), destroy()}.
 */
export function timeChart(el, series, data, { height = 220, scales = {}, axes = null, minSpan = 60 } = {}) {
  // At least `minSpan` seconds wide. Read from the data: uPlot widens a lone point's range to years before asking.
  const xRange = (u) => {
    const xs = u.data[0] || [];
    if (!xs.length) {
      const now = Date.now() / 1000;
      return [now - minSpan, now];
    }
    const first = xs[0];
    const last = xs[xs.length - 1];
    return last - first < minSpan ? [last - minSpan, last] : [first, last];
  };
  const opts = {
    width: width(el),
    height,
    cursor: { drag: { x: true, y: false } },
    scales: { x: { time: true, range: xRange }, ...scales },
    series: [
      {},
      ...series.map((s, i) => ({
        label: s.label,
        stroke: s.color || COLORS[i % COLORS.length],
        width: 2,
        scale: s.scale || "y",
        value: s.value,
        points: { show: s.points ?? false },
        spanGaps: true,
      })),
    ],
    axes: axes || [{}, { scale: "y" }],
  };
  const plot = new window.uPlot(opts, data, el);
  const unfollow = follow(el, plot, height);
  return {
    plot,
    update(next) {
      plot.setData(next);
    },
    destroy() {
      unfollow();
      plot.destroy();
    },
  };
}

/** A bar chart over categories `labels` with one series of `values`. */
export function barChart(el, labels, values, { label = "count", height = 200, color = COLORS[0], format = null } = {}) {
  const xs = labels.map((_, i) => i);
  const bars = window.uPlot.paths.bars({ size: [0.7, 60] });
  const opts = {
    width: width(el),
    height,
    legend: { show: false },
    cursor: { show: true, drag: { x: false, y: false } },
    scales: { x: { time: false, range: [-0.5, labels.length - 0.5] }, y: { range: (u, min, max) => [0, max || 1] } },
    series: [
      { value: (u, v) => (v === null ? "" : labels[v]) },
      {
        label,
        stroke: color,
        fill: `${color}cc`,
        paths: bars,
        points: { show: false },
        value: format ? (u, v) => format(v) : undefined,
      },
    ],
    axes: [
      { splits: () => xs, values: (u, splits) => splits.map((i) => labels[i] ?? ""), gap: 4 },
      { values: format ? (u, splits) => splits.map(format) : undefined },
    ],
  };
  const plot = new window.uPlot(opts, [xs, values], el);
  const unfollow = follow(el, plot, height);
  return {
    plot,
    destroy() {
      unfollow();
      plot.destroy();
    },
  };
}

/**
 * A forest plot: one row per estimate {label, point, lower, upper, significant}, drawn against zero.
 * Values are relative differences (0.05 = +5%).
 */
export function intervalPlot(rows, { format = (v) => `${(v * 100).toFixed(1)}%` } = {}) {
  const finite = rows
    .flatMap((r) => [r.lower, r.upper, r.point])
    .filter((v) => typeof v === "number" && Number.isFinite(v));
  const extent = Math.max(0.01, ...finite.map(Math.abs)) * 1.15;
  const rowHeight = 26;
  const left = 150;
  const right = 20;
  const plotWidth = 460;
  const totalWidth = left + plotWidth + right;
  const totalHeight = rows.length * rowHeight + 24;
  const x = (v) => left + ((v + extent) / (2 * extent)) * plotWidth;
  const children = [
    svg("line", { class: "zero", x1: x(0), x2: x(0), y1: 4, y2: totalHeight - 20 }),
    svg("text", { x: x(-extent), y: totalHeight - 6 }, format(-extent)),
    svg("text", { x: x(0) - 8, y: totalHeight - 6 }, "0"),
    svg("text", { x: x(extent) - 36, y: totalHeight - 6 }, format(extent)),
  ];
  rows.forEach((row, i) => {
    const y = i * rowHeight + 16;
    children.push(svg("text", { x: 4, y: y + 4 }, row.label));
    if ([row.lower, row.upper].every((v) => typeof v === "number" && Number.isFinite(v))) {
      const direction = row.significant ? (row.point >= 0 ? "sig-up" : "sig-down") : "";
      children.push(svg("line", { class: `ci ${direction}`, x1: x(row.lower), x2: x(row.upper), y1: y, y2: y }));
    }
    if (typeof row.point === "number" && Number.isFinite(row.point)) {
      children.push(svg("circle", { class: "point", cx: x(row.point), cy: y, r: 4 }));
    } else {
      children.push(svg("text", { x: left + 4, y: y + 4 }, "not enough data"));
    }
  });
  return h(
    "div",
    { class: "scroll" },
    svg(
      "svg",
      {
        class: "forest",
        viewBox: `0 0 ${totalWidth} ${totalHeight}`,
        role: "img",
        "aria-label": "effects with their intervals",
      },
      ...children,
    ),
  );
}
