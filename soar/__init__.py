"""SOAR (Sundaram et al. 2026) as a small package: the thin notebooks of the DVC pipeline call
into these modules, which own all the logic (config, data, grading, rl, policy, sampling,
student, teacher, parallel, retrain, evaluation, analysis, plots, report, budget)."""

import warnings

# Executed notebooks are run records: tqdm.auto, imported by transformers, warns from a kernel
# without ipywidgets and the warning names its site-packages path. Our bars are plain tqdm.
warnings.filterwarnings("ignore", message="IProgress not found")
