"""Running many images: the per-image job that every engine shares, the journal, the engines."""
