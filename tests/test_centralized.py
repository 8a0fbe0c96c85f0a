"""``fedcifar centralized``: the image budget, the run directory it writes, and its optimizer state."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import pytest
import torch

from fedcifar.centralized import _load_optimizer, _optimizer_tensors, federated_image_budget
from fedcifar.cli import main
from fedcifar.config import ConfigError, build_config
from fedcifar.federation import partition_for
from fedcifar.model import build_model
from fedcifar.report import accuracy_figure
from fedcifar.serve.predictor import Predictor, inference_runtime
from fedcifar.sim.engine import run_training
from fedcifar.strategy.population import Population
from fedcifar.track.checkpoint import MODEL_FILE, load_checkpoint


@pytest.mark.parametrize("schedule", [dict(local_steps=5, batch_size=16), dict(local_epochs=1, local_steps=0)])
def test_budget_equals_what_the_federated_run_trains(tmp_path, cifar, schedule):
    cfg = build_config(
        "paper-cpu",
        None,
        dict(rounds=2, num_clients=40, clients_per_round=2, eval_limit=100, workers=2, **schedule),
    )
    sizes = Population.from_partition(cifar.train_y.numpy(), partition_for(cfg, cifar.train_y.numpy())).sizes
    frame = run_training(cfg, tmp_path, cifar, progress=False)
    assert federated_image_budget(cfg, sizes) == frame["train_images"].sum()


def test_budget_cannot_be_replayed_for_loss_based_selection(cifar):
    cfg = build_config(
        "paper-cpu", None, dict(client_selection="power_of_choice", client_weighting="uniform", rounds=1)
    )
    sizes = Population.from_partition(cifar.train_y.numpy(), partition_for(cfg, cifar.train_y.numpy())).sizes
    with pytest.raises(ConfigError, match="give the budget with --images"):
        federated_image_budget(cfg, sizes)


def test_optimizer_state_round_trips_through_checkpoint_tensors():
    model = build_model(arch="resnet20")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3, 32, 32)).sum().backward()
    opt.step()
    fresh = torch.optim.Adam(model.parameters(), lr=1e-3)
    _load_optimizer(fresh, _optimizer_tensors(opt))
    a, b = opt.state_dict()["state"], fresh.state_dict()["state"]
    assert a.keys() == b.keys() and all(torch.equal(a[i][k], b[i][k]) for i in a for k in a[i])


def test_tiny_centralized_run_writes_a_run_directory_that_serves(tmp_path, capsys):
    out = tmp_path / "central"
    args = ["centralized", "--preset", "paper-cpu", "--set", "eval_limit=300", "--images", "200", "--quiet"]
    assert main([*args, "--out", str(out)]) == 0
    assert "centralized: 256 images in 1 epochs" in capsys.readouterr().out  # whole batches of 64
    frame = pd.read_csv(out / "metrics.csv")
    assert list(frame["round"]) == [1] and frame["train_images"].tolist() == [256]
    assert frame[["test_acc", "client_acc_mean", "client_acc_p10"]].notna().all().all()
    for name in ("config.yaml", "accuracy.png", "loss.png", "model_global.pth", "checkpoint.safetensors"):
        assert (out / name).stat().st_size > 0, name
    ckpt = load_checkpoint(out)
    assert ckpt.meta["centralized"] == {"budget": 200, "trained": 256} and ckpt.strategy_tensors
    loaded = Predictor(inference_runtime("fp32")).load(out / MODEL_FILE)
    assert loaded.info.arch == "resnet20" and loaded.round == 1
    assert main(["plot", str(out)]) == 0

    assert main([*args, "--out", str(out)]) == 2  # a second start must not overwrite it
    assert "already holds a run" in capsys.readouterr().err
    assert main(["centralized", "--out", str(out), "--resume", "--quiet"]) == 0  # budget spent: nothing to do
    assert main(["train", "--resume", str(out), "--quiet"]) == 2
    assert "holds a centralized run" in capsys.readouterr().err


def test_report_puts_runs_on_the_training_image_axis(tmp_path, capsys):
    fed = pd.DataFrame(
        {
            "round": [1, 2],
            "train_images": [100, 150],
            "train_acc": [0.1, 0.2],
            "test_acc": [0.05, 0.08],
            "client_acc_mean": [0.05, 0.07],
            "client_acc_std": [0.01, 0.02],
            "client_acc_p10": [0.03, 0.04],
            "client_acc_min": [0.01, 0.02],
            "round_seconds": [60.0, 60.0],
        }
    )
    central = fed.assign(train_images=[250, 0], test_acc=[0.2, 0.2]).iloc[:1]
    for name, frame in (("fed", fed), ("central", central)):
        (tmp_path / name).mkdir()
        frame.to_csv(tmp_path / name / "metrics.csv", index=False)
    out = tmp_path / "report"
    assert main(["report", str(tmp_path / "fed"), str(tmp_path / "central"), "--out", str(out)]) == 0
    table = pd.read_csv(out / "report.csv")
    assert table["training_images"].tolist() == [250, 250] and table["best_at_images"].tolist() == [250, 250]
    assert table["wall_minutes"].tolist() == [2.0, 1.0]
    assert (
        "| `fed` | 2 | 0.00 M | 8.00% | 8.00% (0.00 M) | 20.00% | 7.00% / 4.00% / 2.00% | 2.0 |"
        in capsys.readouterr().out
    )
    assert (out / "report.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["report", str(tmp_path / "nowhere"), "--out", str(out)]) == 2


def test_report_figure_names_runs_by_colour_and_measures_by_style_outside_the_axes():
    frame = pd.DataFrame(
        {
            "train_images": [100, 100],
            "train_acc": [0.1, 0.2],
            "test_acc": [0.05, 0.08],
            "client_acc_mean": [0.05, 0.07],
            "client_acc_std": [0.01, 0.02],
            "client_acc_p10": [0.03, 0.04],
        }
    ).assign(images_seen=[100, 200])
    central = frame[["train_images", "test_acc", "images_seen"]]  # no train or client columns
    frames = {f"run {i}": frame for i in range(5)} | {"central": central}
    fig = accuracy_figure(frames)
    (ax,) = fig.axes
    runs, measures = fig.legends
    assert [t.get_text() for t in runs.get_texts()] == [*(f"run {i}" for i in range(5)), "central"]
    assert [t.get_text() for t in measures.get_texts()] == ["test", "train", "client p10"]
    assert [line.get_linestyle() for line in measures.get_lines()] == ["-", "--", ":"]
    fig.canvas.draw()
    axes_box = ax.get_window_extent()
    for legend in (runs, measures):  # beside the curves, not over them
        assert legend.get_window_extent().x0 > axes_box.x1
    plt.close(fig)
