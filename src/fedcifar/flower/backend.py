"""FlowerBackend: the round loop's clients are SuperNodes, reached through a ServerApp's Grid.

Each client is one node; the node's ``partition-id`` is the client id (node ids change
whenever a SuperNode restarts, so they are looked up, not stored). Fit and loss queries are
pushed to the nodes at once and their replies pulled as they arrive, so the loop folds each
result as soon as it lands. A node that is not connected, sends an error reply or does not
answer within ``round_timeout`` seconds becomes a :class:`~fedcifar.messages.ClientFailure`.
The global test set stays with the server, which evaluates it itself.

With ``FEDCIFAR_FLOWER_TRACE=FILE`` in its environment, the backend appends one JSON line per
fit message to FILE: when it was encoded and pushed, when its reply landed and was decoded (Unix
seconds, so they line up with the ClientApp's own timestamps), and the reply's metrics.
``fedcifar bench`` reads it to say where a round's time goes.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import torch
from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedcifar.client.evaluate import EvalCounts, eval_counts
from fedcifar.config import Config
from fedcifar.federation import model_spec
from fedcifar.flower import codec, secagg
from fedcifar.flower.warm import quick_pulls
from fedcifar.messages import ClientFailure, ClientResult, Weights
from fedcifar.model.spec import is_statistic
from fedcifar.runtime import Runtime
from fedcifar.server.backend import FitTask
from fedcifar.strategy.base import SecureSum
from fedcifar.strategy.population import Population

POLL_SECONDS = 0.05  # between pulls for replies (Flower's own send_and_receive sleeps 3 s)
TRACE_ENV = "FEDCIFAR_FLOWER_TRACE"  # a JSONL file of fit-message timings (off when unset)


class NodesMissing(RuntimeError):
    """Not every client of the federation has a connected SuperNode."""


class NodesMisreport(RuntimeError):
    """A SuperNode's self-reported size or label histogram is not its client's in the partition."""


def check_claims(claimed: Population, expected: Population) -> None:
    """Refuse to start when any node claims other data than the partition gives its client.

    Sizes and label histograms are self-reported: a node claiming 10⁹ examples would own
    size-weighted FedAvg's mean, size-weighted selection and FedDisco's factors. The server
    knows the partition the federation was cut from (its config and seed, and CIFAR-100's
    labels), so a claim is checked, not trusted.
    """
    for client in range(len(expected.sizes)):
        n, want = int(claimed.sizes[client]), int(expected.sizes[client])
        if n != want:
            what = f"claims {n} examples; the partition of this config gives it {want}"
        elif not np.array_equal(claimed.label_counts[client], expected.label_counts[client]):
            what = "claims other label counts than the partition of this config gives it"
        else:
            continue
        raise NodesMisreport(f"client {client}'s SuperNode {what}: it holds another config's shard, or misreports")


class FlowerBackend:
    def __init__(self, grid: Grid, cfg: Config, test_x: torch.Tensor, test_y: torch.Tensor, runtime: Runtime) -> None:
        self.grid = grid
        self.cfg = cfg
        self.runtime = runtime
        self.test_x, self.test_y = test_x, test_y
        if cfg.eval_limit:
            self.test_x, self.test_y = test_x[: cfg.eval_limit], test_y[: cfg.eval_limit]
        self.model = runtime.prepare(model_spec(cfg).build(seed=cfg.seed))
        self.nodes: dict[int, int] = {}  # client id -> node id
        self.workers = cfg.clients_per_round
        self.trace = os.environ.get(TRACE_ENV) or None
        quick_pulls()  # a reply announced before its arrays are up is retried within 0.5 s, not 10
        self.pushed = (0.0, 0.0)  # Unix seconds around the last push_messages

    # -- talking to nodes ---------------------------------------------------------------------

    def _exchange(self, messages: dict[int, Message], timeout: float) -> Iterator[tuple[int, Message | None, str]]:
        """Push one message per client; yield (client, reply or None, failure reason) as replies land."""
        start = time.time()
        ids = dict(zip(self.grid.push_messages(messages.values()), messages, strict=True))
        self.pushed = (start, time.time())
        deadline = time.monotonic() + timeout if timeout > 0 else None
        while ids:
            for reply in self.grid.pull_messages(list(ids)):
                client = ids.pop(reply.metadata.reply_to_message_id, None)
                if client is None:
                    continue
                if reply.has_error():
                    yield client, None, str(reply.error.reason or f"error {reply.error.code}").splitlines()[0]
                else:
                    yield client, reply, ""
            if ids and deadline is not None and time.monotonic() > deadline:
                for client in ids.values():
                    yield client, None, f"no reply within round_timeout={timeout:g} s"
                return
            if ids:
                time.sleep(POLL_SECONDS)

    def _message(self, client: int, content: RecordDict, kind: str, group: str) -> Message:
        return Message(content, dst_node_id=self.nodes[client], message_type=kind, group_id=group)

    def discover(self, expected: Population | None = None, wait_seconds: float = 120.0) -> Population:
        """Ask every connected node who it is; wait until each of the config's clients answered.

        With ``expected`` (the partition the federation was cut from) every claim is checked
        against it (:func:`check_claims`), and the run uses the expected sizes and counts.
        """
        deadline = time.monotonic() + wait_seconds
        sizes: dict[int, int] = {}
        counts: dict[int, list[int]] = {}
        wanted = set(range(self.cfg.num_clients))
        while not wanted <= set(self.nodes):
            if time.monotonic() > deadline:
                missing = sorted(wanted - set(self.nodes))
                raise NodesMissing(f"no SuperNode answered for clients {missing[:10]} within {wait_seconds:g} s")
            known = set(self.nodes.values())
            asked = {
                node: Message(RecordDict({}), dst_node_id=node, message_type=MessageType.QUERY)
                for node in self.grid.get_node_ids()
                if node not in known
            }
            for node, reply, _ in self._exchange(asked, timeout=60):  # a cold ClientApp on a busy host is slow
                if reply is not None:
                    m = reply.content[codec.METRICS]
                    client = int(m["client_id"])
                    self.nodes[client] = node
                    sizes[client], counts[client] = int(m["num_examples"]), list(m["label_counts"])
            time.sleep(0 if wanted <= set(self.nodes) else 1.0)
        ids = sorted(wanted)
        claimed = Population(np.array([sizes[c] for c in ids]), np.array([counts[c] for c in ids], dtype=np.int64))
        if expected is None:
            return claimed
        check_claims(claimed, expected)
        return expected

    # -- the Backend interface ----------------------------------------------------------------

    def fit(
        self, server_round: int, global_weights: Weights, tasks: Sequence[FitTask]
    ) -> Iterator[ClientResult | ClientFailure]:
        messages, encoded = {}, {}
        for task in tasks:
            if task.client_id in self.nodes:
                start = time.time()
                content = codec.encode_fit(self.cfg, task.client_id, task.instructions, global_weights)
                messages[task.client_id] = self._message(task.client_id, content, MessageType.TRAIN, str(server_round))
                encoded[task.client_id] = (start, time.time())
            else:
                yield ClientFailure(task.client_id, "no SuperNode for this client")
        for client, reply, reason in self._exchange(messages, self.cfg.round_timeout):
            arrived = time.time()
            if reply is None:
                result: ClientResult | ClientFailure = ClientFailure(client, reason)
            else:
                try:
                    result = codec.decode_result(reply.content)
                except (KeyError, ValueError, TypeError) as exc:
                    result = ClientFailure(client, f"malformed reply: {type(exc).__name__}: {exc}")
                if isinstance(result, ClientResult) and result.client_id != client:
                    result = ClientFailure(client, f"replied as client {result.client_id}")
            if self.trace:
                self._trace(server_round, client, encoded[client], arrived, result)
            yield result

    def fit_sum(
        self, server_round: int, global_weights: Weights, tasks: Sequence[FitTask], factors: Mapping[int, float]
    ) -> tuple[SecureSum, list[ClientFailure], dict[str, float]]:
        """Train ``tasks`` under SecAgg+ (:mod:`fedcifar.flower.secagg`): the sum of the updates, never one.

        Each client scales its update by ``r_i = f_i / max f`` before masking; the unmasked mean
        Σ r_i Δ_i / Σ r_i times Σ f_i (over the clients in the sum, all known here) is the sum.
        Also returns the failures and the wall seconds of each protocol stage.
        """
        failures = [
            ClientFailure(t.client_id, "no SuperNode for this client") for t in tasks if t.client_id not in self.nodes
        ]
        tasks = [t for t in tasks if t.client_id in self.nodes]
        float_keys = [k for k, v in global_weights.items() if v.is_floating_point()]
        empty = SecureSum({}, 0.0, 0)
        if len(tasks) < 2:
            failures += [ClientFailure(t.client_id, "secure aggregation needs 2 clients or more") for t in tasks]
            return empty, failures, {}
        top = max(factors[t.client_id] for t in tasks)
        fitins = {
            self.nodes[t.client_id]: codec.encode_secure_fit(
                self.cfg, t.client_id, t.instructions, global_weights, factors[t.client_id] / top
            )
            for t in tasks
        }
        done = secagg.run_secure_round(self.grid, self.cfg, server_round, fitins, float_keys, self.cfg.round_timeout)
        client_of = {node: client for client, node in self.nodes.items()}
        summed = {client_of[node]: metrics for node, metrics in done.replies.items()} if done.mean is not None else {}
        why = "dropped out of secure aggregation" if done.mean is not None else "secure aggregation halted"
        failures += [ClientFailure(t.client_id, why) for t in tasks if t.client_id not in summed]
        if not summed:
            return empty, failures, done.seconds
        weight = sum(factors[c] for c in summed)
        scale = {k: codec.SECURE_STAT_SCALE if is_statistic(k) else 1.0 for k in done.mean}
        deltas = {
            k: torch.from_numpy(np.asarray(v, np.float64) * weight * scale[k]).float() for k, v in done.mean.items()
        }
        results = []
        for client, metrics in summed.items():
            num_examples = int(metrics.pop("num_examples"))
            metrics.pop("client_id", None)
            results.append(ClientResult(client, {}, num_examples, {k: float(v) for k, v in metrics.items()}))
        return SecureSum(deltas, weight, len(summed), tuple(results)), failures, done.seconds

    def _trace(self, server_round: int, client: int, encoded: tuple[float, float], arrived: float, result) -> None:
        line = {
            "round": server_round,
            "client": client,
            "encode_start": encoded[0],
            "encode_end": encoded[1],
            "push_start": self.pushed[0],
            "push_end": self.pushed[1],
            "arrived": arrived,
            "decoded": time.time(),
            "failure": getattr(result, "reason", ""),
            "metrics": getattr(result, "metrics", {}),
        }
        with open(self.trace, "a") as f:
            f.write(json.dumps(line) + "\n")

    def evaluate(self, weights: Weights) -> EvalCounts:
        return eval_counts(self.model, weights, self.test_x, self.test_y, self.runtime, self.runtime.eval_batch_size)

    def client_losses(self, server_round: int, weights: Weights, client_ids: Sequence[int]) -> list[float]:
        """Each candidate's loss from an evaluate message; a node that fails is never picked (-inf)."""
        messages = {
            c: self._message(
                c,
                codec.encode_weights_query(self.cfg, weights, server_round=server_round),
                MessageType.EVALUATE,
                f"{server_round}-losses",
            )
            for c in client_ids
            if c in self.nodes
        }
        losses = {c: float("-inf") for c in client_ids}
        for client, reply, _ in self._exchange(messages, self.cfg.round_timeout):
            if reply is not None:
                losses[client] = float(reply.content[codec.METRICS]["loss"])
        return [losses[c] for c in client_ids]
