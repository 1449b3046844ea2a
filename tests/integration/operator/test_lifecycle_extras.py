"""Re-benchmark on request, GPU-hours and cost, and finished Jobs that the TTL removed, with
the operator in a cluster (the test plays the Job controller and the pods)."""

from __future__ import annotations

from finetune_core.lifecycle import REBENCHMARK_ANNOTATION
from tests.integration.operator.harness import Cluster
from tests.support.manifests import small_job

MINUTE_IN_HOURS = round(1 / 60, 4)  # the harness's Jobs run from 23:59:00 to 00:00:00


async def rejected_run(cluster: Cluster, name: str) -> None:
    """A run of one GPU whose first benchmark misses the answer profile's limit."""
    await cluster.create(small_job(name, cluster.dataset, resources={"gpus": 1}))
    run = cluster.run(name)
    train = (await cluster.wait_for_job(name, 1, "train"))["metadata"]["name"]
    await cluster.job_running(train)
    await cluster.wait_for_phase(name, "Training")
    cluster.pod_trained(run)
    await cluster.job_succeeded(train)
    bench = (await cluster.wait_for_job(name, 1, "benchmark"))["metadata"]["name"]
    cluster.pod_benchmarked(run, answer_p95=7.25)
    await cluster.job_succeeded(bench)
    await cluster.wait_for_phase(name, "Rejected")


async def test_a_rejected_run_is_benchmarked_again_on_request_and_gated_again(
    cluster: Cluster,
) -> None:
    assert cluster.settings is not None
    cluster.settings.gpu_hour_price = 3.0
    cluster.settings.currency = "EUR"
    await rejected_run(cluster, "noisy")
    run = cluster.run("noisy")
    rejected = cluster.status("noisy")
    assert rejected["cost"]["trainingGpuHours"] == MINUTE_IN_HOURS
    assert rejected["cost"]["benchmarkGpuHours"] == MINUTE_IN_HOURS
    assert rejected["cost"]["currency"] == "EUR"
    assert rejected["cost"]["estimatedCost"] == round(2 * MINUTE_IN_HOURS * 3.0, 2)

    await cluster.patch("noisy", {"metadata": {"annotations": {REBENCHMARK_ANNOTATION: "1"}}})
    again = await cluster.wait_for_job("noisy", 1, "benchmark", round=2)
    assert again["metadata"]["name"] == "noisy-g1-bench-r2"
    assert again["spec"]["template"]["spec"]["containers"][0]["command"][-2:] == ["--round", "2"]
    assert again["spec"]["ttlSecondsAfterFinished"] == 86400
    status = await cluster.wait_for_phase("noisy", "Benchmarking")
    assert status["benchmarkRound"] == 2
    assert status["rebenchmarkRequest"] == "1"
    await cluster.wait_for(
        lambda: "RebenchmarkStarted" in cluster.event_reasons("noisy"), "a RebenchmarkStarted"
    )

    cluster.pod_benchmarked(run, answer_p95=2.5, round=2)
    await cluster.job_succeeded(again["metadata"]["name"])
    status = await cluster.wait_for_phase("noisy", "Promoted")
    assert status["sla"] == "Passed"
    assert status["benchmarkRound"] == 2
    assert status["benchmark"]["profiles"][1]["p95"] == 2.5
    # Both rounds' reports are kept; report/ holds the latest.
    assert cluster.store.get_json(run.round_benchmark_report(1))["profiles"][1]["p95"] == 7.25
    assert cluster.store.get_json(run.round_benchmark_report(2))["profiles"][1]["p95"] == 2.5
    assert cluster.store.get_json(run.benchmark_report)["profiles"][1]["p95"] == 2.5
    cost = status["cost"]
    assert cost["benchmarkGpuHours"] == round(2 * MINUTE_IN_HOURS, 4)
    assert set(cost["stages"]) == {"noisy-g1-train", "noisy-g1-bench", "noisy-g1-bench-r2"}
    # The served request starts no third round; a promoted run is not re-gated.
    assert cluster.job_creations("noisy").count("noisy-g1-bench-r2") == 1
    await cluster.patch("noisy", {"metadata": {"annotations": {REBENCHMARK_ANNOTATION: "1/again"}}})
    await cluster.wait_for(
        lambda: "InvalidRebenchmark" in cluster.event_reasons("noisy"), "an InvalidRebenchmark"
    )
    warning = next(e for e in cluster.events("noisy") if e["reason"] == "InvalidRebenchmark")
    assert "not re-gated" in warning["message"]
    assert cluster.status("noisy")["phase"] == "Promoted"
    assert cluster.job("noisy-g1-bench-r3") is None


async def test_finished_jobs_removed_by_their_ttl_change_nothing(cluster: Cluster) -> None:
    """A settled run needs none of its Jobs; a benchmark Job that finished and was removed
    while the operator was away is recognised by its report, not taken for a lost one."""
    await rejected_run(cluster, "tidy")
    for job in ("tidy-g1-train", "tidy-g1-bench"):
        await cluster.job_removed(job)
    await cluster.restart_operator()  # resumes every object, the Jobs gone
    assert cluster.status("tidy")["phase"] == "Rejected"
    assert cluster.status("tidy")["cost"]["gpuHours"] == round(2 * MINUTE_IN_HOURS, 4)

    await cluster.patch("tidy", {"metadata": {"annotations": {REBENCHMARK_ANNOTATION: "1"}}})
    again = await cluster.wait_for_job("tidy", 1, "benchmark", round=2)
    await cluster.wait_for_phase("tidy", "Benchmarking")
    await cluster.stop_operator()
    cluster.pod_benchmarked(cluster.run("tidy"), round=2)
    await cluster.job_succeeded(again["metadata"]["name"])
    await cluster.job_removed(again["metadata"]["name"])
    cluster.start_operator()
    status = await cluster.wait_for_phase("tidy", "Promoted")
    assert "deleted" not in status["message"]
    # Nothing re-ran, nothing was taken for a Job deleted before it finished.
    assert cluster.job_creations("tidy") == ["tidy-g1-train", "tidy-g1-bench", "tidy-g1-bench-r2"]
    assert "JobDeleted" not in cluster.event_reasons("tidy")


async def test_a_settled_run_prunes_older_generations_run_directories(cluster: Cluster) -> None:
    """spec.retention.keepGenerations: 0 keeps only the current (and any promoted)
    generation's run directory once a run settles."""
    spec = {"resources": {"gpus": 1}, "retention": {"keepGenerations": 0}}
    await cluster.create(small_job("lean", cluster.dataset, **spec))
    for generation in (1, 2):
        run = cluster.run("lean", generation)
        train = await cluster.wait_for_job("lean", generation, "train")
        cluster.pod_trained(run)
        await cluster.job_succeeded(train["metadata"]["name"])
        bench = await cluster.wait_for_job("lean", generation, "benchmark")
        cluster.pod_benchmarked(run, answer_p95=7.25)
        await cluster.job_succeeded(bench["metadata"]["name"])
        await cluster.wait_for_phase("lean", "Rejected", generation=generation)
        if generation == 1:
            assert cluster.store.exists(run.config)  # nothing older to prune yet
            await cluster.patch("lean", {"spec": {"lora": {"r": 32}}})
    first = cluster.run("lean", 1)
    await cluster.wait_for(
        lambda: not any(cluster.store.list(first.prefix + "/")), "generation 1's run pruned"
    )
    assert cluster.store.exists(cluster.run("lean", 2).benchmark_report)
    assert cluster.status("lean")["runs"][0]["generation"] == 1  # the history stays


async def test_a_training_run_projects_its_gpu_hours_from_the_progress_eta(
    cluster: Cluster,
) -> None:
    assert cluster.settings is not None
    cluster.settings.gpu_hour_price = 10.0
    await cluster.create(small_job("eta", cluster.dataset, resources={"gpus": 1}))
    train = (await cluster.wait_for_job("eta", 1, "train"))["metadata"]["name"]
    await cluster.job_running(train)  # started 23:59:00
    cluster.pod_wrote_progress(cluster.run("eta"), step=2, total=4)  # at 00:00:00, 12 s left
    cost = await cluster.wait_for(
        lambda: (
            cluster.status("eta")["cost"]["projectedGpuHours"] and cluster.status("eta")["cost"]
        ),
        "a projected cost",
    )
    assert cost["projectedGpuHours"] == round(72 / 3600, 4)  # (60 s + 12 s) x 1 GPU
    assert cost["projectedCost"] == round(72 / 3600 * 10.0, 2)
    assert cost["gpuHours"] == 0.0  # nothing has finished yet
