"""What is written about runs once they have trained:

    run.py            the run report every finished run writes next to its checkpoints
    sweep.py          the sweep report over many runs (`python -m resexp.report`)
    model_summary.py  a network's layer table as text (`python -m resexp.summary`, model_summary.txt)
    figures.py, metrics.py, export.py   the run report's plots, per-class numbers and safetensors export

Nothing here is imported at package level: the sweep callback imports sweep.py at Hydra start-up,
which must stay free of torch.
"""
