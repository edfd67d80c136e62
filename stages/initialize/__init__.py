"""Stage 2, initialize: static and dynamic Gaussians from the geometry stage's point clouds."""
