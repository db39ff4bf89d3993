"""The inference service: loads TensorFlow frozen graphs, runs them and times them."""
