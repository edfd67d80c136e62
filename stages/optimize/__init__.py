"""Stage 3, optimize: deformable 4D Gaussians fitted to the training frames (gsplat on CUDA, PyTorch on CPU)."""
