"""Once the operator may not write (its Lease was lost), no write leaves the process."""

from __future__ import annotations

import pytest
from kubernetes import client

from finetune_operator.kube import Kube, NotLeading

# Nothing listens there: a write that got past the gate would fail with a connection error,
# not with NotLeading.
NOWHERE = "http://127.0.0.1:9"


def kube() -> Kube:
    configuration = client.Configuration()
    configuration.host = NOWHERE
    configuration.retries = False
    return Kube(client.ApiClient(configuration), timeout=1.0)


async def test_every_kind_of_write_is_refused_before_it_is_sent() -> None:
    api = kube()
    api.may_write = lambda: False
    job = {"metadata": {"name": "demo-g1-train", "namespace": "ml"}}
    writes = [
        api.create_job(job),
        api.delete_job("ml", "demo-g1-train"),
        api.patch_finetunejob_status("ml", "demo", {"phase": "Pending"}),
        api.create_custom("finetunejobs", {"metadata": {"name": "demo", "namespace": "ml"}}),
        api.patch_custom("finetunejobs", "ml", "demo", {"metadata": {"labels": {}}}),
        api.patch_custom_status("finetunetournaments", "ml", "cup", {"phase": "Running"}),
        api.delete_custom("finetunejobs", "ml", "demo"),
    ]
    for write in writes:
        with pytest.raises(NotLeading):
            await write
    api.close()


async def test_an_allowed_write_is_sent() -> None:
    api = kube()
    api.may_write = lambda: True
    with pytest.raises(Exception) as raised:  # sent: nothing listens there
        await api.create_job({"metadata": {"name": "demo-g1-train", "namespace": "ml"}})
    assert not isinstance(raised.value, NotLeading)
    api.close()
