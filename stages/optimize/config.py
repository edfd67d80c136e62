"""Config section ``optimize``.

Defaults follow gsplat 1.5.3's ``simple_trainer.py`` for the per-Gaussian learning rates and densification, scaled to
the shorter schedules a dynamic scene needs; ``docs/gaussians.md`` explains each group.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config import option

DEFORMATIONS = ("bases", "rigid", "mlp", "planes", "planes_bases", "mlp_bases", "rigid_bases", "none")
HYBRIDS = tuple(kind for kind in DEFORMATIONS if kind.endswith("_bases"))   # a shared model + per-Gaussian bases


@dataclass
class OptimizeConfig:
    """Optimize stage: fit deformable 4D Gaussians to the training frames."""

    iterations: int = option(3000, "Optimization steps.")
    backend: str = option("auto", "Rasterizer: 'gsplat' (CUDA), 'torch' (pure PyTorch, any device) or 'auto' "
                          "(gsplat where CUDA is available).", choices=("auto", "gsplat", "torch"))
    rasterize_mode: str = option("classic", "'classic' (3DGS) or 'antialiased' (Mip-Splatting's 2D filter: each "
                                 "Gaussian's opacity times sqrt(det S / det(S + 0.3 I)) of its screen covariance "
                                 "S, gsplat's rasterize_mode). The model keeps it: its test views, videos and "
                                 "metrics use it too. The exported PLYs hold the raw opacities, which 3DGS viewers "
                                 "draw classic.", choices=("classic", "antialiased"))
    # --- model ---
    deformation: str = option("bases", "Motion of the dynamic Gaussians: 'bases' (explicit: per-Gaussian "
                              "coefficients of shared learned B-spline motion bases), 'rigid' (explicit: a "
                              "per-Gaussian blend of shared learned rigid motions, SE(3) bases), 'mlp' (neural field: "
                              "positional-encoded MLP over (x, t)), 'planes' (neural field: multi-resolution "
                              "space-time planes + small MLP head), 'planes_bases' (both summed: the planes "
                              "field shared by all Gaussians plus per-Gaussian motion-bases coefficients, held "
                              "small by residual_lambda), 'mlp_bases' (the mlp field plus per-Gaussian motion-bases "
                              "coefficients, likewise), 'rigid_bases' (the rigid motions plus per-Gaussian "
                              "motion-bases coefficients, likewise), or 'none' (static 3DGS baseline: nothing "
                              "moves).",
                              choices=DEFORMATIONS)
    sh_degree: int = option(3, "Maximum spherical-harmonic degree of the colours (0-3).")
    sh_degree_interval: int = option(500, "Add one SH band every this many steps (until sh_degree).")
    temporal_opacity: bool = option(True, "Dynamic Gaussians fade in and out around a learned time centre (a "
                                    "Gaussian in time, initialised at the time the point was seen).")
    temporal_opacity_init: float = option(2.0, "Initial temporal standard deviation of dynamic Gaussians, in units "
                                          "of the median gap between training times.")
    temporal_width_floor: float = option(0.0, "Lower bound on the temporal-opacity width of dynamic Gaussians, in "
                                         "median gaps between training times, reached at temporal_widen_until and "
                                         "raised linearly from temporal_opacity_init after temporal_widen_from (a "
                                         "coarse-to-fine widening: each Gaussian must then follow the motion, and is "
                                         "seen from more training views, over a longer span); 0 = off.")
    temporal_widen_from: int = option(1000, "Step where the temporal width floor starts to rise.")
    temporal_widen_until: int = option(5000, "Step where the temporal width floor reaches temporal_width_floor.")
    time_jitter: float = option(0.0, "Standard deviation of a random offset added to each training view's render "
                                "time, in median gaps between training times, falling linearly to 0 at "
                                "time_jitter_until (annealed smooth training, as in Deformable-3DGS: a view must "
                                "also be drawn a little before and after its time, which smooths the motion between "
                                "training times); 0 = off. Render times stay within the training times' range.")
    time_jitter_until: int = option(0, "Step where the time jitter reaches 0 (0 = the last step).")
    deform_opacity: bool = option(False, "The deformation also offsets the opacity logit.")
    bases_count: int = option(12, "bases: number of shared motion bases.")
    bases_knots: int = option(16, "bases, rigid: B-spline control points per basis over t in [0, 1].")
    rigid_count: int = option(32, "rigid: number of shared rigid motions (pivots at k-means centres of the dynamic "
                              "Gaussians; on object scenes 32 beat 16 and 64).")
    mlp_width: int = option(128, "mlp, mlp_bases: hidden width.")
    mlp_depth: int = option(4, "mlp, mlp_bases: hidden layers.")
    mlp_position_frequencies: int = option(8, "mlp, mlp_bases: positional-encoding octaves of x (normalised to the "
                                           "dynamic points' bounding box).")
    mlp_time_frequencies: int = option(6, "mlp, mlp_bases: positional-encoding octaves of t.")
    mlp_bf16: bool = option(False, "mlp, mlp_bases: on CUDA, run the hidden layers in bfloat16 (autocast; float32 "
                            "accumulation), the encoding and the output layer in float32. Halves the memory "
                            "traffic of the network's activations; a training-time setting, not saved with the "
                            "model (renders after training evaluate it in float32).")
    planes_resolution: list[int] = option([32, 64], "planes: spatial resolutions of the multi-resolution planes.")
    planes_time_resolution: int = option(0, "planes: time resolution (0 = half the number of distinct training "
                                         "times, at least 4).")
    planes_level_time_resolution: list[int] = option([], "planes: one time resolution per level of "
                                                     "planes_resolution, in its order, instead of "
                                                     "planes_time_resolution for all (e.g. a coarse level coarse "
                                                     "in time, a fine level finer); [] = off.")
    planes_features: int = option(16, "planes: feature channels per plane.")
    planes_head_width: int = option(64, "planes: hidden width of the MLP head.")
    field_embedding: int = option(0, "mlp/planes: channels of a learned per-Gaussian latent code that the field "
                                  "reads beside (x, t) (per-Gaussian embeddings, as in E-D3DGS), so that nearby "
                                  "Gaussians may move differently; zero-initialised; 0 = off.")
    field_anchor_time: bool = option(False, "mlp/planes: the field also reads each Gaussian's anchor time t_a (the "
                                     "time it was seen), so that its displacement g(x, t_a, t) - g(x, t_a, t_a) is "
                                     "a flow map from t_a (Lagrangian) rather than the time integral of one "
                                     "velocity field at a fixed point (Eulerian; exact to first order only). "
                                     "mlp: PE(t_a) is an input; planes: four more planes per level, (x, t_a), "
                                     "(y, t_a), (z, t_a) and (t, t_a), starting at one. End to end on object "
                                     "scenes it lost 0.2-1.4 dB (docs/gaussians.md, seventeenth session).")
    # --- losses ---
    ssim_lambda: float = option(0.2, "Weight of D-SSIM: loss = (1 - w) L1 + w (1 - SSIM).")
    depth_lambda: float = option(0.0, "Weight of the scale-and-shift-invariant L1 depth loss against the geometry "
                                 "stage's depth of the training frames (0 = off).")
    motion_lambda: float = option(0.01, "Weight of the motion smoothness regulariser (squared acceleration of "
                                  "dynamic Gaussians, in units of the scene scale per squared frame gap).")
    motion_every: int = option(1, "Compute the motion regulariser (with the deformation's own: the planes' total "
                               "variation) every this many steps only, weighted this many times as much: the same "
                               "penalty on average, on a random sample of dynamic Gaussians as every step's, for "
                               "fewer operators per step on average (a GPU step is bound by the host). The log's "
                               "motion column is the unweighted value, 0 on the steps without it. On an H200, "
                               "planes_bases with 2: 8 % less training time than 1 on the same host (117.6 against "
                               "128.4 s, object seed 10) and 0.11 dB less on seeds 0-3, 0.5 on seed 10 "
                               "(docs/gaussians.md, thirty-seventh session).")
    motion_parts: str = option("all", "Whose motion the motion regulariser penalises in the hybrids (planes_bases, "
                               "mlp_bases, rigid_bases): 'all' (the summed offsets) or 'coefficients' (only the "
                               "part the per-Gaussian motion-bases coefficients make), which skips the second "
                               "evaluation of the shared field per step (planes_bases: 482 operators against "
                               "637, before shared_motion). On an H200, planes_bases on object seeds 0-3: "
                               "25.80 dB against 25.96 with 'all', 4-11 % faster (the CPU stand-in had the same "
                               "quality; docs/gaussians.md, thirty-fifth and thirty-sixth sessions). mlp_bases "
                               "and rigid_bases have no other regulariser on their shared part, which then "
                               "moves unregularised. Other models regularise all their motion either way.",
                               choices=("all", "coefficients"))
    shared_motion: str = option("cuda", "Whether the motion regulariser's second differences come from the same "
                                "evaluation of the deformation as the step's first render (one call of a field "
                                "over both sets of rows instead of two: 79 fewer kernels per planes_bases step, "
                                "which matters where launches bound a step) or from a call of their own. 'cuda': "
                                "on a GPU only (on the CPU the one larger call made a step 7 % slower); "
                                "'always'; 'never'. The same values either way; the random draws' order differs. "
                                "Fields and hybrids only (the spline models compute the two apart anyway); not with "
                                "motion_parts 'coefficients' (docs/gaussians.md, \"The cost of a training step\").",
                                choices=("cuda", "always", "never"))
    rigidity_lambda: float = option(0.0, "Weight of the local rigidity regulariser: distances between a dynamic "
                                    "Gaussian and its rigidity_neighbors nearest neighbours of the same time slice "
                                    "keep their canonical values at other times (relative squared stretch).")
    rigidity_neighbors: int = option(6, "Neighbours per dynamic Gaussian for the rigidity regulariser.")
    coherence_lambda: float = option(0.0, "Weight of the motion-coherence regulariser: at each step's render time, "
                                     "up to 2048 dynamic Gaussians drawn from those within two temporal widths of "
                                     "it, each with its coherence_neighbors nearest such Gaussians there of any "
                                     "anchor time (so per-time copies of one part are coupled, where rigidity "
                                     "couples only Gaussians of one copy), pay the squared difference of their "
                                     "velocities over one frame gap, weighted by a Gaussian of their distance and "
                                     "relative to the mean squared velocity (scale-free); 0 = off. Added to the "
                                     "loss; not a column of log.csv. On object scenes it lost at every weight "
                                     "tried, 0.001-1 (docs/gaussians.md, thirtieth session).")
    coherence_neighbors: int = option(8, "Neighbours per sampled dynamic Gaussian for the coherence regulariser.")
    scale_lambda: float = option(0.01, "Weight of the scale regulariser (anisotropy beyond max_anisotropy).")
    residual_lambda: float = option(0.0, "planes_bases, mlp_bases, rigid_bases: weight of the mean squared "
                                    "displacement that the dynamic Gaussians get from their own motion-bases "
                                    "coefficients (up "
                                    "to 4096 of them per step, at random times; positions in units of the scene "
                                    "scale), so that the shared part carries the motion it can and the "
                                    "coefficients only the rest; 0 = off. Added to the loss; not a column of log.csv.")
    opacity_lambda: float = option(0.0, "Weight of the opacity regulariser: the mean opacity (post-sigmoid) of all "
                                   "Gaussians (3DGS-MCMC's L1 on opacity): Gaussians that no view needs fade and "
                                   "are pruned. Added to the loss; not a column of log.csv.")
    opacity_weighting: str = option("auto", "Whose opacity the opacity regulariser's mean weighs fully: 'all' (every "
                                    "Gaussian, every step) or 'time' (a dynamic Gaussian by its temporal window at "
                                    "the step's render times, detached; static ones fully), so that a moving copy "
                                    "feels the pull about as often as the views that can hold it up, whatever the "
                                    "number of training times; 'auto': 'time' for scenes with opacity_time_from "
                                    "or more distinct training times, else 'all' (the run's log and the optimize "
                                    "stage's summary name the choice).", choices=("all", "time", "auto"))
    opacity_time_from: int = option(64, "opacity_weighting 'auto': the number of distinct training times from which "
                                    "the regulariser is time-weighted. Measured with the dnerf preset "
                                    "(docs/gaussians.md): 'all' is better at 50 times, 'time' at 64 and 75 (CPU "
                                    "stand-ins) and at 100 (GPU, by 4 dB).")
    alpha_lambda: float = option(0.0, "Weight of the mask loss on RGBA scenes: the mean absolute difference of the "
                                 "rendered alpha and the dataset's alpha (object masks). Views without alpha skip "
                                 "it. Added to the loss; not a column of log.csv.")
    silhouette_lambda: float = option(0.0, "Weight of the silhouette loss on RGBA scenes: the dynamic Gaussians "
                                      "at a view's time (which ones: silhouette_source) pay their squared "
                                      "distance (in image widths) outside the view's object mask, weighted by their "
                                      "opacity there - a pull on the moving Gaussians from anywhere (off the image "
                                      "too), where the photometric loss pulls only within a Gaussian's footprint. "
                                      "Views without alpha skip it. On in the dnerf preset (thirty-third to "
                                      "thirty-fifth sessions; docs/gaussians.md). Not a column of log.csv.")
    silhouette_views: int = option(1, "Training views whose masks the silhouette loss reads per step: the step's "
                                   "own view and silhouette_views - 1 other views drawn at random (with the frame "
                                   "sampler's generator, so the frame order differs from a run with 1), each at "
                                   "its own time and camera (no render: a projection per view); the loss is their "
                                   "mean. Each other view samples (up to 4096 Gaussians within two temporal widths "
                                   "of its time, carried there) and adds a host synchronisation: on an H200 four "
                                   "views, all sampled then, took 2.2x the training time for the same held-out "
                                   "PSNR (docs/gaussians.md).")
    silhouette_source: str = option("render", "Which Gaussians the silhouette loss reads at the step's own view: "
                                    "'render' (every dynamic Gaussian the render carried to its time, weighted by "
                                    "its opacity there, as rendered: DropGaussian's factors and a deformed opacity "
                                    "included; with skip_invisible off, as under cuda_graphs, every dynamic "
                                    "Gaussian, the far ones weighted near zero. No second deformation and no host "
                                    "synchronisation) or 'sample' (up to 4096 drawn from the dynamic Gaussians "
                                    "within two temporal widths of the render time, carried to it once more). On "
                                    "an H200 'render' gave 25.33 dB on object seeds 0-3 against 25.01 and trained "
                                    "lone in 80 s against 109 s (docs/gaussians.md, thirty-fifth session). Other "
                                    "views (silhouette_views) always sample.", choices=("sample", "render"))
    drop_rate: float = option(0.0, "Largest fraction of Gaussians left out of each training render "
                              "(DropGaussian, a regulariser for Gaussians seen by few views): the fraction rises "
                              "linearly from 0 at step 0 to this at the last step, and the kept Gaussians' "
                              "opacities are divided by (1 - fraction) so that a render stays as opaque on "
                              "average; test renders, videos and exports keep every Gaussian; 0 = off.")
    drop_unit: str = option("gaussian", "What drop_rate leaves out: 'gaussian' (each Gaussian on its own) or 'copy' "
                            "(the dynamic Gaussians by the training time they were seen: a whole per-time copy of "
                            "the moving parts at once, so that each copy must draw them without the others; static "
                            "Gaussians are never left out).", choices=("gaussian", "copy"))
    max_anisotropy: float = option(10.0, "Largest ratio of a Gaussian's largest to smallest scale before the scale "
                                   "regulariser applies.")
    background: str = option("auto", "Render background: 'auto' (the scene's), 'white', 'black', or 'random' "
                             "(RGBA scenes: a random colour per step, with the ground truth composited on it).",
                             choices=("auto", "white", "black", "random"))
    # --- batches ---
    batch_size: int = option(1, "Training frames rendered per step.")
    # --- densification (gsplat DefaultStrategy, with the opacity reset actually happening) ---
    densify: bool = option(True, "Grow (duplicate/split) and prune Gaussians with gsplat's DefaultStrategy.")
    refine_start: int = option(500, "Densify from this step.")
    refine_stop: int = option(2000, "Densify and reset opacities until this step.")
    refine_every: int = option(100, "Densify every this many steps.")
    reset_every: int = option(1000, "Clamp every opacity to 2 x prune_opacity every this many steps (0 = never).")
    grow_grad2d: float = option(0.0002, "Grow Gaussians whose mean screen-space gradient exceeds this.")
    grow_scale3d: float = option(0.01, "Duplicate (below) or split (above) at this scale, x scene scale.")
    prune_opacity: float = option(0.005, "Prune Gaussians whose opacity falls below this.")
    prune_scale3d: float = option(0.1, "After the first reset, prune Gaussians larger than this x scene scale.")
    absgrad: bool = option(False, "Use absolute screen-space gradients (AbsGS); then raise grow_grad2d ~3x.")
    max_gaussians: int = option(0, "Stop growing once there are this many Gaussians (0 = no cap).")
    # --- learning rates (Adam) ---
    lr_means: float = option(1.6e-4, "Learning rate of positions, x scene scale; decays exponentially to "
                             "lr_final_factor of it.")
    lr_scales: float = option(5e-3, "Learning rate of log-scales.")
    lr_opacities: float = option(5e-2, "Learning rate of opacity logits.")
    lr_quats: float = option(1e-3, "Learning rate of rotations (raw quaternions).")
    lr_sh0: float = option(2.5e-3, "Learning rate of the SH DC terms.")
    lr_shN: float = option(1.25e-4, "Learning rate of the higher SH bands.")
    lr_time: float = option(1e-3, "Learning rate of the temporal-opacity centres and log-widths.")
    lr_motion: float = option(8e-4, "bases: learning rate of the per-Gaussian motion coefficients, x scene "
                              "scale; decays like the positions (CPU object scene: 8e-4 beat 1.6e-4 and 4e-3).")
    lr_bases: float = option(1e-3, "bases: learning rate of the shared basis curves.")
    lr_rigid: float = option(1e-2, "rigid: learning rate of the rigid motions' control points (rotation vectors in "
                             "radians, shifts in half sizes of the dynamic points' box); decays like the positions.")
    lr_rigid_weights: float = option(1e-2, "rigid: learning rate of the per-Gaussian blending logits.")
    lr_field: float = option(1e-3, "mlp/planes: learning rate of the network; decays like the positions.")
    lr_field_embedding: float = option(1e-3, "mlp/planes: learning rate of the per-Gaussian latent codes "
                                       "(field_embedding); decays like the positions.")
    lr_planes: float = option(1e-2, "planes: learning rate of the plane features; decays like the positions.")
    lr_final_factor: float = option(0.01, "Decayed learning rates end at this fraction of their start.")
    deform_warmup: int = option(0, "Steps at the start where the deformation is frozen (a static warm-up).")
    # --- cameras ---
    refine_cameras: bool = option(False, "Also optimise a pose correction per training camera (for "
                                  "model-predicted cameras).")
    lr_cameras: float = option(1e-4, "Learning rate of the camera pose corrections (radians / scene units).")
    cpu_threads: int = option(1, "Torch threads while training on a CPU (0 = leave torch's setting). One thread: a "
                              "step is many small kernels, and on a 2-core machine shared with other work two "
                              "OpenMP threads were measured up to 10x slower than one.")
    tf32: bool = option(True, "On CUDA, let float32 matrix products (the mlp/planes deformation networks) use TF32 "
                        "tensor cores: 10-bit mantissa, about 2x faster mlp steps on an H100/H200.")
    compile: str = option("never", "torch.compile the deformation and the losses during training: 'always', "
                          "'never', or 'cuda' (when training on a GPU). Fewer, fused kernels and less Python per "
                          "step (a step at 100k Gaussians is bound by the host on an H100/H200: see "
                          "docs/gaussians.md); costs a one-off compilation at the first steps and a second one when "
                          "sizes first change (the Gaussian count, the visible set), after which the graphs are "
                          "dynamic in them. Same losses and gradients as eager up to float rounding.",
                          choices=("never", "always", "cuda"))
    photometric_graphs: str = option("cuda", "Replay the photometric loss (L1 + D-SSIM, whose shapes never "
                                     "change) as CUDA graphs recorded once per image size and position in the "
                                     "step's batch (torch.cuda.make_graphed_callables; the same kernels as eager, no "
                                     "compiler): 'cuda' on a GPU, or 'never'. About 60 kernel launches fewer per "
                                     "step, which bound a step on an H200: the 100-frame scene 97.3 s against "
                                     "116.3 s eager on one host, the speed setting's bases 176.6 against 147.7 it/s "
                                     "(bench/sweeps/scene_setup42.txt, gpu_tests42.txt). Images above a megapixel "
                                     "run eagerly (each graph pair keeps the loss's memory for the run). With "
                                     "`compile` on the same device the compiled loss is used instead.",
                                     choices=("never", "cuda"))
    rigid_fused_tables: bool = option(True, "rigid / rigid_bases, training on a GPU: compute the K motions' maps "
                                      "with torch.compile (`compile_backend`), a few fused kernels instead of a few "
                                      "hundred launches per step on tables of (anchor times x motions), at the "
                                      "first steps (compiled twice: once, then dynamic in the anchor-time count). "
                                      "Same values as eager up to float rounding. Off: eager.")
    rigid_fused_all: bool = option(False, "With `rigid_fused_tables`: also compile the visible Gaussians' whole "
                                   "displacement and the motion regulariser. About 40 % less time per step on an "
                                   "H200 (14 against 21-27 ms, object scene, rigid), about a minute more "
                                   "compilation on a fresh host: 29 s behind after 3000 steps, about level by the "
                                   "dnerf preset's 8000 (projected, not measured), ahead in longer runs "
                                   "(docs/gaussians.md, thirty-third session).")
    skip_invisible: bool = option(True, "Deform only the dynamic Gaussians whose opacity at the render time is at "
                                  "least 1/255: the rasterizer culls the others wherever they are, so renders and "
                                  "gradients are the same for less work (one host synchronisation per render). "
                                  "Needs temporal opacity and no opacity deformation; off: deform all (for "
                                  "comparison).")
    cuda_graphs: bool = option(False, "With `compile` on a GPU, replay the compiled parts of a step as CUDA graphs "
                               "(torch.compile mode 'reduce-overhead'): launches without Python, which is what "
                               "bounds a step at 100k Gaussians on an H200 (docs/gaussians.md). Graphs replay "
                               "fixed sizes, so every dynamic Gaussian is deformed (`skip_invisible` does not "
                               "apply; padding the visible set to a ladder of sizes instead measured slower: 211 "
                               "against 131 s eager on the 100-frame scene); a new graph is recorded whenever the "
                               "Gaussian count changes (densification). Needs `compile` 'always' or 'cuda' and the "
                               "'inductor' backend; training on a CPU runs without graphs.")
    lean_adam: bool = option(True, "Step Adam through stages.optimize.fused_adam.LeanFusedAdam: the same fused "
                             "kernels and updates, bit for bit, as torch.optim.Adam(fused=True), without its "
                             "per-group Python (on a GPU the step is bound by the host) and without importing the "
                             "compiler; off: torch's fused Adam (for comparison). On a CPU too: the fused kernel "
                             "steps 40k Gaussians' groups in 1.5 ms against torch.optim.Adam's default 11.4 ms "
                             "(bench/adam_cpu_bench.py).")
    compile_backend: str = option("inductor", "torch.compile backend for `compile`, `rigid_fused_tables` and "
                                  "`rigid_fused_all` "
                                  "('inductor'; the tests use 'aot_eager', which checks the traced graphs without "
                                  "generating code).")
    # --- bookkeeping ---
    checkpoint_every: int = option(1000, "Write a resumable checkpoint every this many steps (0 = only at the end).")
    keep_checkpoints: int = option(2, "Keep this many most recent checkpoints.")
    log_every: int = option(20, "Flush the log (and check for NaN or an exploding loss) every this many steps.")
    explode_factor: float = option(20.0, "A loss above this x its running mean counts as exploding: the last good "
                                   "state is restored.")
