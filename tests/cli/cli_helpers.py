"""Helpers of the clipseg-label tests (a unique module name: tests/*/ folders share sys.path)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from clipseg.demo.scenes import Scene, make_scene

SCENE_SIZE = 64
SEEDS = [11, 12, 13, 14]  # the scenes of the `scenes` fixture


def write_scenes(
    folder: Path, seeds: list[int], size: int = SCENE_SIZE
) -> list[tuple[Path, Scene]]:
    """Write the scenes of ``seeds`` as PNGs named scene-<seed>.png; returns (path, scene) pairs."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for seed in seeds:
        scene = make_scene(seed, size=size)
        path = folder / f"scene-{seed}.png"
        Image.fromarray(scene.image).save(path)
        out.append((path, scene))
    return out


class ThresholdAnnotator:
    """A stand-in for the model: 'light' = grey > 180, 'dark' = grey < 60, one region per label.

    Counts the images it was given, so tests can see what a resumed run redid.
    """

    labels = ("light", "dark")
    model_version = "fake-1"

    def __init__(self) -> None:
        self.seen = 0

    def annotate(self, images):
        from backend.formats import Region
        from backend.segmenter import ImagePrediction

        outcomes = []
        for image in images:
            self.seen += 1
            grey = image.mean(axis=2)
            regions = []
            for label, mask in (("light", grey > 180), ("dark", grey < 60)):
                if mask.any():
                    regions.append(Region(label=label, mask=mask, score=0.75))
            results = [
                {
                    "from_name": "tag",
                    "to_name": "image",
                    "type": "brushlabels",
                    "original_width": int(image.shape[1]),
                    "original_height": int(image.shape[0]),
                    "value": {"format": "rle", "rle": [0], "brushlabels": [r.label]},
                    "score": r.score,
                }
                for r in regions
            ]
            outcomes.append(
                ImagePrediction(
                    results=results,
                    regions=regions,
                    uncertainty=float(np.mean(grey > 128)),
                    confidence=0.75,
                    labels={r.label: {"regions": 1} for r in regions},
                )
            )
        return outcomes


class OraclePredictor:
    """A `clipseg.Predictor` stand-in that knows the scenes: the probability map of a prompt is
    0.9 on the scene's target (`Scene.target`) and 0.05 elsewhere. The pipeline around the model
    (regions, results, COCO) must then reproduce the ground truth: COCOeval's AP is near 1."""

    dim = 4

    def __init__(self, scenes: list[Scene]) -> None:
        import torch

        self.torch = torch
        self.device = "cpu"
        self.dtype = torch.float32
        self.by_image = {s.image.tobytes(): s for s in scenes}
        self.prompts: list[str] = []
        self.scene: Scene | None = None
        self.batch: list[Scene] | None = None  # after set_images
        self.images_set = 0

    def set_image(self, image) -> None:
        self.scene = self.by_image[np.ascontiguousarray(image).tobytes()]
        self.batch = None
        self.images_set += 1

    def set_images(self, images) -> None:
        self.batch = [self.by_image[np.ascontiguousarray(im).tobytes()] for im in images]
        self.scene = self.batch[0]
        self.images_set += len(images)

    def embed_text(self, texts):
        out = self.torch.zeros(len(texts), self.dim)
        for i, text in enumerate(texts):
            if text not in self.prompts:
                self.prompts.append(text)
            out[i, 0] = self.prompts.index(text)
        return out

    def embed_exemplar(self, image, mask=None, box=None):
        """A fixed vector (exemplars are only stored and counted in these tests)."""
        out = self.torch.zeros(self.dim)
        out[1] = 1.0 if mask is not None else 0.5
        return out

    def predict_embeddings(self, embeddings):
        assert self.scene is not None, "call set_image first"

        def maps(scene):
            return np.stack(
                [
                    np.where(scene.target(self.prompts[int(round(float(e[0])))]), 0.9, 0.05)
                    for e in embeddings
                ]
            ).astype(np.float32)

        return [maps(scene) for scene in self.batch] if self.batch else maps(self.scene)


def oracle_backend(scenes: list[Scene], settings):
    """A CLIPSegBackend with ``settings`` over an OraclePredictor."""
    from backend.model import CLIPSegBackend

    return CLIPSegBackend(
        settings,
        OraclePredictor(scenes),
        model_name="clipseg-oracle",
        weights_hash="00000000",
        is_demo=False,
        device="cpu",
        dtype="float32",
    )


def scenes_ground_truth(
    coco_pred: dict, scenes_by_file: dict[str, Scene], semantic: bool = False
) -> dict:
    """The COCO ground truth of the predicted images: one annotation per visible object (or, with
    ``semantic``, per category: the union of its objects), categories named "<color> <shape>",
    with the image ids and categories of ``coco_pred``."""
    from pycocotools import mask as mask_utils

    cat_ids = {c["name"]: c["id"] for c in coco_pred["categories"]}
    annotations = []
    for image in coco_pred["images"]:
        scene = scenes_by_file[image["file_name"]]
        if semantic:
            items = [(name, scene.target(name)) for name in sorted({o.name for o in scene.objects})]
        else:
            items = [(o.name, o.mask) for o in scene.objects]
        for name, mask in items:
            if name not in cat_ids or not mask.any():
                continue
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image["id"],
                    "category_id": cat_ids[name],
                    "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
                    "area": float(mask_utils.area(rle)),
                    "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                    "iscrowd": 0,
                }
            )
    return {
        "images": coco_pred["images"],
        "categories": coco_pred["categories"],
        "annotations": annotations,
    }


def coco_segm_ap(
    coco_pred: dict, scenes_by_file: dict[str, Scene], semantic: bool = False
) -> float:
    """COCOeval's segmentation AP (IoU 0.50:0.95) of ``coco_pred`` against the scenes."""
    import contextlib
    import copy
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = scenes_ground_truth(coco_pred, scenes_by_file, semantic)
        gt.createIndex()
        # loadRes rewrites its input's area and bbox: give it a copy
        detections = copy.deepcopy(coco_pred["annotations"])
        dt = gt.loadRes(detections) if detections else None
        if dt is None:
            return 0.0
        evaluator = COCOeval(gt, dt, iouType="segm")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return float(evaluator.stats[0])
