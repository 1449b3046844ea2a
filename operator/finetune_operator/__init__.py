"""The finetune-operator control plane: kopf handlers, reconcile decisions, object builders."""
