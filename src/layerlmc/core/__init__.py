"""The core: pure functions and data of the method, on state dicts and records (torch only).

- :mod:`.groups`: layer groups (``LayerGroup``) and the grouping schemes;
- :mod:`.checkpoints`: loading and saving without unpickling code, and the folder loaders;
- :mod:`.paths`: paths, points and interpolation; :mod:`.plan`: which paths a study needs;
- :mod:`.barriers`: barriers from point records; :mod:`.records`: run folders and their schema;
- :mod:`.averaging`: weighted averages of named tensors; :mod:`.runs`: checkpoint layouts;
- :mod:`.options`: option objects taken as flat keywords.

Nothing here imports an evaluator, an analysis, a plot or an adapter (docs/design.md §2).
"""
