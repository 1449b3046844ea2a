"""The real-cluster suite runs only when FINETUNE_E2E_KUBECONFIG names a kubeconfig.

Without it the files here are not collected at all (rather than collected and skipped).
Needs on the machine: kubectl and helm; in the cluster: an S3 endpoint reachable from the
pods (FINETUNE_E2E_STORE, FINETUNE_E2E_S3_ENDPOINT, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)
and the images (FINETUNE_E2E_OPERATOR_IMAGE, FINETUNE_E2E_TRAINER_IMAGE), and the demo
dataset uploaded where the pods can read it (FINETUNE_E2E_DATASET_URI, an s3:// URI).
"""

from __future__ import annotations

import os

collect_ignore_glob = [] if os.environ.get("FINETUNE_E2E_KUBECONFIG") else ["test_*.py"]
