"""The leader-election settings: read from FINETUNE_* variables, timings that cannot work
rejected with the variables named."""

from __future__ import annotations

import pytest

from finetune_operator.settings import OperatorSettings


def test_lease_settings_from_the_environment() -> None:
    settings = OperatorSettings.from_env(
        {
            "FINETUNE_LEADER_ELECTION": "false",
            "FINETUNE_LEASE_NAME": "ft",
            "FINETUNE_LEASE_NAMESPACE": "ops",
            "FINETUNE_LEASE_DURATION": "30",
            "FINETUNE_LEASE_RENEW_DEADLINE": "20",
            "FINETUNE_LEASE_RETRY_PERIOD": "4",
            "FINETUNE_LEADER_IDENTITY": "pod-a",
        }
    )
    assert settings.leader_election is False
    assert (settings.lease_name, settings.lease_namespace, settings.leader_identity) == (
        "ft",
        "ops",
        "pod-a",
    )
    assert settings.lease_duration_seconds == 30
    assert settings.lease_renew_deadline_seconds == 20
    assert settings.lease_retry_period_seconds == 4
    defaults = OperatorSettings.from_env({})
    assert defaults.leader_election is True
    assert defaults.lease_namespace is None and defaults.leader_identity is None


@pytest.mark.parametrize(
    ("env", "named"),
    [
        (
            {"FINETUNE_LEASE_DURATION": "10", "FINETUNE_LEASE_RENEW_DEADLINE": "10"},
            "FINETUNE_LEASE_RENEW_DEADLINE must be less than FINETUNE_LEASE_DURATION",
        ),
        (
            {"FINETUNE_LEASE_RETRY_PERIOD": "10"},
            "FINETUNE_LEASE_RETRY_PERIOD must be less than FINETUNE_LEASE_RENEW_DEADLINE",
        ),
        ({"FINETUNE_LEADER_ELECTION": "maybe"}, "FINETUNE_LEADER_ELECTION"),
    ],
)
def test_lease_timings_that_cannot_work_are_refused(env: dict[str, str], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        OperatorSettings.from_env(env)
