"""One script per paper artefact; each keeps only its grid and its report layout.

Run them as scripts (``python experiments/mask_sweep.py --dataset ravdess``) or through the
``make`` targets; shared flags live in :mod:`experiments.base`, the Tables II/III engine in
:mod:`experiments.method_table`.
"""
