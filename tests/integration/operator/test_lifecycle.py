"""The operator drives a FineTuneJob through training, benchmark and gate, as in a cluster."""

from __future__ import annotations

from finetune_core.api import RunConfig
from finetune_core.layout import CurrentAlias
from finetune_core.lifecycle import APPROVE_ANNOTATION
from finetune_operator.builders import LABEL_JOB
from tests.integration.operator.harness import FINETUNEJOBS, NAMESPACE, Cluster
from tests.support.manifests import small_job


async def test_passing_run_is_trained_benchmarked_and_promoted(cluster: Cluster) -> None:
    await cluster.create(small_job("agent", cluster.dataset))
    run = cluster.run("agent")
    run_uri = cluster.store.uri(run.prefix)

    train = await cluster.wait_for_job("agent", 1, "train")
    status = await cluster.wait_for_phase("agent", "Pending")
    uid = cluster.ftj("agent")["metadata"]["uid"]
    assert train["metadata"]["ownerReferences"][0]["uid"] == uid
    assert train["metadata"]["labels"][LABEL_JOB] == "agent"
    pod = train["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "registry.test/finetune/trainer:test"
    assert container["command"] == ["finetune", "train", "--run", run_uri]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["supplementalGroups"] == [44, 992]
    secret_refs = {
        e["name"]: e["valueFrom"]["secretKeyRef"]["name"]
        for e in container["env"]
        if "valueFrom" in e
    }
    assert secret_refs == {
        "AWS_ACCESS_KEY_ID": "store-credentials",
        "AWS_SECRET_ACCESS_KEY": "store-credentials",
    }
    config = RunConfig.model_validate(cluster.store.get_json(run.config))
    assert (config.namespace, config.name, config.generation) == (NAMESPACE, "agent", 1)
    assert config.spec.model_id == status["model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert config.spec.max_steps == 4
    assert cluster.condition("agent", "Reconciling")["status"] == "True"
    assert cluster.condition("agent", "Ready")["status"] == "False"

    await cluster.job_running(train["metadata"]["name"])
    await cluster.wait_for_phase("agent", "Training")
    cluster.pod_trained(run)
    await cluster.job_succeeded(train["metadata"]["name"])

    bench = await cluster.wait_for_job("agent", 1, "benchmark")
    status = await cluster.wait_for_phase("agent", "Benchmarking")
    assert bench["spec"]["template"]["spec"]["containers"][0]["command"] == [
        "finetune",
        "benchmark",
        "--run",
        run_uri,
    ]
    assert status["metrics"]["evalLoss"] == 1.21
    assert status["artifacts"]["adapter"] == f"{run_uri}/adapter"
    assert status["artifacts"]["lastCheckpoint"] == cluster.store.uri(run.checkpoint(4))

    cluster.pod_benchmarked(run)
    await cluster.job_succeeded(bench["metadata"]["name"])

    status = await cluster.wait_for_phase("agent", "Promoted")
    version = "agent-g1"
    promoted = f"models/{NAMESPACE}/smollm2-135m/{version}"
    assert status["promotedModel"] == cluster.store.uri(promoted)
    assert status["sla"] == "Passed"
    assert [p["name"] for p in status["benchmark"]["profiles"]] == ["question", "answer"]
    assert cluster.store.get_bytes(f"{promoted}/adapter/adapter_model.safetensors") == b"weights"
    alias = CurrentAlias.model_validate(
        cluster.store.get_json(f"models/{NAMESPACE}/smollm2-135m/current.json")
    )
    assert alias.version == version
    ready = cluster.condition("agent", "Ready")
    assert (ready["status"], ready["observedGeneration"]) == ("True", 1)
    assert cluster.condition("agent", "Reconciling")["status"] == "False"
    assert cluster.condition("agent", "Stalled")["status"] == "False"
    await cluster.wait_for(lambda: "Promoted" in cluster.event_reasons("agent"), "a Promoted Event")
    assert {"RunStarted", "JobCreated", "TrainingStarted", "BenchmarkStarted"} <= set(
        cluster.event_reasons("agent")
    )
    assert [job["metadata"]["name"] for job in cluster.jobs("agent")] == [
        "agent-g1-bench",
        "agent-g1-train",
    ]


async def test_progress_json_is_copied_into_the_status(cluster: Cluster) -> None:
    await cluster.create(small_job("progress", cluster.dataset))
    train = await cluster.wait_for_job("progress", 1, "train")
    await cluster.job_running(train["metadata"]["name"])
    cluster.pod_wrote_progress(cluster.run("progress"), step=3, total=12)

    status = await cluster.wait_for(
        lambda: (s := cluster.status("progress")).get("progress", {}).get("step") == 3 and s,
        "status.progress from progress.json",
    )
    assert status["phase"] == "Training"
    assert status["progress"]["totalSteps"] == 12
    assert status["progress"]["percent"] == 25
    assert train["metadata"]["name"] == "progress-g1-train"

    cluster.pod_wrote_progress(cluster.run("progress"), step=9, total=12)
    await cluster.wait_for(
        lambda: cluster.status("progress")["progress"]["percent"] == 75, "a refreshed percent"
    )


async def test_failing_report_is_rejected_naming_the_profile(cluster: Cluster) -> None:
    await cluster.create(small_job("slow", cluster.dataset))
    run = cluster.run("slow")
    train = await cluster.wait_for_job("slow", 1, "train")
    cluster.pod_trained(run)
    await cluster.job_succeeded(train["metadata"]["name"])
    bench = await cluster.wait_for_job("slow", 1, "benchmark")
    cluster.pod_benchmarked(run, answer_p95=7.25)
    await cluster.job_succeeded(bench["metadata"]["name"])

    status = await cluster.wait_for_phase("slow", "Rejected")
    stalled = cluster.condition("slow", "Stalled")
    assert stalled["status"] == "True"
    assert "answer" in stalled["message"]
    assert "7.25" in stalled["message"] and "6" in stalled["message"]
    assert "question" not in stalled["message"]
    assert status["sla"] == "Failed"
    assert "promotedModel" not in status
    assert not cluster.store.exists(f"models/{NAMESPACE}/smollm2-135m/current.json")


async def test_manual_policy_waits_for_the_approval_annotation(cluster: Cluster) -> None:
    await cluster.create(small_job("careful", cluster.dataset, promotion={"policy": "manual"}))
    run = cluster.run("careful")
    train = await cluster.wait_for_job("careful", 1, "train")
    cluster.pod_trained(run)
    await cluster.job_succeeded(train["metadata"]["name"])
    bench = await cluster.wait_for_job("careful", 1, "benchmark")
    cluster.pod_benchmarked(run)
    await cluster.job_succeeded(bench["metadata"]["name"])

    status = await cluster.wait_for_phase("careful", "AwaitingApproval")
    assert status["sla"] == "Passed"
    assert APPROVE_ANNOTATION in status["message"]
    assert not cluster.store.exists(f"models/{NAMESPACE}/smollm2-135m/current.json")

    # "true" (the old form) approves nothing: a Warning says which value would.
    await cluster.patch("careful", {"metadata": {"annotations": {APPROVE_ANNOTATION: "true"}}})
    await cluster.wait_for(
        lambda: "InvalidApproval" in cluster.event_reasons("careful"), "an InvalidApproval Event"
    )
    assert cluster.status("careful")["phase"] == "AwaitingApproval"
    await cluster.patch("careful", {"metadata": {"annotations": {APPROVE_ANNOTATION: "1"}}})
    status = await cluster.wait_for_phase("careful", "Promoted")
    assert "generation 1 approved" in status["message"]
    assert status["approvedGeneration"] == 1
    alias = cluster.store.get_json(f"models/{NAMESPACE}/smollm2-135m/current.json")
    assert alias["version"] == "careful-g1"


async def test_spec_edit_starts_a_new_generation_and_records_the_old_run(
    cluster: Cluster,
) -> None:
    await cluster.create(small_job("gitops", cluster.dataset))
    first = await cluster.wait_for_job("gitops", 1, "train")
    await cluster.job_running(first["metadata"]["name"])
    await cluster.wait_for_phase("gitops", "Training")

    await cluster.patch("gitops", {"spec": {"lora": {"r": 32}}})

    second = await cluster.wait_for_job("gitops", 2, "train")
    status = await cluster.wait_for_phase("gitops", "Pending", generation=2)
    config = cluster.store.get_json(cluster.run("gitops", 2).config)
    assert config["spec"]["loraR"] == 32
    assert second["spec"]["template"]["spec"]["containers"][0]["command"][-1] == (
        cluster.store.uri(cluster.run("gitops", 2).prefix)
    )
    assert status["runs"][0]["generation"] == 1
    assert status["runs"][0]["phase"] == "Superseded"
    assert status["runs"][0]["run"] == cluster.store.uri(cluster.run("gitops", 1).prefix)
    # The superseded generation's Job stops: it would hold a GPU for nothing.
    await cluster.wait_for(
        lambda: cluster.job("gitops-g1-train") is None, "the generation 1 Job deleted"
    )
    assert [job["metadata"]["name"] for job in cluster.jobs("gitops")] == ["gitops-g2-train"]
    assert cluster.condition("gitops", "Ready")["observedGeneration"] == 2


async def test_a_recreated_job_never_reads_or_adopts_its_predecessors_run(
    cluster: Cluster,
) -> None:
    """kubectl delete + kubectl apply of a changed spec: the old Job and run directory belong
    to the deleted object. The new one moves the directory aside, waits for the old Job to
    be deleted, and trains and gates on its own results only."""
    await cluster.create(small_job("again", cluster.dataset))
    old_train = await cluster.wait_for_job("again", 1, "train")
    old_uid = cluster.ftj("again")["metadata"]["uid"]
    run = cluster.run("again")
    cluster.pod_trained(run, eval_loss=0.5)
    await cluster.job_succeeded(old_train["metadata"]["name"])
    await cluster.wait_for_job("again", 1, "benchmark")
    # The emulator has no garbage collector: the old Jobs stay, as they do for a while in a
    # cluster (or for good, when the owner was deleted with --cascade=orphan).
    await cluster.delete("again")
    await cluster.create(small_job("again", cluster.dataset, lora={"r": 32}))
    new_uid = cluster.ftj("again")["metadata"]["uid"]
    assert new_uid != old_uid

    new_train = await cluster.wait_for(
        lambda: (
            (job := cluster.job("again-g1-train"))
            and job["metadata"]["ownerReferences"][0]["uid"] == new_uid
            and job
        ),
        "a training Job owned by the new object",
    )
    assert cluster.job("again-g1-bench") is None  # the predecessor's was deleted too
    moved = f"runs/{NAMESPACE}/again/superseded/{old_uid}/g1"
    assert cluster.store.exists(f"{moved}/metrics.json")
    config = RunConfig.model_validate(cluster.store.get_json(run.config))
    assert (config.uid, config.spec.lora_r) == (new_uid, 32)
    assert not cluster.store.exists(run.metrics)
    await cluster.job_running(new_train["metadata"]["name"])
    status = await cluster.wait_for_phase("again", "Training")
    assert status.get("metrics") is None


async def test_a_whole_lifecycle_never_reads_the_object_back(emulator_cluster: Cluster) -> None:
    """The watch's events and the answers to the operator's own patches carry the object as
    it is: reading it again on each reconcile (a new object's, a Job event's, the poll's)
    was a request per step of every run. (On the emulator, which records every request.)"""
    cluster = emulator_cluster
    await cluster.create(small_job("unread", cluster.dataset))
    train = await cluster.wait_for_job("unread", 1, "train")
    await cluster.wait_for_phase("unread", "Pending")
    await cluster.job_running(train["metadata"]["name"])
    cluster.pod_wrote_progress(cluster.run("unread"), step=1, total=4)
    await cluster.wait_for(
        lambda: cluster.status("unread").get("progress", {}).get("step") == 1, "a polled progress"
    )
    await cluster.finish("unread", train)
    reads = [
        request
        for request in cluster.api.served()
        if request.method == "GET" and request.resource == FINETUNEJOBS and request.name == "unread"
    ]
    assert reads == []


async def test_a_queued_job_waits_for_kueue_and_then_runs(cluster: Cluster) -> None:
    """Both Jobs are created suspended in the queue; the run says it waits in the queue
    until Kueue admits the Job (the test un-suspends it, as Kueue would), then goes on."""
    await cluster.create(small_job("queued", cluster.dataset, scheduling={"queueName": "mi300x"}))
    run = cluster.run("queued")
    train = await cluster.wait_for_job("queued", 1, "train")
    assert train["spec"]["suspend"] is True
    assert train["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "mi300x"
    await cluster.wait_for(
        lambda: cluster.condition("queued", "Reconciling")["reason"] == "Queued", "Queued"
    )
    assert cluster.status("queued")["phase"] == "Pending"
    assert "queue mi300x" in cluster.condition("queued", "Reconciling")["message"]

    await cluster.admit(train["metadata"]["name"])
    await cluster.job_running(train["metadata"]["name"])
    await cluster.wait_for_phase("queued", "Training")
    cluster.pod_trained(run)
    await cluster.job_succeeded(train["metadata"]["name"])

    bench = await cluster.wait_for_job("queued", 1, "benchmark")
    assert bench["spec"]["suspend"] is True
    await cluster.wait_for(
        lambda: cluster.condition("queued", "Reconciling")["reason"] == "Queued",
        "the benchmark Queued",
    )
    assert cluster.status("queued")["phase"] == "Benchmarking"
    await cluster.admit(bench["metadata"]["name"])
    cluster.pod_benchmarked(run)
    await cluster.job_succeeded(bench["metadata"]["name"])
    await cluster.wait_for_phase("queued", "Promoted")
