"""One module per input format. Each exposes ``detect(path) -> bool`` and ``load(path, config) -> Scene``."""
