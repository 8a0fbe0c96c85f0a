"""``fedcifar federation``'s arguments and one-line errors: no process is started, no data loaded."""

from __future__ import annotations

import json
import os
import stat

import pytest

pytest.importorskip("flwr", reason="the [flower] extra is not installed")

from fedcifar.cli import build_parser, main  # noqa: E402
from fedcifar.config import build_config  # noqa: E402
from fedcifar.errors import UserError  # noqa: E402
from fedcifar.flower.cli import check_partition, federation_config, partition_keys  # noqa: E402
from fedcifar.flower.deploy import STATE_FILE, format_node_config  # noqa: E402
from fedcifar.flower.procs import free_ports, start_time  # noqa: E402


def _error(capsys, argv: list[str]) -> str:
    """Run the CLI; it must exit 2 with one line on stderr, which is returned."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedcifar: error: ") and err.count("\n") == 1, err
    return err


def _record(workdir, pid: int, start: int | None) -> None:
    """A federation.json as `up` writes it: one SuperLink with this pid, on a port nobody listens on."""
    state = {"marker": "not-a-real-marker", "host": "127.0.0.1", "port": free_ports(1)[0], "tls": False}
    state |= {"auth": False, "certs": None, "env": {}, "processes": []}
    state["processes"].append({"role": "superlink", "name": "superlink", "pid": pid, "start": start, "log": "x"})
    (workdir / STATE_FILE).write_text(json.dumps(state))


def test_down_and_status_without_a_federation_are_one_line_errors(tmp_path, capsys):
    for command in ("down", "status"):
        assert "no federation recorded in" in _error(capsys, ["federation", command, str(tmp_path)])


def test_up_refuses_no_nodes_and_a_num_clients_that_is_not_the_node_count(tmp_path, capsys):
    assert "--nodes must be >= 1" in _error(capsys, ["federation", "up", str(tmp_path), "--nodes", "0"])
    err = _error(capsys, ["federation", "up", str(tmp_path), "--nodes", "3", "--set", "num_clients=5"])
    assert "num_clients=5" in err and "3 SuperNodes" in err
    # The paper's 16 clients a round do not fit 3 nodes: the config fails before any data is read.
    err = _error(capsys, ["federation", "up", str(tmp_path), "--nodes", "3", "--data-dir", str(tmp_path / "none")])
    assert "clients_per_round" in err
    assert not (tmp_path / "shards").exists()


def test_up_refuses_a_directory_whose_federation_still_runs(tmp_path, capsys):
    _record(tmp_path, os.getpid(), start_time(os.getpid()))  # "running": this very process
    err = _error(capsys, ["federation", "up", str(tmp_path), "--nodes", "2", "--set", "clients_per_round=2"])
    assert "already running" in err and "federation down" in err


def test_run_needs_a_running_federation(tmp_path, capsys):
    argv = ["federation", "run", str(tmp_path), "--preset", "smoke", "--out", str(tmp_path / "run")]
    assert "no federation recorded" in _error(capsys, argv)
    _record(tmp_path, 2**22 + 1, None)  # above the default pid_max: never a live process
    assert "is not running" in _error(capsys, argv)


def test_run_and_up_need_their_arguments():
    parser = build_parser()
    for argv in (
        ["federation"],
        ["federation", "up", "DIR"],  # --nodes
        ["federation", "run", "DIR", "--out", "RUN"],  # --preset
        ["federation", "run", "DIR", "--preset", "smoke"],  # --out
    ):
        with pytest.raises(SystemExit) as exc:
            parser.parse_args(argv)
        assert exc.value.code == 2


def test_federation_config_forces_num_clients_and_refuses_values_with_spaces():
    cfg, overrides = federation_config("smoke", ["rounds=3"], 4)
    assert cfg.num_clients == 4 and cfg.rounds == 3 and overrides == {"rounds": "3", "num_clients": "4"}
    assert federation_config("smoke", ["num_clients=4"], 4)[0].num_clients == 4
    with pytest.raises(UserError, match="num_clients=5"):
        federation_config("smoke", ["num_clients=5"], 4)
    with pytest.raises(UserError, match="spaces"):
        federation_config("smoke", ["strategy=fed avg"], 4)


def test_a_run_must_cut_the_shards_the_nodes_hold():
    shards = partition_keys(build_config("smoke", None, {"num_clients": 4}))
    check_partition(shards, build_config("paper-cpu", None, {"num_clients": 4, "rounds": 7, "clients_per_round": 2}))
    with pytest.raises(UserError, match="seed=0, this run has seed=1"):
        check_partition(shards, build_config("smoke", None, {"num_clients": 4, "seed": 1}))
    # alpha does not matter to an iid partition
    iid = partition_keys(build_config("smoke", None, {"num_clients": 4, "partitioner": "iid"}))
    check_partition(iid, build_config("smoke", None, {"num_clients": 4, "partitioner": "iid", "alpha": 0.1}))


def test_certs_cover_the_given_hosts_and_keep_the_key_private(tmp_path, capsys):
    from cryptography import x509

    assert main(["federation", "certs", str(tmp_path), "--host", "fed.example.org", "--host", "10.1.2.3"]) == 0
    assert "ca.pem" in capsys.readouterr().out
    cert = x509.load_pem_x509_certificate((tmp_path / "server.pem").read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["fed.example.org"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["10.1.2.3"]
    assert stat.S_IMODE((tmp_path / "server.key").stat().st_mode) == 0o600


@pytest.mark.parametrize("path", ["/data/shards", "/my data/it's here", '/a "quoted" dir', "C:\\shards"])
def test_node_config_reads_back_through_flowers_parser(path):
    from flwr.common import config

    text = format_node_config({"partition-id": 3, "data-path": path, "fast": True, "ratio": 0.5})
    assert config.parse_config_args([text]) == {"partition-id": 3, "data-path": path, "fast": True, "ratio": 0.5}


def test_node_config_refuses_what_flower_cannot_read():
    with pytest.raises(ValueError):
        format_node_config({"data-path": '/it\'s a "mix"'})
    with pytest.raises(ValueError):
        format_node_config({"bad key": 1})
