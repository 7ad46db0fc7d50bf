"""Postprocessing per task: model outputs -> JSON-able results, and drawing them on a frame.

A postprocessor is registered under the manifest's ``task`` with :func:`register`; it is called
with the runner's outputs for one frame (batch of one) and has ``draw(image, results)``.
"""

from __future__ import annotations

import numpy as np

from edgekit.errors import BundleError

POSTPROCESSORS: dict[str, type] = {}


def register(task: str):
    """Class decorator: the postprocessor for ``task``."""

    def deco(cls):
        POSTPROCESSORS[task] = cls
        return cls

    return deco


def for_bundle(bundle, **options):
    """The postprocessor for the bundle's task, built from its manifest."""
    cls = POSTPROCESSORS.get(bundle.task)
    if cls is None:
        raise BundleError(f"no postprocessing for task {bundle.task!r} (have: {', '.join(POSTPROCESSORS)})")
    return cls.from_bundle(bundle, **options)


def draw_text(image: np.ndarray, lines: list[str], origin=(0, 0)) -> None:
    """Write ``lines`` in white on a dark box at ``origin``, scaled to the image size (in place)."""
    import cv2

    scale = max(0.35, min(image.shape[:2]) / 480)
    thick = max(1, round(scale * 1.5))
    x, y = origin
    for line in lines:
        (w, h), base = cv2.getTextSize(line, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        pad = max(2, h // 4)
        cv2.rectangle(image, (x, y), (x + w + 2 * pad, y + h + base + 2 * pad), (0, 0, 0), -1)
        cv2.putText(image, line, (x + pad, y + pad + h), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick,
                    cv2.LINE_AA)
        y += h + base + 2 * pad


@register("classification")
class Classification:
    """Top-k classes with labels and scores (softmax applied when the output is logits)."""

    def __init__(self, labels: list[str], output: str | None = None, top_k: int = 1, logits: bool = False):
        if top_k < 1:
            raise BundleError("top-k must be at least 1")
        self.labels, self.output, self.top_k, self.logits = list(labels), output, top_k, logits

    @classmethod
    def from_bundle(cls, bundle, top_k: int = 1) -> "Classification":
        out = (bundle.manifest.get("outputs") or [{}])[0]
        return cls(bundle.labels, out.get("name"), top_k, out.get("meaning") == "logits")

    def __call__(self, outputs: dict[str, np.ndarray]) -> list[dict]:
        scores = outputs[self.output] if self.output in outputs else next(iter(outputs.values()))
        scores = np.asarray(scores, np.float64).reshape(-1)
        if self.logits:
            scores = np.exp(scores - scores.max())
            scores /= scores.sum()
        top = np.argsort(-scores, kind="stable")[: self.top_k]
        return [
            {"class": int(i), "label": self.labels[i] if i < len(self.labels) else str(int(i)), "score": round(float(scores[i]), 6)}
            for i in top
        ]

    def draw(self, image: np.ndarray, results: list[dict]) -> np.ndarray:
        draw_text(image, [f"{r['label']} {r['score']:.2f}" for r in results])
        return image
