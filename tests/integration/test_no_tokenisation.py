"""A node started with --no-tokenisation never sends a tenant's sensitive fields out in clear:
it refuses to offload that tenant's requests, still serves what it can locally, and reports
tokenisation inactive (the console's compliance checks flag it)."""

from __future__ import annotations

from inference import protocol
from tests.inference.harness import TESTER, FakeConsole, doubler_model, running_agent, wait_until
from tests.integration.test_agent_usage import INPUT, bundle, infer, metric


def test_a_node_without_tokenisation_refuses_to_offload_sensitive_requests(tmp_path):
    console = FakeConsole()
    doubler_model(tmp_path / "edge-models" / "doubler.onnx")
    doubler_model(tmp_path / "pool-models" / "big.onnx")
    console.enrollments = {
        "edge-token": {"node_uid": "node-edge", "name": "fra-nano-1", "credential": "opn_edge"},
        "pool-token": {
            "node_uid": "node-pool", "name": "fra-gpu-1", "node_class": "accelerator",
            "credential": "opn_pool",
        },
    }  # fmt: skip

    def agent(name: str, *extra: str):
        return running_agent(
            tmp_path / f"{name}-models", tmp_path / f"{name}-state",
            "--console", console.url, "--enroll", f"{name}-token", *extra,
            log_path=tmp_path / f"{name}.log", headers=console.auth(),
        )  # fmt: skip

    try:
        with agent("pool") as pool:
            console.publish(
                bundle(
                    pools=[
                        protocol.Pool(
                            region="eu-west", residency_zone="EU",
                            nodes=[protocol.PoolNode(uid="node-pool", endpoint=pool.url)],
                        )
                    ],
                    routes=[protocol.Route(tenant=TESTER, region="eu-west", pools=["eu-west"])],
                    models=[
                        protocol.ModelGrade(name="doubler", grade="tiny"),
                        protocol.ModelGrade(name="big", grade="medium"),
                    ],
                )
            )  # fmt: skip
            with agent("edge", "--no-tokenisation") as edge:
                wait_until(
                    lambda: metric(edge, "outpost_policy_bundle_revision") == 2,
                    what="the edge on the bundle with the pool",
                )
                body = {**INPUT, "parameters": {"customer": "alice"}}
                refused = infer(edge, body, model="big")
                assert refused.status_code == 503, refused.text
                assert "does not tokenise sensitive fields" in refused.json()["error"]
                assert infer(edge, body).status_code == 200, "what it serves itself it serves"
                assert metric(edge, "outpost_tokenisation_active") == 0

                def reported():
                    beats = console.calls_to(protocol.HEARTBEAT_PATH)
                    return beats and beats[-1].body

                beat = wait_until(reported, what="a heartbeat")
                assert beat["tokenisation_active"] is False
                assert beat["tokenised_tenants"] == []
    finally:
        console.close()
