"""ComfyUI's ``prompt`` graph: the text that reached the sampler's ``positive`` input.

The graph is a JSON object, node id -> ``{"class_type", "inputs"}``; an input that is a link reads
``[node id, output index]``. The sampler nearest the saved image is found first (KSampler and its kin: a node
with ``positive`` and ``negative`` links, or ``SamplerCustomAdvanced`` through its guider); its ``positive``
link is then followed through conditioning nodes (combine, concat, area, ControlNet, which passes ``positive``
on as ``positive``) to the text encoders, so a negative text node is never taken for the prompt, wherever
it sits in the file. Every walk keeps a visited set and stops at ``max_graph_depth`` links and
``max_graph_nodes`` steps: a cycle or a huge graph costs a bounded time.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from retriever.metadata.containers import MetadataLimits
from retriever.metadata.record import GenerationMetadata, settings_of

# inputs that hold a prompt's text in the text nodes of ComfyUI and common custom nodes
TEXT_INPUTS = ("text", "text_g", "text_l", "prompt", "string", "value", "populated_text", "wildcard_text")
# links that never lead to the prompt's text
NOT_TEXT = frozenset({"clip", "model", "vae", "image", "images", "pixels", "samples", "latent_image", "latent",
                      "control_net", "mask", "upscale_model", "clip_vision", "clip_vision_output", "style_model",
                      "noise", "sigmas", "sampler", "guider", "unet", "lora"})
SAMPLER_SETTINGS = ("seed", "noise_seed", "steps", "cfg", "sampler_name", "scheduler", "denoise")
SAMPLER_INPUTS = frozenset(SAMPLER_SETTINGS[:5])
MODEL_NAMES = ("ckpt_name", "unet_name", "model_name")


def _link(value: Any) -> str | None:
    if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str | int) and isinstance(value[1], int):
        return str(value[0])
    return None


class _Graph:
    def __init__(self, nodes: dict[Any, Any], limits: MetadataLimits) -> None:
        self.limits = limits
        self.types: dict[str, str] = {}
        self._inputs: dict[str, dict[str, Any]] = {}
        for key, node in nodes.items():  # one pass; every later lookup is a dict hit
            if isinstance(node, dict):
                inputs = node.get("inputs")
                self.types[str(key)] = str(node.get("class_type", ""))
                self._inputs[str(key)] = inputs if isinstance(inputs, dict) else {}

    def inputs(self, node_id: str) -> dict[str, Any]:
        return self._inputs.get(node_id, {})

    def class_type(self, node_id: str) -> str:
        return self.types.get(node_id, "")

    def samplers(self) -> list[str]:
        """Sampler nodes, nearest the saved image first (breadth-first from every output node), then any other."""
        outputs = sorted((i for i, t in self.types.items() if "Save" in t or "Preview" in t), key=_order)
        seen, found = set(outputs), []
        queue = deque(outputs)
        steps = 0
        while queue and steps < self.limits.max_graph_nodes:
            node_id, steps = queue.popleft(), steps + 1
            if self.is_sampler(node_id):
                found.append(node_id)
            for value in self.inputs(node_id).values():
                target = _link(value)
                if target is not None and target not in seen:
                    seen.add(target)
                    queue.append(target)
        chosen = set(found)
        rest = sorted((i for i in self.types if i not in chosen and self.is_sampler(i)), key=_order)
        return found + rest

    def is_sampler(self, node_id: str) -> bool:
        """A node that samples with conditioning (not a ControlNet node, which passes conditioning on)."""
        samples = "Sampler" in self.types.get(node_id, "") or not SAMPLER_INPUTS.isdisjoint(self.inputs(node_id))
        return samples and self.conditioning(node_id, "positive") is not None

    def conditioning(self, sampler: str, role: str) -> str | None:
        """Where a sampler's positive (or negative) conditioning comes from: its own input, or its guider's."""
        inputs = self.inputs(sampler)
        if _link(inputs.get(role)) is not None and ("negative" in inputs or "guider" not in inputs):
            return _link(inputs.get(role))
        guider = _link(inputs.get("guider"))
        if guider is None:
            return None
        guided = self.inputs(guider)
        if role == "positive" and _link(guided.get("conditioning")) is not None:  # BasicGuider (FLUX)
            return _link(guided.get("conditioning"))
        return _link(guided.get(role))

    def texts(self, start: str, role: str) -> list[str]:
        """The texts that flow into ``start``, depth-first in input order, each once."""
        texts: list[str] = []
        stack, seen, steps = [(start, 0)], set(), 0
        while stack and steps < self.limits.max_graph_nodes:
            node_id, depth = stack.pop()
            steps += 1
            if node_id in seen or depth > self.limits.max_graph_depth:
                continue
            seen.add(node_id)
            text, links = self._read(node_id, role)
            if text and text not in texts:
                texts.append(text)
            stack.extend((target, depth + 1) for target in reversed(links))
        return texts

    def _read(self, node_id: str, role: str) -> tuple[str, list[str]]:
        """A node's own text, or the links to follow for it."""
        inputs = self.inputs(node_id)
        paired = f"text_{role}"  # prompt stylers: text_positive / text_negative
        if isinstance(inputs.get(paired), str):
            return inputs[paired].strip(), []
        strings = [inputs[k].strip() for k in TEXT_INPUTS if isinstance(inputs.get(k), str) and inputs[k].strip()]
        if strings:
            return ", ".join(dict.fromkeys(strings)), []  # text_g and text_l: both, once each if they differ
        text_links = [_link(inputs.get(k)) for k in (*TEXT_INPUTS, paired)]
        if any(text_links):
            return "", [t for t in text_links if t]
        if isinstance(inputs.get(role), str):  # loaders that take the prompts as strings (Efficient Loader)
            return inputs[role].strip(), []
        if _link(inputs.get("positive")) and _link(inputs.get("negative")):  # ControlNet and kin pass both on
            return "", [_link(inputs[role])]  # type: ignore[list-item]
        return "", [t for k, v in sorted(inputs.items()) if k not in NOT_TEXT and (t := _link(v))]

    def model(self, sampler: str) -> str | None:
        """The checkpoint a sampler's model came from, along ``model`` links (LoRA loaders ...), bounded."""
        node_id = _link(self.inputs(sampler).get("model"))
        for _ in range(self.limits.max_graph_depth):
            if node_id is None:
                return None
            inputs = self.inputs(node_id)
            name = next((inputs[k] for k in MODEL_NAMES if isinstance(inputs.get(k), str)), None)
            if name:
                return name
            node_id = _link(inputs.get("model"))
        return None


def _order(node_id: str) -> tuple[int, str]:
    """Numeric ids in number order (ComfyUI's are small integers), any other id after them."""
    numeric = node_id.isascii() and node_id.isdigit() and len(node_id) < 18
    return (int(node_id), "") if numeric else (1 << 62, node_id)


def parse_graph(nodes: dict | None, limits: MetadataLimits, found_in: str) -> GenerationMetadata | None:
    """The record of a parsed ``prompt`` graph (None for anything that is not one, or one over the limits)."""
    if not nodes or len(nodes) > limits.max_graph_nodes:
        return None
    graph = _Graph(nodes, limits)
    if not graph.types:
        return None
    for sampler in graph.samplers():
        positive = ", ".join(graph.texts(graph.conditioning(sampler, "positive") or "", "positive"))
        if not positive:
            continue
        negative_start = graph.conditioning(sampler, "negative")
        negative = ", ".join(graph.texts(negative_start, "negative")) if negative_start else ""
        inputs = graph.inputs(sampler)
        settings = settings_of({k: inputs[k] for k in SAMPLER_SETTINGS if k in inputs})
        model = graph.model(sampler)
        if model:
            settings["model"] = model[:300]
        settings["sampler_node"] = graph.class_type(sampler)
        return GenerationMetadata(positive, negative, "ComfyUI", settings, found_in)
    return None
