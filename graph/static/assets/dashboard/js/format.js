// Formatting figures for people: counts with separators, rates as percentages, times in the browser's zone.

const DASH = "–";
const counts = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });
const decimals = new Intl.NumberFormat(undefined, { maximumFractionDigits: 2 });

export function count(value) {
  return value === null || value === undefined ? DASH : counts.format(value);
}

export function decimal(value, digits = 2) {
  if (value === null || value === undefined || Number.isNaN(value)) return DASH;
  return digits === 2 ? decimals.format(value) : value.toFixed(digits);
}

export function percent(value, digits = 1) {
  if (value === null || value === undefined || Number.isNaN(value)) return DASH;
  return `${(value * 100).toFixed(digits)}%`;
}

/** A signed relative change, e.g. +3.2%. */
export function signedPercent(value, digits = 1) {
  if (value === null || value === undefined) return DASH;
  return `${value >= 0 ? "+" : ""}${(value * 100).toFixed(digits)}%`;
}

export function pValue(value) {
  if (value === null || value === undefined) return DASH;
  return value < 0.0001 ? "< 0.0001" : value.toFixed(4);
}

function pad(n) {
  return String(n).padStart(2, "0");
}

/** An ISO date-time as local `YYYY-MM-DD HH:MM:SS`. */
export function when(iso) {
  if (!iso) return DASH;
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  const date = `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
  return `${date} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

/** An ISO date as local `YYYY-MM-DD`. */
export function day(iso) {
  return iso ? when(iso).slice(0, 10) : DASH;
}

export function seconds(value) {
  if (value === null || value === undefined) return DASH;
  if (value === 0) return "0 s";
  if (value < 1) return `${Math.round(value * 1000)} ms`;
  if (value < 120) return `${value.toFixed(1)} s`;
  if (value < 7200) return `${(value / 60).toFixed(1)} min`;
  if (value < 172800) return `${(value / 3600).toFixed(1)} h`;
  return `${(value / 86400).toFixed(1)} d`;
}

export function bytes(value) {
  if (value === null || value === undefined) return DASH;
  const units = ["B", "KB", "MB", "GB", "TB"];
  let v = value;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${v.toFixed(i ? 1 : 0)} ${units[i]}`;
}

/** Pretty JSON for a <pre>. */
export function json(value) {
  return JSON.stringify(value, null, 2);
}
