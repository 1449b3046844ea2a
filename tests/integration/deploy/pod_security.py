"""A checker for the Pod Security Standards' "restricted" profile.

The rules are those of the published profile (kubernetes.io/docs/concepts/security/
pod-security-standards), baseline controls included, applied to a PodSpec as plain
data. Each violation names the field it is about, so a failing test says what to fix.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

# Baseline: capabilities a container may add (restricted narrows it further).
RESTRICTED_ADDABLE_CAPABILITIES = frozenset({"NET_BIND_SERVICE"})
SAFE_SYSCTLS = frozenset(
    {
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
    }
)
SELINUX_TYPES = frozenset(
    {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
)
RESTRICTED_VOLUME_TYPES = frozenset(
    {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }
)
SECCOMP_ALLOWED = frozenset({"RuntimeDefault", "Localhost"})
APPARMOR_ALLOWED = frozenset({"RuntimeDefault", "Localhost"})


def restricted_violations(
    pod_spec: Mapping[str, Any], annotations: Mapping[str, str] | None = None
) -> list[str]:
    """Every way `pod_spec` breaks the restricted profile; empty when it passes."""
    problems: list[str] = []
    pod_context = pod_spec.get("securityContext") or {}

    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod_spec.get(field):
            problems.append(f"spec.{field}: must be unset or false")
    if (pod_context.get("windowsOptions") or {}).get("hostProcess"):
        problems.append("spec.securityContext.windowsOptions.hostProcess: must not be true")

    for volume in pod_spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        for kind in sorted(kinds - RESTRICTED_VOLUME_TYPES):
            problems.append(f"spec.volumes[{volume.get('name')}].{kind}: volume type not allowed")

    for sysctl in pod_context.get("sysctls") or []:
        if sysctl.get("name") not in SAFE_SYSCTLS:
            problems.append(
                f"spec.securityContext.sysctls[{sysctl.get('name')}]: not a safe sysctl"
            )

    problems += _selinux("spec.securityContext", pod_context)
    problems += _apparmor("spec.securityContext", pod_context)
    for key, value in (annotations or {}).items():
        prefix = "container.apparmor.security.beta.kubernetes.io/"
        if key.startswith(prefix) and not (
            value == "runtime/default" or value.startswith("localhost/")
        ):
            problems.append(f"metadata.annotations[{key}]: AppArmor profile {value!r} not allowed")

    if pod_context.get("runAsUser") == 0:
        problems.append("spec.securityContext.runAsUser: must not be 0")
    pod_seccomp = (pod_context.get("seccompProfile") or {}).get("type")
    if pod_seccomp is not None and pod_seccomp not in SECCOMP_ALLOWED:
        problems.append(f"spec.securityContext.seccompProfile.type: {pod_seccomp!r} not allowed")

    for path, container in _containers(pod_spec):
        problems += _container_violations(path, container, pod_context)
    return problems


def _containers(pod_spec: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    for field in ("initContainers", "containers", "ephemeralContainers"):
        for container in pod_spec.get(field) or []:
            yield f"spec.{field}[{container.get('name')}]", container


def _container_violations(
    path: str, container: Mapping[str, Any], pod_context: Mapping[str, Any]
) -> list[str]:
    problems: list[str] = []
    context = container.get("securityContext") or {}
    where = f"{path}.securityContext"

    if context.get("privileged"):
        problems.append(f"{where}.privileged: must be unset or false")
    if (context.get("windowsOptions") or {}).get("hostProcess"):
        problems.append(f"{where}.windowsOptions.hostProcess: must not be true")
    for port in container.get("ports") or []:
        if port.get("hostPort"):
            problems.append(f"{path}.ports[{port.get('name')}].hostPort: must be unset or 0")
    if context.get("procMount", "Default") != "Default":
        problems.append(f"{where}.procMount: must be unset or Default")
    problems += _selinux(where, context)
    problems += _apparmor(where, context)

    if context.get("allowPrivilegeEscalation") is not False:
        problems.append(f"{where}.allowPrivilegeEscalation: must be false")

    non_root = context.get("runAsNonRoot", pod_context.get("runAsNonRoot"))
    if non_root is not True:
        problems.append(f"{where}.runAsNonRoot: must be true (here or on the pod)")
    if context.get("runAsUser") == 0:
        problems.append(f"{where}.runAsUser: must not be 0")

    seccomp = (context.get("seccompProfile") or {}).get("type")
    effective = seccomp or (pod_context.get("seccompProfile") or {}).get("type")
    if effective not in SECCOMP_ALLOWED:
        problems.append(f"{where}.seccompProfile.type: RuntimeDefault or Localhost required")

    capabilities = context.get("capabilities") or {}
    if "ALL" not in (capabilities.get("drop") or []):
        problems.append(f"{where}.capabilities.drop: must include ALL")
    for added in capabilities.get("add") or []:
        if added not in RESTRICTED_ADDABLE_CAPABILITIES:
            problems.append(f"{where}.capabilities.add: {added} not allowed")
    return problems


def _selinux(where: str, context: Mapping[str, Any]) -> list[str]:
    options = context.get("seLinuxOptions") or {}
    problems = []
    if options.get("type", "") not in SELINUX_TYPES:
        problems.append(f"{where}.seLinuxOptions.type: {options['type']!r} not allowed")
    for field in ("user", "role"):
        if options.get(field):
            problems.append(f"{where}.seLinuxOptions.{field}: must be unset")
    return problems


def _apparmor(where: str, context: Mapping[str, Any]) -> list[str]:
    kind = (context.get("appArmorProfile") or {}).get("type")
    if kind is not None and kind not in APPARMOR_ALLOWED:
        return [f"{where}.appArmorProfile.type: {kind!r} not allowed"]
    return []
