// SUPIR LLaVA Caption: after the node runs, shows the caption(s) it wrote (the node's {"ui": {"text": [...]}})
// in a read-only text box on the node, one paragraph per image or per tile. The box is display only: it is
// neither saved in the workflow nor sent to the server.
import { app } from "../../scripts/app.js";
import { dropDisplayValue } from "./fsupir_sampler.js";

const NODE_TYPE = "FSUPIR_LLaVACaption";
const WIDGET_NAME = "fsupir_caption_text";

export function captionText(captions, perTile) {
  if (captions.length <= 1) return captions[0] ?? "";
  const label = perTile ? "tile" : "image";
  return captions.map((caption, i) => `[${label} ${i + 1}] ${caption}`).join("\n\n");
}

function textWidget(node) {
  const existing = node.widgets?.find((w) => w.name === WIDGET_NAME);
  if (existing) return existing;
  const area = document.createElement("textarea");
  area.readOnly = true;
  area.className = "comfy-multiline-input fsupir-caption-text";
  area.style.opacity = "0.85";
  area.placeholder = "The caption appears here after the node runs.";
  const widget = node.addDOMWidget(WIDGET_NAME, "fsupir_caption_text", area, {
    getValue: () => area.value,
    setValue: (v) => { area.value = v ?? ""; },
    serialize: false,
  });
  widget.serialize = false; // not in the saved widgets_values
  widget.options = { ...(widget.options ?? {}), serialize: false }; // not in the API prompt
  widget.inputEl = area;
  const size = node.computeSize();
  node.setSize([Math.max(node.size[0], size[0]), Math.max(node.size[1], size[1] + 60)]);
  return widget;
}

app.registerExtension({
  name: "FSUPIR.CaptionText",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== NODE_TYPE) return;
    const onSerialize = nodeType.prototype.onSerialize;
    nodeType.prototype.onSerialize = function (o) {
      const r = onSerialize?.apply(this, arguments);
      dropDisplayValue(this, o, WIDGET_NAME);
      return r;
    };
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      const r = onExecuted?.apply(this, arguments);
      const captions = Array.isArray(message?.text) ? message.text.map(String) : [];
      const perTile = this.widgets?.find((w) => w.name === "per_tile")?.value === true;
      const widget = textWidget(this);
      widget.inputEl.value = captionText(captions, perTile);
      this.fsupirCaptions = captions;
      this.setDirtyCanvas?.(true, true);
      return r;
    };
  },
});
