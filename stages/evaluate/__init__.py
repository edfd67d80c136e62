"""Stage 4b, evaluate: image, pose, depth and mask metrics, and the HTML report."""
