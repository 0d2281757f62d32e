"""Process-launch glue: find out which launcher started us and initialise ``torch.distributed``."""
