"""dien.bench: requests made from a dataset, the load generator against a local test server (closed loop,
open loop without coordinated omission, errors), the Serve config variants, the goal checks, and one tiny run
of the whole benchmark on the session's Ray with its outputs."""
import asyncio
import json
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from aiohttp import web
from ray.serve.schema import ServeDeploySchema

from dien.artifacts import save_artifact
from dien.bench.deploy import NOOP_IMPORT_PATH, Variant, load_config, logical_cpus, variants_config
from dien.bench.load import LoadResult, LoadSettings, measure
from dien.bench.peers import available as peer_available
from dien.bench.qps import (IN_INGRESS, NOOP, PER_CORE, PLAIN, PLAIN_PEER, REFERENCE, STUDENT, TEACHER, UNBATCHED,
                            VARIANTS, Inputs, QpsConfig, QpsReport, Row, check_goals, median_rounds,
                            open_loop_rates, run_local, run_url, variants)
from dien.bench.report import format_markdown, format_table, write_outputs
from dien.bench.workload import score_bodies
from dien.model import ModelConfig, build_model
from dien.serve.ingress import INGRESS
from dien.serve.scorer import SCORER

ROOT = Path(__file__).resolve().parents[1]
LOCAL_CONFIG = ROOT / "serve_configs" / "local.yaml"


# ------------------------------------------------------------------------------------------- workload

def test_requests_name_stored_users_and_carry_vocabulary_items_with_their_categories(prepared_dataset):
    workload = score_bodies(prepared_dataset.path, candidates=7, requests=20)
    vocab = prepared_dataset.vocabularies()
    users = set(prepared_dataset.user_history().column("user_id").to_pylist())
    category_of = dict(zip(vocab.item.tokens.to_pylist(), vocab.category.lookup(vocab.item_category[2:])))
    assert workload.candidates == 7 and len(workload.bodies) == 20
    for body in map(json.loads, workload.bodies):
        assert body["user_id"] in users and "history" not in body
        assert len(body["candidates"]) == 7
        assert len({c["item_id"] for c in body["candidates"]}) == 7  # a ranking request repeats no item
        assert all(category_of[c["item_id"]] == c["category"] for c in body["candidates"])


def test_inline_history_sends_the_stored_history(prepared_dataset):
    (body,) = map(json.loads, score_bodies(prepared_dataset.path, candidates=1, requests=1, inline_history=True).bodies)
    table = prepared_dataset.user_history()
    row = table.column("user_id").to_pylist().index(body["user_id"])
    vocab = prepared_dataset.vocabularies()
    stored = vocab.item.lookup(np.asarray(table.column("hist_item")[row].as_py()))
    assert [b["item_id"] for b in body["history"]] == stored


# ------------------------------------------------------------------------------------ the load generator

class StubServer:
    """An aiohttp server on 127.0.0.1 in a thread: answers after ``service_s`` (one request at a time when
    ``serial``); every ``fail_every``-th request gets a 500; requests arriving in [stall_from, stall_from +
    stall_s) after the first one wait until then."""

    def __init__(self, service_s: float = 0.002, serial: bool = False, fail_every: int = 0, stall_from: float = 0.0,
                 stall_s: float = 0.0) -> None:
        self.service_s, self.serial, self.fail_every = service_s, serial, fail_every
        self.stall_from, self.stall_s = stall_from, stall_s
        self.count, self.first = 0, None
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        now = time.perf_counter()
        self.first = self.first or now
        self.count += 1
        stall_end = self.first + self.stall_from + self.stall_s
        if self.stall_s and self.first + self.stall_from <= now < stall_end:
            await asyncio.sleep(stall_end - now)
        if self.serial:
            async with self.lock:
                await asyncio.sleep(self.service_s)
        else:
            await asyncio.sleep(self.service_s)
        if self.fail_every and self.count % self.fail_every == 0:
            return web.Response(status=500)
        return web.json_response({"scores": [0.5]})

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.lock = asyncio.Lock()
        app = web.Application()
        app.router.add_post("/v1/score", self.handle)
        self.runner = web.AppRunner(app)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]
        self.ready.set()
        self.loop.run_forever()

    def __enter__(self) -> str:
        self.thread.start()
        self.ready.wait(10)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


SHORT = LoadSettings(duration_s=1.2, warmup_s=0.2, timeout_s=5)


@pytest.fixture(scope="module")
def tiny_workload(prepared_dataset):
    return score_bodies(prepared_dataset.path, candidates=2, requests=8)


def test_closed_loop_keeps_the_requests_in_flight_and_counts_the_window(tiny_workload):
    with StubServer(service_s=0.01) as url:
        result = measure(url, tiny_workload, SHORT, concurrency=4)
    assert result.mode == "closed" and result.concurrency == 4 and result.errors == 0
    assert result.p50_ms >= 10
    assert result.requests_per_s == pytest.approx(result.requests / SHORT.duration_s)
    assert result.candidates_per_s == pytest.approx(2 * result.requests_per_s)
    # 4 in flight at >= 10 ms each: at most 400 requests/s.
    assert 20 < result.requests_per_s <= 400


def test_failed_requests_are_counted_by_kind(tiny_workload):
    with StubServer(fail_every=3) as url:
        result = measure(url, tiny_workload, SHORT, concurrency=2)
    assert result.errors > 0 and set(result.error_kinds) == {"HTTP 500"}
    assert result.requests == pytest.approx(2 * result.errors, rel=0.3)


def test_open_loop_measures_from_the_intended_send_time(tiny_workload):
    """A 0.5 s stall delays every request scheduled during it: an open loop sees ~25 slow requests at 50/s
    (no coordinated omission), a closed loop with one client only the one request that was in flight."""
    stall = dict(stall_from=0.5, stall_s=0.5)
    with StubServer(**stall) as url:
        opened = measure(url, tiny_workload, SHORT, rate=50)
    with StubServer(**stall) as url:
        closed = measure(url, tiny_workload, SHORT, concurrency=1)
    assert opened.mode == "open" and opened.offered_rps == 50 and opened.errors == 0
    assert opened.requests == pytest.approx(50 * SHORT.duration_s, abs=3)
    assert opened.p90_ms > 200
    assert closed.max_ms > 300 and closed.p90_ms < 100


def test_open_loop_over_capacity_reports_what_was_served(tiny_workload):
    """Offered twice what the server can do, an open loop reports the server's rate and growing latency."""
    with StubServer(service_s=0.02, serial=True) as url:  # 50 requests/s at most
        result = measure(url, tiny_workload, LoadSettings(duration_s=1.0, warmup_s=0.0, timeout_s=10), rate=100)
    assert result.errors == 0 and result.requests == pytest.approx(100, abs=3)
    assert 30 < result.requests_per_s < 55
    assert result.p99_ms > 500


def test_only_this_machine_is_loaded():
    with pytest.raises(ValueError, match="loopback"):
        run_url(QpsConfig(url="http://10.1.2.3:8000"))


# --------------------------------------------------------------------------------- Serve config variants

def test_variants_change_only_what_they_name():
    base = load_config(LOCAL_CONFIG)
    config = variants_config(base, [Variant(NOOP, None),
                                    Variant(UNBATCHED, "artifacts/s", user_config={"max_batch_size": 1},
                                            forwarding={"max_jobs_per_call": 1},
                                            scorer_env={"DIEN_KERNEL": "reference"}),
                                    Variant(STUDENT, "a", user_config={"max_batch_size": 64})], "data/x")
    assert {k: v for k, v in config.items() if k != "applications"} == \
        {k: v for k, v in base.items() if k != "applications"}
    noop, unbatched, bigger = config["applications"]
    assert (noop["name"], noop["route_prefix"]) == ("no-op", "/no-op")
    assert noop["import_path"] == NOOP_IMPORT_PATH
    assert [d["name"] for d in noop["deployments"]] == [INGRESS]
    assert "user_config" not in noop["deployments"][0]  # it has no Scorer to forward to
    assert noop["args"] == {"limits": base["applications"][0]["args"]["limits"]}

    assert (unbatched["name"], unbatched["route_prefix"]) == ("student-batching-off", "/student-batching-off")
    assert unbatched["args"]["model"] == str(Path("artifacts/s").resolve())
    assert unbatched["args"]["history"] == str(Path("data/x").resolve())
    scorer = next(d for d in unbatched["deployments"] if d["name"] == SCORER)
    assert scorer["user_config"]["max_batch_size"] == 1
    assert scorer["user_config"]["batch_wait_timeout_s"] == 0.005  # the rest as in the file
    assert scorer["ray_actor_options"] == {"num_cpus": 1, "runtime_env": {"env_vars": {"DIEN_KERNEL": "reference"}}}
    ingress = next(d for d in unbatched["deployments"] if d["name"] == INGRESS)
    assert ingress["user_config"]["forwarding"] == {"max_calls_in_flight": 2, "max_jobs_per_call": 1}
    scorer = next(d for d in bigger["deployments"] if d["name"] == SCORER)
    assert scorer["max_ongoing_requests"] >= 64
    assert base == load_config(LOCAL_CONFIG)  # the base is not changed
    ServeDeploySchema.model_validate(config)
    # local.yaml: ingress 0.5 + scorer 1 CPU; the no-op app only its ingress.
    assert logical_cpus(config) == 0.5 + 1.5 + 1.5
    with pytest.raises(ValueError, match="must differ"):
        variants_config(base, [Variant(STUDENT, "a"), Variant("Student", "b")], "d")


def test_a_run_measures_only_the_variants_it_names():
    chosen = variants("s", "t", (UNBATCHED, NOOP))
    assert [(v.name, every_size) for v, every_size in chosen] == [(NOOP, True), (UNBATCHED, False)]
    assert [v.name for v, _ in variants("s", "t")] == [n for n in VARIANTS if n not in (PLAIN, PLAIN_PEER)]
    with pytest.raises(ValueError, match="unknown variant 'studnet'; the variants are: no-op, student"):
        variants("s", "t", ("studnet",))
    refused = subprocess.run([sys.executable, "jobs/benchmark_qps.py", "--variants", NOOP, "studnet"],
                             cwd=Path(__file__).parents[1], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "error: unknown variant 'studnet'" in refused.stderr


def test_the_in_ingress_variant_moves_the_scorer_settings_to_the_ingress():
    base = load_config(LOCAL_CONFIG)
    (app,) = variants_config(base, [Variant(IN_INGRESS, "a", user_config={"max_batch_size": 8}, in_ingress=True)],
                             "d")["applications"]
    (ingress,) = app["deployments"]
    assert ingress["name"] == INGRESS and app["args"]["scoring"] == "in_ingress"
    scorer = next(d for d in base["applications"][0]["deployments"] if d["name"] == SCORER)
    assert ingress["user_config"] == {**scorer["user_config"], "max_batch_size": 8}
    assert ingress["ray_actor_options"]["num_cpus"] == scorer["ray_actor_options"]["num_cpus"]
    ServeDeploySchema.model_validate({**base, "applications": [app]})


# ------------------------------------------------------------------------------------------ goal checks

def test_open_loop_rates_are_fractions_of_each_variants_best_or_the_given_rates_for_measured_variants_only():
    report = QpsReport(config={}, environment={}, rows=[
        Row(STUDENT, closed(100, 16, 200)), Row(STUDENT, closed(100, 64, 300)), Row(PER_CORE, closed(100, 16, 500)),
        Row(PER_CORE, closed(1, 16, 2000)),
    ])
    measured = {STUDENT, PER_CORE, NOOP}
    fractions = QpsConfig(candidates=(1, 100), open_fractions=(0.5, 0.8))
    assert open_loop_rates(fractions, report, measured) == [(STUDENT, 150.0), (PER_CORE, 250.0), (STUDENT, 240.0),
                                                            (PER_CORE, 400.0)]
    # Given rates apply to every measured open-loop variant, but never to one that was not deployed.
    rates = QpsConfig(candidates=(100,), rates=(320.0,))
    assert open_loop_rates(rates, report, {PER_CORE, IN_INGRESS}) == [(IN_INGRESS, 320.0), (PER_CORE, 320.0)]
    assert open_loop_rates(rates, report, {NOOP}) == []


def closed(candidates: int, concurrency: int, rps: float, p99: float = 50.0) -> LoadResult:
    return LoadResult(mode="closed", candidates=candidates, concurrency=concurrency, requests_per_s=rps,
                      candidates_per_s=rps * candidates, p99_ms=p99)


def opened(candidates: int, rate: float, p99: float) -> LoadResult:
    return LoadResult(mode="open", candidates=candidates, offered_rps=rate, requests_per_s=rate,
                      candidates_per_s=rate * candidates, p99_ms=p99)


def test_a_setting_measured_in_rounds_keeps_its_median_round_its_spread_and_every_error(tmp_path):
    slow, fast = replace(closed(100, 16, 100), errors=2, error_kinds={"HTTP 429": 2}), closed(100, 16, 300)
    middle = replace(closed(100, 16, 200, p99=70), errors=1, error_kinds={"HTTP 429": 1})
    rows = [Row(STUDENT, slow), Row(NOOP, closed(1, 16, 900)), Row(STUDENT, fast), Row(STUDENT, middle),
            Row(STUDENT, closed(100, 64, 400))]
    kept = median_rounds(rows)
    assert [(r.variant, r.result.concurrency) for r in kept] == [(STUDENT, 16), (NOOP, 16), (STUDENT, 64)]
    student = kept[0]
    assert student.result.requests_per_s == 200 and student.result.p99_ms == 70  # the median round, whole
    assert student.rounds == (100, 300, 200)
    assert student.result.errors == 3 and student.result.error_kinds == {"HTTP 429": 3}
    assert kept[1] == rows[1] and kept[2].rounds == ()  # measured once: as it was
    assert median_rounds([Row(STUDENT, slow), Row(STUDENT, fast)])[0].result.requests_per_s == 100  # lower middle
    # An open-loop rate: the rounds rank by p99 (their requests/s is the rate offered).
    stalled = replace(opened(100, 160, p99=590), errors=4, error_kinds={"HTTP 429": 4})
    latency = median_rounds([Row(PER_CORE, opened(100, 160, p99=50)), Row(PER_CORE, stalled),
                             Row(PER_CORE, opened(100, 160, p99=60))])
    assert len(latency) == 1 and latency[0].result.p99_ms == 60 and latency[0].rounds == (50, 590, 60)
    assert latency[0].result.errors == 4

    report = QpsReport(config={}, environment={"started": "now", "cpus": 2, "load_average_at_start": [0, 0, 0],
                                               "ray": "2", "throughput_optimized": True}, rows=kept + latency)
    markdown = format_markdown(report)
    assert "| student | 100 | c=16 | 200.0 (100-300) | 20000 |" in markdown
    assert "| 100 | 160/s open | 160.0 | 16000 | - | - | - | 60.0 (50-590) | - | 4 |" in markdown
    results = report.as_dict()["results"]
    assert results[0]["round_requests_per_s"] == [100, 300, 200] and results[3]["round_p99_ms"] == [50, 590, 60]
    assert "round_requests_per_s" not in results[1] and "round_p99_ms" not in results[0]
    with pytest.raises(ValueError, match="rounds must be at least 1"):
        QpsConfig(rounds=0)
    refused = subprocess.run([sys.executable, "jobs/benchmark_qps.py", "--rounds", "0"],
                             cwd=Path(__file__).parents[1], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "--rounds must be at least 1, got 0" in refused.stderr


def test_goals_take_the_better_of_our_two_deployments_and_compare_like_with_like():
    report = QpsReport(config={}, environment={}, offline={100: 30_000.0, 500: 40_000.0}, offline_unbatched=20_000.0,
                       rows=[
        Row(NOOP, closed(1, 8, 200)), Row(NOOP, closed(1, 32, 250)),
        Row(STUDENT, closed(1, 8, 150)), Row(IN_INGRESS, closed(1, 32, 180)),
        Row(STUDENT, closed(100, 16, 120)), Row(IN_INGRESS, closed(100, 16, 150)), Row(IN_INGRESS, closed(100, 64, 160)),
        Row(PLAIN_PEER, closed(100, 16, 25)), Row(PLAIN_PEER, closed(100, 64, 40)),
        Row(UNBATCHED, closed(100, 16, 60)),
        Row(IN_INGRESS, LoadResult(mode="open", candidates=100, offered_rps=80, requests_per_s=80, p99_ms=90)),
        Row(STUDENT, closed(500, 16, 30)), Row(IN_INGRESS, closed(500, 16, 45)),
    ])
    peer, latency, offline, share, batching = check_goals(report, (1, 100, 500))
    assert peer.met and "15,000 vs 2,500 candidates/s = 6.0x" in peer.measured  # both at 16 in flight
    assert latency.met and "p99 90 ms at ~80 req/s" in latency.measured  # half of the best 160 req/s
    assert offline.met and "22,500 vs 40,000 candidates/s offline = 56%" in offline.measured
    assert share.met and "180 vs 250 req/s = 72%" in share.measured
    assert batching.met and "120 vs 60 req/s = 2.00x; the model alone, offline: 1.50x" in batching.measured
    report.rows[5] = Row(IN_INGRESS, closed(100, 16, 100))
    assert not check_goals(report, (1, 100, 500))[0].met  # 12,000 (the Scorer deployment) is 4.8x
    report.offline[500] = 50_000.0
    assert not check_goals(report, (1, 100, 500))[2].met


# ------------------------------------------------------------------------- the whole benchmark, tiny

def tiny_artifact(path: Path, dataset, hidden: int) -> Path:
    vocab = dataset.vocabularies()
    torch.manual_seed(hidden)
    config = ModelConfig(len(vocab.item), len(vocab.category), hidden=hidden, mlp_dims=(16, 8), aux_dims=(8,))
    return save_artifact(path, build_model("dien", config).eval(), "dien", config, vocab.item, vocab.category,
                         max_len=dataset.max_len)


def test_the_benchmark_deploys_every_variant_measures_it_and_writes_its_outputs(ray_session, prepared_dataset,
                                                                               tmp_path):
    inputs = Inputs(data=str(prepared_dataset.path), student=str(tiny_artifact(tmp_path / "s", prepared_dataset, 8)),
                    teacher=str(tiny_artifact(tmp_path / "t", prepared_dataset, 16)), cache=str(tmp_path / "cache"))
    # local.yaml with smaller CPU shares: five applications side by side on the session's 4 logical CPUs.
    serve_config = load_config(LOCAL_CONFIG)
    for deployment in serve_config["applications"][0]["deployments"]:
        deployment["ray_actor_options"]["num_cpus"] = 0.25
    (tmp_path / "serve.yaml").write_text(yaml.safe_dump(serve_config))
    config = QpsConfig(inputs=inputs, serve_config=str(tmp_path / "serve.yaml"), candidates=(1, 3), concurrency=(2,),
                       open_fractions=(0.5,), bodies=16, out=str(tmp_path / "out"), rounds=2,
                       load=LoadSettings(duration_s=0.5, warmup_s=0.2, timeout_s=20))
    report = run_local(config)

    assert not (tmp_path / "cache").exists()  # given inputs are used as they are
    seen = {(r.variant, r.result.candidates, r.result.mode) for r in report.rows}
    peers = {(PLAIN, 3, "closed")} | ({(PLAIN_PEER, 3, "closed")} if peer_available() else set())
    assert seen == {(NOOP, 1, "closed"), (NOOP, 3, "closed"), (STUDENT, 1, "closed"), (STUDENT, 3, "closed"),
                    (STUDENT, 3, "open"), (IN_INGRESS, 1, "closed"), (IN_INGRESS, 3, "closed"),
                    (IN_INGRESS, 3, "open"), (PER_CORE, 1, "closed"), (PER_CORE, 3, "closed"), (PER_CORE, 3, "open"),
                    (UNBATCHED, 3, "closed"), (UNBATCHED, 3, "open"),
                    (TEACHER, 3, "closed"), (REFERENCE, 3, "closed")} | peers
    for row in report.rows:
        assert row.result.requests > 0 and row.result.errors == 0, (row.variant, row.result)
        assert len(row.rounds) == 2  # one row per setting, closed and open loop
    assert report.models[TEACHER]["hidden"] == 16 and report.models[STUDENT]["hidden"] == 8
    assert [g.name.split()[0] for g in report.goals] == ["ours"]  # only 1 candidate measured of the goals' sizes
    assert set(report.offline) == {1, 3} and all(rate > 0 for rate in report.offline.values())
    assert report.offline_unbatched > 0
    assert {"json_parse", "validate", "build_job", "score", "response"} <= set(report.breakdown)
    assert set(report.hop) == {"1", "16"}  # requests per call to the student's Scorer
    for cost in report.hop.values():
        assert cost["round_trip_ms"] > cost["score_ms"] > 0
        assert cost["hop_ms"] == pytest.approx(cost["round_trip_ms"] - cost["score_ms"] - cost["batch_wait_ms"],
                                               abs=0.01)
    assert report.hop["1"]["batch_wait_ms"] == 1.0 and report.hop["16"]["batch_wait_ms"] == 0.0  # the quiet gap

    paths = write_outputs(report, config.out)
    saved = json.loads(paths["json"].read_text())
    assert len(saved["results"]) == len(report.rows) and saved["config"]["concurrency"] == [2]
    assert saved["hop_ms"] == report.hop and "a call to the Scorer deployment" in format_markdown(report)
    assert paths["markdown"].read_text() == format_markdown(report)
    assert "| no-op | 1 | c=2 |" in format_markdown(report)
    assert paths["plot"].read_bytes()[:4] == b"\x89PNG"
    assert "student, reference kernels" in format_table(report)
