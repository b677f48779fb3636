// Tooltips on the inputs of FSUPIR nodes for ComfyUI's older frontend (2024), which has none of its own. The
// text is each input's `tooltip` from /object_info (the Python INPUT_TYPES). Frontends that show those tooltips
// themselves (comfyui-frontend-package, ComfyUI >= 0.2) are left alone.
import { app } from "../../scripts/app.js";

const PREFIX = "FSUPIR_";
const DELAY_MS = 400;
const hasNativeTooltips = () => typeof window.comfyAPI !== "undefined";

let box = null;
let timer = null;

function tooltipBox() {
  if (!box) {
    box = document.createElement("div");
    box.className = "fsupir-tooltip";
    Object.assign(box.style, {
      position: "fixed", zIndex: 10000, maxWidth: "360px", padding: "6px 8px", borderRadius: "4px",
      background: "rgba(20, 20, 20, 0.92)", color: "#ddd", font: "12px sans-serif", pointerEvents: "none",
      display: "none", whiteSpace: "pre-wrap",
    });
    document.body.append(box);
  }
  return box;
}

function hide() {
  clearTimeout(timer);
  if (box) box.style.display = "none";
}

function show(text, clientX, clientY) {
  clearTimeout(timer);
  timer = setTimeout(() => {
    const el = tooltipBox();
    el.textContent = text;
    el.style.left = `${clientX + 14}px`;
    el.style.top = `${clientY + 14}px`;
    el.style.display = "block";
  }, DELAY_MS);
}

/** The input (widget or slot) of `node` under the graph position [x, y], or null. */
function inputAt(node, x, y) {
  const slotHeight = LiteGraph.NODE_SLOT_HEIGHT;
  for (const [i, input] of (node.inputs ?? []).entries()) {
    const [sx, sy] = node.getConnectionPos(true, i);
    if (Math.abs(y - sy) <= slotHeight / 2 && x >= sx - 10 && x <= node.pos[0] + node.size[0] / 2) {
      return input.widget?.name ?? input.name;
    }
  }
  for (const widget of node.widgets ?? []) {
    if (widget.last_y == null || widget.type === "converted-widget" || widget.type?.startsWith?.("fsupir_")) continue;
    const height = widget.computeSize ? widget.computeSize(node.size[0])[1] : LiteGraph.NODE_WIDGET_HEIGHT;
    const top = node.pos[1] + widget.last_y;
    if (y >= top && y <= top + height && x >= node.pos[0] && x <= node.pos[0] + node.size[0]) return widget.name;
  }
  return null;
}

function onPointerMove(event) {
  const canvas = app.canvas;
  if (!canvas?.graph) return;
  const [x, y] = canvas.convertEventToCanvasOffset(event);
  const node = canvas.graph.getNodeOnPos(x, y);
  const tips = node?.constructor?.fsupirTooltips;
  const name = tips ? inputAt(node, x, y) : null;
  if (name && tips[name]) show(tips[name], event.clientX, event.clientY);
  else hide();
}

function tooltipsOf(nodeData) {
  const tips = {};
  for (const group of ["required", "optional"]) {
    for (const [name, spec] of Object.entries(nodeData.input?.[group] ?? {})) {
      const tooltip = Array.isArray(spec) ? spec[1]?.tooltip : undefined;
      if (tooltip) tips[name] = tooltip;
    }
  }
  return tips;
}

app.registerExtension({
  name: "FSUPIR.Tooltips",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (hasNativeTooltips() || !nodeData.name?.startsWith(PREFIX)) return;
    const tips = tooltipsOf(nodeData);
    nodeType.fsupirTooltips = tips;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const r = onNodeCreated?.apply(this, arguments);
      for (const widget of this.widgets ?? []) {
        if (widget.inputEl && tips[widget.name]) widget.inputEl.title = tips[widget.name]; // text boxes
      }
      return r;
    };
  },
  async setup() {
    if (hasNativeTooltips()) return;
    app.canvasEl.addEventListener("mousemove", onPointerMove);
    app.canvasEl.addEventListener("mouseleave", hide);
    app.canvasEl.addEventListener("mousedown", hide);
  },
});
