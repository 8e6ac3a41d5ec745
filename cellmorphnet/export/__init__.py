"""Export a trained run to ONNX or CoreML, verify the export, and time it.

Both formats take the picture as the network saw it at training time: RGB at the run's input size,
after the run's centre crop and resizes (see ``record.InferencePolicy``). Normalisation is
folded into the exported model: ONNX takes float RGB in [0, 1] (NCHW) and returns class
probabilities; CoreML takes an image and returns the class label and probabilities.

The network as both formats take it is ``graph``; each format is a module of its own (``onnx``, ``coreml``).
"""

from cellmorphnet.export.coreml import (
    benchmark_coreml,
    coreml_can_predict,
    coreml_spec_summary,
    export_coreml,
)
from cellmorphnet.export.graph import SAME_PAD_TYPES, as_input, export_model, metadata, static_padding
from cellmorphnet.export.onnx import benchmark_onnx, export_onnx, verify_onnx

__all__ = ["SAME_PAD_TYPES", "as_input", "benchmark_coreml", "benchmark_onnx", "coreml_can_predict",
           "coreml_spec_summary", "export_coreml", "export_model", "export_onnx", "metadata", "static_padding",
           "verify_onnx"]  # fmt: skip
