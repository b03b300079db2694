"""PruneLens app: the model runtime (``app.runtime``), the comparison behind the page and its API
(``compare``, ``handlers``, ``sessions``), the page (``ui``), start-up (``launch``, ``preflight``),
calibration (``calibrate``) and the analysis CLI (``analysis``, ``analyze``). Importing it is light:
each part imports what it needs when it is imported."""
