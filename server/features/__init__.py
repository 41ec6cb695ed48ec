"""The feature stage (raw inputs -> compiled kernel -> model tensor) and the served-feature log."""
