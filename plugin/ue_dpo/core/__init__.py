"""UE-DPO's math as pure functions on tensors: no trainer, no I/O."""
