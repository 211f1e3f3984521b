"""The core of ``medfuse evaluate``, one job per module.

- ``methods``: what to score: the fusers to run, the folders of other tools' images, the metrics;
- ``scoring``: every method's fused Y planes on every pair set, scored image by image;
- ``tables``: results as text: values, directions, Markdown, CSV and the JSON document;
- ``reports``: the files ``--out`` writes;
- ``plots``: the papers' figures for ``--plot`` (matplotlib, an optional extra).

Pair sets and other tools' fused images are found by ``medfuse_cli.pairs``.
"""
