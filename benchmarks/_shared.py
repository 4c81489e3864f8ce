"""What the benchmark scripts share: where the shared Flowers-102 copy lives."""

from pathlib import Path

# ../shared/data/flowers102 beside the repository: train/ (6552) and valid/ (818) images
DEFAULT_DATA = (
    Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "flowers102"
).resolve()
