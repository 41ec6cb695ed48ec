"""The model repository (layout, config, versions, control modes), model versions and the onnxruntime runtime."""
