"""The pods' programs: LoRA training and the latency benchmark."""
