#!/usr/bin/env python
"""
CAR Fig. 5: the pixel-relation map of a trained model -- dot-product similarity between one chosen
pixel's regularized feature and every pixel's, overlaid on the image, next to the prediction.

    python tools/car_pixel_relation.py --config-file configs/car/pascal_context_59/nonlocal_r50_car.yaml \\
        --dataset pascal_context_59_sem_seg_val --index 12 --pixel 200 150 --output relation.png \\
        MODEL.WEIGHTS model_final.pth

``--pixel ROW COL`` is in original-image coordinates (default: the image center); it is marked
with a red dot. Hotter = more similar; the map is min-max scaled per image for display.
"""
import argparse
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from detectron2.data import MetadataCatalog  # noqa: E402
from detectron2.data.detection_utils import read_image  # noqa: E402
from detectron2.modeling.postprocessing import sem_seg_postprocess  # noqa: E402

import segcls  # noqa: E402,F401  (registers datasets and modules)
from segcls.analysis.car import car_view, dataset_inputs, head_outputs, load_model, pixel_relation  # noqa: E402
from segcls.engine import load_config  # noqa: E402
from segcls.modeling.layers import resize  # noqa: E402
from segcls.utils.visualization import colorize_labels  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, help="the model's config")
    parser.add_argument("--dataset", required=True, help="registered dataset split, e.g. pascal_context_59_sem_seg_val")
    parser.add_argument("--output", required=True, help="PNG path")
    parser.add_argument("--index", type=int, default=0, help="image index in the split")
    parser.add_argument("--pixel", type=int, nargs=2, metavar=("ROW", "COL"), help="pixel in the original image")
    parser.add_argument("--feature-key", default="", help="head output to analyse (default MODEL.CAR.FEATURE_KEYS[0])")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, e.g. MODEL.WEIGHTS model_final.pth")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = load_config(args.config_file, args.opts)
    if args.feature_key:
        cfg.MODEL.CAR.FEATURE_KEYS = [args.feature_key]
    model, car = load_model(cfg), car_view(cfg)
    (inputs,) = dataset_inputs(cfg, args.dataset, [args.index])
    height, width = inputs["height"], inputs["width"]
    row, col = args.pixel if args.pixel else (height // 2, width // 2)
    if not (0 <= row < height and 0 <= col < width):
        raise ValueError(f"--pixel {row} {col} is outside the {height}x{width} image")
    outputs, images, _ = head_outputs(model, [inputs])
    feature = outputs.reg_feature(car.feature_keys[0])[0].double()
    image_size, padded = images.image_sizes[0], images.tensor.shape[-2:]
    # The chosen pixel in the (possibly test-resized) network input.
    in_row, in_col = row * image_size[0] // height, col * image_size[1] // width
    relation = pixel_relation(feature, padded, in_row, in_col)
    # On the original image, as the model's inference output: resize to the padded input, crop, resize.
    relation = sem_seg_postprocess(resize(relation[None, None], padded, model.inferencer.align_corners)[0], image_size, height, width)[0]
    relation = relation.numpy()
    shown = (relation - relation.min()) / max(float(relation.max() - relation.min()), 1e-12)
    logits = sem_seg_postprocess(resize(outputs.logits, padded, model.inferencer.align_corners)[0], image_size, height, width)
    prediction = logits.argmax(0).numpy()
    image = read_image(inputs["file_name"], format="RGB")
    colors = getattr(MetadataCatalog.get(args.dataset), "stuff_colors", None)
    fig, axes = plt.subplots(1, 3, figsize=(15, 5 * height / width + 0.5))
    for ax, title in zip(axes, ("image", f"relation to pixel ({row}, {col})", "prediction")):
        ax.set_title(title)
        ax.axis("off")
    axes[0].imshow(image)
    axes[1].imshow(image)
    axes[1].imshow(shown, cmap="jet", alpha=0.5)
    axes[2].imshow(colorize_labels(prediction, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, colors))
    for ax in axes[:2]:
        ax.plot([col], [row], "o", color="red", markersize=6)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    fig.savefig(args.output, dpi=120)
    plt.close(fig)
    print(f"wrote {args.output}")
    return relation


if __name__ == "__main__":
    main(sys.argv[1:])
