"""The analysis CLI behind ``python -m app.analyze``: configs, image sources, scoring, runs, reports."""
