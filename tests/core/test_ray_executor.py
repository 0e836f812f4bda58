"""The Ray executor on a local cluster the test starts, pinned to the loopback interface.

Ray takes the machine's external address unless told otherwise; with
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (set before Ray is imported) a local cluster keeps
every address on 127.0.0.1. The test asserts that for the GCS, each node's manager and
object manager, the address workers see, and every TCP socket that started listening.
"""

from __future__ import annotations

import os
import time

import pytest

from llmserve import LLM, SamplingParams
from llmserve.executor import WorkerDiedError

GREEDY = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
PROMPTS = [[5, 6, 7, 8], [9, 10, 11], [12, 13, 14, 15, 16, 17]]
TIMEOUT_S = 60


def _listening() -> set[tuple[str, int]]:
    """(address, port) of every listening TCP socket on this machine."""
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        with open(table) as f:
            for line in f.readlines()[1:]:
                local, _, state = line.split()[1:4]
                if state == "0A":  # LISTEN
                    address, port = local.split(":")
                    found.add((_address(address, width), int(port, 16)))
    return found


def _address(hex_address: str, width: int) -> str:
    raw = bytes.fromhex(hex_address)
    if width == 8:
        return ".".join(str(b) for b in raw[::-1])
    words = [raw[i:i + 4][::-1] for i in range(0, 16, 4)]
    flat = b"".join(words)
    if flat[:12] == bytes(10) + b"\xff\xff":
        return "::ffff:" + ".".join(str(b) for b in flat[12:])
    return ":".join(flat[i:i + 2].hex() for i in range(0, 16, 2))


LOOPBACK = ("127.0.0.1", "::ffff:127.0.0.1", "0000:0000:0000:0000:0000:0000:0000:0001")


@pytest.fixture(scope="module")
def ray_cluster():
    # Ray reads the switch when it is first imported; another test may have imported it
    # already, so the constant is set too. Ray's own processes inherit the variable.
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    before = _listening()
    import ray
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False,
             object_store_memory=80 << 20)
    try:
        yield ray, before
    finally:
        ray.shutdown()


def test_every_ray_address_is_loopback(ray_cluster):
    ray, _ = ray_cluster
    gcs_host = ray.get_runtime_context().gcs_address.rsplit(":", 1)[0]
    assert gcs_host == "127.0.0.1"
    nodes = ray.nodes()
    assert nodes and all(n["NodeManagerAddress"] == "127.0.0.1" for n in nodes)
    assert all(n["Resources"].get("node:127.0.0.1") for n in nodes)

    @ray.remote
    def node_ip() -> str:
        return ray.util.get_node_ip_address()

    assert ray.get(node_ip.remote(), timeout=TIMEOUT_S) == "127.0.0.1"


def test_tensor_parallel_through_ray_matches_one_rank(ray_cluster, tiny_models):
    ray, before = ray_cluster
    path = tiny_models["LlamaForCausalLM"]
    expected = [o.outputs[0].token_ids for o in LLM(
        path, dtype="float32", max_model_len=256).generate(PROMPTS, GREEDY, use_tqdm=False)]
    llm = LLM(path, dtype="float32", max_model_len=256, kv_cache_memory=16 << 20,
              tensor_parallel_size=2, distributed_executor_backend="ray")
    executor = llm.llm_engine.core.executor
    assert type(executor).__name__ == "RayExecutor" and len(executor.actors) == 2
    got = [o.outputs[0].token_ids for o in llm.generate(PROMPTS, GREEDY, use_tqdm=False)]
    assert got == expected
    # Nothing Ray or the ranks opened listens beyond loopback (the ranks' rendezvous is a
    # file on one machine).
    opened = _listening() - before
    assert opened and all(address in LOOPBACK for address, _ in opened), sorted(opened)

    ray.kill(executor.actors[1])
    start = time.monotonic()
    with pytest.raises(WorkerDiedError, match="a Ray worker failed"):
        llm.generate(PROMPTS, GREEDY, use_tqdm=False)
    assert time.monotonic() - start < 30
    executor.shutdown()


def test_a_bad_setting_a_ray_rank_finds_is_a_value_error(ray_cluster, tiny_models):
    """The tiny models' 4 query heads do not split over 3 ranks: the actors find out while
    building their layers, and the caller gets their ValueError, as with local workers."""
    with pytest.raises(ValueError, match="not divisible by the tensor-parallel size 3"):
        LLM(tiny_models["LlamaForCausalLM"], dtype="float32", max_model_len=256,
            kv_cache_memory=16 << 20, tensor_parallel_size=3,
            distributed_executor_backend="ray")


def test_ray_missing_is_named(monkeypatch, tiny_models):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(ValueError, match=r"pip install 'llmserve\[ray\]'"):
        LLM(tiny_models["LlamaForCausalLM"], dtype="float32", max_model_len=256,
            tensor_parallel_size=2, distributed_executor_backend="ray")
