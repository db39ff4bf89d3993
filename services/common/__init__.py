"""What the three services share: configuration, logging, server bootstrap, tensors, errors."""
