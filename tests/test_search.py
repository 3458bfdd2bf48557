"""resexp's Optuna search (hparams_search=...): a study in the sweep directory's journal, pruned
trials with their own status, a misspelt preset key stopping in one line, and a search stopped by a
signal that, run again, ends with the same trials and values as one never stopped."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

# A trial of about a second: 3 stages of 1 block on 8x8 synthetic images, 3 batches an epoch.
TINY = ["data=synthetic", "data.num_samples=64", "data.image_size=8", "data.batch_size=16",
        "model.stages.depths=[1,1,1]", "trainer.progress=false", "trainer.report=false"]
SEARCH = ["-m", "hparams_search=digits_optuna", *TINY, "trainer.epochs=2", "hydra.sweeper.n_trials=3",
          "hydra.sweeper.sampler.n_startup_trials=2", "hydra.sweeper.pruner.n_startup_trials=2",
          "hydra.sweeper.pruner.n_warmup_steps=0", "model=resnet20"]


def trials(sweep: Path) -> list[tuple]:
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(sweep / "optuna.journal")))
    study = optuna.load_study(study_name="digits_search", storage=storage)
    return [(t.number, t.state.name, t.params, t.value, t.intermediate_values) for t in study.trials]


@pytest.mark.slow
def test_a_stopped_search_resumes_to_the_same_trials(tmp_path, monkeypatch, in_process):
    from resexp.sweeps.trial import TrialLink

    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert in_process(tmp_path, *SEARCH, f"hydra.sweep.dir={straight}") == 0
    expected = trials(straight)
    assert [t[1] for t in expected] == ["COMPLETE", "COMPLETE", "PRUNED"]  # trial 2 below the median

    # SIGTERM arrives while trial 1 validates its first epoch: the sweep stops, trial 1 stays RUNNING
    report = TrialLink.on_validated

    def stop_in_trial_1(self, epoch, row):
        report(self, epoch, row)
        if self.number == 1 and epoch == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(TrialLink, "on_validated", stop_in_trial_1)
    assert in_process(tmp_path, *SEARCH, f"hydra.sweep.dir={stopped}") == 130
    assert [t[1] for t in trials(stopped)] == ["COMPLETE", "RUNNING"]
    assert json.loads((stopped / "1/metrics.json").read_text())["status"] == "interrupted"

    monkeypatch.setattr(TrialLink, "on_validated", report)
    assert in_process(tmp_path, *SEARCH, f"hydra.sweep.dir={stopped}") == 0
    assert trials(stopped) == expected  # the same parameters, values, pruning and epochs reported
    resumed = json.loads((stopped / "1/metrics.json").read_text())
    assert resumed["resumed_from"] == str(stopped / "1/checkpoints/last.pt")
    summary = json.loads((stopped / "search.json").read_text())
    assert summary["best"]["number"] in {t[0] for t in expected if t[1] == "COMPLETE"}

    # once more: every trial is kept, none runs again
    mtime = (stopped / "1/metrics.json").stat().st_mtime
    assert in_process(tmp_path, *SEARCH, f"hydra.sweep.dir={stopped}") == 0
    assert trials(stopped) == expected and (stopped / "1/metrics.json").stat().st_mtime == mtime


@pytest.mark.slow
def test_a_pruned_trial_has_its_own_status(tmp_path, monkeypatch, in_process):
    """A pruner stops trial 1 after its first epoch: metrics.json says pruned (with the epoch), the
    study PRUNED, the report lists it, and the sweep exits 0 (a pruned trial is a result)."""
    monkeypatch.setattr(optuna.trial.Trial, "should_prune", lambda self: self.number == 1)
    sweep, uri = tmp_path / "s", f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = [*SEARCH, "trainer.epochs=2", "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={sweep}",
            "logger=mlflow", f"logger.mlflow.tracking_uri={uri}"]
    assert in_process(tmp_path, *args) == 0
    assert [(t[1], sorted(t[4])) for t in trials(sweep)] == [("COMPLETE", [1, 2]), ("PRUNED", [1])]
    metrics = json.loads((sweep / "1/metrics.json").read_text())
    assert metrics["status"] == "pruned" and metrics["pruned_epoch"] == 1 and len(metrics["history"]) == 1
    assert (sweep / "1/checkpoints/last.pt").is_file()
    md = (sweep / "sweep_summary.md").read_text()
    assert "| pruned |" in md and "pruned at epoch 1" in md
    # the trial's MLflow run (a child of the sweep's) carries the status; MLflow's own ends KILLED
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    by_status = {r.data.tags.get("status"): r.info.status for r in runs if "mlflow.parentRunId" in r.data.tags}
    assert by_status == {"completed": "FINISHED", "pruned": "KILLED"}


def test_a_misspelt_preset_key_stops_in_one_line(tmp_path, in_process, capsys):
    sweep = tmp_path / "s"
    for bad, named in [("+hydra.sweeper.n_trails=3", "hydra.sweeper.n_trails is not a key of the search"),
                       ("hydra.sweeper.sampler.name=tpee", "hydra.sweeper.sampler.name=tpee is not one of: tpe"),
                       ("+hydra.sweeper.params.optimizer.lrr=interval(0.1,0.2)", "optimizer.lrr")]:
        assert in_process(tmp_path, *SEARCH, bad, f"hydra.sweep.dir={sweep}") == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and named in err, err
    # nothing was asked of the study: no trial is left RUNNING
    journal = sweep / "optuna.journal"
    assert not journal.exists() or trials(sweep) == []


def test_the_search_space_and_samplers():
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from resexp.errors import ConfigError
    from resexp.sweeps import space, study

    dists, fixed = space.parse({"optimizer.lr": "tag(log, interval(0.003, 0.3))", "model": "choice(resnet20, resnet32)",
                                "trainer.epochs": "int(interval(2, 8))", "data.batch_size": [32, 64]},
                               ["seed=1", "model=resnet20"])
    assert dists["optimizer.lr"] == FloatDistribution(0.003, 0.3, log=True)
    assert dists["trainer.epochs"] == IntDistribution(2, 8)
    assert dists["data.batch_size"] == CategoricalDistribution([32, 64])
    assert "model" not in dists and fixed == ["seed=1", "model=resnet20"]  # the command line fixed it
    assert space.overrides({"optimizer.lr": 0.01, "model": "resnet32"}) == ["model=resnet32", "optimizer.lr=0.01"]
    cfg = study.search_config({"sampler": {"name": "cmaes"}, "pruner": {"name": "hyperband"}})
    assert type(study.sampler(cfg.sampler, 3)).__name__ == "CmaEsSampler"
    assert type(study.pruner(cfg.pruner, epochs=9)).__name__ == "HyperbandPruner"
    for name, kind in [("tpe", "TPESampler"), ("random", "RandomSampler")]:
        assert type(study.sampler(study.SamplerConfig(name=name), 0)).__name__ == kind
    grid = study.sampler(study.SamplerConfig(name="grid"), 0, {"model": CategoricalDistribution(["a", "b"])})
    assert type(grid).__name__ == "GridSampler"
    with pytest.raises(ConfigError, match="grid needs choice"):
        study.sampler(study.SamplerConfig(name="grid"), 0, dists)
    assert type(study.pruner(study.PrunerConfig(name="successive_halving"))).__name__ == "SuccessiveHalvingPruner"
    assert type(study.pruner(study.PrunerConfig(name="none"))).__name__ == "NopPruner"
    with pytest.raises(ConfigError, match="contradicts trainer.monitor=val_loss"):
        study.direction(study.search_config({"direction": "maximize"}), "val_loss")
