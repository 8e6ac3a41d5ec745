"""Predict over files and folders with a trained run, rebuilding its exact preprocessing.

The inference policy (how a full-size image becomes what the network saw in training) is derived from
the preprocessing of the run's first dataset and the framing and colours measured on its training
images, and stored in the run record at training time (``record.InferencePolicy``):

1. a square crop around the white cell found in the image, at the scale the training images show their
   cells, or the training data's centre square (``images``);
2. bicubic resizes through ``resize_chain``, exactly as prepare made the training arrays (``images``);
3. the set's stain normalised to the training images' and its stain contrast matched to theirs for the
   cell types the model sees, or optionally its colours matched (``adaptation``); they need at least
   ``MIN_COLOUR_SET`` images with a nucleus, and each prediction records which was applied;
4. the evaluation transform of training, the model (optionally adapted: AdaBN) and the run's
   temperature, averaged over views (``predict``).

``prepare.prepare_set`` does steps 1 to 3 for a whole set; ``infer``, ``eval --on``, the Python API and
``serve`` all go through it. ``options.inference_options`` resolves the user's choices in one place.
"""

from cellmorphnet.inference.adaptation import (
    ADAPT_BN_MAX_IMAGES,
    CONTRAST_MAX_IMAGES,
    CONTRAST_ROUNDS,
    DEFAULT_ADAPT_BN,
    DEFAULT_COLOUR_MATCH,
    DEFAULT_STAIN_CONTRAST,
    DEFAULT_STAIN_NORM,
    MIN_COLOUR_SET,
    Survey,
    adapt_batch_norm,
    contrast_sample,
    settle_contrast,
    survey_files,
)
from cellmorphnet.inference.cells import CELL_MODES, ImageInfo, find_cells
from cellmorphnet.inference.images import (
    DEFAULT_SCALE_VIEWS,
    SCALE_VIEWS,
    CellItem,
    Item,
    Upload,
    collect_files,
    crop_box,
    crop_sides,
    preprocess,
    read_error,
    read_image,
    single_view,
)
from cellmorphnet.inference.options import DEFAULT_TTA, InferenceOptions, LabSet, inference_options
from cellmorphnet.inference.output import check_results_path, sort_into, write_results
from cellmorphnet.inference.predict import (
    COLOUR_DISTANCE_WARN,
    ORIENTATIONS_PER_SCALE,
    Prediction,
    class_probs,
    in_file_order,
    judged,
    predict_files,
    to_prediction,
)
from cellmorphnet.inference.prepare import Framing, Loaded, load, load_all, prepare_set

__all__ = [
    "ADAPT_BN_MAX_IMAGES", "COLOUR_DISTANCE_WARN", "CONTRAST_MAX_IMAGES", "CONTRAST_ROUNDS", "DEFAULT_ADAPT_BN",
    "DEFAULT_COLOUR_MATCH", "DEFAULT_SCALE_VIEWS", "DEFAULT_STAIN_CONTRAST", "DEFAULT_STAIN_NORM", "DEFAULT_TTA",
    "CELL_MODES", "MIN_COLOUR_SET", "ORIENTATIONS_PER_SCALE", "SCALE_VIEWS", "CellItem", "Framing", "ImageInfo",
    "InferenceOptions", "Item", "LabSet", "Loaded", "find_cells", "in_file_order", "judged",
    "Prediction", "Survey", "Upload", "adapt_batch_norm", "check_results_path", "class_probs", "collect_files",
    "contrast_sample", "crop_box", "crop_sides", "inference_options", "load", "load_all", "predict_files",
    "prepare_set", "preprocess", "read_error", "read_image", "settle_contrast", "single_view", "sort_into",
    "survey_files", "to_prediction", "write_results",
]  # fmt: skip
