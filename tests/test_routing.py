"""Routing between served versions: the split by user, shadows, config errors (no Serve; test_serve.py deploys it)."""
from collections import Counter
from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from dien.serve.config import IngressConfig, RoutingConfig, ServeArgs
from dien.serve.routing import Router, ShadowComparison
from dien.serve.scorer import scorer_name

ROLLOUT_CONFIG = Path(__file__).resolve().parents[1] / "serve_configs" / "rollout.yaml"

USERS = [f"user{k}" for k in range(20_000)]


def test_the_split_sends_each_version_its_share_and_a_user_always_to_the_same_one():
    router = Router(RoutingConfig(split={"old": 3, "new": 1}), ["old", "new"])
    routed = {user: router.route(user) for user in USERS}
    shares = Counter(routed.values())
    assert shares["new"] / len(USERS) == pytest.approx(0.25, abs=0.01)
    assert all(router.route(user) == routed[user] for user in USERS[:500])
    # Another replica (another Router from the same config) routes every user the same way.
    assert all(Router(RoutingConfig(split={"old": 3, "new": 1}), ["old", "new"]).route(u) == routed[u]
               for u in USERS[:500])


def test_moving_weight_moves_only_the_users_it_must():
    before = Router(RoutingConfig(split={"old": 9, "new": 1}), ["old", "new"])
    after = Router(RoutingConfig(split={"old": 1, "new": 1}), ["old", "new"])
    moved = Counter((before.route(u), after.route(u)) for u in USERS)
    assert moved[("new", "old")] == 0  # nobody on the new version goes back while its share grows
    assert moved[("old", "new")] / len(USERS) == pytest.approx(0.4, abs=0.01)


def test_without_a_split_the_first_version_answers_everything():
    router = Router(RoutingConfig(), ["default", "candidate"])
    assert {router.route(u) for u in USERS[:200]} | {router.route(None)} == {"default"}
    assert router.primary == "default" and router.shares == {"default": 1.0}


def test_shadows_mirror_their_fraction_of_users_and_never_the_answering_version():
    router = Router(RoutingConfig(split={"a": 1, "b": 1}, shadow=["b"], shadow_fraction=0.3), ["a", "b"])
    mirrored = [u for u in USERS if router.shadows(u, "a") == ["b"]]
    assert len(mirrored) / len(USERS) == pytest.approx(0.3, abs=0.01)
    assert all(router.shadows(u, "b") == [] for u in mirrored)
    assert Router(RoutingConfig(shadow=["b"], shadow_fraction=0), ["a", "b"]).shadows("u", "a") == []


@pytest.mark.parametrize("routing, message", [
    ({"split": {"a": 1, "typo": 1}}, "routing.split names 'typo', which this application does not serve"),
    ({"shadow": ["c"]}, "routing.shadow names 'c'"),
    ({"split": {"a": 0, "b": 0}}, "gives no version any weight"),
])
def test_a_routing_naming_what_is_not_served_is_refused(routing, message):
    with pytest.raises(ValueError, match=message):
        Router(RoutingConfig.model_validate(routing), ["a", "b"])


def test_configs_refuse_bad_values():
    for bad in ({"split": {"a": -1}}, {"shadow_fraction": 1.5}, {"spilt": {"a": 1}}):
        with pytest.raises(ValueError):
            RoutingConfig.model_validate(bad)
    with pytest.raises(ValueError, match="at least one"):
        ServeArgs.model_validate({"model": {}})
    with pytest.raises(ValueError):
        ServeArgs.model_validate({"model": {"no spaces": "artifacts/a"}})
    assert ServeArgs.model_validate({"model": "artifacts/a"}).versions() == {"default": "artifacts/a"}
    assert list(ServeArgs.model_validate({"model": {"v2": "b", "v1": "a"}}).versions()) == ["v2", "v1"]
    # The Ingress's user_config: routing alone sets no scorer settings (those go to the Scorer deployments).
    assert IngressConfig.model_validate({"routing": {"split": {"a": 1}}}).scorer_settings() is None
    assert IngressConfig.model_validate({"max_batch_size": 4}).scorer_settings()["max_batch_size"] == 4
    # Forwarding is the ingress's own (how its requests share calls to the Scorers), not a scorer setting.
    forwarding = IngressConfig.model_validate({"forwarding": {"max_jobs_per_call": 1}})
    assert forwarding.scorer_settings() is None and forwarding.forwarding.max_calls_in_flight == 2
    for bad in ({"max_calls_in_flight": 0}, {"max_jobs_per_call": -1}, {"max_jobs": 4}):
        with pytest.raises(ValueError):
            IngressConfig.model_validate({"forwarding": bad})


def test_a_shadow_comparison_averages_over_requests():
    comparison = ShadowComparison()
    comparison.add("a", [0.1, 0.9], [0.2, 0.8])
    comparison.add("a", [0.5, 0.4], [0.3, 0.6])
    summary = comparison.summary()
    assert summary["requests"] == 2 and summary["against"] == {"a": 2}
    assert summary["mean_abs_diff"] == pytest.approx(0.15)
    assert summary["max_abs_diff"] == pytest.approx(0.2)
    assert summary["same_top_candidate"] == 0.5


def test_the_rollout_config_has_a_scorer_per_version_and_a_routing_over_them():
    raw = yaml.safe_load(ROLLOUT_CONFIG.read_text())
    app = ServeDeploySchema.model_validate(raw).applications[0]
    versions = ServeArgs.model_validate(app.args).versions()
    deployments = {d.name: d for d in app.deployments}
    assert {scorer_name(label) for label in versions} | {"Ingress"} == set(deployments)
    Router(IngressConfig.model_validate(deployments["Ingress"].user_config).routing, list(versions))
