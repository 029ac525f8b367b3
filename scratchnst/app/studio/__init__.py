"""The web studio (`scratchnst serve`): a local page where a picture forms, its HTTP API, its runs.

    server.py   the HTTP app (tornado): the page, the API, what it asks of Dask
    inputs.py   what the studio accepts: a run's options, an uploaded image, the limits
    runs.py     the data folder: the images, one folder per run, its recorded state
    task.py     what runs on a Dask worker: one run, the study panel of its picture
    static/     the page: index.html, studio.js, studio.css (no build step, no CDN)
"""
