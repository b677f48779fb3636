// SUPIR Sampler: shows the settings the sampler will really use (the preset's values, or the widgets' own
// values with preset "Custom") below its widgets, updated as the preset or any value changes, and after a run
// what that run took (the node's {"ui": {"fsupir_report": [...]}}: time, ms/step, peak VRAM).
// The presets come from the server (GET /fsupir/presets, nodes/routes.py), the same table the sampler uses.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const NODE_TYPE = "FSUPIR_Sampler";
const WIDGET_NAME = "fsupir_effective_settings";
const LINE_HEIGHT = 16;

const state = { presets: null, error: null };

async function loadPresets() {
  try {
    const response = await api.fetchApi("/fsupir/presets", { cache: "no-store" });
    if (!response.ok) throw new Error(`GET /fsupir/presets answered HTTP ${response.status}`);
    state.presets = await response.json();
  } catch (error) {
    state.error = `${error.message ?? error}; restart ComfyUI after updating FSUPIR`;
    console.error("[FSUPIR] cannot read the sampler presets:", error);
  }
  app.graph?.setDirtyCanvas(true, true);
}

const num = (v) => (typeof v === "number" ? String(+v.toFixed(4)) : String(v));
const ramp = (linear, start, end) => (linear ? `${num(start)} -> ${num(end)}` : num(end));

/** {preset, source, values} where values are the settings the sampler will run with; null while loading. */
function effectiveSettings(node) {
  const widget = (name) => node.widgets?.find((w) => w.name === name);
  const presetWidget = widget("preset");
  const linked = node.inputs?.some((i) => i.widget?.name === "preset" && i.link != null);
  const preset = linked ? null : presetWidget?.value;
  if (!state.presets) return null;
  if (preset == null) return { preset: null, source: "input", values: null };
  if (preset !== state.presets.custom) {
    const values = state.presets.presets[preset];
    return values ? { preset, source: "preset", values } : { preset, source: "unknown", values: null };
  }
  // The setting names come with the presets (SamplerSettings' fields), so this file never lists them.
  const values = Object.fromEntries(state.presets.fields.map((name) => [name, widget(name)?.value]));
  return { preset, source: "custom", values };
}

function describe(effective) {
  if (state.error) return [`Presets unavailable: ${state.error}`];
  if (!effective) return ["Loading presets..."];
  if (effective.source === "input") return ["Effective settings: preset comes from an input"];
  if (!effective.values) return [`Unknown preset ${effective.preset}`];
  const v = effective.values;
  const head = effective.source === "custom" ? "Custom (the values above)" : `${effective.preset} preset`;
  const guidance = v.restore_cfg < 0 ? "off" : `${num(v.restore_cfg)} (stops below sigma ${num(v.restore_cfg_s_tmin)})`;
  const noise = v.sampler === "restore_edm" ? `s_churn ${num(v.s_churn)}, s_noise ${num(v.s_noise)}`
    : `eta ${num(v.eta)}, s_noise ${num(v.s_noise)}`;
  return [
    `Effective: ${head}`,
    `${v.sampler}, ${v.steps} steps`,
    `CFG ${ramp(v.linear_cfg, v.cfg_scale_start, v.cfg_scale)}, control ${ramp(v.linear_control_scale,
      v.control_scale_start, v.control_scale)}`,
    `restoration guidance ${guidance}`,
    noise,
  ];
}

/** The settings lines, then the last run's report (its summary is written by the server). */
function displayLines(node) {
  const lines = describe(effectiveSettings(node));
  const report = node.fsupirLastRun;
  return report ? [...lines, `Last run: ${report.summary}`] : lines;
}

function fitDisplay(node) {
  const size = node.computeSize();
  node.setSize([Math.max(node.size[0], size[0]), Math.max(node.size[1], size[1])]);
}

function addDisplay(node) {
  if (node.widgets?.some((w) => w.name === WIDGET_NAME)) return;
  const display = {
    name: WIDGET_NAME,
    type: "fsupir_text",
    value: "",
    serialize: false, // not in the saved widgets_values
    options: { serialize: false }, // not in the API prompt
    computeSize(width) {
      return [width, displayLines(node).length * LINE_HEIGHT + 8];
    },
    draw(ctx, drawnNode, width, y) {
      const lines = displayLines(drawnNode);
      this.value = lines.join("\n");
      ctx.save();
      ctx.fillStyle = LiteGraph.WIDGET_SECONDARY_TEXT_COLOR ?? "#999";
      ctx.font = "12px Arial";
      ctx.textAlign = "left";
      lines.forEach((line, i) => ctx.fillText(line, 15, y + LINE_HEIGHT * (i + 1), width - 30));
      ctx.restore();
    },
  };
  node.addCustomWidget(display);
  fitDisplay(node);
}

/** The 2024 frontend saves every widget's value; keep the display's out of the workflow (the newer one already
 * skips widgets with serialize: false, leaving no value at that index). */
export function dropDisplayValue(node, serialized, name) {
  const i = node.widgets?.findIndex((w) => w.name === name) ?? -1;
  if (i >= 0 && Array.isArray(serialized.widgets_values) && i in serialized.widgets_values) {
    serialized.widgets_values.splice(i, 1);
  }
}

app.registerExtension({
  name: "FSUPIR.SamplerEffectiveSettings",
  async setup() {
    await loadPresets();
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== NODE_TYPE) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const r = onNodeCreated?.apply(this, arguments);
      addDisplay(this);
      return r;
    };
    const onSerialize = nodeType.prototype.onSerialize;
    nodeType.prototype.onSerialize = function (o) {
      const r = onSerialize?.apply(this, arguments);
      dropDisplayValue(this, o, WIDGET_NAME);
      return r;
    };
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      const r = onExecuted?.apply(this, arguments);
      const report = Array.isArray(message?.fsupir_report) ? message.fsupir_report[0] : null;
      if (report?.summary) {
        this.fsupirLastRun = report;
        fitDisplay(this);
        this.setDirtyCanvas?.(true, true);
      }
      return r;
    };
    // For tests and other extensions: what the display shows.
    nodeType.prototype.fsupirEffectiveSettings = function () {
      const effective = effectiveSettings(this);
      return { ...(effective ?? {}), lines: displayLines(this), lastRun: this.fsupirLastRun ?? null };
    };
  },
});
