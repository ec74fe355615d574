"""Upload limits of `poisonlab serve` (no heavy imports: the CLI reads the defaults)."""

from dataclasses import dataclass


@dataclass
class Limits:
    max_upload_bytes: int = 200 << 20   # the whole request
    max_files: int = 5000               # images in one job
    max_file_bytes: int = 25 << 20      # one image, uncompressed
    max_total_bytes: int = 1 << 30      # all images, uncompressed
    max_ratio: int = 200                # uncompressed / compressed size of a zip member
    max_pixels: int = 4096 * 4096       # one image's width x height
