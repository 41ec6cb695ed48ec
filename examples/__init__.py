"""Example and test model repositories (``skewless examples``): generated ONNX models, not server code."""
