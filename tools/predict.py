#!/usr/bin/env python
"""
Predict on your own images (files, folders, videos) with a trained segcls model, exactly as
evaluation predicts: the config's test-time resize and inference mode (TEST.MODE whole / slide,
TEST.AUG TTA), through :class:`segcls.engine.SemSegPredictor`.

    python tools/predict.py --config-file CFG --weights output/model_final.pth \\
        --input photo.jpg my_folder/ --output predictions/
    python tools/predict.py --config-file CFG --weights W --input clip.mp4 --output predictions/
    python tools/predict.py --config-file CFG --weights W --input my_folder --output preds \\
        --overlay side-by-side --probs TEST.MODE slide          # trailing KEY VALUE: config overrides

For each image ``<name>`` (folders: their images, recursively, named by their path inside the folder):

- ``<output>/<name>.png``: the predicted class indices, a palette PNG shown in the dataset's colours
  (16-bit grayscale if there are more than 256 classes);
- ``<output>/<name>_overlay.png``: detectron2's ``Visualizer.draw_sem_seg`` (class names on the
  regions, ``--alpha``), or with ``--overlay side-by-side`` ``<name>_panel.png`` (image | prediction
  over a legend of the classes present); ``--overlay none``: neither;
- with ``--probs``, ``<output>/<name>_probs.npy``: (K, H, W) float16 per-class probabilities.

A video (``.mp4 .avi .mov .mkv .webm``) gives ``<output>/<name>_overlay.mp4``, its frames drawn as
above (side by side with ``--overlay none``; no label or probability files). Images are mapped by a DataLoader (``--num-workers``) and predicted ``--batch-size`` at a
time (images of one size together, so each prediction equals the one-image prediction).
Unreadable files are reported and skipped; all outputs are written atomically, and an output that
would overwrite an input (or an output folder inside an input folder) is refused.
The classes and colours are those of ``--dataset`` (default DATASETS.TEST[0], else DATASETS.TRAIN[0]).
"""
import argparse
import os
import sys
from collections import defaultdict

import cv2
import numpy as np
import torch
import torch.utils.data as torchdata
from detectron2.data import MetadataCatalog
from detectron2.utils.visualizer import Visualizer
from tqdm import tqdm

import segcls  # noqa: F401  (registers datasets and modules)
from segcls.data import ImageReadError
from segcls.engine import SemSegPredictor, load_config
from segcls.engine.visualization import input_image_rgb
from segcls.evaluation import predicted_labels
from segcls.utils.io import atomic_path, atomic_save_image, atomic_save_label_png, atomic_write
from segcls.utils.visualization import drawing_metadata, segmentation_panel

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--weights", default=None, help="checkpoint (default: MODEL.WEIGHTS of the config)")
    parser.add_argument("--ema", action="store_true", help="use the EMA weights stored in the checkpoint")
    parser.add_argument("--input", nargs="+", required=True, help="image files, folders of images, video files")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--overlay", choices=["visualizer", "side-by-side", "none"], default="visualizer")
    parser.add_argument("--alpha", type=float, default=0.5, help="opacity of the Visualizer's masks")
    parser.add_argument("--probs", action="store_true", help="also save (K, H, W) float16 probabilities (.npy)")
    parser.add_argument("--dataset", default=None, help="dataset whose class names and colours are used")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return parser.parse_args(argv)


def collect_inputs(paths):
    """``[(path, output name without extension, is_video)]`` of the inputs; folders are searched
    recursively for images and videos. Raises ``FileNotFoundError`` for a missing path and
    ``ValueError`` for a folder without images or two inputs with the same output name."""
    items = []
    for path in paths:
        if os.path.isdir(path):
            found = []
            for root, dirs, files in os.walk(path):
                dirs.sort()
                for f in sorted(files):
                    if f.lower().endswith(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS):
                        full = os.path.join(root, f)
                        found.append((full, os.path.splitext(os.path.relpath(full, path))[0]))
            if not found:
                raise ValueError(f"input folder '{path}' holds no images or videos (extensions {IMAGE_EXTENSIONS + VIDEO_EXTENSIONS})")
            items.extend(found)
        elif os.path.isfile(path):
            items.append((path, os.path.splitext(os.path.basename(path))[0]))
        else:
            raise FileNotFoundError(f"input '{path}' does not exist")
    seen = {}
    for path, name in items:
        if name in seen:
            raise ValueError(f"inputs '{seen[name]}' and '{path}' would both be written as '{name}': give them separately")
        seen[name] = path
    return [(path, name, path.lower().endswith(VIDEO_EXTENSIONS)) for path, name in items]


def output_paths(output_dir, name, args, is_video):
    """The files written for one input."""
    base = os.path.join(output_dir, name)
    if is_video:
        return [base + "_overlay.mp4"]
    paths = [base + ".png"]
    if args.overlay != "none":
        paths.append(base + ("_overlay.png" if args.overlay == "visualizer" else "_panel.png"))
    if args.probs:
        paths.append(base + "_probs.npy")
    return paths


def check_no_overwrite(inputs, input_args, output_dir, args):
    """Refuse an output folder equal to or inside an input folder, and any output path that is an input."""
    out = os.path.realpath(output_dir)
    for path in input_args:
        if os.path.isdir(path):
            folder = os.path.realpath(path)
            if out == folder or out.startswith(folder + os.sep):
                raise ValueError(f"--output '{output_dir}' is inside the input folder '{path}': choose another folder")
    input_files = {os.path.realpath(p) for p, _, _ in inputs}
    for _, name, is_video in inputs:
        for p in output_paths(output_dir, name, args, is_video):
            if os.path.realpath(p) in input_files:
                raise ValueError(f"output '{p}' would overwrite an input: choose another --output folder")


def metadata_for(cfg, dataset):
    """Class names and colours for drawing: those of ``dataset`` (default DATASETS.TEST[0], else
    DATASETS.TRAIN[0]; none: "class k" and segcls's default palette)."""
    name = dataset or next(iter(cfg.DATASETS.TEST or cfg.DATASETS.TRAIN), None)
    return drawing_metadata(MetadataCatalog.get(name) if name else None, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)


class ImageFiles(torchdata.Dataset):
    """Image paths -> test-mapped model inputs, or ``{"error": message}`` for an unreadable file."""

    def __init__(self, items, mapper):
        self.items = items
        self.mapper = mapper

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        path, name, _ = self.items[index]
        try:
            inp = self.mapper({"file_name": path})
        except ImageReadError as e:
            return {"file_name": path, "error": str(e)}
        inp["output_name"] = name
        return inp


def as_list(batch):
    return batch


def predict_grouped(predictor, inputs):
    """Predictions of ``inputs``, predicting images of the same size together."""
    groups = defaultdict(list)
    for i, inp in enumerate(inputs):
        groups[tuple(inp["image"].shape)].append(i)
    outputs = [None] * len(inputs)
    for indices in groups.values():
        for i, out in zip(indices, predictor.predict([inputs[i] for i in indices])):
            outputs[i] = out
    return outputs


def draw(image_rgb, pred, metadata, args):
    """The overlay (Visualizer) or side-by-side panel of one (H, W, 3) RGB image and its (H, W) prediction."""
    if args.overlay == "visualizer":
        return Visualizer(image_rgb, metadata).draw_sem_seg(pred, alpha=args.alpha).get_image()
    return segmentation_panel(image_rgb, [pred], metadata.stuff_classes, metadata.stuff_colors)


def write_image_outputs(predictor, inp, scores, metadata, args):
    pred = predicted_labels(scores).numpy()
    paths = output_paths(args.output, inp["output_name"], args, is_video=False)
    atomic_save_label_png(pred, paths[0], palette=metadata.stuff_colors)
    if args.overlay != "none":
        image = input_image_rgb(inp, predictor.input_format, (inp["height"], inp["width"]))
        atomic_save_image(draw(image, pred, metadata, args), paths[1])
    if args.probs:
        with atomic_write(paths[-1]) as f:
            np.save(f, predictor.probabilities(scores).numpy().astype(np.float16))


def predict_video(predictor, path, name, metadata, args):
    """Write ``<name>_overlay.mp4``: every frame drawn with its prediction. Returns the frame count
    (0 and a message if the video cannot be read)."""
    capture = cv2.VideoCapture(path)
    if not capture.isOpened():
        tqdm.write(f"skipping '{path}': cannot open the video", file=sys.stderr)
        return 0
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    count, writer = 0, None
    (out_path,) = output_paths(args.output, name, args, is_video=True)
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    try:
        with atomic_path(out_path, keep_extension=True) as tmp, tqdm(total=total, desc=os.path.basename(path), unit="frame") as progress:
            while True:
                frames = [f for f in (capture.read()[1] for _ in range(args.batch_size)) if f is not None]
                if not frames:
                    break
                inputs = [predictor.inputs(frame, image_format="BGR") for frame in frames]
                for frame, out in zip(frames, predict_grouped(predictor, inputs)):
                    drawn = draw(np.ascontiguousarray(frame[..., ::-1]), predicted_labels(out["sem_seg"]).numpy(), metadata, args)
                    if writer is None:
                        writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*"mp4v"), fps, drawn.shape[1::-1])
                    writer.write(np.ascontiguousarray(drawn[..., ::-1]))
                    count += 1
                progress.update(len(frames))
            if writer is not None:
                writer.release()
            if count == 0:
                raise ImageReadError(f"video '{path}' has no readable frames")
    except ImageReadError as e:
        tqdm.write(f"skipping: {e}", file=sys.stderr)
    finally:
        capture.release()
    return count


def main(argv=None):
    args = parse_args(argv)
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    cfg = load_config(args.config_file, args.opts)
    cfg.freeze()
    inputs = collect_inputs(args.input)
    check_no_overwrite(inputs, args.input, args.output, args)
    predictor = SemSegPredictor(cfg, weights=args.weights, ema=args.ema)
    metadata = metadata_for(cfg, args.dataset)

    images = [item for item in inputs if not item[2]]
    loader = torchdata.DataLoader(ImageFiles(images, predictor.mapper), batch_size=args.batch_size,
                                  num_workers=args.num_workers, collate_fn=as_list)
    written, skipped = 0, 0
    with tqdm(total=len(images), desc="images", unit="img", disable=not images) as progress:
        for batch in loader:
            good = []
            for inp in batch:
                if "error" in inp:
                    tqdm.write(f"skipping '{inp['file_name']}': {inp['error']}", file=sys.stderr)
                    skipped += 1
                else:
                    good.append(inp)
            for inp, out in zip(good, predict_grouped(predictor, good)):
                write_image_outputs(predictor, inp, out["sem_seg"], metadata, args)
                written += 1
            progress.update(len(batch))
    for path, name, is_video in inputs:
        if is_video:
            frames = predict_video(predictor, path, name, metadata, args)
            written += frames > 0
            skipped += frames == 0
    print(f"{written} written to {args.output}, {skipped} skipped", file=sys.stderr)
    return written, skipped


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    try:
        main()
    except (OSError, ValueError, KeyError, ImportError) as e:  # bad input: the message, not a traceback
        sys.exit(f"predict.py: error: {e.args[0] if isinstance(e, KeyError) else e}")
