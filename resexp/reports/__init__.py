"""What is written about runs once they have trained:

    run.py            the run report every finished run writes next to its checkpoints
    sweep.py          the sweep report over many runs (when a sweep ends; `python -m resexp.report`)
    figures.py, metrics.py, export.py   the run report's plots, per-class numbers and safetensors export

(A network's layer table, model_summary.txt and `python -m resexp.summary`, is resexp/models/layer_table.py.)
Nothing here is imported at package level: the sweep callback imports sweep.py at Hydra start-up,
which must stay free of torch.
"""
