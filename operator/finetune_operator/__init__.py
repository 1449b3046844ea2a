"""The finetune-operator: kopf handlers, the Kubernetes executor of the lifecycle, Job builders."""
