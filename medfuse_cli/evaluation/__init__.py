"""The core of ``medfuse evaluate``, one job per module.

- ``methods``: what to score: the fusers to run, the folders of other tools' images, the metrics;
- ``scoring``: every method's fused Y planes on every pair set, scored image by image;
- ``tables``: results as text: values, directions, Markdown, CSV and the JSON document;
- ``reports``: the tables ``--out`` writes; ``files``: writing them (atomic, ``--overwrite``,
  removed again when the run fails);
- ``plots``: the papers' figures for ``--plot``;
- ``report_folder``: the HTML report ``--report`` writes, from ``report_images`` (where each
  image goes, written on a ``background`` thread while scoring goes on), ``gallery`` (which
  pairs, which region magnified), ``provenance`` (how it was made) and ``html_report`` (the page).

Pair sets and other tools' fused images are found by ``medfuse_cli.pairs``.
"""
